"""The CUDA backend without a GPU: a stand-in for cuda-python's driver module whose
kernel launches run the real .cu sources on the CPU (kernel_emulator.cpp, built here
with g++), so `CudaKernels` (argument packing, tables, staging, pitches) runs unchanged.

"Device" memory is host memory: cuMemAlloc returns the address of a ctypes buffer, and
every copy is checked to lie inside one live allocation, so an offset or size slip in
the backend fails loudly instead of corrupting memory. Streams are synchronous.
"""

from __future__ import annotations

import ctypes
import enum
import shutil
import subprocess
from pathlib import Path

from vitron_rt.kernels import loader
from vitron_rt.kernels.signatures import MODULES

EMULATOR_SOURCE = Path(__file__).with_name("kernel_emulator.cpp")


def build_emulator(out_dir: Path) -> ctypes.CDLL:
    """Compile kernel_emulator.cpp with the .cu sources into a shared library."""
    gxx = shutil.which("g++")
    if gxx is None:
        raise FileNotFoundError("g++ is not on PATH")
    lib = out_dir / "kernel_emulator.so"
    subprocess.run(
        [gxx, "-std=c++20", "-O1", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared", "-pthread",
         f"-I{loader.CSRC}", "-o", str(lib), str(EMULATOR_SOURCE)],
        check=True, capture_output=True, text=True,
    )
    emu = ctypes.CDLL(str(lib))
    emu.emu_launch.argtypes = [ctypes.c_char_p] + [ctypes.c_uint] * 6 + [ctypes.c_void_p]
    emu.emu_launch.restype = ctypes.c_int
    return emu


class CUresult(enum.Enum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1
    CUDA_ERROR_NOT_FOUND = 500


OK = CUresult.CUDA_SUCCESS


class FakeDriver:
    """The subset of `cuda.bindings.driver` that vitron_rt.kernels.device calls."""

    CUresult = CUresult
    CUdevice_attribute = enum.Enum(
        "CUdevice_attribute",
        {"CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR": 75, "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR": 76},
    )
    CUstream_flags = enum.Enum("CUstream_flags", {"CU_STREAM_NON_BLOCKING": 1})

    def __init__(self, emulator: ctypes.CDLL, capability: tuple[int, int] = (8, 9)):
        self.emu = emulator
        self.capability = capability
        self.blocks: dict[int, ctypes.Array] = {}
        self.launches: list[str] = []
        self.loaded: list[str] = []

    # device and context
    def cuGetErrorName(self, err):
        return OK, err.name.encode()

    def cuInit(self, flags):
        return (OK,)

    def cuDeviceGetCount(self):
        return OK, 1

    def cuDeviceGet(self, ordinal):
        return OK, ordinal

    def cuDeviceGetAttribute(self, attr, dev):
        major = attr.name.endswith("MAJOR")
        return OK, self.capability[0] if major else self.capability[1]

    def cuDeviceGetName(self, length, dev):
        return OK, b"Emulated CUDA device\0\0"

    def cuDriverGetVersion(self):
        return OK, 13000

    def cuDevicePrimaryCtxRetain(self, dev):
        return OK, object()

    def cuCtxSetCurrent(self, ctx):
        return (OK,)

    def cuCtxSynchronize(self):
        return (OK,)

    # modules
    def cuModuleLoadData(self, image):
        self.loaded.append(bytes(image[:4]).hex())
        return OK, len(self.loaded)

    def cuModuleGetFunction(self, module, name):
        return OK, name.decode()

    def cuLaunchKernel(self, f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra):
        self.launches.append(f)
        rc = self.emu.emu_launch(f.encode(), gx, gy, gz, bx, by, bz, params)
        return (OK,) if rc == 0 else (CUresult.CUDA_ERROR_NOT_FOUND,)

    # memory
    def _alloc(self, n):
        buf = ctypes.create_string_buffer(int(n))
        self.blocks[ctypes.addressof(buf)] = buf
        return OK, ctypes.addressof(buf)

    cuMemAlloc = cuMemAllocHost = _alloc

    def _free(self, ptr):
        if ptr not in self.blocks:
            raise AssertionError(f"free of {ptr:#x}, which is not an allocation")
        del self.blocks[ptr]
        return (OK,)

    cuMemFree = cuMemFreeHost = _free

    def _check_range(self, ptr, n):
        for base, buf in self.blocks.items():
            if base <= ptr and ptr + n <= base + len(buf):
                return
        raise AssertionError(f"{n} bytes at {ptr:#x} are not inside one allocation")

    def _copy(self, dst, src, n, stream=None):
        self._check_range(int(dst), n)
        if int(src) in self.blocks or any(b <= int(src) < b + len(v) for b, v in self.blocks.items()):
            self._check_range(int(src), n)
        ctypes.memmove(int(dst), int(src), n)
        return (OK,)

    cuMemcpyHtoDAsync = cuMemcpyDtoHAsync = _copy

    def cuMemcpyHtoD(self, dst, src, n):
        return self._copy(dst, src, n)

    def cuMemcpyDtoH(self, dst, src, n):
        self._check_range(int(src), n)
        ctypes.memmove(int(dst), int(src), n)
        return (OK,)

    def cuMemsetD8(self, dst, value, n):
        return self.cuMemsetD8Async(dst, value, n, None)

    def cuMemsetD8Async(self, dst, value, n, stream):
        self._check_range(int(dst), n)
        ctypes.memset(int(dst), value, n)
        return (OK,)

    def cuMemcpyDtoDAsync(self, dst, src, n, stream):
        self._check_range(int(src), n)
        return self._copy(dst, src, n)

    # events (no clock: the emulator is not timed)
    def cuEventCreate(self, flags):
        return OK, object()

    def cuEventRecord(self, event, stream):
        return (OK,)

    def cuEventSynchronize(self, event):
        return (OK,)

    def cuEventElapsedTime(self, start, end):
        return OK, 1.0

    def cuEventDestroy(self, event):
        return (OK,)

    # streams
    def cuStreamCreate(self, flags):
        return OK, 1

    def cuStreamSynchronize(self, stream):
        return (OK,)

    def cuStreamDestroy(self, stream):
        return (OK,)


def nvrtc_or_placeholder_images(use_nvrtc: bool):
    """`images` for CudaKernels: the real NVRTC cubins when NVRTC is here (so the loader
    runs too), else placeholder bytes (the emulator ignores the image)."""

    def images(module, capability, driver_version):
        assert module in MODULES
        if use_nvrtc:
            yield loader.compile_nvrtc(module, capability, driver_version)
        else:
            yield loader.Image(module, b"\x7fELF", "cubin", "placeholder")

    return images
