"""Next-token choice and stop handling for the decode loop, in numpy.

    logits (V,) ─► repetition penalty (over every token seen: prompt + generated)
                ├─ greedy: argmax
                └─ sample: / temperature ─► top-k ─► top-p ─► softmax ─► draw (seeded)

The order and each step's semantics are transformers' `generate` (the
RepetitionPenalty, Temperature, TopK and TopP logits processors), so a bundle samples
from the distribution its users know; the tests check the kept tokens and the processed
logits against those processors. Per token the sampler works in one preallocated (V,)
buffer; only top-k's partition and the (k,) candidate arrays are allocated.

`StopChecker` ends generation on an EOS id or a stop string, finds a stop string split
across tokens, and keeps it (and anything after it) out of the streamed text.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from vitron_rt.runtime.errors import SamplingError


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. Defaults are transformers' sampling defaults (temperature 1,
    top-k 50, top-p 1), which users of `generate(do_sample=True)` expect.

    `greedy=True` or `temperature=0` picks the argmax (the repetition penalty still
    applies, as in transformers' greedy search). `top_k=0` and `top_p=1` switch those
    filters off; `repetition_penalty=1` switches the penalty off. `stop` strings end
    generation and are cut from the text; `seed` makes sampling reproducible (None:
    fresh entropy per request).
    """

    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = field(default=())
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if not isinstance(self.greedy, bool):
            raise SamplingError(f"greedy must be true or false, got {self.greedy!r}")
        _check_number("temperature", self.temperature, lo=0.0)
        _check_int("top_k", self.top_k, lo=0)
        _check_number("top_p", self.top_p, lo=0.0, lo_open=True, hi=1.0)
        _check_number("repetition_penalty", self.repetition_penalty, lo=0.0, lo_open=True)
        _check_int("max_new_tokens", self.max_new_tokens, lo=1)
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise SamplingError(f"stop strings must be non-empty text, got {s!r}")
        if self.seed is not None:
            _check_int("seed", self.seed, lo=0)

    @property
    def do_sample(self) -> bool:
        """False when the argmax is taken (greedy, or temperature 0)."""
        return not self.greedy and self.temperature > 0.0


def _check_number(name: str, value, lo: float, hi: float | None = None, lo_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SamplingError(f"{name} must be a finite number, got {value!r}")
    if value < lo or (lo_open and value == lo) or (hi is not None and value > hi):
        lo_s = f"> {lo:g}" if lo_open else f">= {lo:g}"
        hi_s = "" if hi is None else f" and <= {hi:g}"
        raise SamplingError(f"{name} must be {lo_s}{hi_s}, got {value!r}")


def _check_int(name: str, value, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SamplingError(f"{name} must be a whole number, got {value!r}")
    if value < lo:
        raise SamplingError(f"{name} must be >= {lo}, got {value!r}")


# --------------------------------------------------------------------------- the steps, one by one


def apply_repetition_penalty(logits: np.ndarray, token_ids: np.ndarray, penalty: float) -> None:
    """In place, over the distinct `token_ids`: positive logits / penalty, others * penalty
    (transformers' RepetitionPenaltyLogitsProcessor, CTRL's rule). logits (V,)."""
    if penalty == 1.0 or token_ids.size == 0:
        return
    p = logits.dtype.type(penalty)
    vals = logits[token_ids]  # (n,)
    logits[token_ids] = np.where(vals < 0, vals * p, vals / p)


def top_k_threshold(logits: np.ndarray, k: int) -> float:
    """The k-th largest logit; top-k keeps every logit >= it (ties included, as transformers)."""
    v = logits.shape[-1]
    return float(np.partition(logits, v - k)[v - k])


def top_p_keep(sorted_logits: np.ndarray, top_p: float) -> int:
    """How many of the largest logits top-p keeps, given the candidates sorted ascending.

    transformers' TopPLogitsWarper: drop the tokens whose ascending cumulative probability
    is <= 1 - top_p, always keeping the most likely one. Returned as the count kept from
    the top end, so the caller slices `sorted[-n:]`.
    """
    z = sorted_logits.astype(np.float64)
    probs = np.exp(z - z[-1])
    probs /= probs.sum()
    drop = np.cumsum(probs) <= (1.0 - top_p)  # (n,), a prefix of True then False
    drop[-1] = False
    return int(sorted_logits.shape[0] - np.count_nonzero(drop))


# --------------------------------------------------------------------------- the sampler


class Sampler:
    """Chooses each next token for one sequence; remembers the tokens seen so far (prompt
    and generated) for the repetition penalty, and owns the seeded generator.

    Usage: `s = Sampler(params, vocab_size, prompt_ids)`, then `tok = s.next_token(logits)`
    once per step; `next_token` records the token it returns.
    """

    def __init__(self, params: SamplingParams, vocab_size: int, prompt_ids: Iterable[int] = ()):
        if vocab_size < 1:
            raise SamplingError(f"vocab_size must be positive, got {vocab_size}")
        self.params = params
        self.vocab_size = vocab_size
        self.rng = np.random.default_rng(params.seed)
        self._work = np.empty(vocab_size, dtype=np.float32)  # (V,) the processed logits
        self._seen_mask = np.zeros(vocab_size, dtype=bool)  # (V,)
        self._seen = np.empty(64, dtype=np.int64)  # distinct seen ids, grown by doubling
        self._n_seen = 0
        self.observe(prompt_ids)

    # -- seen tokens

    def observe(self, token_ids: Iterable[int]) -> None:
        """Record tokens as seen; ids outside the vocabulary are ignored."""
        ids = token_ids if isinstance(token_ids, np.ndarray) else np.fromiter(token_ids, dtype=np.int64)
        for t in ids.reshape(-1).tolist():
            if 0 <= t < self.vocab_size and not self._seen_mask[t]:
                self._seen_mask[t] = True
                if self._n_seen == self._seen.shape[0]:
                    self._seen = np.concatenate([self._seen, np.empty_like(self._seen)])
                self._seen[self._n_seen] = t
                self._n_seen += 1

    @property
    def seen_ids(self) -> np.ndarray:
        """(n,) the distinct ids seen so far, in first-seen order."""
        return self._seen[: self._n_seen]

    # -- one step

    def process(self, logits: np.ndarray) -> np.ndarray:
        """The logits after the repetition penalty and (when sampling) the temperature, as
        the sampler's own (V,) float32 buffer (valid until the next call)."""
        flat = np.asarray(logits).reshape(-1)
        if flat.shape[0] != self.vocab_size:
            raise ValueError(f"logits have {flat.shape[0]} entries, the vocabulary {self.vocab_size}")
        work = self._work
        np.copyto(work, flat, casting="same_kind")
        apply_repetition_penalty(work, self.seen_ids, self.params.repetition_penalty)
        if self.params.do_sample and self.params.temperature != 1.0:
            np.divide(work, np.float32(self.params.temperature), out=work)
        return work

    def distribution(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The candidates and their probabilities after every filter: (n,) int64 token ids
        and (n,) float64 probabilities summing to 1 (tokens outside are impossible).
        Greedy: the argmax with probability 1."""
        work = self.process(logits)
        if not self.params.do_sample:
            return np.array([int(np.argmax(work))], dtype=np.int64), np.ones(1)
        top = float(work.max())
        if not math.isfinite(top):
            raise ValueError("logits hold no finite value to sample from (all -inf or NaN)")
        k = self.params.top_k
        if 0 < k < self.vocab_size:
            cand = np.flatnonzero(work >= top_k_threshold(work, k))  # (n,) n >= k with ties
        else:
            cand = np.flatnonzero(work > -np.inf)
        vals = work[cand]  # (n,)
        if self.params.top_p < 1.0:
            order = np.argsort(vals, kind="stable")  # ascending, like transformers' sort
            n = top_p_keep(vals[order], self.params.top_p)
            keep = order[-n:]
            cand, vals = cand[keep], vals[keep]
        z = vals.astype(np.float64)
        probs = np.exp(z - top)
        probs /= probs.sum()
        return cand, probs

    def next_token(self, logits: np.ndarray) -> int:
        """Pick the next token from (V,) logits (any leading dims of size 1) and record it."""
        if self.params.do_sample:
            cand, probs = self.distribution(logits)
            i = int(np.searchsorted(np.cumsum(probs), self.rng.random() * probs.sum(), side="right"))
            token = int(cand[min(i, cand.shape[0] - 1)])
        else:
            token = int(np.argmax(self.process(logits)))
        self.observe((token,))
        return token


# --------------------------------------------------------------------------- stopping


class StopChecker:
    """Decides when generation ends and which text may be streamed.

    Feed it each token's text delta (from `StreamDecoder`) with the token id; it returns
    the text safe to show now. A suffix that could be the start of a stop string is held
    back until the next delta settles it, so a stop string split across tokens is found
    and never shown. When a stop string appears, the text up to it is released and
    `stopped` becomes True (`reason` "stop", `matched` the string); an EOS id stops with
    reason "eos" and releases what was held. `finish()` releases the rest when generation
    ends for another reason (the token budget). `text` is everything released.
    """

    def __init__(self, stop: Sequence[str] = (), eos_ids: Iterable[int] = ()):
        self.stop = tuple(s for s in stop if s)
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self._hold_max = max((len(s) for s in self.stop), default=1) - 1
        self._held = ""
        self._parts: list[str] = []
        self.stopped = False
        self.reason: str | None = None
        self.matched: str | None = None

    def is_eos(self, token_id: int) -> bool:
        return int(token_id) in self.eos_ids

    def push(self, delta: str, token_id: int | None = None) -> str:
        """One step: the token's text delta (and id). Returns the text to emit now."""
        if self.stopped:
            return ""
        if token_id is not None and self.is_eos(token_id):
            self.stopped, self.reason = True, "eos"
            return self._release(self._held)
        buf = self._held + delta
        hit, hit_at = None, len(buf)
        for s in self.stop:
            i = buf.find(s)
            if i != -1 and i < hit_at:
                hit, hit_at = s, i
        if hit is not None:
            self.stopped, self.reason, self.matched = True, "stop", hit
            self._held = ""
            return self._release(buf[:hit_at])
        keep = self._partial_suffix(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return self._release(buf[: len(buf) - keep])

    def finish(self) -> str:
        """Release the held text when generation ends without EOS or a stop string."""
        if self.stopped:
            return ""
        out, self._held = self._held, ""
        return self._release(out)

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of a stop string."""
        for n in range(min(self._hold_max, len(buf)), 0, -1):
            tail = buf[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0

    def _release(self, text: str) -> str:
        if text:
            self._parts.append(text)
        return text
