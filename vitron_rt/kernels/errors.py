"""The kernels' two failures: the CUDA path cannot be had here (a missing package, no
driver or GPU, no way to get device code), and a CUDA call failed while using it."""

from __future__ import annotations

# What a user installs for the CUDA path (pyproject's `gpu` extra carries cuda-python and
# cuda-core; NVRTC is needed only when no CMake-built fatbinary matches the sources).
GPU_HINT = "pip install 'vitron-rt[gpu]' on a machine with an NVIDIA GPU and driver"
NVRTC_HINT = (
    "build the kernels with CMake (cmake -S . -B build && cmake --build build), "
    "or install NVRTC (pip install nvidia-cuda-nvrtc, or a CUDA toolkit)"
)


class KernelUnavailable(RuntimeError):
    """The CUDA kernels cannot run on this machine; the message says why in one line.
    Automatic backend selection takes this as "use the CPU path"."""


class KernelError(RuntimeError):
    """A CUDA call made by the kernels failed (the message names the call and the error)."""
