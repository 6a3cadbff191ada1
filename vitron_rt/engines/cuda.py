"""Device buffers, pinned host buffers, streams and events over cuda-python's runtime
bindings (`cuda.bindings.runtime`, cuda-python 12.6+). pycuda is not used.

Importing this module imports no CUDA: the bindings are loaded by the first object that
needs them (through `deps.require_cudart`, so a missing package or GPU is one line).

    with Stream() as stream:
        host = PinnedBuffer(n)                       # page-locked: async copies really overlap
        dev = DeviceBuffer(n)
        host.view(np.float32, shape)[...] = x
        copy_async(dev.ptr, host.ptr, n, stream)     # direction inferred (unified addressing)
        stream.synchronize()
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from vitron_rt.engines.deps import require_cudart, require_gpu
from vitron_rt.engines.errors import EngineError

_CUDART: ModuleType | None = None


def cudart() -> ModuleType:
    """The CUDA runtime bindings, checked once for a usable GPU."""
    global _CUDART
    if _CUDART is None:
        rt = require_cudart()
        require_gpu(rt)
        _CUDART = rt
    return _CUDART


def check(result: Any, what: str) -> Any:
    """Unpack a cuda-python call's `(err, value...)` tuple: the value(s), or one line naming
    the call and the CUDA error."""
    rt = cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        _, name = rt.cudaGetErrorName(err)
        raise EngineError(f"{what} failed: {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class Stream:
    """A non-blocking CUDA stream (it does not synchronise with the legacy default stream)."""

    def __init__(self) -> None:
        rt = cudart()
        self._stream = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    @property
    def handle(self) -> int:
        """The raw `cudaStream_t` as an int, as TensorRT's `execute_async_v3` takes it."""
        return int(self._stream)

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if self._stream is not None:
            check(cudart().cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self._stream = None

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream_handle(stream: Any) -> int:
    """A `Stream`, a cuda-python `cudaStream_t`, or an int handle, as an int handle."""
    if isinstance(stream, Stream):
        return stream.handle
    return int(stream)


class DeviceBuffer:
    """`nbytes` of device memory (cudaMalloc: 256-byte aligned), freed by `free()`."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        # cudaMalloc(0) returns a null pointer, which TensorRT refuses as a tensor address.
        self.ptr: int = int(check(cudart().cudaMalloc(max(self.nbytes, 1)), f"cudaMalloc({self.nbytes})"))

    def free(self) -> None:
        if self.ptr:
            check(cudart().cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class PinnedBuffer:
    """`nbytes` of page-locked host memory (cudaMallocHost), readable as numpy views."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.ptr: int = int(check(cudart().cudaMallocHost(max(self.nbytes, 1)), f"cudaMallocHost({self.nbytes})"))
        self._bytes = np.ctypeslib.as_array((ctypes.c_uint8 * max(self.nbytes, 1)).from_address(self.ptr))

    def view(self, dtype: Any, shape: tuple[int, ...], offset: int = 0) -> np.ndarray:
        """A numpy array over this memory (no copy) of `shape` at byte `offset`."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if offset + nbytes > self.nbytes:
            raise EngineError(f"pinned view of {nbytes} bytes at {offset} exceeds the {self.nbytes}-byte buffer")
        return self._bytes[offset : offset + nbytes].view(dtype).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            self._bytes = np.empty(0, np.uint8)
            check(cudart().cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


@dataclass(frozen=True)
class DeviceArray:
    """A typed view of device memory: what a TensorRT tensor address is bound to."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def copy_async(dst: int, src: int, nbytes: int, stream: Any) -> None:
    """cudaMemcpyAsync with the direction inferred from the pointers (cudaMemcpyDefault,
    which needs unified addressing: every 64-bit CUDA platform has it)."""
    if nbytes <= 0:
        return
    rt = cudart()
    check(
        rt.cudaMemcpyAsync(dst, src, nbytes, rt.cudaMemcpyKind.cudaMemcpyDefault, stream_handle(stream)),
        "cudaMemcpyAsync",
    )


class Event:
    """A CUDA event, for GPU-side timing of work queued on a stream."""

    def __init__(self) -> None:
        self._event = check(cudart().cudaEventCreate(), "cudaEventCreate")

    def record(self, stream: Any) -> None:
        check(cudart().cudaEventRecord(self._event, stream_handle(stream)), "cudaEventRecord")

    def synchronize(self) -> None:
        check(cudart().cudaEventSynchronize(self._event), "cudaEventSynchronize")

    def elapsed_ms(self, start: "Event") -> float:
        """Milliseconds between `start` and this event (both recorded, this one completed)."""
        return float(check(cudart().cudaEventElapsedTime(start._event, self._event), "cudaEventElapsedTime"))

    def close(self) -> None:
        if self._event is not None:
            check(cudart().cudaEventDestroy(self._event), "cudaEventDestroy")
            self._event = None
