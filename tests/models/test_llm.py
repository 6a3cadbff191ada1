"""LlmDecoder, EmbedTokens and greedy_generate against transformers' LlamaForCausalLM.

Tiny seeded decoders (the tiny preset's LLM and variants of it: MHA, untied head, RoPE
scaling) check that the flat explicit-KV signature computes exactly what the library
computes, for prefill (P = 0), decode (P > 0), and a left-padded batch.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vitron_rt.models.config import preset
from vitron_rt.models.llm import EmbedTokens, LlmDecoder, greedy_generate

TINY = preset("tiny").llm  # GQA: 4 query heads over 2 KV heads, tied head

VARIANTS = {
    "gqa-tied": {},
    "mha": {"num_kv_heads": TINY.num_heads},
    "untied": {"tie_word_embeddings": False},
    "rope-linear": {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    "rope-llama3": {
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        }
    },
}
# fp32 on CPU: the wrapper and the library run the same ops, but not always in the same
# order (separate prefill/decode steps), so allow float rounding and nothing more.
ATOL = 1e-5


def _decoder(**changes) -> LlmDecoder:
    torch.manual_seed(0)
    return LlmDecoder.from_config(dataclasses.replace(TINY, **changes)).eval()


def _ids(batch: int, seq: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, TINY.vocab_size, (batch, seq), generator=gen)  # (B, T)


def _step(dec: LlmDecoder, embeds, past_len: int, past):
    b, t = embeds.shape[:2]
    mask = torch.ones(b, past_len + t, dtype=torch.int64)  # (B, P+T)
    pos = torch.arange(past_len, past_len + t).expand(b, t)  # (B, T)
    logits, hidden, *present = dec(embeds, mask, pos, *past)
    return logits, hidden, present


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@torch.no_grad()
def test_prefill_equals_library_forward(variant):
    dec = _decoder(**VARIANTS[variant])
    embed = EmbedTokens(dec.input_embeddings())
    ids = _ids(2, 9)
    logits, hidden, present = _step(dec, embed(ids), 0, dec.empty_past(2))

    ref = dec.model(input_ids=ids, use_cache=True)
    torch.testing.assert_close(logits, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(hidden, dec.model.model(input_ids=ids).last_hidden_state, atol=ATOL, rtol=0)
    assert len(present) == 2 * dec.num_layers
    for i, layer in enumerate(ref.cache.layers):
        assert present[2 * i].shape == (2, dec.num_kv_heads, 9, dec.head_dim)
        torch.testing.assert_close(present[2 * i], layer.keys, atol=ATOL, rtol=0)
        torch.testing.assert_close(present[2 * i + 1], layer.values, atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@torch.no_grad()
def test_prefill_then_decode_equals_full_sequence(variant):
    """Explicit KV: prefill 5 tokens (P = 0), then 4 single-token steps == one 9-token forward."""
    dec = _decoder(**VARIANTS[variant])
    embed = EmbedTokens(dec.input_embeddings())
    ids = _ids(2, 9, seed=2)
    full_logits, full_hidden, full_present = _step(dec, embed(ids), 0, dec.empty_past(2))

    logits, hidden, past = _step(dec, embed(ids[:, :5]), 0, dec.empty_past(2))
    step_logits, step_hidden = [logits], [hidden]
    for t in range(5, 9):
        logits, hidden, past = _step(dec, embed(ids[:, t : t + 1]), t, past)
        assert past[0].shape == (2, dec.num_kv_heads, t + 1, dec.head_dim)
        step_logits.append(logits)
        step_hidden.append(hidden)
    torch.testing.assert_close(torch.cat(step_logits, 1), full_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.cat(step_hidden, 1), full_hidden, atol=ATOL, rtol=0)
    for a, b in zip(past, full_present):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@torch.no_grad()
def test_left_padded_batch_equals_single_rows():
    """A padded row (attention_mask 0, positions counted from its first real token) decodes
    as if it were alone: the runtime batches prompts of different lengths this way."""
    dec = _decoder()
    embed = EmbedTokens(dec.input_embeddings())
    long, short = _ids(1, 7, seed=3)[0], _ids(1, 4, seed=4)[0]
    pad = len(long) - len(short)
    ids = torch.stack([long, torch.cat([torch.zeros(pad, dtype=torch.int64), short])])  # (2, 7)
    mask = torch.ones(2, 7, dtype=torch.int64)
    mask[1, :pad] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (2, 7)
    logits, _, *past = dec(embed(ids), mask, pos, *dec.empty_past(2))
    # one decode step for both rows
    nxt = torch.tensor([[5], [6]])
    mask2 = torch.cat([mask, torch.ones(2, 1, dtype=torch.int64)], 1)  # (2, 8)
    logits2, *_ = dec(embed(nxt), mask2, pos[:, -1:] + 1, *past)

    for row, seq, tok in ((0, long, 5), (1, short, 6)):
        n = len(seq)
        alone, _, alone_past = _step(dec, embed(seq[None]), 0, dec.empty_past(1))
        torch.testing.assert_close(logits[row, -1], alone[0, -1], atol=ATOL, rtol=0)
        alone2, _, _ = _step(dec, embed(torch.tensor([[tok]])), n, alone_past)
        torch.testing.assert_close(logits2[row, -1], alone2[0, -1], atol=ATOL, rtol=0)


def test_rope_scaling_is_in_effect():
    """The RoPE variants are really different models (the config reached the rotary embedding)."""
    ids = _ids(1, 12, seed=5)
    with torch.no_grad():
        base = _decoder().model(input_ids=ids).logits
        for name in ("rope-linear", "rope-llama3"):
            scaled = _decoder(**VARIANTS[name]).model(input_ids=ids).logits
            assert not torch.allclose(base, scaled, atol=1e-4), name


def test_shape_properties_and_names():
    dec = _decoder()
    assert (dec.num_layers, dec.num_heads, dec.num_kv_heads, dec.head_dim) == (2, 4, 2, 16)
    assert (dec.hidden_size, dec.vocab_size) == (TINY.hidden_size, TINY.vocab_size)
    assert dec.kv_names("past") == [
        "past_key_values.0.key",
        "past_key_values.0.value",
        "past_key_values.1.key",
        "past_key_values.1.value",
    ]
    assert dec.kv_names("present") == ["present.0.key", "present.0.value", "present.1.key", "present.1.value"]
    assert dec.input_names() == ["inputs_embeds", "attention_mask", "position_ids", *dec.kv_names("past")]
    assert dec.output_names() == ["logits", "hidden_states", *dec.kv_names("present")]
    with pytest.raises(ValueError, match="kind"):
        dec.kv_names("future")


@torch.no_grad()
def test_dummy_inputs_drive_forward():
    dec = _decoder()
    state = torch.random.get_rng_state()
    inputs = dec.dummy_inputs(batch=3, seq=4, past=6)
    assert torch.equal(state, torch.random.get_rng_state())  # private generator
    assert list(inputs) == dec.input_names()
    assert inputs["inputs_embeds"].shape == (3, 4, TINY.hidden_size)
    assert inputs["attention_mask"].shape == (3, 10) and inputs["attention_mask"].dtype == torch.int64
    assert inputs["position_ids"].tolist() == [[6, 7, 8, 9]] * 3
    assert inputs["past_key_values.1.value"].shape == (3, 2, 6, 16)
    out = dec(*inputs.values())
    assert [tuple(o.shape) for o in out] == [(3, 4, TINY.vocab_size), (3, 4, TINY.hidden_size)] + [(3, 2, 10, 16)] * 4
    assert dec.dummy_inputs(past=0)["past_key_values.0.key"].shape == (1, 2, 0, 16)


def test_forward_checks_past_count():
    dec = _decoder()
    inputs = dec.dummy_inputs()
    args = list(inputs.values())
    with pytest.raises(ValueError, match="expected 4 past tensors"):
        dec(*args[:-1])


def test_embed_tokens_shares_the_table():
    dec = _decoder()
    embed = EmbedTokens(dec.input_embeddings())
    assert embed.embedding is dec.model.model.embed_tokens
    assert embed.embedding.weight is dec.model.lm_head.weight  # tied preset
    ids = _ids(2, 3)
    torch.testing.assert_close(embed(ids), dec.model.model.embed_tokens.weight[ids])


@pytest.mark.parametrize("variant", ["gqa-tied", "untied"])
def test_greedy_generate_equals_library_generate(variant):
    dec = _decoder(**VARIANTS[variant])
    embed = EmbedTokens(dec.input_embeddings())
    prompt = _ids(1, 6, seed=7)[0].tolist()
    ours = greedy_generate(dec, embed, prompt, max_new_tokens=16, eos_token_id=None)
    ref = dec.model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.int64),
        do_sample=False,
        max_new_tokens=16,
        eos_token_id=None,
    )
    assert len(ours) == 16
    assert ours == ref[0, len(prompt) :].tolist()


def test_greedy_generate_stops_at_eos():
    dec = _decoder()
    embed = EmbedTokens(dec.input_embeddings())
    prompt = _ids(1, 6, seed=7)[0].tolist()
    free = greedy_generate(dec, embed, prompt, max_new_tokens=8, eos_token_id=None)
    eos = free[3]
    stop = free.index(eos)  # first occurrence: generation ends there, eos included
    assert greedy_generate(dec, embed, prompt, 8, eos_token_id=eos) == free[: stop + 1]
    assert greedy_generate(dec, embed, prompt, 8, eos_token_id=[-1, eos]) == free[: stop + 1]
    with pytest.raises(ValueError, match="non-empty"):
        greedy_generate(dec, embed, [], 4, eos_token_id=None)


def test_from_config_on_meta_device_builds_vitron_7b_shapes():
    """model.py builds the vitron-7b preset on the meta device: shapes only, no memory."""
    with torch.device("meta"):
        dec = LlmDecoder.from_config(preset("vitron-7b").llm)
    assert (dec.num_layers, dec.num_kv_heads, dec.head_dim, dec.hidden_size) == (32, 32, 128, 4096)
    assert dec.vocab_size == 32006
    assert dec.model.lm_head.weight.is_meta
    assert dec.model.lm_head.weight is not dec.input_embeddings().weight  # Vicuna's head is untied


def test_wraps_only_llama():
    with pytest.raises(TypeError, match="LlamaForCausalLM"):
        LlmDecoder(torch.nn.Linear(2, 2))
