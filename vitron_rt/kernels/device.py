"""The CUDA backend: the kernels of csrc/ launched through cuda-python's driver API.

Two levels of call:

    *_into(...)   device pointers and a stream the caller owns (the runtime's engine
                  bindings and streams): queue the kernel and return, nothing copied
    preprocess(), mask_postprocess(), overlay(), sample_tokens(), gather_rows()
                  numpy in, numpy out (the `Backend` interface the runtime calls): stage
                  through a pooled set of pinned and device buffers with its own stream
                  (one set per concurrent caller), launch, copy back, synchronise

Constructing `CudaKernels` touches nothing; `activate()` (run by the first call) loads
the driver, retains the device's primary context (the one the CUDA runtime, TensorRT and
vitron_rt.engines use, so pointers and streams are shared) and loads the four modules
(loader.py: the CMake fatbinary, else NVRTC). Pointers are plain ints, streams plain int
handles (`engines.cuda.Stream.handle`, `DeviceBuffer.ptr` fit as they are).

Tables the kernels read (resize weights, normalisation and blend lookups) are uploaded
once per geometry and kept on the device; a video has one geometry.
"""

from __future__ import annotations

import ctypes
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from vitron_rt.kernels import loader
from vitron_rt.kernels.backends import Backend, MaskResult
from vitron_rt.kernels.errors import GPU_HINT, KernelError, KernelUnavailable
from vitron_rt.kernels.gather import check_gather
from vitron_rt.kernels.masks import MaskGeometry, blend_lut, check_frame, logits_2d, mask_tables
from vitron_rt.kernels.preprocess import (
    PixelFormat,
    Placement,
    PreprocessSpec,
    check_out,
    frame_hw,
    normalise_lut,
    placement,
    resize_tables,
)
from vitron_rt.kernels.sampling import TokenSampling
from vitron_rt.kernels.signatures import MODULE_OF, MODULES, KernelArgs

BLOCK_2D = (32, 8, 1)  # one thread per pixel: a warp along a row
BLOCK_1D = 256
SAMPLE_THREADS = 1024  # one block per sequence (the kernel works with any size)
CONSTANT_CACHE = 64  # geometries kept on the device per backend


@dataclass(frozen=True)
class DeviceImage:
    """A uint8 frame in device memory. RGB/BGR: `height` rows of `pitch` bytes, 3 per
    pixel. NV12: the Y plane at `ptr` (rows of `pitch`), the UV plane at `uv_ptr` (height
    / 2 rows of `uv_pitch`); a decoder's single NV12 buffer has uv_ptr = ptr + pitch * height."""

    ptr: int
    height: int
    width: int
    pitch: int
    format: PixelFormat = PixelFormat.RGB
    uv_ptr: int = 0
    uv_pitch: int = 0

    @classmethod
    def nv12(cls, ptr: int, height: int, width: int, pitch: int | None = None) -> "DeviceImage":
        """A single NV12 buffer (the Y plane, then the UV plane, one pitch)."""
        p = width if pitch is None else pitch
        return cls(ptr, height, width, p, PixelFormat.NV12, ptr + p * height, p)


def _grid_2d(width: int, height: int) -> tuple[int, int, int]:
    return (-(-width // BLOCK_2D[0]), -(-height // BLOCK_2D[1]), 1)


class Allocation:
    """One allocation: device (cuMemAlloc) or pinned host (cuMemAllocHost) memory."""

    def __init__(self, kernels: "CudaKernels", nbytes: int, pinned: bool):
        self._k = kernels
        self.nbytes = int(nbytes)
        self.pinned = pinned
        what = "cuMemAllocHost" if pinned else "cuMemAlloc"
        alloc = kernels.drv.cuMemAllocHost if pinned else kernels.drv.cuMemAlloc
        self.ptr = int(kernels.call(alloc(max(self.nbytes, 1)), f"{what}({self.nbytes})"))

    def host_view(self) -> np.ndarray:
        """(nbytes,) uint8 over pinned memory, no copy."""
        return np.ctypeslib.as_array((ctypes.c_uint8 * max(self.nbytes, 1)).from_address(self.ptr))[: self.nbytes]

    def free(self) -> None:
        if self.ptr:
            free = self._k.drv.cuMemFreeHost if self.pinned else self._k.drv.cuMemFree
            self._k.call(free(self.ptr), "cuMemFreeHost" if self.pinned else "cuMemFree")
            self.ptr = 0


class _Staging:
    """A stream and named scratch buffers for one caller at a time, grown on demand (by
    half again, so a stream of slightly different sizes settles quickly)."""

    def __init__(self, kernels: "CudaKernels"):
        self._k = kernels
        self.stream = int(kernels.call(kernels.drv.cuStreamCreate(kernels.drv.CUstream_flags.CU_STREAM_NON_BLOCKING),
                                       "cuStreamCreate"))
        self._buffers: dict[tuple[str, bool], Allocation] = {}

    def get(self, name: str, nbytes: int, pinned: bool = False) -> Allocation:
        buf = self._buffers.get((name, pinned))
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                self._k.call(self._k.drv.cuStreamSynchronize(self.stream), "cuStreamSynchronize")
                buf.free()
            buf = Allocation(self._k, max(nbytes, int((buf.nbytes if buf else 0) * 1.5)), pinned)
            self._buffers[(name, pinned)] = buf
        return buf

    def upload(self, name: str, array: np.ndarray) -> int:
        """Copy `array` to this set's device buffer `name` through its pinned buffer `name`,
        on the stream; returns the device pointer."""
        a = np.ascontiguousarray(array)
        host = self.get(name, a.nbytes, pinned=True)
        host.host_view()[: a.nbytes] = a.reshape(-1).view(np.uint8)
        dev = self.get(name, a.nbytes)
        self._k.call(self._k.drv.cuMemcpyHtoDAsync(dev.ptr, host.ptr, a.nbytes, self.stream), "cuMemcpyHtoDAsync")
        return dev.ptr

    def download(self, name: str, dev_ptr: int, nbytes: int) -> Allocation:
        """Queue a copy of `nbytes` at `dev_ptr` into pinned buffer `name`; read it after
        `synchronize()`."""
        host = self.get(name, nbytes, pinned=True)
        self._k.call(self._k.drv.cuMemcpyDtoHAsync(host.ptr, dev_ptr, nbytes, self.stream), "cuMemcpyDtoHAsync")
        return host

    def synchronize(self) -> None:
        self._k.call(self._k.drv.cuStreamSynchronize(self.stream), "cuStreamSynchronize")

    def close(self) -> None:
        self.synchronize()
        for buf in self._buffers.values():
            buf.free()
        self._buffers.clear()
        self._k.call(self._k.drv.cuStreamDestroy(self.stream), "cuStreamDestroy")


class CudaKernels(Backend):
    """The kernels on CUDA device `device` (see the module docstring).

    `driver` replaces `cuda.bindings.driver` (the CPU tests pass a stand-in that runs the
    kernels in a host emulation); `images` replaces `loader.images`."""

    name = "cuda"

    def __init__(
        self,
        device: int = 0,
        driver: ModuleType | Any | None = None,
        images: Callable[[str, tuple[int, int], int], Any] | None = None,
        sample_threads: int = SAMPLE_THREADS,
    ):
        if not 1 <= sample_threads <= SAMPLE_THREADS:
            raise ValueError(f"sample_threads must be 1..{SAMPLE_THREADS}, got {sample_threads}")
        self.device = device
        self.sample_threads = sample_threads  # the kernel works with any block size up to 1024
        self._driver = driver
        self._images = images or loader.images
        self.drv: Any = None
        self.capability: tuple[int, int] = (0, 0)
        self.device_name = ""
        self.origins: dict[str, str] = {}  # module -> where its device code came from
        self._ctx: Any = None
        self._functions: dict[str, Any] = {}
        self._constants: OrderedDict[Any, tuple[dict[str, int], list[Allocation]]] = OrderedDict()
        self._lock = threading.Lock()
        self._pool: list[_Staging] = []  # idle staging sets, reused by whichever thread calls next
        self._active = False

    # ----------------------------------------------------------------- setup

    def call(self, result: Any, what: str) -> Any:
        """Unpack a driver call's (err, value...) tuple, or raise KernelError naming it."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.drv.CUresult.CUDA_SUCCESS:
            raise KernelError(f"{what} failed: {self._error_name(err)}")
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    def _error_name(self, err: Any) -> str:
        try:
            _, name = self.drv.cuGetErrorName(err)
            return name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # the name only decorates an error already being raised
            return str(err)

    def activate(self) -> "CudaKernels":
        """Load the driver, retain the primary context, load the kernels (idempotent).
        Raises KernelUnavailable when any of it cannot be had here."""
        with self._lock:
            if self._active:
                return self
            drv = self._driver
            if drv is None:
                try:
                    from cuda.bindings import driver as drv
                except ImportError:
                    raise KernelUnavailable(f"cuda-python is not installed: {GPU_HINT}") from None
            self.drv = drv
            try:
                init = drv.cuInit(0)
            except Exception as e:  # cuda.pathfinder: libcuda.so not found (no driver)
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise KernelUnavailable(f"no NVIDIA driver: {first}") from None
            if init[0] != drv.CUresult.CUDA_SUCCESS:
                raise KernelUnavailable(f"no usable CUDA GPU: cuInit returned {self._error_name(init[0])}")
            count = self.call(drv.cuDeviceGetCount(), "cuDeviceGetCount")
            if self.device >= int(count):
                raise KernelUnavailable(f"no CUDA device {self.device}: the driver reports {int(count)}")
            dev = self.call(drv.cuDeviceGet(self.device), "cuDeviceGet")
            attr = drv.CUdevice_attribute
            major = self.call(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev), "cc")
            minor = self.call(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev), "cc")
            self.capability = (int(major), int(minor))
            name = self.call(drv.cuDeviceGetName(256, dev), "cuDeviceGetName")
            self.device_name = (name.split(b"\0")[0].decode() if isinstance(name, bytes) else str(name)).strip()
            driver_version = int(self.call(drv.cuDriverGetVersion(), "cuDriverGetVersion"))
            self._ctx = self.call(drv.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
            self.call(drv.cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")
            for module in MODULES:
                self._load(module, driver_version)
            self._active = True
            return self

    def _load(self, module: str, driver_version: int) -> None:
        """Load the first image of `module` the driver accepts; keep its functions."""
        failures = []
        for image in self._images(module, self.capability, driver_version):
            result = self.drv.cuModuleLoadData(image.data)
            if result[0] != self.drv.CUresult.CUDA_SUCCESS:
                failures.append(f"{image.origin}: {self._error_name(result[0])}")
                continue
            handle = result[1]
            for kernel, owner in MODULE_OF.items():
                if owner == module:
                    self._functions[kernel] = self.call(
                        self.drv.cuModuleGetFunction(handle, kernel.encode()), f"cuModuleGetFunction({kernel})"
                    )
            self.origins[module] = image.origin
            return
        raise KernelUnavailable(f"no loadable device code for {module}: {'; '.join(failures) or 'none found'}")

    def _enter(self) -> None:
        """Activate on first use; make the context current on this thread."""
        if not self._active:
            self.activate()
        self.call(self.drv.cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")

    @contextmanager
    def _staging(self) -> Iterator[_Staging]:
        """A stream and scratch buffers for one numpy-in, numpy-out call. Each such call
        ends synchronised, so a set is free again when the call returns; sets are pooled
        rather than kept per thread (the video pipelines start new threads per request,
        and memory tied to dead threads would never come back)."""
        self._enter()
        with self._lock:
            st = self._pool.pop() if self._pool else None
        if st is None:
            st = _Staging(self)
        try:
            yield st
        finally:
            try:
                st.synchronize()
            finally:
                with self._lock:
                    self._pool.append(st)

    def close(self) -> None:
        """Free the pooled staging sets and the cached tables (the backend stays usable:
        the next call allocates again)."""
        if not self._active:
            return
        self._enter()
        with self._lock:
            pool, self._pool = self._pool, []
            constants, self._constants = list(self._constants.values()), OrderedDict()
        for st in pool:
            st.close()
        self.call(self.drv.cuCtxSynchronize(), "cuCtxSynchronize")
        for _, mems in constants:
            for mem in mems:
                mem.free()

    def launch(self, kernel: str, grid: tuple[int, int, int], block: tuple[int, int, int], stream: int,
               **args: Any) -> None:
        """Queue `kernel` on `stream` (an int handle; 0 is the legacy default stream)."""
        packed = KernelArgs(kernel, args)
        self.call(
            self.drv.cuLaunchKernel(self._functions[kernel], *grid, *block, 0, stream, packed.address, 0),
            f"cuLaunchKernel({kernel})",
        )

    def _constant(self, key: Any, make: Callable[[], Mapping[str, np.ndarray | int]]) -> dict[str, int]:
        """Device copies of the read-only arrays `make()` returns (ints pass through as
        they are), made and uploaded once per key; the oldest key is dropped past
        CONSTANT_CACHE entries, after the device is idle."""
        with self._lock:
            hit = self._constants.get(key)
            if hit is not None:
                self._constants.move_to_end(key)
                return hit[0]
            values: dict[str, int] = {}
            mems: list[Allocation] = []
            for name, a in make().items():
                if isinstance(a, int):
                    values[name] = a
                    continue
                c = np.ascontiguousarray(a)
                mem = Allocation(self, c.nbytes, pinned=False)
                self.call(self.drv.cuMemcpyHtoD(mem.ptr, c.ctypes.data, c.nbytes), "cuMemcpyHtoD")
                mems.append(mem)
                values[name] = mem.ptr
            self._constants[key] = (values, mems)
            if len(self._constants) > CONSTANT_CACHE:
                self.call(self.drv.cuCtxSynchronize(), "cuCtxSynchronize")
                _, (_, old) = self._constants.popitem(last=False)
                for mem in old:
                    mem.free()
            return values

    # ----------------------------------------------------------------- buffers for callers

    def allocate(self, nbytes: int, pinned: bool = False) -> Allocation:
        """Device (or pinned host) memory in this backend's context, for callers that own
        their buffers (tests, benchmarks); free it with `.free()`."""
        self._enter()
        return Allocation(self, nbytes, pinned)

    def to_device(self, array: np.ndarray) -> Allocation:
        """A new device copy of `array` (synchronous)."""
        a = np.ascontiguousarray(array)
        mem = self.allocate(a.nbytes)
        self.call(self.drv.cuMemcpyHtoD(mem.ptr, a.ctypes.data, a.nbytes), "cuMemcpyHtoD")
        return mem

    def to_host(self, ptr: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A host copy of the `shape` `dtype` array at `ptr`, after the context is idle."""
        self._enter()
        self.call(self.drv.cuCtxSynchronize(), "cuCtxSynchronize")
        out = np.empty(shape, dtype=dtype)
        self.call(self.drv.cuMemcpyDtoH(out.ctypes.data, ptr, out.nbytes), "cuMemcpyDtoH")
        return out

    # ----------------------------------------------------------------- device-level calls

    def _preprocess_constants(self, pl: Placement, spec: PreprocessSpec) -> dict[str, int]:
        def make() -> dict[str, np.ndarray | int]:
            x, y = resize_tables(pl, spec.filter)
            return {"x_first": x.first, "x_weights": x.weights, "x_taps": x.taps, "y_first": y.first,
                    "y_weights": y.weights, "y_taps": y.taps, "lut": normalise_lut(spec)}

        return self._constant(("preprocess", pl, spec), make)

    def preprocess_into(self, image: DeviceImage, spec: PreprocessSpec, out_ptr: int, stream: int) -> None:
        """Queue the fused preprocess of `image` into the (3, S, S) `spec.dtype` tensor at
        `out_ptr` (e.g. one batch slot of an engine's input binding)."""
        self._enter()
        fmt = PixelFormat(image.format)
        row = image.width if fmt is PixelFormat.NV12 else 3 * image.width
        if image.pitch < row or (fmt is PixelFormat.NV12 and (image.uv_pitch < row or not image.uv_ptr)):
            raise ValueError(f"frame rows of {image.pitch} bytes cannot hold {image.width} {fmt.value} pixels")
        if fmt is PixelFormat.NV12 and (image.height % 2 or image.width % 2):
            raise ValueError(f"NV12 frames have even sides, got {image.width} x {image.height}")
        pl = placement(image.height, image.width, spec)
        c = self._preprocess_constants(pl, spec)
        self.launch(
            "vk_preprocess", _grid_2d(spec.size, spec.size), BLOCK_2D, stream,
            pixels=image.ptr, uv=image.uv_ptr, height=image.height, width=image.width, pitch=image.pitch,
            uv_pitch=image.uv_pitch, format=fmt.code,
            x_first=c["x_first"], x_weights=c["x_weights"], x_taps=c["x_taps"],
            y_first=c["y_first"], y_weights=c["y_weights"], y_taps=c["y_taps"],
            convention=int(spec.filter.convention), resized_h=pl.resized_hw[0], resized_w=pl.resized_hw[1],
            offset_y=pl.offset[0], offset_x=pl.offset[1], lut=c["lut"], out=out_ptr, out_size=spec.size,
            out_fp16=int(spec.dtype == "float16"),
        )

    def _mask_constants(self, geom: MaskGeometry) -> dict[str, int]:
        def make() -> dict[str, np.ndarray | int]:
            t = mask_tables(geom)
            return {"up_x_idx": t.up_x.index, "up_x_w": t.up_x.weight, "up_y_idx": t.up_y.index,
                    "up_y_w": t.up_y.weight, "down_x_idx": t.down_x.index, "down_x_w": t.down_x.weight,
                    "down_y_idx": t.down_y.index, "down_y_w": t.down_y.weight}

        return self._constant(("mask", geom), make)

    def _blend_constant(self, color: tuple[int, int, int], alpha: float) -> int:
        key = ("blend", tuple(int(v) for v in color), float(alpha))
        return self._constant(key, lambda: {"lut": blend_lut(key[1], key[2])})["lut"]

    def mask_postprocess_into(
        self,
        logits_ptr: int,
        geom: MaskGeometry,
        threshold: float,
        stream: int,
        *,
        mask_ptr: int = 0,
        mask_pitch: int = 0,
        frame: DeviceImage | None = None,
        color: tuple[int, int, int] = (0, 0, 0),
        alpha: float = 0.0,
        count_ptr: int = 0,
    ) -> None:
        """Queue the mask postprocess of the (m_h, m_w) float32 logits at `logits_ptr`:
        the 0/1 mask into `mask_ptr` (rows of `mask_pitch`), the overlay blended into
        `frame` (RGB, in place), the mask's pixel count added to the u64 at `count_ptr`;
        each output is skipped when its pointer is 0."""
        self._enter()
        if frame is not None and (frame.height, frame.width) != tuple(geom.frame_hw):
            raise ValueError(f"the frame is {frame.height} x {frame.width}, the geometry says {geom.frame_hw}")
        if frame is not None and PixelFormat(frame.format) is PixelFormat.NV12:
            raise ValueError("the overlay blends into an RGB or BGR frame, not NV12")
        c = self._mask_constants(geom)
        blend = self._blend_constant(color, alpha) if frame is not None else 0
        h, w = geom.frame_hw
        self.launch(
            "vk_mask_postprocess", _grid_2d(w, h), BLOCK_2D, stream,
            logits=logits_ptr, logits_w=geom.logits_hw[1], **c, height=h, width=w, threshold=float(threshold),
            mask=mask_ptr, mask_pitch=mask_pitch, frame=frame.ptr if frame is not None else 0,
            frame_pitch=frame.pitch if frame is not None else 0, blend_lut=blend, count=count_ptr,
        )

    def overlay_into(self, frame: DeviceImage, mask_ptr: int, mask_pitch: int, color: tuple[int, int, int],
                     alpha: float, stream: int) -> None:
        """Queue the blend of `color` into `frame` (in place) where the mask byte is non-zero."""
        self._enter()
        self.launch(
            "vk_overlay", _grid_2d(frame.width, frame.height), BLOCK_2D, stream,
            frame=frame.ptr, height=frame.height, width=frame.width, frame_pitch=frame.pitch, mask=mask_ptr,
            mask_pitch=mask_pitch, blend_lut=self._blend_constant(color, alpha),
        )

    @staticmethod
    def sample_workspace_bytes(rows: int, vocab: int) -> int:
        """Device bytes `sample_into` needs for its workspace: z (float) and q (u64) per logit."""
        return rows * vocab * (4 + 8)

    def sample_into(
        self,
        logits_ptr: int,
        rows: int,
        vocab: int,
        params: TokenSampling,
        u_ptr: int,
        out_ptr: int,
        workspace_ptr: int,
        stream: int,
        *,
        logits_fp16: bool = False,
        row_stride: int | None = None,
        seen_ptr: int = 0,
        seen_stride: int = 0,
    ) -> None:
        """Queue the choice of one token per row of the (rows, V) logits: the host's
        uniform numbers (rows,) float64 at `u_ptr`, tokens (rows,) int32 to `out_ptr`,
        `sample_workspace_bytes(rows, V)` of scratch at `workspace_ptr`; `seen_ptr`: (rows,
        seen_stride) int32 ids for the repetition penalty (-1 pads)."""
        self._enter()
        z_bytes = rows * vocab * 4
        q_ptr = workspace_ptr + ((z_bytes + 255) // 256) * 256  # keep the u64 half 256-byte aligned
        self.launch(
            "vk_sample", (rows, 1, 1), (self.sample_threads, 1, 1), stream,
            logits=logits_ptr, logits_fp16=int(logits_fp16), row_stride=vocab if row_stride is None else row_stride,
            vocab=vocab, seen=seen_ptr, seen_stride=seen_stride, penalty=float(np.float32(params.repetition_penalty)),
            greedy=int(params.greedy), temperature=float(np.float32(params.temperature)), top_k=params.top_k,
            top_p=float(params.top_p), u=u_ptr, work_z=workspace_ptr, work_q=q_ptr, out=out_ptr,
        )

    def gather_rows_into(
        self,
        src_ptr: int,
        src_fp16: bool,
        src_stride: int,
        rows_ptr: int,
        n_rows: int,
        width: int,
        dst_ptr: int,
        dst_fp16: bool,
        dst_stride: int,
        stream: int,
    ) -> None:
        """Queue dst[k] = src[rows[k]] for k < n_rows (rows: int32 on the device), `width`
        elements per row, converting between fp16 and fp32 as the flags say."""
        self._enter()
        if n_rows == 0 or width == 0:
            return
        self.launch(
            "vk_gather_rows", (-(-width // BLOCK_1D), n_rows, 1), (BLOCK_1D, 1, 1), stream,
            src=src_ptr, src_fp16=int(src_fp16), src_stride=src_stride, rows=rows_ptr, n_rows=n_rows, width=width,
            dst=dst_ptr, dst_fp16=int(dst_fp16), dst_stride=dst_stride,
        )

    # ----------------------------------------------------------------- numpy in, numpy out

    def preprocess(self, frame: np.ndarray, spec: PreprocessSpec, fmt: PixelFormat = PixelFormat.RGB,
                   out: np.ndarray | None = None) -> np.ndarray:
        fmt = PixelFormat(fmt)
        h, w = frame_hw(frame, fmt)
        out = check_out(out, spec)
        with self._staging() as st:
            src = st.upload("frame", frame)
            if fmt is PixelFormat.NV12:
                image = DeviceImage.nv12(src, h, w)
            else:
                image = DeviceImage(src, h, w, 3 * w, fmt)
            dst = st.get("pixels", out.nbytes)
            self.preprocess_into(image, spec, dst.ptr, st.stream)
            host = st.download("pixels", dst.ptr, out.nbytes)
            st.synchronize()
            out[...] = host.host_view()[: out.nbytes].view(out.dtype).reshape(out.shape)
        return out

    def mask_postprocess(self, logits: np.ndarray, geom: MaskGeometry, threshold: float = 0.0,
                         frame: np.ndarray | None = None, color: tuple[int, int, int] = (0, 0, 0),
                         alpha: float = 0.0) -> MaskResult:
        lo = np.ascontiguousarray(logits_2d(logits))
        if lo.shape != tuple(geom.logits_hw):
            raise ValueError(f"the logits are {lo.shape}, the geometry says {geom.logits_hw}")
        if frame is not None:
            check_frame(frame, geom.frame_hw)
        h, w = geom.frame_hw
        with self._staging() as st:
            logits_ptr = st.upload("logits", lo)
            image = DeviceImage(st.upload("frame", frame), h, w, 3 * w) if frame is not None else None
            mask = st.get("mask", h * w)
            count = st.get("count", 8)
            self.call(self.drv.cuMemsetD8Async(count.ptr, 0, 8, st.stream), "cuMemsetD8Async")
            self.mask_postprocess_into(logits_ptr, geom, threshold, st.stream, mask_ptr=mask.ptr, mask_pitch=w,
                                       frame=image, color=color, alpha=alpha, count_ptr=count.ptr)
            host_mask = st.download("mask", mask.ptr, h * w)
            host_count = st.download("count", count.ptr, 8)
            host_frame = st.download("frame", image.ptr, frame.nbytes) if image is not None else None
            st.synchronize()
            out = host_mask.host_view()[: h * w].reshape(h, w).astype(bool)
            if host_frame is not None:
                frame[...] = host_frame.host_view()[: frame.nbytes].reshape(frame.shape)
            pixels = int(host_count.host_view()[:8].view(np.uint64)[0])
        return MaskResult(out, pixels)

    def overlay(self, frame: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], alpha: float) -> None:
        check_frame(frame, np.shape(mask))
        h, w = frame.shape[:2]
        with self._staging() as st:
            image = DeviceImage(st.upload("frame", frame), h, w, 3 * w)
            mask_ptr = st.upload("mask", np.asarray(mask, dtype=bool).view(np.uint8))
            self.overlay_into(image, mask_ptr, w, color, alpha, st.stream)
            host = st.download("frame", image.ptr, frame.nbytes)
            st.synchronize()
            frame[...] = host.host_view()[: frame.nbytes].reshape(frame.shape)

    def sample_tokens(self, logits: np.ndarray, u: np.ndarray, params: TokenSampling,
                      seen: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(logits)
        if x.dtype.name not in ("float32", "float16"):
            x = x.astype(np.float32)
        rows = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
        n, vocab = rows.shape
        uu = np.ascontiguousarray(np.asarray(u, dtype=np.float64).reshape(-1))
        if uu.shape[0] != n:
            raise ValueError(f"need one u per row: {n} rows, {uu.shape[0]} numbers")
        with self._staging() as st:
            logits_ptr = st.upload("logits", rows)
            u_ptr = st.upload("u", uu)
            seen_ptr, seen_stride = 0, 0
            if seen is not None and params.repetition_penalty != 1.0:
                s = np.ascontiguousarray(np.asarray(seen, dtype=np.int32).reshape(n, -1))
                if s.shape[1]:
                    seen_ptr, seen_stride = st.upload("seen", s), s.shape[1]
            work = st.get("sample_work", self.sample_workspace_bytes(n, vocab) + 256)
            out = st.get("tokens", 4 * n)
            self.sample_into(logits_ptr, n, vocab, params, u_ptr, out.ptr, work.ptr, st.stream,
                             logits_fp16=rows.dtype == np.float16, seen_ptr=seen_ptr, seen_stride=seen_stride)
            host = st.download("tokens", out.ptr, 4 * n)
            st.synchronize()
            tokens = host.host_view()[: 4 * n].view(np.int32).copy()
        if (tokens < 0).any():
            raise ValueError("logits hold no finite value to sample from (all -inf, +inf or NaN)")
        return tokens

    def gather_rows(self, src: np.ndarray, rows: np.ndarray, dtype: str = "float32") -> np.ndarray:
        a, r = check_gather(src, rows, dtype)
        a = np.ascontiguousarray(a)
        out = np.empty((r.shape[0], a.shape[1]), dtype=dtype)
        if out.size == 0:
            return out
        with self._staging() as st:
            src_ptr = st.upload("gather_src", a)
            rows_ptr = st.upload("gather_rows", r)
            dst = st.get("gather_dst", out.nbytes)
            self.gather_rows_into(src_ptr, a.dtype == np.float16, a.shape[1], rows_ptr, r.shape[0], a.shape[1],
                                  dst.ptr, out.dtype == np.float16, a.shape[1], st.stream)
            host = st.download("gather_dst", dst.ptr, out.nbytes)
            st.synchronize()
            out[...] = host.host_view()[: out.nbytes].view(out.dtype).reshape(out.shape)
        return out
