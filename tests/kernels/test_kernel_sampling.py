"""The sampling kernel's reference against the runtime's own sampler: given the same
uniform number u, the same token (the runtime draws u from its seeded generator)."""

from __future__ import annotations

import numpy as np
import pytest

from vitron_rt.kernels.sampling import TokenSampling, draw_margin, sample_reference, sample_rows_reference
from vitron_rt.runtime.sampling import Sampler, SamplingParams

RNG = np.random.default_rng(17)
PARAMS = [
    dict(greedy=True),
    dict(temperature=0.0),
    dict(temperature=1.0, top_k=0),
    dict(temperature=0.7, top_k=50),
    dict(temperature=1.3, top_k=5, top_p=0.9),
    dict(temperature=1.0, top_k=0, top_p=0.5),
    dict(temperature=0.9, top_k=1),
    dict(temperature=1.0, top_k=40, repetition_penalty=1.3),
    dict(greedy=True, repetition_penalty=2.0),
]


@pytest.mark.parametrize("kw", PARAMS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("vocab", [7, 300, 49152])
def test_reference_picks_the_runtime_samplers_token(kw, vocab):
    for trial in range(8):
        logits = (RNG.standard_normal(vocab) * 3).astype(np.float32)
        logits[RNG.integers(0, vocab, 3)] = logits.max()  # ties at the top
        prompt = RNG.integers(0, vocab, 12)
        seed = int(RNG.integers(0, 2**31))
        runtime = Sampler(SamplingParams(seed=seed, **kw), vocab, prompt).next_token(logits)
        u = np.random.default_rng(seed).random()
        draw = sample_reference(logits, u, TokenSampling(**kw), seen=prompt)
        assert draw.token == runtime, (trial, kw)
        assert 0.0 <= draw_margin(draw, kw.get("top_p", 1.0)) <= 1.0


def test_draw_order_is_index_order_without_top_p_and_ascending_with_it():
    logits = np.log(np.array([0.1, 0.5, 0.4], dtype=np.float32))
    # Index order: cumulative 0.1, 0.6, 1.0; u = 0.55 lands on index 1.
    assert sample_reference(logits, 0.55, TokenSampling()).token == 1
    # top_p = 0.95 keeps all three, in ascending order 0, 2, 1: cumulative 0.1, 0.5, 1.0.
    assert sample_reference(logits, 0.55, TokenSampling(top_p=0.95)).token == 1
    assert sample_reference(logits, 0.45, TokenSampling(top_p=0.95)).token == 2
    # top_p = 0.5 drops the ascending prefix with cumulative <= 0.5: tokens 0 and 2.
    assert sample_reference(logits, 0.99, TokenSampling(top_p=0.5)).token == 1


def test_greedy_takes_the_first_of_equal_maxima_and_nan_like_numpy():
    logits = np.array([1.0, 3.0, 3.0, -np.inf], dtype=np.float32)
    assert sample_reference(logits, 0.9, TokenSampling(greedy=True)).token == 1
    with_nan = np.array([1.0, np.nan, 3.0], dtype=np.float32)
    assert sample_reference(with_nan, 0.5, TokenSampling(greedy=True)).token == int(np.argmax(with_nan))


def test_nothing_to_sample_from_is_an_error():
    for bad in ([-np.inf, -np.inf], [0.0, np.nan], [np.inf, 0.0]):
        with pytest.raises(ValueError, match="no finite value"):
            sample_reference(np.array(bad, np.float32), 0.5, TokenSampling())


def test_rows_and_parameter_checks():
    logits = RNG.standard_normal((4, 50)).astype(np.float32)
    u = RNG.random(4)
    got = sample_rows_reference(logits, u, TokenSampling(top_k=10))
    assert got.dtype == np.int32 and got.shape == (4,)
    assert [sample_reference(logits[i], u[i], TokenSampling(top_k=10)).token for i in range(4)] == got.tolist()
    with pytest.raises(ValueError, match="one u per row"):
        sample_rows_reference(logits, u[:3], TokenSampling())
    for bad in (dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5), dict(repetition_penalty=0)):
        with pytest.raises(ValueError):
            TokenSampling(**bad)
