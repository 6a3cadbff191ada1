"""Each CUDA kernel against its numpy reference, on fresh random inputs, with every
output buffer poisoned first (0xFF bytes: NaN for floats, 255 for a 0/1 mask) so each
element is checked as written and nothing outside it is touched.

Run twice: `emulated` compiles the same .cu sources for the CPU (kernel_emulator.cpp) and
drives them through the real `CudaKernels` with a stand-in driver, on every machine with
g++; `cuda` runs them on the GPU (`-m gpu`; skipped without cuda-python and a device).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from vitron_rt.kernels.backends import CpuKernels
from vitron_rt.kernels.color import nv12_shape
from vitron_rt.kernels.device import Allocation, CudaKernels, DeviceImage
from vitron_rt.kernels.errors import KernelUnavailable
from vitron_rt.kernels.gather import gather_reference
from vitron_rt.kernels.masks import LOGIT_RTOL, MaskGeometry, mask_reference, overlay_reference
from vitron_rt.kernels.preprocess import (
    Filter,
    Fit,
    PixelFormat,
    PreprocessSpec,
    fit_longest_side,
    preprocess_cpu,
    preprocess_reference,
)
from vitron_rt.kernels.sampling import TokenSampling, draw_margin, sample_reference

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
POISON = 0xFF
# A draw may differ from the float64 reference only this close to a cumulative boundary
# (the kernel sums 40-bit fixed-point probabilities).
DRAW_MARGIN = 1e-6


class Device:
    """Allocations, copies and poisoning through the backend's own driver."""

    def __init__(self, k: CudaKernels):
        self.k = k
        self.drv = k.drv
        self.mems: list[Allocation] = []
        self.stream = int(k.call(self.drv.cuStreamCreate(self.drv.CUstream_flags.CU_STREAM_NON_BLOCKING), "stream"))

    def alloc(self, nbytes: int) -> int:
        mem = self.k.allocate(nbytes)
        self.mems.append(mem)
        self.k.call(self.drv.cuMemsetD8(mem.ptr, POISON, nbytes), "cuMemsetD8")
        return mem.ptr

    def put(self, array: np.ndarray) -> int:
        a = np.ascontiguousarray(array)
        ptr = self.alloc(a.nbytes)
        self.k.call(self.drv.cuMemcpyHtoD(ptr, a.ctypes.data, a.nbytes), "cuMemcpyHtoD")
        return ptr

    def get(self, ptr: int, shape: tuple[int, ...], dtype) -> np.ndarray:
        self.k.call(self.drv.cuStreamSynchronize(self.stream), "cuStreamSynchronize")
        out = np.empty(shape, dtype=dtype)
        self.k.call(self.drv.cuMemcpyDtoH(out.ctypes.data, ptr, out.nbytes), "cuMemcpyDtoH")
        return out

    def close(self) -> None:
        self.k.call(self.drv.cuStreamSynchronize(self.stream), "cuStreamSynchronize")
        for mem in self.mems:
            mem.free()
        self.mems.clear()


@pytest.fixture(scope="module", params=["emulated", pytest.param("cuda", marks=pytest.mark.gpu)])
def kernels(request, tmp_path_factory):
    if request.param == "emulated":
        if shutil.which("g++") is None:
            pytest.skip("g++ is not on PATH: the kernels cannot be emulated here")
        from _kernel_emulation import FakeDriver, build_emulator, nvrtc_or_placeholder_images

        emulator = build_emulator(tmp_path_factory.mktemp("emulator"))
        return CudaKernels(driver=FakeDriver(emulator), images=nvrtc_or_placeholder_images(False),
                           sample_threads=64).activate()
    try:
        return CudaKernels().activate()
    except KernelUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture
def dev(kernels):
    d = Device(kernels)
    yield d
    d.close()


def rng_for(request) -> np.random.Generator:
    """Fresh inputs per test and per run (the seed is printed on failure)."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    request.node.user_properties.append(("seed", seed))
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- preprocess

FRAMES = [(37, 53), (38, 52), (120, 90), (2, 2), (64, 48)]


@pytest.mark.parametrize("filt", list(Filter))
@pytest.mark.parametrize("fit", list(Fit))
@pytest.mark.parametrize("fmt", list(PixelFormat))
def test_preprocess_kernel_equals_reference(kernels, dev, request, filt, fit, fmt):
    rng = rng_for(request)
    for i, (h, w) in enumerate(FRAMES):
        if fmt is PixelFormat.NV12:
            h, w = h + h % 2, w + w % 2
        dtype = "float16" if i % 2 else "float32"
        spec = PreprocessSpec(40, MEAN, STD, filt, fit, dtype, pad_value=-0.25 if fit is not Fit.CROP else 0.0)
        pad = 13  # row pitch wider than the pixels, as decoders' surfaces are
        if fmt is PixelFormat.NV12:
            frame = rng.integers(0, 256, nv12_shape(h, w), dtype=np.uint8)
            padded = np.zeros((frame.shape[0], w + pad), np.uint8)
            padded[:, :w] = frame
            image = DeviceImage.nv12(dev.put(padded), h, w, pitch=w + pad)
        else:
            frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            padded = np.zeros((h, 3 * w + pad), np.uint8)
            padded[:, : 3 * w] = frame.reshape(h, -1)
            image = DeviceImage(dev.put(padded), h, w, 3 * w + pad, fmt)
        slot = int(np.prod(spec.out_shape)) * np.dtype(dtype).itemsize
        out = dev.alloc(2 * slot)  # an engine input of batch 2; write slot 1
        kernels.preprocess_into(image, spec, out + slot, dev.stream)
        got = dev.get(out, (2, *spec.out_shape), dtype)
        assert (got[0].view(np.uint8) == POISON).all(), "slot 0 was written"
        np.testing.assert_array_equal(got[1], preprocess_reference(frame, spec, fmt), err_msg=f"frame {h}x{w}")


def test_preprocess_kernel_on_video_sizes(kernels, dev, request):
    rng = rng_for(request)
    frame = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    for spec in (PreprocessSpec(96, MEAN, STD, Filter.LINEAR, Fit.PAD),
                 PreprocessSpec(56, MEAN, STD, Filter.PIL_BICUBIC, Fit.CROP)):
        out = dev.alloc(int(np.prod(spec.out_shape)) * 4)
        kernels.preprocess_into(DeviceImage(dev.put(frame), 720, 1280, 3 * 1280), spec, out, dev.stream)
        np.testing.assert_array_equal(dev.get(out, spec.out_shape, np.float32), preprocess_reference(frame, spec))


# --------------------------------------------------------------------------- masks

GEOMETRIES = [
    MaskGeometry((16, 16), 64, fit_longest_side(45, 61, 64), (45, 61)),
    MaskGeometry((32, 32), 128, fit_longest_side(100, 37, 128), (100, 37)),
    MaskGeometry((7, 9), 20, (13, 20), (5, 3)),
    MaskGeometry((32, 32), 64, (64, 64), (128, 128)),
]


@pytest.mark.parametrize("geom", GEOMETRIES, ids=str)
def test_mask_kernel_equals_reference(kernels, dev, request, geom):
    rng = rng_for(request)
    h, w = geom.frame_hw
    logits = rng.standard_normal(geom.logits_hw).astype(np.float32) * 3
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    color, alpha, threshold = tuple(int(v) for v in rng.integers(0, 256, 3)), float(rng.random()), 0.3
    mask_pitch, frame_pitch = w + 5, 3 * w + 7
    mask = dev.alloc(h * mask_pitch)
    padded = np.zeros((h, frame_pitch), np.uint8)
    padded[:, : 3 * w] = frame.reshape(h, -1)
    fptr = dev.put(padded)
    count = dev.put(np.zeros(1, np.uint64))
    kernels.mask_postprocess_into(dev.put(logits), geom, threshold, dev.stream, mask_ptr=mask, mask_pitch=mask_pitch,
                                  frame=DeviceImage(fptr, h, w, frame_pitch), color=color, alpha=alpha,
                                  count_ptr=count)
    got_mask = dev.get(mask, (h, mask_pitch), np.uint8)
    got_frame = dev.get(fptr, (h, frame_pitch), np.uint8)
    want_mask, want_frame = mask_reference(logits, geom, threshold, frame, color, alpha)
    np.testing.assert_array_equal(got_mask[:, :w], want_mask.astype(np.uint8))  # 0/1, never the poison
    assert (got_mask[:, w:] == POISON).all()
    np.testing.assert_array_equal(got_frame[:, : 3 * w].reshape(h, w, 3), want_frame)
    assert (got_frame[:, 3 * w :] == 0).all()
    assert int(dev.get(count, (1,), np.uint64)[0]) == int(want_mask.sum())


def test_mask_kernel_without_frame_or_count(kernels, dev, request):
    rng = rng_for(request)
    geom = GEOMETRIES[0]
    logits = rng.standard_normal(geom.logits_hw).astype(np.float32)
    mask = dev.alloc(45 * 61)
    kernels.mask_postprocess_into(dev.put(logits), geom, 0.0, dev.stream, mask_ptr=mask, mask_pitch=61)
    np.testing.assert_array_equal(dev.get(mask, (45, 61), np.uint8), mask_reference(logits, geom)[0])


def test_overlay_kernel_equals_reference(kernels, dev, request):
    rng = rng_for(request)
    frame = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    mask = rng.random((33, 47)) > 0.5
    fptr = dev.put(frame)
    kernels.overlay_into(DeviceImage(fptr, 33, 47, 3 * 47), dev.put(mask.astype(np.uint8)), 47, (30, 144, 255), 0.5,
                         dev.stream)
    np.testing.assert_array_equal(dev.get(fptr, frame.shape, np.uint8), overlay_reference(frame, mask, (30, 144, 255), 0.5))


# --------------------------------------------------------------------------- sampling

SAMPLING = [
    TokenSampling(greedy=True),
    TokenSampling(greedy=True, repetition_penalty=1.5),
    TokenSampling(),
    TokenSampling(temperature=0.7, top_k=50),
    TokenSampling(temperature=1.2, top_k=3, top_p=0.8),
    TokenSampling(top_p=0.6),
    TokenSampling(top_k=1),
    TokenSampling(temperature=0.9, top_k=20, top_p=0.95, repetition_penalty=1.3),
]


@pytest.mark.parametrize("params", SAMPLING, ids=str)
@pytest.mark.parametrize("vocab", [5, 1000, 4099])
def test_sample_kernel_equals_reference(kernels, dev, request, params, vocab):
    rng = rng_for(request)
    rows = 3
    logits = (rng.standard_normal((rows, vocab)) * rng.uniform(0.5, 4)).astype(np.float32)
    logits[0, rng.integers(0, vocab, 3)] = logits[0].max()  # ties at the top
    logits[1, rng.integers(0, vocab, vocab // 3)] = -np.inf
    seen = rng.integers(-1, vocab, (rows, 6)).astype(np.int32)
    u = rng.random(rows)
    work = dev.alloc(kernels.sample_workspace_bytes(rows, vocab) + 256)
    out = dev.alloc(4 * rows)
    kernels.sample_into(dev.put(logits), rows, vocab, params, dev.put(u), out, work, dev.stream,
                        seen_ptr=dev.put(seen), seen_stride=6)
    got = dev.get(out, (rows,), np.int32)
    for r in range(rows):
        draw = sample_reference(logits[r], float(u[r]), params, seen=seen[r])
        if got[r] != draw.token:
            assert draw_margin(draw, params.top_p) < DRAW_MARGIN, (r, int(got[r]), draw.token)


def test_sample_kernel_fp16_logits_and_a_full_block(kernels, dev, request):
    """fp16 logits, and the block size the host uses (1024 threads)."""
    rng = rng_for(request)
    vocab = 3001
    logits = (rng.standard_normal((2, vocab)) * 3).astype(np.float16)
    u = rng.random(2)
    params = TokenSampling(temperature=0.8, top_k=100, top_p=0.9)
    threads, kernels.sample_threads = kernels.sample_threads, 1024
    try:
        work = dev.alloc(kernels.sample_workspace_bytes(2, vocab) + 256)
        out = dev.alloc(8)
        kernels.sample_into(dev.put(logits), 2, vocab, params, dev.put(u), out, work, dev.stream, logits_fp16=True)
        got = dev.get(out, (2,), np.int32)
    finally:
        kernels.sample_threads = threads
    for r in range(2):
        draw = sample_reference(logits[r], float(u[r]), params)
        assert got[r] == draw.token or draw_margin(draw, params.top_p) < DRAW_MARGIN


def test_sample_kernel_flags_rows_without_a_finite_logit(kernels, dev):
    logits = np.array([[-np.inf] * 8, [0.0, np.nan] + [1.0] * 6], dtype=np.float32)
    out = dev.alloc(8)
    kernels.sample_into(dev.put(logits), 2, 8, TokenSampling(), dev.put(np.array([0.5, 0.5])), out,
                        dev.alloc(kernels.sample_workspace_bytes(2, 8) + 256), dev.stream)
    assert dev.get(out, (2,), np.int32).tolist() == [-1, -1]


# --------------------------------------------------------------------------- gather


@pytest.mark.parametrize("src_dtype", ["float32", "float16"])
@pytest.mark.parametrize("dst_dtype", ["float32", "float16"])
def test_gather_kernel_equals_reference(kernels, dev, request, src_dtype, dst_dtype):
    rng = rng_for(request)
    src = (rng.standard_normal((40, 300)) * 100).astype(src_dtype)
    rows = rng.integers(0, 40, 7).astype(np.int32)
    stride = 311  # the destination's rows are wider: the gap stays poisoned
    item = np.dtype(dst_dtype).itemsize
    dst = dev.alloc(7 * stride * item)
    kernels.gather_rows_into(dev.put(src), src_dtype == "float16", 300, dev.put(rows), 7, 300, dst,
                             dst_dtype == "float16", stride, dev.stream)
    got = dev.get(dst, (7, stride), dst_dtype)
    np.testing.assert_array_equal(got[:, :300], gather_reference(src, rows, dst_dtype))
    assert (got[:, 300:].view(np.uint8) == POISON).all()


# --------------------------------------------------------------------------- numpy in, numpy out


def test_host_calls_agree_with_the_cpu_backend(kernels, request):
    rng = rng_for(request)
    cpu = CpuKernels()
    frame = rng.integers(0, 256, (57, 83, 3), dtype=np.uint8)
    for spec in (PreprocessSpec(48, MEAN, STD, Filter.PIL_BILINEAR, Fit.PAD),
                 PreprocessSpec(48, MEAN, STD, Filter.PIL_BICUBIC, Fit.CROP, "float16")):
        np.testing.assert_array_equal(kernels.preprocess(frame, spec), cpu.preprocess(frame, spec))
    spec = PreprocessSpec(48, MEAN, STD, Filter.LINEAR, Fit.LETTERBOX)
    assert np.abs(kernels.preprocess(frame, spec) - preprocess_cpu(frame, spec)).max() <= 1 / (255 * min(STD)) + 1e-6

    geom = MaskGeometry((16, 16), 64, fit_longest_side(57, 83, 64), (57, 83))
    logits = rng.standard_normal((1, 1, 16, 16)).astype(np.float32)
    a, b = frame.copy(), frame.copy()
    got = kernels.mask_postprocess(logits, geom, 0.1, a, (30, 144, 255), 0.5)
    want = cpu.mask_postprocess(logits, geom, 0.1, b, (30, 144, 255), 0.5)
    differ = got.mask != want.mask
    assert differ.mean() < 1e-3 and got.pixels == int(got.mask.sum())
    from vitron_rt.kernels.masks import upsample_cpu

    assert (np.abs(upsample_cpu(logits, geom)[differ] - 0.1) <= LOGIT_RTOL * np.abs(logits).max()).all()
    np.testing.assert_array_equal(a[~differ], b[~differ])

    mask = rng.random((57, 83)) > 0.5
    a, b = frame.copy(), frame.copy()
    kernels.overlay(a, mask, (1, 2, 3), 0.3)
    cpu.overlay(b, mask, (1, 2, 3), 0.3)
    np.testing.assert_array_equal(a, b)

    logits = rng.standard_normal((2, 500)).astype(np.float32)
    u = rng.random(2)
    params = TokenSampling(top_k=30)
    np.testing.assert_array_equal(kernels.sample_tokens(logits, u, params), cpu.sample_tokens(logits, u, params))
    with pytest.raises(ValueError, match="no finite value"):
        kernels.sample_tokens(np.full((1, 4), -np.inf, np.float32), np.array([0.5]), params)

    src = rng.standard_normal((9, 20)).astype(np.float32)
    np.testing.assert_array_equal(kernels.gather_rows(src, [8, 0], "float16"), cpu.gather_rows(src, [8, 0], "float16"))


def test_concurrent_callers_share_a_pool_and_close_frees_everything(kernels, request):
    """The video pipelines call from one thread per stage, new threads per request: the
    staging sets are pooled (not kept per thread), and close() gives all memory back."""
    from concurrent.futures import ThreadPoolExecutor

    rng = rng_for(request)
    spec = PreprocessSpec(24, MEAN, STD, Filter.LINEAR, Fit.PAD)
    frames = [rng.integers(0, 256, (31, 45, 3), dtype=np.uint8) for _ in range(6)]
    for _ in range(2):  # two "requests", each with fresh threads
        with ThreadPoolExecutor(3) as pool:
            outs = list(pool.map(lambda f: kernels.preprocess(f, spec), frames))
        for f, o in zip(frames, outs):
            np.testing.assert_array_equal(o, preprocess_reference(f, spec))
    assert 1 <= len(kernels._pool) <= 3
    kernels.close()
    assert kernels._pool == [] and not kernels._constants
    blocks = getattr(kernels.drv, "blocks", None)
    if blocks is not None:  # the emulator's driver tracks every allocation
        assert blocks == {}
    np.testing.assert_array_equal(kernels.preprocess(frames[0], spec), preprocess_reference(frames[0], spec))
