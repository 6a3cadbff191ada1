"""Which implementation the kernels' calls run on: CUDA when this machine can, else the
CPU path (OpenCV and numpy), picked once per process by `backend()`.

    VITRON_KERNELS=auto (default)   CUDA if cuda-python, a driver, a GPU and device code
                                    (fatbinary or NVRTC) are all there, else CPU; the
                                    reason is kept in `backend_reason()` and logged
    VITRON_KERNELS=cpu              the CPU path, always
    VITRON_KERNELS=cuda             CUDA or a KernelUnavailable error saying why not

Both backends have the same numpy-in, numpy-out methods, and their results agree within
the tolerances stated by each reference module (bit for bit for the preprocess with the
Pillow filters, the gather and greedy tokens; 1 level of the 8-bit resize for LINEAR;
float32 rounding of the mask logits; see the modules).
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from vitron_rt.kernels.errors import KernelError, KernelUnavailable
from vitron_rt.kernels.gather import gather_reference
from vitron_rt.kernels.masks import MaskGeometry, check_frame, overlay_cpu, upsample_cpu
from vitron_rt.kernels.preprocess import PixelFormat, PreprocessSpec, preprocess_cpu
from vitron_rt.kernels.sampling import TokenSampling, sample_rows_reference

ENV_BACKEND = "VITRON_KERNELS"
CHOICES = ("auto", "cpu", "cuda")
log = logging.getLogger("vitron_rt.kernels")


@dataclass(frozen=True)
class MaskResult:
    """A mask postprocess's answer: the (H, W) bool mask and how many pixels are set."""

    mask: np.ndarray
    pixels: int


class Backend(ABC):
    """The kernels' host-facing calls (numpy in, numpy out)."""

    name: str

    @abstractmethod
    def preprocess(
        self, frame: np.ndarray, spec: PreprocessSpec, fmt: PixelFormat = PixelFormat.RGB, out: np.ndarray | None = None
    ) -> np.ndarray:
        """frame -> (3, S, S) `spec.dtype` encoder input (into `out` when given)."""

    @abstractmethod
    def mask_postprocess(
        self,
        logits: np.ndarray,
        geom: MaskGeometry,
        threshold: float = 0.0,
        frame: np.ndarray | None = None,
        color: tuple[int, int, int] = (0, 0, 0),
        alpha: float = 0.0,
    ) -> MaskResult:
        """Low-res logits -> (H, W) mask; `color` blended into `frame` in place under it."""

    @abstractmethod
    def overlay(self, frame: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], alpha: float) -> None:
        """Blend `color` into `frame` (H, W, 3) uint8 in place where `mask` is set."""

    @abstractmethod
    def sample_tokens(
        self, logits: np.ndarray, u: np.ndarray, params: TokenSampling, seen: np.ndarray | None = None
    ) -> np.ndarray:
        """(B, V) logits and (B,) uniform numbers -> (B,) int32 tokens."""

    @abstractmethod
    def gather_rows(self, src: np.ndarray, rows: np.ndarray, dtype: str = "float32") -> np.ndarray:
        """(N, D) -> (n, D) of `dtype`: the rows `rows` of `src`."""


class CpuKernels(Backend):
    """OpenCV and numpy: the runtime's own CPU arithmetic."""

    name = "cpu"

    def preprocess(
        self, frame: np.ndarray, spec: PreprocessSpec, fmt: PixelFormat = PixelFormat.RGB, out: np.ndarray | None = None
    ) -> np.ndarray:
        return preprocess_cpu(frame, spec, fmt, out)

    def mask_postprocess(
        self,
        logits: np.ndarray,
        geom: MaskGeometry,
        threshold: float = 0.0,
        frame: np.ndarray | None = None,
        color: tuple[int, int, int] = (0, 0, 0),
        alpha: float = 0.0,
    ) -> MaskResult:
        mask = upsample_cpu(logits, geom) > np.float32(threshold)
        if frame is not None:
            overlay_cpu(check_frame(frame, geom.frame_hw), mask, color, alpha)
        return MaskResult(mask, int(np.count_nonzero(mask)))

    def overlay(self, frame: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], alpha: float) -> None:
        overlay_cpu(check_frame(frame, np.shape(mask)), mask, color, alpha)

    def sample_tokens(
        self, logits: np.ndarray, u: np.ndarray, params: TokenSampling, seen: np.ndarray | None = None
    ) -> np.ndarray:
        return sample_rows_reference(logits, u, params, seen)

    def gather_rows(self, src: np.ndarray, rows: np.ndarray, dtype: str = "float32") -> np.ndarray:
        return gather_reference(src, rows, dtype)


_lock = threading.Lock()
_chosen: Backend | None = None
_reason = ""


def _select() -> tuple[Backend, str]:
    choice = os.environ.get(ENV_BACKEND, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"{ENV_BACKEND} must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "cpu":
        return CpuKernels(), f"{ENV_BACKEND}=cpu"
    from vitron_rt.kernels.device import CudaKernels

    try:
        cuda = CudaKernels().activate()
    except (KernelUnavailable, KernelError) as e:  # a GPU in a bad state is "no GPU" for auto
        if choice == "cuda":
            raise
        return CpuKernels(), str(e)
    return cuda, f"CUDA on {cuda.device_name} (sm_{cuda.capability[0]}{cuda.capability[1]})"


def backend() -> Backend:
    """The process's backend, chosen at the first call (see the module docstring)."""
    global _chosen, _reason
    with _lock:
        if _chosen is None:
            _chosen, _reason = _select()
            log.info("kernels: %s backend (%s)", _chosen.name, _reason)
        return _chosen


def backend_reason() -> str:
    """Why the current backend was chosen (empty before the first `backend()` call)."""
    return _reason


@contextmanager
def use_backend(chosen: Backend) -> Iterator[Backend]:
    """Run a block with `chosen` as the backend (tests, benchmarks comparing the two)."""
    global _chosen, _reason
    with _lock:
        previous = (_chosen, _reason)
        _chosen, _reason = chosen, f"set by use_backend ({chosen.name})"
    try:
        yield chosen
    finally:
        with _lock:
            _chosen, _reason = previous
