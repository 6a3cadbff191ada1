"""Logits to token on the device: the numpy reference of the sampling kernel.

    logits (V,) ─► repetition penalty (seen ids) ─┬─ greedy: argmax (first on ties)
                                                   └─ / temperature ─► top-k ─► top-p
                                                      ─► draw with u in [0, 1) from the host

The semantics are the runtime sampler's (vitron_rt/runtime/sampling.py, transformers'
processors): float32 logits, top-k keeps ties, top-p sorts ascending and drops the
prefix whose cumulative probability is <= 1 - top_p, the draw walks the candidates in
index order (no top-p) or ascending-probability order (top-p) to the first cumulative
probability above u. Given the same u, `sample_reference` returns the runtime sampler's
token; the host draws u from its seeded generator, so a run stays reproducible when the
choice moves to the device and only one int32 per step crosses back.

The kernel keeps probabilities as 40-bit fixed point (integer sums: the same result
whatever order the threads add in); it can differ from this float64 reference only when
u, or 1 - top_p, falls within about 1e-9 of a cumulative boundary. `draw_margin` gives
that distance for a test to tell such a tie from a bug.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenSampling:
    """How a token is picked (the device kernel's parameters)."""

    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0.0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0.0):
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def do_sample(self) -> bool:
        return not self.greedy and self.temperature > 0.0


@dataclass(frozen=True)
class Draw:
    """What the reference decided: the token, and the candidates in draw order with
    their cumulative probabilities (for margins)."""

    token: int
    candidates: np.ndarray  # (n,) int64, in draw order
    cumulative: np.ndarray  # (n,) float64, the last is 1
    u: float
    top_p_cumulative: np.ndarray | None  # ascending cumulative probabilities top-p cut, or None


def processed_logits(logits: np.ndarray, params: TokenSampling, seen: np.ndarray | None = None) -> np.ndarray:
    """(V,) float32 after the repetition penalty and (when sampling) the temperature."""
    work = np.array(np.asarray(logits).reshape(-1), dtype=np.float32)
    if seen is not None and params.repetition_penalty != 1.0:
        ids = np.unique(np.asarray(seen, dtype=np.int64).reshape(-1))
        ids = ids[(ids >= 0) & (ids < work.shape[0])]
        p = np.float32(params.repetition_penalty)
        vals = work[ids]
        work[ids] = np.where(vals < 0, vals * p, vals / p)
    if params.do_sample and params.temperature != 1.0:
        np.divide(work, np.float32(params.temperature), out=work)
    return work


def sample_reference(
    logits: np.ndarray, u: float, params: TokenSampling, seen: np.ndarray | None = None
) -> Draw:
    """The token for (V,) logits and the host's uniform number `u` in [0, 1)."""
    work = processed_logits(logits, params, seen)
    v = work.shape[0]
    if not params.do_sample:
        token = int(np.argmax(work))
        return Draw(token, np.array([token]), np.ones(1), u, None)
    top = float(work.max())
    if not math.isfinite(top):
        raise ValueError("logits hold no finite value to sample from (all -inf, +inf or NaN)")
    k = params.top_k
    if 0 < k < v:
        threshold = float(np.partition(work, v - k)[v - k])
        cand = np.flatnonzero(work >= threshold)  # (n,) ties kept
    else:
        cand = np.flatnonzero(work > -np.inf)
    vals = work[cand]
    cut = None
    if params.top_p < 1.0:
        order = np.argsort(vals, kind="stable")  # ascending, ties by index
        z = vals[order].astype(np.float64)
        probs = np.exp(z - z[-1])
        probs /= probs.sum()
        cut = np.cumsum(probs)
        drop = cut <= (1.0 - params.top_p)
        drop[-1] = False
        keep = order[int(np.count_nonzero(drop)) :]
        cand, vals = cand[keep], vals[keep]
    probs = np.exp(vals.astype(np.float64) - top)
    probs /= probs.sum()
    cum = np.cumsum(probs)
    i = int(np.searchsorted(cum, u * probs.sum(), side="right"))
    return Draw(int(cand[min(i, cand.shape[0] - 1)]), cand, cum, u, cut)


def draw_margin(draw: Draw, top_p: float) -> float:
    """How far the decision was from flipping: the smallest distance of u from a
    cumulative boundary, and of 1 - top_p from one (when top-p cut)."""
    margin = float(np.min(np.abs(draw.cumulative - draw.u))) if draw.cumulative.size else 1.0
    if draw.top_p_cumulative is not None:
        margin = min(margin, float(np.min(np.abs(draw.top_p_cumulative - (1.0 - top_p)))))
    return margin


def sample_rows_reference(
    logits: np.ndarray, u: np.ndarray, params: TokenSampling, seen: np.ndarray | None = None
) -> np.ndarray:
    """(B, V) logits, (B,) u, optional (B, n) seen ids (-1 pads) -> (B,) int32 tokens."""
    x = np.asarray(logits)
    rows = x.reshape(-1, x.shape[-1])
    uu = np.asarray(u, dtype=np.float64).reshape(-1)
    if uu.shape[0] != rows.shape[0]:
        raise ValueError(f"need one u per row: {rows.shape[0]} rows, {uu.shape[0]} numbers")
    s = None if seen is None else np.asarray(seen).reshape(rows.shape[0], -1)
    return np.array(
        [sample_reference(rows[b], float(uu[b]), params, None if s is None else s[b]).token for b in range(rows.shape[0])],
        dtype=np.int32,
    )
