"""Sampling matches transformers' logits processors (kept tokens, processed logits), is
reproducible under a seed, validates its parameters, and stops on EOS or a stop string
split across tokens without showing it."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from vitron_rt.runtime.errors import SamplingError, VitronInputError
from vitron_rt.runtime.sampling import Sampler, SamplingParams, StopChecker, apply_repetition_penalty

V = 1000


def _hf(params: SamplingParams, logits: np.ndarray, seen: np.ndarray, top_p: bool = True) -> np.ndarray:
    """transformers' processed scores for one row, in `generate`'s order (`top_p=False`:
    stop before the top-p warper)."""
    procs = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.do_sample:
        if params.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k:
            procs.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0 and top_p:
            procs.append(TopPLogitsWarper(params.top_p))
    ids = torch.from_numpy(seen.astype(np.int64))[None]
    return procs(ids, torch.from_numpy(logits.copy())[None])[0].numpy()


def _case(seed: int):
    rng = np.random.default_rng(seed)
    scale = rng.choice([0.5, 2.0, 6.0])  # flat to peaked distributions
    logits = (rng.standard_normal(V) * scale).astype(np.float32)
    seen = rng.choice(V, size=rng.integers(0, 60), replace=True)
    return logits, seen


PARAMS = [
    SamplingParams(temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.3),
    SamplingParams(temperature=1.0, top_k=0, top_p=0.5),
    SamplingParams(temperature=1.6, top_k=5, top_p=1.0, repetition_penalty=0.8),
    SamplingParams(temperature=0.3, top_k=0, top_p=0.95, repetition_penalty=1.1),
    SamplingParams(temperature=1.0, top_k=V + 10, top_p=0.999),
    SamplingParams(temperature=1.0, top_k=1),
]


def _name(p: SamplingParams) -> str:
    return f"T{p.temperature}-k{p.top_k}-p{p.top_p}-r{p.repetition_penalty}"


@pytest.mark.parametrize("params", PARAMS, ids=_name)
@pytest.mark.parametrize("seed", range(25))
def test_kept_tokens_and_probabilities_match_transformers(params, seed):
    logits, seen = _case(seed)
    ref = _hf(params, logits, seen)  # (V,) with -inf for removed tokens
    sampler = Sampler(params, V, prompt_ids=seen)
    processed = sampler.process(logits).copy()
    # Penalty and temperature: the same float32 arithmetic (one ulp of slack for a CPU
    # kernel that divides by multiplying with the reciprocal).
    kept_ref = np.isfinite(ref)
    np.testing.assert_allclose(processed[kept_ref], ref[kept_ref], rtol=2e-7, atol=0)
    cand, probs = sampler.distribution(logits)
    ours = np.zeros(V, dtype=bool)
    ours[cand] = True
    differ = np.flatnonzero(ours != kept_ref)
    if differ.size:
        # Only a token on the top-p boundary may differ (transformers' float32 cumsum vs
        # float64 here): its ascending cumulative probability is 1 - top_p to 1e-6.
        before = _hf(params, logits, seen, top_p=False)
        order = np.argsort(before, kind="stable")
        cum = np.cumsum(torch.softmax(torch.from_numpy(before[order]).double(), -1).numpy())
        at = {int(tok): i for i, tok in enumerate(order)}
        for tok in differ:
            assert abs(cum[at[int(tok)]] - (1 - params.top_p)) < 1e-6, f"token {tok} differs off the boundary"
    else:
        ref_probs = torch.softmax(torch.from_numpy(ref).double(), -1).numpy()
        np.testing.assert_allclose(probs, ref_probs[cand], rtol=1e-5, atol=1e-9)
    assert probs.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(10))
def test_greedy_is_the_penalised_argmax(seed):
    logits, seen = _case(seed)
    params = SamplingParams(greedy=True, repetition_penalty=1.5)
    ref = _hf(params, logits, seen)
    assert Sampler(params, V, seen).next_token(logits) == int(np.argmax(ref))
    # temperature 0 is greedy too
    zero_t = SamplingParams(temperature=0.0, repetition_penalty=1.5)
    assert Sampler(zero_t, V, seen).next_token(logits) == int(np.argmax(ref))


def test_repetition_penalty_semantics():
    logits = np.array([2.0, -2.0, 0.0, 4.0], dtype=np.float32)
    apply_repetition_penalty(logits, np.array([0, 1, 2]), 2.0)
    assert logits.tolist() == [1.0, -4.0, 0.0, 4.0]  # >0 divided, <0 multiplied, unseen untouched


def test_generated_tokens_are_penalised_next_step():
    logits = np.zeros(V, dtype=np.float32)
    logits[7] = 3.0
    logits[8] = 2.5
    s = Sampler(SamplingParams(greedy=True, repetition_penalty=2.0), V)
    assert s.next_token(logits) == 7  # 7 is now seen: 3.0 / 2 < 2.5
    assert s.next_token(logits) == 8
    assert s.seen_ids.tolist() == [7, 8]


def test_seeded_sampling_is_reproducible_and_follows_the_distribution():
    logits, _ = _case(3)
    params = SamplingParams(temperature=0.9, top_k=20, top_p=0.95, seed=1234)
    a = [Sampler(params, V).next_token(logits) for _ in range(3)]
    assert len(set(a)) == 1  # a fresh sampler with the same seed draws the same token
    s = Sampler(params, V)  # no repetition penalty: the distribution stays fixed
    draws = np.array([s.next_token(logits) for _ in range(4000)])
    cand, probs = Sampler(params, V).distribution(logits)
    assert set(draws.tolist()) <= set(cand.tolist())
    freq = np.array([(draws == c).mean() for c in cand])
    assert np.abs(freq - probs).max() < 0.03


def test_logits_shapes_and_dtypes():
    logits = np.random.default_rng(0).standard_normal((1, 1, V)).astype(np.float16)
    s = Sampler(SamplingParams(greedy=True), V)
    assert s.next_token(logits) == int(np.argmax(logits.reshape(-1)))
    with pytest.raises(ValueError, match="entries"):
        s.next_token(np.zeros(V + 1, dtype=np.float32))


@pytest.mark.parametrize(
    "kwargs, what",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"stop": ("ok", "")}, "stop"),
        ({"seed": -3}, "seed"),
        ({"greedy": "yes"}, "greedy"),
    ],
)
def test_params_validation(kwargs, what):
    with pytest.raises(SamplingError, match=what) as e:
        SamplingParams(**kwargs)
    assert isinstance(e.value, VitronInputError) and "\n" not in str(e.value)


def test_params_normalise_stop():
    assert SamplingParams(stop="###").stop == ("###",)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")


# --------------------------------------------------------------------------- stopping


def _run(deltas, stop, eos=(), ids=None):
    sc = StopChecker(stop, eos)
    out = []
    for i, d in enumerate(deltas):
        out.append(sc.push(d, None if ids is None else ids[i]))
        if sc.stopped:
            break
    out.append(sc.finish())
    return sc, "".join(out), out


def test_stop_string_split_across_tokens_is_cut():
    sc, text, pieces = _run(["Hello", " wor", "ld", "\n##", "#", " ignored"], ["###"])
    assert text == "Hello world\n" and sc.reason == "stop" and sc.matched == "###" and sc.text == text
    assert "#" not in "".join(pieces)  # the held '##' never reached the stream


def test_held_prefix_is_released_when_it_is_not_a_stop():
    sc, text, pieces = _run(["a#", "#b", "c"], ["###"])
    assert text == "a##bc" and not sc.stopped
    assert pieces[0] == "a"  # '#' held until settled


def test_eos_releases_held_text():
    sc, text, _ = _run(["Hi #", "#", ""], ["###"], eos=[2], ids=[5, 6, 2])
    assert text == "Hi ##" and sc.reason == "eos" and sc.is_eos(2)


def test_earliest_stop_wins():
    sc, text, _ = _run(["xx STOP yy END"], ["END", "STOP"])
    assert text == "xx " and sc.matched == "STOP"


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet="ab#\n", max_size=40),
    st.lists(st.sampled_from(["##", "a#b", "\n\n", "b"]), min_size=1, max_size=3),
    st.data(),
)
def test_streamed_text_is_the_text_before_the_first_stop(full, stops, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(full)), max_size=8)))
    deltas = [full[i:j] for i, j in zip([0] + cuts, cuts + [len(full)])]
    _, text, _ = _run(deltas, stops)
    hits = [full.find(s) for s in stops if s in full]
    assert text == (full[: min(hits)] if hits else full)
