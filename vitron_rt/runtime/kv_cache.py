"""The decoder's KV cache, and the one decoder step that reads and extends it.

The exported standard graph (`export/specs/llm.py`) takes the past of every layer and
returns the present, one tensor longer by the step's T new positions:

    past k/v ×L (B,Hkv,P,hd) ──► [ Concat(past, new k/v) inside each layer ] ──► present k/v ×L (B,Hkv,P+T,hd)

So ONNX Runtime copies the whole past into a fresh present on every step (the Concat);
that copy is the graph's, and no binding removes it. What this module removes is
everything the Python side would add on top: `OrtKvCache` binds the previous step's
present OrtValues directly as the next step's past (no numpy round trip, no copy), the
attention mask and position ids as pointer views into buffers allocated once per cache,
and the logits and hidden states of a one-token step into (1,1,V) / (1,1,D) buffers
allocated once; only the last logits row is read. Per token the Python side allocates no
tensor memory; ONNX Runtime allocates the L×2 presents (and frees the pasts they replace).

`SharedBufferKvCache` removes the graph's copy too, over the decoder's "ort-gqa" variant
(`export/llm_gqa.py`), whose past and present share one pre-allocated buffer per layer:

    kv buffer ×L (1,Hkv,cap,hd) ──► past_key_values.i.*  ┐ GroupQueryAttention writes
                                ◄── present.i.*          ┘ the T new rows in place

Each buffer is bound as both past and present (allocated when a step first needs more
room than it has, not per step: see `SharedBufferKvCache`); the step's position
comes from the attention mask's width (P+T), a view of the cache's all-ones buffer.
`truncate` only moves `length`, and `commit=False` simply leaves `length` where it was
(the positions written past it are overwritten by the next step). Callers see no
difference: `KvCache.forward` is the one decoder step of prefill and decode alike.

`HostKvCache` is the engine-neutral reference: plain `Runner.infer` with numpy arrays
(every output copied out by the engine, presents fed back as the next past). It serves
engines without an ONNX Runtime session, and it is the baseline the IOBinding path is
measured against.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitron_rt.bundle import LlmInfo
from vitron_rt.engines import EngineError, OrtRunner, Runner
from vitron_rt.runtime.errors import ContextLengthError


@dataclass
class StepOutput:
    """What one decoder step gives back. Both arrays are views into the cache's buffers,
    valid until its next `forward`: copy what must outlive it."""

    logits: np.ndarray  # (V,) the last new position's logits (the next-token distribution)
    hidden: np.ndarray  # (T, D) last-layer hidden states of the step's T new positions


class KvCache(ABC):
    """The KV cache of one sequence (batch 1) over the bundle's `llm_decoder`, and the
    decoder step over it.

    `length` positions are cached (P); `limit` is the most the cache may hold (the
    context: the model's max_position_embeddings, or less if configured). `forward`
    runs the decoder on T new embeddings at positions P..P+T-1 and, when `commit`, makes
    their keys and values part of the cache; `commit=False` runs a look-ahead step (the
    appended signal tokens) that leaves the cache as it was.
    """

    def __init__(self, llm: LlmInfo, limit: int):
        if limit < 1:
            raise ValueError(f"a KV cache needs a positive limit, got {limit}")
        self.llm = llm
        self.limit = int(limit)
        self.length = 0
        # Wall time of the decoder runs, in ms: what `forward` spends inside the engine.
        self.engine_ms = 0.0
        # Positions in 0..limit-1 (int64), and the all-ones attention mask: each step
        # binds a view of their front, so no step allocates either.
        self._positions = np.arange(self.limit, dtype=np.int64)  # (limit,)
        self._mask = np.ones(self.limit, dtype=np.int64)  # (limit,)

    @property
    def free(self) -> int:
        """Positions still available before the context is full."""
        return self.limit - self.length

    def forward(self, embeds: np.ndarray, commit: bool = True) -> StepOutput:
        """One decoder step. `embeds`: (1, T, D) float32, C-contiguous. Raises
        `ContextLengthError` when P + T exceeds the limit (nothing is cut)."""
        if embeds.ndim != 3 or embeds.shape[0] != 1 or embeds.shape[1] < 1:
            raise ValueError(f"embeds must be (1, T, D) with T >= 1, got {embeds.shape}")
        if embeds.shape[2] != self.llm.hidden_size:
            raise ValueError(f"embeds have width {embeds.shape[2]}, the decoder takes {self.llm.hidden_size}")
        t = embeds.shape[1]
        if self.length + t > self.limit:
            raise ContextLengthError(
                f"{self.length + t} positions do not fit the context of {self.limit} ({self.length} cached + {t} new)",
                tokens=self.length + t,
                limit=self.limit,
            )
        embeds = np.ascontiguousarray(embeds, dtype=np.float32)
        start = time.perf_counter()
        out = self._forward(embeds, commit)
        self.engine_ms += (time.perf_counter() - start) * 1e3
        if commit:
            self.length += t
        return out

    def reset(self) -> None:
        """Forget every cached position."""
        self.truncate(0)

    def truncate(self, n: int) -> None:
        """Keep the first `n` positions only (their keys and values depend on nothing
        after them, so the rest of the cache stays exact)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {n}")
        if n != self.length:
            self._truncate(n)
            self.length = n

    @abstractmethod
    def _forward(self, embeds: np.ndarray, commit: bool) -> StepOutput:
        """Run the decoder on (1, T, D) at positions length..length+T-1; when `commit`,
        adopt the presents as the cache (the caller advances `length`)."""

    @abstractmethod
    def _truncate(self, n: int) -> None:
        """Drop every position from `n` on (the caller sets `length`)."""

    def _empty_past(self) -> np.ndarray:
        """(1, Hkv, 0, hd): the past of a first prefill."""
        return np.zeros((1, self.llm.num_kv_heads, 0, self.llm.head_dim), dtype=self.llm.kv_dtype)


class OrtKvCache(KvCache):
    """The standard graph on an ONNX Runtime session, through one IOBinding (see the
    module docstring for what is copied and what is not). The runner must be active
    and stay active while the cache is used."""

    def __init__(self, runner: OrtRunner, llm: LlmInfo, limit: int):
        super().__init__(llm, limit)
        if runner.session is None:
            raise EngineError(f"{runner.name}: the decoder runner must be active to hold a KV cache")
        self._session = runner.session
        self._binding = runner.session.io_binding()
        self._past_names = llm.past_names()
        self._present_names = llm.present_names()
        self._empty = _ortvalue(self._empty_past())
        self._past: list[Any] = [self._empty] * len(self._past_names)
        v, d = llm.vocab_size, llm.hidden_size
        # One-token steps write here; bound once, rebound only after a longer step.
        self._logits1 = np.empty((1, 1, v), dtype=np.float32)  # (1, 1, V)
        self._hidden1 = np.empty((1, 1, d), dtype=np.float32)  # (1, 1, D)
        self._out_t = 0  # T the logits / hidden outputs are bound for (0: none yet)
        self._out_bufs: tuple[np.ndarray, np.ndarray] = (self._logits1, self._hidden1)
        self._embeds: np.ndarray | None = None  # the bound input, kept alive while bound
        # Fix the output order once: logits, hidden, presents (rebinding keeps the slot).
        for name in (llm.logits, llm.hidden_states, *self._present_names):
            self._binding.bind_output(name, "cpu")

    def _bind_outputs(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        if t != self._out_t:
            if t == 1:
                logits, hidden = self._logits1, self._hidden1
            else:  # a prefill: one allocation for the step, not per token
                logits = np.empty((1, t, self.llm.vocab_size), dtype=np.float32)  # (1, T, V)
                hidden = np.empty((1, t, self.llm.hidden_size), dtype=np.float32)  # (1, T, D)
            _bind_array_output(self._binding, self.llm.logits, logits)
            _bind_array_output(self._binding, self.llm.hidden_states, hidden)
            self._out_t, self._out_bufs = t, (logits, hidden)
        return self._out_bufs

    def _forward(self, embeds: np.ndarray, commit: bool) -> StepOutput:
        b, llm = self._binding, self.llm
        p, t = self.length, embeds.shape[1]
        self._embeds = embeds
        b.bind_input(llm.inputs_embeds, "cpu", 0, np.float32, embeds.shape, embeds.ctypes.data)
        b.bind_input(llm.attention_mask, "cpu", 0, np.int64, (1, p + t), self._mask.ctypes.data)
        b.bind_input(llm.position_ids, "cpu", 0, np.int64, (1, t), self._positions.ctypes.data + 8 * p)
        for name, value in zip(self._past_names, self._past):
            b.bind_ortvalue_input(name, value)
        for name in self._present_names:
            b.bind_output(name, "cpu")  # ORT allocates each present (B,Hkv,P+T,hd) afresh
        logits, hidden = self._bind_outputs(t)
        try:
            self._session.run_with_iobinding(b)
        except Exception as e:  # onnxruntime raises its own Fail / RuntimeError types
            raise EngineError(f"{llm.component}: onnxruntime bound run failed: {_first_line(e)}") from e
        if commit:
            self._past = b.get_outputs()[2:]  # the presents, in `_present_names` order
        return StepOutput(logits=logits[0, -1], hidden=hidden[0])

    def _truncate(self, n: int) -> None:
        if n == 0:
            self._past = [self._empty] * len(self._past_names)
            return
        # The standard graph's cache is P-major per head, so a shorter past is a copy.
        self._past = [_ortvalue(np.ascontiguousarray(v.numpy()[:, :, :n])) for v in self._past]


class SharedBufferKvCache(OrtKvCache):
    """The "ort-gqa" variant on an ONNX Runtime session: one (1,Hkv,capacity,hd) OrtValue
    per layer and K/V, bound as both past and present (see the module docstring). Per step
    only the embeddings and the mask view are rebound; nothing is allocated and no past is
    copied. `limit` is capped at the variant's `llm.kv_buffer_length`.

    The buffers hold `capacity` positions, not `limit`: GroupQueryAttention's CPU kernel
    works over the whole buffer length (measured on SmolLM2 decode: +0.5 ms a step, ~4%,
    with 8192 positions against 128), so they start at the first step's need rounded up
    to `GROW` positions and double when a step needs more (one copy of the cached rows;
    a 47-token prompt and 64 new tokens never grow), up to `limit`."""

    GROW = 256  # capacity granularity, in positions

    def __init__(self, runner: OrtRunner, llm: LlmInfo, limit: int):
        if llm.kv_buffer_length is None:
            raise EngineError(f"{llm.component}: the manifest gives no kv_buffer_length for a shared KV buffer")
        super().__init__(runner, llm, min(int(limit), llm.kv_buffer_length))
        self.capacity = 0
        self._arrays: list[np.ndarray] = []  # (1, Hkv, capacity, hd) each, the memory the OrtValues wrap
        self._buffers: list[Any] = []

    def _reserve(self, n: int) -> None:
        """Buffers of at least `n` positions (<= limit), the cached rows carried over."""
        if n <= self.capacity:
            return
        import onnxruntime

        llm = self.llm
        cap = min(self.limit, max(2 * self.capacity, -(-n // self.GROW) * self.GROW))
        shape = (1, llm.num_kv_heads, cap, llm.head_dim)  # (1, Hkv, capacity, hd)
        arrays = [np.empty(shape, dtype=llm.kv_dtype) for _ in self._past_names]
        for old, new in zip(self._arrays, arrays):
            new[:, :, : self.length] = old[:, :, : self.length]
        self._arrays, self.capacity = arrays, cap
        self._buffers = [onnxruntime.OrtValue.ortvalue_from_numpy(a) for a in arrays]  # views, no copy
        for past, present, value in zip(self._past_names, self._present_names, self._buffers):
            self._binding.bind_ortvalue_input(past, value)
            self._binding.bind_ortvalue_output(present, value)  # same slot as OrtKvCache's

    def _forward(self, embeds: np.ndarray, commit: bool) -> StepOutput:
        b, llm = self._binding, self.llm
        p, t = self.length, embeds.shape[1]
        self._reserve(p + t)
        self._embeds = embeds
        b.bind_input(llm.inputs_embeds, "cpu", 0, np.float32, embeds.shape, embeds.ctypes.data)
        b.bind_input(llm.attention_mask, "cpu", 0, np.int64, (1, p + t), self._mask.ctypes.data)  # (1, P+T)
        logits, hidden = self._bind_outputs(t)
        try:
            self._session.run_with_iobinding(b)
        except Exception as e:  # onnxruntime raises its own Fail / RuntimeError types
            raise EngineError(f"{llm.component}: onnxruntime bound run failed: {_first_line(e)}") from e
        return StepOutput(logits=logits[0, -1], hidden=hidden[0])

    def _truncate(self, n: int) -> None:
        pass  # rows from n on are dead: the mask's width hides them, the next step overwrites them


class HostKvCache(KvCache):
    """The cache as numpy arrays over any runner's `infer` (TensorRT, or ONNX Runtime
    without IOBinding): the engine returns every output as a new host array, including
    all T rows of logits, and the presents are fed back as the next past."""

    def __init__(self, runner: Runner, llm: LlmInfo, limit: int):
        super().__init__(llm, limit)
        self._runner = runner
        self._past: list[np.ndarray] = [self._empty_past()] * len(llm.past_names())

    def _forward(self, embeds: np.ndarray, commit: bool) -> StepOutput:
        llm = self.llm
        p, t = self.length, embeds.shape[1]
        feeds = {
            llm.inputs_embeds: embeds,  # (1, T, D)
            llm.attention_mask: self._mask[: p + t].reshape(1, p + t),  # (1, P+T)
            llm.position_ids: self._positions[p : p + t].reshape(1, t),  # (1, T)
            **dict(zip(llm.past_names(), self._past)),  # (1, Hkv, P, hd) each
        }
        out = self._runner.infer(feeds)
        if commit:
            self._past = [out[n] for n in llm.present_names()]  # (1, Hkv, P+T, hd) each
        return StepOutput(logits=out[llm.logits][0, -1], hidden=out[llm.hidden_states][0])

    def _truncate(self, n: int) -> None:
        self._past = [np.ascontiguousarray(v[:, :, :n]) for v in self._past]


def make_kv_cache(
    runner: Runner, llm: LlmInfo, limit: int, io_binding: bool = True, shared_buffer: bool = False
) -> KvCache:
    """The best cache for this decoder runner: `shared_buffer` when the runner holds the
    "ort-gqa" variant, else IOBinding on an ONNX Runtime session, plain `infer` otherwise
    (or when `io_binding=False`, for comparison)."""
    if shared_buffer:
        if not isinstance(runner, OrtRunner):
            raise EngineError(f"{llm.component}: a shared KV buffer needs an ONNX Runtime runner")
        return SharedBufferKvCache(runner, llm, limit)
    if io_binding and isinstance(runner, OrtRunner):
        return OrtKvCache(runner, llm, limit)
    return HostKvCache(runner, llm, limit)


def _ortvalue(array: np.ndarray) -> Any:
    import onnxruntime

    return onnxruntime.OrtValue.ortvalue_from_numpy(array)


def _bind_array_output(binding: Any, name: str, array: np.ndarray) -> None:
    binding.bind_output(name, "cpu", 0, array.dtype.type, array.shape, array.ctypes.data)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())[:500]
