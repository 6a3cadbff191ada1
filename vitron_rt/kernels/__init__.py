"""CUDA pre/post-processing kernels for the video path, with numpy references and a CPU path.

    preprocess        uint8 frame (RGB, BGR, NV12) -> resize -> crop/pad -> normalise
                      -> (3, S, S) fp32/fp16, in one pass         preprocess.py, csrc/preprocess.cu
    mask_postprocess  low-res mask logits -> bilinear to the frame -> threshold -> mask,
                      overlay blended into the frame in place     masks.py, csrc/mask.cu
    overlay           the blend alone, for a mask that exists      masks.py, csrc/mask.cu
    sample_tokens     logits -> greedy / temperature / top-k / top-p token, one int32
                      per sequence to the host                     sampling.py, csrc/sampling.cu
    gather_rows       signal-token hidden states -> the projector's input
                                                                   gather.py, csrc/gather.cu

The calls here take and return numpy arrays and run on `backend()`: CUDA where a GPU,
cuda-python and device code are present (device.py; device code from the CMake build or
NVRTC, loader.py), the CPU path otherwise (OpenCV and numpy). The CUDA backend's `*_into`
methods take device pointers and a stream instead, for buffers that never leave the GPU.

This package imports nothing from the rest of vitron_rt (DESIGN.md, "Who may import
whom"); cuda-python is imported only when the CUDA backend is first used.
"""

from __future__ import annotations

import numpy as np

from vitron_rt.kernels.backends import (
    Backend,
    CpuKernels,
    MaskResult,
    backend,
    backend_reason,
    use_backend,
)
from vitron_rt.kernels.errors import KernelError, KernelUnavailable
from vitron_rt.kernels.gather import signal_rows
from vitron_rt.kernels.masks import MaskGeometry
from vitron_rt.kernels.preprocess import (
    Filter,
    Fit,
    PixelFormat,
    Placement,
    PreprocessSpec,
    fit_longest_side,
    fit_shortest_side,
    placement,
)
from vitron_rt.kernels.sampling import TokenSampling


def preprocess(
    frame: np.ndarray, spec: PreprocessSpec, fmt: PixelFormat = PixelFormat.RGB, out: np.ndarray | None = None
) -> np.ndarray:
    """frame -> (3, S, S) `spec.dtype` encoder input, into `out` when given."""
    return backend().preprocess(frame, spec, fmt, out)


def mask_postprocess(
    logits: np.ndarray,
    geom: MaskGeometry,
    threshold: float = 0.0,
    frame: np.ndarray | None = None,
    color: tuple[int, int, int] = (0, 0, 0),
    alpha: float = 0.0,
) -> MaskResult:
    """Low-res mask logits -> (H, W) bool mask at `geom.frame_hw` (logit > threshold);
    with `frame`, `color` is alpha-blended into it in place under the mask."""
    return backend().mask_postprocess(logits, geom, threshold, frame, color, alpha)


def overlay(frame: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], alpha: float) -> None:
    """Blend `color` into `frame` (H, W, 3) uint8 in place where `mask` (H, W) is set."""
    backend().overlay(frame, mask, color, alpha)


def sample_tokens(
    logits: np.ndarray, u: np.ndarray, params: TokenSampling, seen: np.ndarray | None = None
) -> np.ndarray:
    """(B, V) logits, (B,) uniform numbers in [0, 1) from the host's generator -> (B,)
    int32 tokens; `seen` (B, n) ids (-1 pads) feed the repetition penalty."""
    return backend().sample_tokens(logits, u, params, seen)


def gather_rows(src: np.ndarray, rows: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """(N, D) -> (n, D) of `dtype`: rows `rows` of `src` (see `signal_rows`)."""
    return backend().gather_rows(src, rows, dtype)


__all__ = [
    "Backend",
    "CpuKernels",
    "Filter",
    "Fit",
    "KernelError",
    "KernelUnavailable",
    "MaskGeometry",
    "MaskResult",
    "PixelFormat",
    "Placement",
    "PreprocessSpec",
    "TokenSampling",
    "backend",
    "backend_reason",
    "fit_longest_side",
    "fit_shortest_side",
    "gather_rows",
    "mask_postprocess",
    "overlay",
    "placement",
    "preprocess",
    "sample_tokens",
    "signal_rows",
    "use_backend",
]
