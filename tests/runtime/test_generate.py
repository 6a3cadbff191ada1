"""Generation over the exported LLM: greedy parity with the PyTorch references (tiny
bundle: the wrapper's `greedy_generate`; SmolLM2: transformers' `generate`), sampling
options, stop strings, streaming, the context limit and the KV cache's step contract."""

from __future__ import annotations

import numpy as np
import pytest

from vitron_rt.engines import OrtOptions
from vitron_rt.runtime import generate as generate_mod
from vitron_rt.runtime.errors import ContextLengthError
from vitron_rt.runtime.kv_cache import HostKvCache, OrtKvCache
from vitron_rt.runtime.sampling import Sampler, SamplingParams
from vitron_rt.runtime.session import Session

QUESTION = "What is the capital of France?"
# Session options for tests: one thread (two test workers may share two cores), and no
# optimized-model cache written into the shared, read-only bundles.
TEST_OPTIONS = OrtOptions(intra_op_threads=1, cache_optimized=False)


# Every test runs with both bound caches: the "ort-gqa" variant's shared buffers and
# the standard graph's OrtKvCache.
@pytest.fixture(scope="module", params=[True, False], ids=["shared-kv", "standard-kv"])
def tiny(tiny_bundle, request):
    with Session(tiny_bundle, options=TEST_OPTIONS, verify=False, shared_kv=request.param) as s:
        yield s


@pytest.fixture(scope="module", params=[True, False], ids=["shared-kv", "standard-kv"])
def smol(smollm2_bundle, request):
    with Session(smollm2_bundle, options=TEST_OPTIONS, verify=False, shared_kv=request.param) as s:
        yield s


def _chat_ids(session: Session, text: str = QUESTION) -> list[int]:
    return session.tokenizer.apply_chat_template([{"role": "user", "content": text}])


# --------------------------------------------------------------------------- greedy parity


def test_tiny_greedy_equals_pytorch(tiny):
    import torch

    from vitron_rt.models.source import from_preset
    from vitron_rt.models.llm import greedy_generate

    ref = from_preset("tiny")
    ids = _chat_ids(tiny, "Hello there, tiny model!")
    eos = tiny.tokenizer.eos_token_id
    with torch.no_grad():
        want = greedy_generate(ref.components["llm_decoder"], ref.components["embed_tokens"], ids, 40, eos)
    params = SamplingParams(greedy=True, max_new_tokens=40)
    got = tiny.generator.generate(ids, params)
    assert isinstance(tiny.generator.new_cache(), OrtKvCache)
    assert got.token_ids == want
    # The engine-neutral path (plain infer, numpy past) decodes the same tokens.
    host = tiny.generator.generate(ids, params, cache=HostKvCache(tiny.runner("llm_decoder"), tiny.manifest.llm, 512))
    assert host.token_ids == want


@pytest.fixture(scope="module")
def hf_smollm2(smollm2_path):
    """transformers' LlamaForCausalLM over the same GGUF (fp32), loaded once (~20 s)."""
    import torch
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(
        str(smollm2_path.parent), gguf_file=smollm2_path.name, torch_dtype=torch.float32
    ).eval()


def test_smollm2_greedy_equals_transformers(smol, hf_smollm2):
    import torch

    ids = _chat_ids(smol)
    n = 24
    got = smol.generator.generate(ids, SamplingParams(greedy=True, max_new_tokens=n))
    eos = smol.tokenizer.eos_token_id
    with torch.no_grad():
        out = hf_smollm2.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.int64),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    want = out[0, len(ids) :].tolist()
    assert got.token_ids == want
    assert "Paris" in got.text
    assert got.finish_reason == "eos" and got.token_ids[-1] == eos
    assert got.usage.prompt_tokens == len(ids) and got.usage.completion_tokens == len(want)
    assert set(got.timings_ms) == {"prefill", "decode"} and got.decode_tokens_per_s > 0


# --------------------------------------------------------------------------- sampling, stop, streaming


def test_sampling_options_reach_the_sampler(tiny, monkeypatch):
    ids = _chat_ids(tiny, "Tell me a story")
    gen = tiny.generator

    def run(**kw):
        return gen.generate(ids, SamplingParams(max_new_tokens=24, **kw)).token_ids

    seeded = run(seed=7, temperature=1.3, top_k=40, top_p=0.9)
    assert seeded == run(seed=7, temperature=1.3, top_k=40, top_p=0.9)  # reproducible
    assert seeded != run(seed=8, temperature=1.3, top_k=40, top_p=0.9)
    greedy = run(greedy=True)
    assert run(top_k=1, seed=3) == greedy  # top-k 1 samples the argmax
    assert run(temperature=0.0, seed=3) == greedy
    # The tiny model repeats one token greedily; a repetition penalty breaks the run.
    assert len(set(greedy)) == 1 and len(set(run(greedy=True, repetition_penalty=3.0))) > 1

    seen = []
    real = generate_mod.Sampler

    class Spy(real):
        def __init__(self, params, vocab_size, prompt_ids=()):
            seen.append((params, vocab_size, list(prompt_ids)))
            super().__init__(params, vocab_size, prompt_ids)

    monkeypatch.setattr(generate_mod, "Sampler", Spy)
    params = SamplingParams(temperature=0.5, top_k=7, top_p=0.8, repetition_penalty=1.2, seed=1, max_new_tokens=3)
    gen.generate(ids, params)
    assert seen == [(params, tiny.manifest.llm.vocab_size, ids)]


def test_stop_strings_cut_the_text_and_end_generation(tiny):
    ids = _chat_ids(tiny, "Say something")
    base = SamplingParams(seed=11, max_new_tokens=40)
    full = tiny.generator.generate(ids, base)
    assert full.finish_reason == "length" and len(full.text) > 12
    stop = full.text[8:11]
    cut = full.text.find(stop)
    r = tiny.generator.generate(ids, SamplingParams(seed=11, max_new_tokens=40, stop=(stop,)))
    assert r.finish_reason == "stop"
    assert r.text == full.text[:cut]
    assert r.token_ids == full.token_ids[: len(r.token_ids)] and len(r.token_ids) < len(full.token_ids)


def test_smollm2_stop_string(smol):
    r = smol.generator.generate(_chat_ids(smol), SamplingParams(greedy=True, max_new_tokens=24, stop=(" Paris",)))
    assert r.finish_reason == "stop" and r.text == "The capital of France is"


def test_streamed_deltas_join_to_the_text(tiny, smol):
    for session, prompt in ((tiny, "Stream this"), (smol, QUESTION)):
        ids = _chat_ids(session, prompt)
        generation = session.generator.stream(ids, SamplingParams(seed=5, max_new_tokens=20))
        deltas = list(generation)
        result = generation.result
        assert "".join(deltas) == result.text and all(deltas)
        if result.finish_reason == "length":
            assert result.text == session.tokenizer.decode(result.token_ids)


def test_prompt_past_the_context_is_refused(tiny):
    limit = tiny.manifest.llm.max_position_embeddings
    ids = _chat_ids(tiny, "x" * limit)
    with pytest.raises(ContextLengthError) as e:
        tiny.generator.stream(ids, SamplingParams(greedy=True))
    assert e.value.tokens == len(ids) and e.value.limit == limit and "\n" not in str(e.value)
    # A configured limit below the model's is honoured the same way.
    with Session(tiny.bundle.root, options=TEST_OPTIONS, verify=False, context_limit=32) as small:
        with pytest.raises(ContextLengthError, match="context holds 32"):
            small.run("a prompt far longer than thirty-two positions, with its template")


def test_generation_stops_when_the_context_is_full(tiny):
    ids = _chat_ids(tiny, "fill")
    with Session(tiny.bundle.root, options=TEST_OPTIONS, verify=False, context_limit=len(ids) + 3) as s:
        r = s.generator.generate(ids, SamplingParams(greedy=True, max_new_tokens=50))
    assert r.finish_reason == "context" and r.usage.completion_tokens == 4  # 1 from prefill + 3 fed


# --------------------------------------------------------------------------- the KV cache


def test_kv_cache_steps_equal_one_prefill(tiny):
    """Prefill + decode steps through the bound cache give the hidden states and logits of
    one prefill over the whole sequence; a look-ahead step and a truncation leave the
    cache as if they had not happened."""
    gen, llm = tiny.generator, tiny.manifest.llm
    ids = _chat_ids(tiny, "cache")
    extra = [70, 71, 72]
    full = HostKvCache(tiny.runner("llm_decoder"), llm, 512).forward(gen.embedder.embed(ids + extra))
    want_hidden, want_logits = full.hidden.copy(), full.logits.copy()

    cache = gen.new_cache()
    cache.forward(gen.embedder.embed(ids))
    ahead = cache.forward(gen.embedder.embed(extra), commit=False).hidden.copy()
    np.testing.assert_allclose(ahead, want_hidden[len(ids) :], atol=1e-5)
    assert cache.length == len(ids)
    rows = []
    for t in extra:
        out = cache.forward(gen.embedder.embed_one(t))
        rows.append(out.hidden[0].copy())
    np.testing.assert_allclose(np.stack(rows), want_hidden[len(ids) :], atol=1e-5)
    np.testing.assert_allclose(out.logits, want_logits, atol=1e-4)
    # One-token steps write into the same preallocated logits buffer every time.
    again = cache.forward(gen.embedder.embed_one(73))
    assert np.shares_memory(again.logits, out.logits)

    cache.truncate(len(ids) + 1)
    redo = cache.forward(gen.embedder.embed(extra[1:]))
    np.testing.assert_allclose(redo.hidden, want_hidden[len(ids) + 1 :], atol=1e-5)
    assert cache.length == len(ids) + 3
    with pytest.raises(ContextLengthError):
        cache.forward(np.zeros((1, cache.free + 1, llm.hidden_size), np.float32))


def test_custom_sampler_and_hidden_recording(tiny):
    """`record_hidden` keeps the state of chosen ids once they are fed back."""
    ids = _chat_ids(tiny, "record")
    forced = [65, 66, 67, 2]

    class Forced(Sampler):
        def next_token(self, logits):
            token = forced[self._n]
            self._n += 1
            return token

    s = Forced(SamplingParams(), tiny.manifest.llm.vocab_size)
    s._n = 0
    r = tiny.generator.generate(ids, SamplingParams(max_new_tokens=10), sampler=s, record_hidden={66, 67})
    assert r.token_ids == forced and r.finish_reason == "eos"
    assert sorted(r.hidden) == [1, 2]
    gen = tiny.generator
    full = HostKvCache(tiny.runner("llm_decoder"), tiny.manifest.llm, 512).forward(gen.embedder.embed(ids + forced[:3]))
    np.testing.assert_allclose(np.stack([r.hidden[1], r.hidden[2]]), full.hidden[len(ids) + 1 :], atol=1e-5)
