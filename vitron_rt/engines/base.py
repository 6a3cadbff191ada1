"""One runner lifecycle over every engine (Polygraphy's `BaseRunner`, the TensorRT demos'
`Engine`): stages you can hold before they run.

    runner = OrtRunner(path, entry=...)      # cheap: no file read, no session, no GPU
    with runner:                             # activate(): load, create session/context, allocate
        out = runner.infer({"x": x})         # checked against the I/O specs, timed
    # deactivate(): everything released

The public methods live here and do the checks and the timing; an engine fills in
`_activate_impl`, `_infer_impl`, `_deactivate_impl` and `_io_specs_impl`. The I/O specs
come from the manifest's `ComponentEntry` when the runner is given one; a runner built
from a file path alone (as `validate_file` builds them: `runner(path)`) reads them from
the loaded session instead, and checks the same things.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitron_rt.bundle import ComponentEntry, TensorSpec
from vitron_rt.engines.errors import EngineError, InputError, NotActiveError


@dataclass
class Timing:
    """Wall-clock time of a runner's calls, in milliseconds: the last call and the sum."""

    calls: int = 0
    last_ms: float = 0.0
    total_ms: float = 0.0

    def add(self, ms: float) -> None:
        self.calls += 1
        self.last_ms = ms
        self.total_ms += ms

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.calls if self.calls else 0.0


def resolve_dims(inputs: tuple[TensorSpec, ...], feeds: Mapping[str, Any], where: str) -> dict[str, int]:
    """Check `feeds` against `inputs` and return the size of every named dim they use.

    Checked, in order, each failure one line naming the tensor: every name is an input
    and every input is fed; each value is an array (numpy, or anything with `shape` and
    `dtype`, such as a `cuda.DeviceArray`) of the declared dtype and rank;
    fixed dims have their declared size; a dim name has one size across all inputs (the
    manifest's rule: dims with the same name are the same size)."""
    names = [t.name for t in inputs]
    unknown = [n for n in feeds if n not in names]
    if unknown:
        raise InputError(f"{where}: unknown input {unknown[0]!r}; the inputs are {', '.join(names)}")
    missing = [n for n in names if n not in feeds]
    if missing:
        raise InputError(f"{where}: missing input {missing[0]!r}; the inputs are {', '.join(names)}")
    dims: dict[str, int] = {}
    first_seen: dict[str, str] = {}
    for spec in inputs:
        value = feeds[spec.name]
        if not (hasattr(value, "shape") and hasattr(value, "dtype")) or isinstance(value, np.generic):
            raise InputError(f"{where}: input {spec.name!r} is a {type(value).__name__}, expected a numpy array")
        dtype, shape = np.dtype(value.dtype).name, tuple(value.shape)
        if dtype != spec.dtype:
            raise InputError(f"{where}: input {spec.name!r} is {dtype}, expected {spec.dtype}")
        if len(shape) != len(spec.shape):
            raise InputError(
                f"{where}: input {spec.name!r} has rank {len(shape)} {list(shape)}, "
                f"expected rank {len(spec.shape)} {list(spec.shape)}"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, shape)):
            if isinstance(want, int):
                if want != got:
                    raise InputError(
                        f"{where}: input {spec.name!r} axis {axis} is {got}, expected {want} (shape {list(spec.shape)})"
                    )
            elif want in dims and dims[want] != got:
                raise InputError(
                    f"{where}: input {spec.name!r} axis {axis} ({want!r}) is {got}, but {first_seen[want]!r} "
                    f"gives {want!r} = {dims[want]}"
                )
            else:
                dims.setdefault(want, got)
                first_seen.setdefault(want, spec.name)
    return dims


class Runner(ABC):
    """A component's session on one engine, with a cheap constructor and an explicit
    lifecycle. Not thread-safe: one runner serves one caller at a time."""

    #: The engine's name as the CLI spells it ("ort", "trt").
    engine: str = ""

    def __init__(self, path: str | Path, *, entry: ComponentEntry | None = None, name: str | None = None):
        """`path`: the file the engine loads (ONNX model or TensorRT plan). `entry`: the
        component's manifest entry, the source of the I/O specs; without it they are read
        from the loaded session. Does no I/O."""
        self.path = Path(path)
        self.entry = entry
        self.name = name or self.path.stem
        self.timing = Timing()
        self._active = False
        self._inputs: tuple[TensorSpec, ...] | None = entry.inputs if entry is not None else None
        self._outputs: tuple[TensorSpec, ...] | None = entry.outputs if entry is not None else None

    # ----------------------------------------------------------------- lifecycle

    @property
    def is_active(self) -> bool:
        return self._active

    def activate(self) -> "Runner":
        """Load the file, create the session or execution context, allocate buffers.
        A failure releases whatever was created before it and raises."""
        if self._active:
            raise EngineError(f"{self.name}: activate() on a runner that is already active")
        try:
            self._activate_impl()
            self._adopt_io_specs(*self._io_specs_impl())
        except BaseException:
            self._deactivate_impl()
            raise
        self._active = True
        return self

    def deactivate(self) -> None:
        """Release the session, context and buffers. A no-op on an inactive runner, so
        cleanup paths may call it unconditionally."""
        if not self._active:
            return
        self._active = False
        self._deactivate_impl()

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # ----------------------------------------------------------------- inference

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on host arrays; returns every output by name, as arrays the caller owns."""
        self._require_active("infer")
        dims = self.check_feeds(feeds)
        for name, value in feeds.items():
            if not isinstance(value, np.ndarray):
                raise InputError(
                    f"{self.name}: input {name!r} is a {type(value).__name__}; infer() takes host numpy arrays "
                    "(device arrays go through the engine's bind() and infer_async())"
                )
        start = time.perf_counter()
        out = self._infer_impl(dict(feeds), dims)
        self.timing.add((time.perf_counter() - start) * 1e3)
        return out

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
        """Check feeds against the input specs (see `resolve_dims`); returns the named dims."""
        if not isinstance(feeds, Mapping):
            raise InputError(f"{self.name}: feeds must be a mapping of input name to array, got {type(feeds).__name__}")
        return resolve_dims(self.input_specs, feeds, self.name)

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        if self._inputs is None:
            raise NotActiveError(f"{self.name}: the input specs come from the session; activate() the runner first")
        return self._inputs

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        if self._outputs is None:
            raise NotActiveError(f"{self.name}: the output specs come from the session; activate() the runner first")
        return self._outputs

    def _require_active(self, what: str) -> None:
        if not self._active:
            raise NotActiveError(f"{self.name}: {what}() before activate(); use `with runner:` or call activate()")

    def _adopt_io_specs(self, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> None:
        """Take the session's specs when there is no manifest entry; with one, the file must
        have exactly the manifest's tensor names (a file swapped under the manifest is
        caught here, before any feed is checked against the wrong contract)."""
        if self._inputs is None or self._outputs is None:
            self._inputs, self._outputs = inputs, outputs
            return
        for what, declared, loaded in (("inputs", self._inputs, inputs), ("outputs", self._outputs, outputs)):
            want, got = sorted(t.name for t in declared), sorted(t.name for t in loaded)
            if want != got:
                raise EngineError(f"{self.name}: {self.path.name} has {what} {got}, the manifest declares {want}")

    def __repr__(self) -> str:
        state = "active" if self._active else "inactive"
        return f"{type(self).__name__}({str(self.path)!r}, {state})"

    # ----------------------------------------------------------------- engine hooks

    @abstractmethod
    def _activate_impl(self) -> None:
        """Load the file and create the session / context and its buffers."""

    @abstractmethod
    def _io_specs_impl(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """(inputs, outputs) as the loaded session declares them; called after `_activate_impl`."""

    @abstractmethod
    def _infer_impl(self, feeds: dict[str, np.ndarray], dims: dict[str, int]) -> dict[str, np.ndarray]:
        """Run on checked feeds; `dims` holds the size of every named input dim."""

    @abstractmethod
    def _deactivate_impl(self) -> None:
        """Release everything `_activate_impl` created; must tolerate a partial activation."""


class AsyncRunner(Runner):
    """A runner that can also enqueue work on a caller's CUDA stream, over device buffers
    bound beforehand (TensorRT): `infer_async` returns as soon as the work is queued, and
    the caller synchronises the stream when it needs the results."""

    def __init__(self, path: str | Path, *, entry: ComponentEntry | None = None, name: str | None = None):
        super().__init__(path, entry=entry, name=name)
        # Host time spent queueing, not GPU time: the GPU work ends when the stream says so.
        self.enqueue_timing = Timing()

    def infer_async(self, stream: Any) -> None:
        """Enqueue one run on `stream` (a `vitron_rt.engines.cuda.Stream` or a raw
        `cudaStream_t` handle) over the buffers bound with the engine's `bind`."""
        self._require_active("infer_async")
        start = time.perf_counter()
        self._infer_async_impl(stream)
        self.enqueue_timing.add((time.perf_counter() - start) * 1e3)

    @abstractmethod
    def _infer_async_impl(self, stream: Any) -> None:
        """Queue the run on `stream`; buffers and shapes are already bound."""
