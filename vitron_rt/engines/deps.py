"""The optional GPU stack, imported only when a GPU path is asked for.

`import vitron_rt.engines` never imports tensorrt, cuda-python or polygraphy: each GPU
path calls one of the `require_*` functions first, which imports the package or raises a
`MissingDependencyError` whose one-line message names what is missing and how to get it.
The order of `require_trt_stack` is the order a user fixes things in: TensorRT, then
Polygraphy, then cuda-python, then a GPU and its driver.

Written against TensorRT 10.x (the 10.1+ Python API: `device_memory_size_v2`,
`set_device_memory`), cuda-python 12.6+ (`cuda.bindings.runtime`) and Polygraphy 0.49+.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from vitron_rt.engines.errors import MissingDependencyError

GPU_EXTRA = "pip install 'vitron-rt[gpu]' (needs tensorrt, cuda-python, polygraphy) on a machine with an NVIDIA GPU"
ORT_GPU_HINT = "pip install onnxruntime-gpu in place of onnxruntime, on a machine with an NVIDIA GPU and CUDA 12"
# The oldest TensorRT whose Python API this package calls (named I/O tensors,
# execute_async_v3, ExecutionContextAllocationStrategy).
MIN_TENSORRT_MAJOR = 10


def _import(name: str) -> ModuleType:
    """Import `name` by its dotted path (through `sys.modules`, so a test can hide a package
    by setting its entry to None)."""
    return importlib.import_module(name)


def require_tensorrt() -> ModuleType:
    """The `tensorrt` module, version 10 or newer."""
    try:
        trt = _import("tensorrt")
    except ImportError:
        raise MissingDependencyError(f"TensorRT is not installed: {GPU_EXTRA}") from None
    except OSError as e:  # the wheel is there, libnvinfer or libcudart is not
        raise MissingDependencyError(
            f"TensorRT is installed but cannot load its libraries ({e}): {GPU_EXTRA}"
        ) from None
    version = getattr(trt, "__version__", "0")
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    if major < MIN_TENSORRT_MAJOR:
        raise MissingDependencyError(
            f"TensorRT {version} is installed; vitron-rt needs TensorRT {MIN_TENSORRT_MAJOR}.x or newer: {GPU_EXTRA}"
        )
    return trt


def require_polygraphy() -> ModuleType:
    """`polygraphy.backend.trt` (its loaders import tensorrt only when called)."""
    try:
        return _import("polygraphy.backend.trt")
    except ImportError:
        raise MissingDependencyError(f"Polygraphy is not installed: {GPU_EXTRA}") from None


def require_cudart() -> ModuleType:
    """cuda-python's CUDA runtime bindings: `cuda.bindings.runtime` (12.6+), or the older
    `cuda.cudart` layout."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return _import(name)
        except ImportError:
            continue
        except OSError as e:
            raise MissingDependencyError(f"cuda-python is installed but cannot load ({e}): {GPU_EXTRA}") from None
    raise MissingDependencyError(f"cuda-python is not installed: {GPU_EXTRA}")


def require_gpu(cudart: ModuleType | None = None) -> int:
    """The number of CUDA devices (at least 1), or a one-line error saying why there are none:
    no driver, a driver too old for this CUDA runtime, or no device."""
    cudart = cudart or require_cudart()
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess:
        raise MissingDependencyError(
            f"no usable CUDA GPU: cudaGetDeviceCount returned {_error_name(cudart, err)} "
            "(needs an NVIDIA GPU and a driver for CUDA 12 or newer)"
        )
    if count < 1:
        raise MissingDependencyError("no usable CUDA GPU: the driver reports 0 devices")
    return int(count)


def require_trt_stack() -> tuple[ModuleType, ModuleType]:
    """(tensorrt, cudart), after checking TensorRT, cuda-python and a GPU, in that order."""
    trt = require_tensorrt()
    cudart = require_cudart()
    require_gpu(cudart)
    return trt, cudart


def compute_capability(device: int = 0, cudart: ModuleType | None = None) -> tuple[int, int]:
    """(major, minor) of a CUDA device: part of every engine's cache key, since a plan built
    for one architecture does not load on another."""
    cudart = cudart or require_cudart()
    require_gpu(cudart)
    attr = cudart.cudaDeviceAttr
    err, major = cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device)
    err2, minor = cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device)
    if err != cudart.cudaError_t.cudaSuccess or err2 != cudart.cudaError_t.cudaSuccess:
        raise MissingDependencyError(
            f"cannot read CUDA device {device}'s compute capability ({_error_name(cudart, err)})"
        )
    return int(major), int(minor)


def _error_name(cudart: ModuleType, err: object) -> str:
    try:
        _, name = cudart.cudaGetErrorName(err)
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # the name is only decoration on an error already being raised
        return str(err)
