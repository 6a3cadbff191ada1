"""The kernels section of the GPU check: each vitron_rt.kernels kernel checked against its
reference and timed, and the per-frame pixel work of the video path, GPU against CPU.

    kernels: device copy     device-to-device copy bandwidth, (read + write) / time: the
                             limit for these memory-bound kernels, measured in this run
    kernels: <kernel>        output equal to the numpy reference (poisoned buffer first);
                             time per call (CUDA events), achieved GB/s = (bytes read once
                             + bytes written once) / time, and that as % of the copy
    kernels: frame <res>     one video frame's pixel work, 720p and 1080p:
                             GPU: H2D frame, preprocess (SAM 1024 pad), mask postprocess
                             + overlay, D2H overlay frame + mask pixel count (one stream)
                             CPU: the OpenCV / numpy path on the same frame
                             for the LINEAR filter (cv2 INTER_LINEAR) and for the Pillow
                             bilinear filter the runtime uses for SAM

Called by `gpu_check.run`; `markdown(rows, device)` formats the section for
BENCHMARKS.md with the card it came from. Sizes and repeats are arguments so the CPU
tests can run this code on the kernel emulator with tiny inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitron_rt.bench.gpu_check import Row

COPY_MIB = 256
REPEATS = 20
FRAMES = {"720p": (720, 1280), "1080p": (1080, 1920)}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OVERLAY = ((30, 144, 255), 0.5)


@dataclass(frozen=True)
class Sizes:
    """What the section runs on (real sizes by default; the tests pass tiny ones)."""

    frames: tuple[tuple[str, tuple[int, int]], ...] = tuple(FRAMES.items())
    sam_size: int = 1024
    clip_size: int = 224
    logits_side: int = 256
    vocab: int = 49152  # SmolLM2's vocabulary
    hidden: int = 4096  # Vicuna-7B's hidden size, for the gather
    signal_tokens: int = 8
    copy_mib: int = COPY_MIB
    repeats: int = REPEATS


class _Events:
    """CUDA events on one stream: time a queued piece of work in milliseconds."""

    def __init__(self, k: Any, stream: int):
        self.k, self.drv, self.stream = k, k.drv, stream
        self._start = k.call(self.drv.cuEventCreate(0), "cuEventCreate")
        self._end = k.call(self.drv.cuEventCreate(0), "cuEventCreate")

    def time(self, work: Callable[[], None], repeats: int) -> float:
        """Mean milliseconds of `work` (queued on the stream) over `repeats`, after a warm-up."""
        work()
        self.k.call(self.drv.cuStreamSynchronize(self.stream), "cuStreamSynchronize")
        self.k.call(self.drv.cuEventRecord(self._start, self.stream), "cuEventRecord")
        for _ in range(repeats):
            work()
        self.k.call(self.drv.cuEventRecord(self._end, self.stream), "cuEventRecord")
        self.k.call(self.drv.cuEventSynchronize(self._end), "cuEventSynchronize")
        return float(self.k.call(self.drv.cuEventElapsedTime(self._start, self._end), "cuEventElapsedTime")) / repeats

    def close(self) -> None:
        for ev in (self._start, self._end):
            self.k.call(self.drv.cuEventDestroy(ev), "cuEventDestroy")


def _cpu_ms(work: Callable[[], Any], repeats: int) -> float:
    work()
    start = time.perf_counter()
    for _ in range(repeats):
        work()
    return (time.perf_counter() - start) * 1e3 / repeats


class _Section:
    """The buffers, stream and events of one run of the section."""

    def __init__(self, k: Any, sizes: Sizes):
        self.k, self.sizes = k, sizes
        self.rng = np.random.default_rng(0)
        self.mems: list[Any] = []
        self.stream = int(k.call(k.drv.cuStreamCreate(k.drv.CUstream_flags.CU_STREAM_NON_BLOCKING), "cuStreamCreate"))
        self.events = _Events(k, self.stream)
        self.copy_gbps = 0.0

    def alloc(self, nbytes: int, pinned: bool = False) -> Any:
        mem = self.k.allocate(nbytes, pinned)
        self.mems.append(mem)
        if not pinned:
            self.k.call(self.k.drv.cuMemsetD8(mem.ptr, 0xFF, max(nbytes, 1)), "cuMemsetD8")  # poison
        return mem

    def put(self, array: np.ndarray) -> int:
        mem = self.k.to_device(array)
        self.mems.append(mem)
        return mem.ptr

    def close(self) -> None:
        self.k.call(self.k.drv.cuStreamSynchronize(self.stream), "cuStreamSynchronize")
        self.events.close()
        for mem in self.mems:
            mem.free()
        self.k.call(self.k.drv.cuStreamDestroy(self.stream), "cuStreamDestroy")

    def rate(self, nbytes: int, ms: float) -> str:
        gbps = nbytes / (ms / 1e3) / 1e9 if ms > 0 else 0.0
        share = 100 * gbps / self.copy_gbps if self.copy_gbps else 0.0
        return f"{gbps:.0f} GB/s ({share:.0f}% of copy)"

    # ----------------------------------------------------------------- rows

    def copy_row(self) -> Row:
        n = self.sizes.copy_mib << 20
        src, dst = self.alloc(n), self.alloc(n)
        drv = self.k.drv
        ms = self.events.time(
            lambda: self.k.call(drv.cuMemcpyDtoDAsync(dst.ptr, src.ptr, n, self.stream), "cuMemcpyDtoDAsync"),
            self.sizes.repeats,
        )
        self.copy_gbps = 2 * n / (ms / 1e3) / 1e9
        origins = "; ".join(f"{m}: {o}" for m, o in sorted(self.k.origins.items()))
        return Row("kernels: device copy", "ok",
                   f"{self.sizes.copy_mib} MiB device-to-device: {self.copy_gbps:.0f} GB/s (read + write). "
                   f"Device code: {origins}", {"d2d": ms})

    def preprocess_row(self, label: str, hw: tuple[int, int], spec: Any) -> Row:
        from vitron_rt.kernels.device import DeviceImage
        from vitron_rt.kernels.preprocess import preprocess_reference

        h, w = hw
        frame = self.rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = DeviceImage(self.put(frame), h, w, 3 * w)
        out_bytes = int(np.prod(spec.out_shape)) * np.dtype(spec.dtype).itemsize
        out = self.alloc(out_bytes)
        self.k.preprocess_into(image, spec, out.ptr, self.stream)
        same = np.array_equal(self.k.to_host(out.ptr, spec.out_shape, spec.dtype), preprocess_reference(frame, spec))
        ms = self.events.time(lambda: self.k.preprocess_into(image, spec, out.ptr, self.stream), self.sizes.repeats)
        return Row(f"kernels: preprocess {label}", "ok" if same else "FAIL",
                   f"{w}x{h} -> {spec.out_shape} {spec.dtype}, {spec.filter.value}/{spec.fit.value}: "
                   f"{'equal to' if same else 'DIFFERS from'} the reference; {self.rate(frame.nbytes + out_bytes, ms)}",
                   {"cuda": ms})

    def mask_row(self, label: str, hw: tuple[int, int]) -> Row:
        from vitron_rt.kernels.device import DeviceImage
        from vitron_rt.kernels.masks import MaskGeometry, mask_reference
        from vitron_rt.kernels.preprocess import fit_longest_side

        h, w = hw
        s, m = self.sizes.sam_size, self.sizes.logits_side
        geom = MaskGeometry((m, m), s, fit_longest_side(h, w, s), hw)
        logits = self.rng.standard_normal((m, m)).astype(np.float32)
        frame = self.rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        lptr, fptr = self.put(logits), self.put(frame)
        mask, count = self.alloc(h * w), self.alloc(8)

        def work() -> None:
            self.k.mask_postprocess_into(lptr, geom, 0.0, self.stream, mask_ptr=mask.ptr, mask_pitch=w,
                                         frame=DeviceImage(fptr, h, w, 3 * w), color=OVERLAY[0], alpha=OVERLAY[1],
                                         count_ptr=count.ptr)

        self.k.call(self.k.drv.cuMemsetD8(count.ptr, 0, 8), "cuMemsetD8")
        work()
        want_mask, want_frame = mask_reference(logits, geom, 0.0, frame, *OVERLAY)
        same = (np.array_equal(self.k.to_host(mask.ptr, (h, w), np.uint8), want_mask)
                and np.array_equal(self.k.to_host(fptr, frame.shape, np.uint8), want_frame)
                and int(self.k.to_host(count.ptr, (1,), np.uint64)[0]) == int(want_mask.sum()))
        ms = self.events.time(work, self.sizes.repeats)
        moved = logits.nbytes + 2 * frame.nbytes + h * w  # logits, frame read + written, mask
        return Row(f"kernels: mask + overlay {label}", "ok" if same else "FAIL",
                   f"{m}^2 logits -> {w}x{h} mask + overlay in place: {'equal to' if same else 'DIFFERS from'} "
                   f"the reference; {self.rate(moved, ms)} (upper bound: only masked pixels are written)",
                   {"cuda": ms})

    def sample_row(self) -> Row:
        from vitron_rt.kernels.sampling import TokenSampling, draw_margin, sample_reference

        v = self.sizes.vocab
        logits = (self.rng.standard_normal(v) * 3).astype(np.float32)
        lptr, uptr = self.put(logits), self.put(np.array([0.37]))
        work, out = self.alloc(self.k.sample_workspace_bytes(1, v) + 256), self.alloc(4)
        rows, worst = [], 0.0
        for params in (TokenSampling(greedy=True), TokenSampling(temperature=0.7, top_k=50, top_p=0.9)):
            self.k.sample_into(lptr, 1, v, params, uptr, out.ptr, work.ptr, self.stream)
            got = int(self.k.to_host(out.ptr, (1,), np.int32)[0])
            draw = sample_reference(logits, 0.37, params)
            ok = got == draw.token or draw_margin(draw, params.top_p) < 1e-6
            ms = self.events.time(
                lambda p=params: self.k.sample_into(lptr, 1, v, p, uptr, out.ptr, work.ptr, self.stream),
                self.sizes.repeats,
            )
            worst = max(worst, ms)
            rows.append((params, ok, ms))
        status = "ok" if all(ok for _, ok, _ in rows) else "FAIL"
        detail = "; ".join(
            f"{'greedy' if p.greedy else f'T={p.temperature} k={p.top_k} p={p.top_p}'}: {ms * 1e3:.0f} us"
            f"{'' if ok else ' DIFFERS'}" for p, ok, ms in rows
        )
        return Row("kernels: sample token", status,
                   f"V={v}, one int32 to the host per step: {detail}; {self.rate(v * 4, rows[0][2])} for greedy",
                   {"greedy": rows[0][2], "sampled": rows[1][2]})

    def gather_row(self) -> Row:
        from vitron_rt.kernels.gather import gather_reference

        k, d, t = self.sizes.signal_tokens, self.sizes.hidden, 64
        hidden = self.rng.standard_normal((t, d)).astype(np.float16)
        rows = self.rng.integers(0, t, k).astype(np.int32)
        sptr, rptr = self.put(hidden), self.put(rows)
        dst = self.alloc(k * d * 4)

        def work() -> None:
            self.k.gather_rows_into(sptr, True, d, rptr, k, d, dst.ptr, False, d, self.stream)

        work()
        same = np.array_equal(self.k.to_host(dst.ptr, (k, d), np.float32), gather_reference(hidden, rows, "float32"))
        ms = self.events.time(work, self.sizes.repeats)
        return Row("kernels: gather signal rows", "ok" if same else "FAIL",
                   f"{k} x {d} fp16 rows -> fp32 projector input: {'equal' if same else 'DIFFERS'}; "
                   f"{ms * 1e3:.1f} us (launch-bound)", {"cuda": ms})

    def frame_rows(self, label: str, hw: tuple[int, int], filt: Any) -> Row:
        """One frame of the video path's pixel work on the GPU (with its copies) and on the CPU."""
        from vitron_rt.kernels.backends import CpuKernels
        from vitron_rt.kernels.device import DeviceImage
        from vitron_rt.kernels.masks import MaskGeometry
        from vitron_rt.kernels.preprocess import Fit, PreprocessSpec, fit_longest_side, preprocess_cpu

        h, w = hw
        s, m = self.sizes.sam_size, self.sizes.logits_side
        spec = PreprocessSpec(s, MEAN, STD, filt, Fit.PAD)
        geom = MaskGeometry((m, m), s, fit_longest_side(h, w, s), hw)
        frame = self.rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        logits = self.rng.standard_normal((m, m)).astype(np.float32)
        host = self.alloc(frame.nbytes, pinned=True)
        host.host_view()[:] = frame.reshape(-1)
        host_count = self.alloc(8, pinned=True)
        dframe, pixels = self.alloc(frame.nbytes), self.alloc(3 * s * s * 4)
        lptr, count = self.put(logits), self.alloc(8)  # the logits come from the mask decoder, on the device
        drv, st = self.k.drv, self.stream

        def gpu_frame() -> None:
            self.k.call(drv.cuMemcpyHtoDAsync(dframe.ptr, host.ptr, frame.nbytes, st), "cuMemcpyHtoDAsync")
            self.k.preprocess_into(DeviceImage(dframe.ptr, h, w, 3 * w), spec, pixels.ptr, st)
            self.k.call(drv.cuMemsetD8Async(count.ptr, 0, 8, st), "cuMemsetD8Async")
            self.k.mask_postprocess_into(lptr, geom, 0.0, st, frame=DeviceImage(dframe.ptr, h, w, 3 * w),
                                         color=OVERLAY[0], alpha=OVERLAY[1], count_ptr=count.ptr)
            self.k.call(drv.cuMemcpyDtoHAsync(host.ptr, dframe.ptr, frame.nbytes, st), "cuMemcpyDtoHAsync")
            self.k.call(drv.cuMemcpyDtoHAsync(host_count.ptr, count.ptr, 8, st), "cuMemcpyDtoHAsync")

        def copy_in() -> None:
            self.k.call(drv.cuMemcpyHtoDAsync(dframe.ptr, host.ptr, frame.nbytes, st), "cuMemcpyHtoDAsync")

        def copy_out() -> None:
            self.k.call(drv.cuMemcpyDtoHAsync(host.ptr, dframe.ptr, frame.nbytes, st), "cuMemcpyDtoHAsync")

        gpu_ms = self.events.time(gpu_frame, self.sizes.repeats)
        h2d_ms = self.events.time(copy_in, self.sizes.repeats)
        d2h_ms = self.events.time(copy_out, self.sizes.repeats)
        cpu = CpuKernels()
        out = np.empty(spec.out_shape, np.float32)
        shown = frame.copy()  # blended in place, as the pipeline does

        def cpu_frame() -> None:
            preprocess_cpu(frame, spec, out=out)
            cpu.mask_postprocess(logits, geom, 0.0, shown, *OVERLAY)

        cpu_ms = _cpu_ms(cpu_frame, max(2, self.sizes.repeats // 4))
        return Row(f"kernels: frame {label} {filt.value}", "ok",
                   f"{w}x{h}, SAM {s} pad + {m}^2 mask/overlay: GPU {gpu_ms:.2f} ms/frame incl. H2D {h2d_ms:.2f} + "
                   f"D2H {d2h_ms:.2f} ms; CPU (OpenCV/numpy) {cpu_ms:.2f} ms: {cpu_ms / gpu_ms:.1f}x",
                   {"gpu_frame": gpu_ms, "h2d": h2d_ms, "d2h": d2h_ms, "cpu_frame": cpu_ms})


def kernel_checks(kernels: Any | None = None, sizes: Sizes = Sizes(), info: dict | None = None) -> list[Row]:
    """The section's rows; one skipped row when the CUDA kernels cannot run here.
    `info`, when given, gets "device": the card's name and compute capability."""
    from vitron_rt.kernels.errors import KernelUnavailable
    from vitron_rt.kernels.preprocess import Filter, Fit, PreprocessSpec

    if kernels is None:
        from vitron_rt.kernels.device import CudaKernels

        try:
            kernels = CudaKernels().activate()
        except KernelUnavailable as e:
            return [Row("kernels", "skipped", str(e))]
    if info is not None:
        info["device"] = f"{kernels.device_name} (sm_{kernels.capability[0]}{kernels.capability[1]})"
    section = _Section(kernels, sizes)
    rows: list[Row] = []
    try:
        rows.append(section.copy_row())
        for label, hw in sizes.frames:
            rows.append(section.preprocess_row(f"{label} SAM linear", hw,
                                               PreprocessSpec(sizes.sam_size, MEAN, STD, Filter.LINEAR, Fit.PAD)))
            rows.append(section.preprocess_row(f"{label} SAM pillow", hw,
                                               PreprocessSpec(sizes.sam_size, MEAN, STD, Filter.PIL_BILINEAR, Fit.PAD)))
            rows.append(section.preprocess_row(f"{label} CLIP pillow", hw,
                                               PreprocessSpec(sizes.clip_size, MEAN, STD, Filter.PIL_BICUBIC, Fit.CROP)))
            rows.append(section.mask_row(label, hw))
        rows.append(section.sample_row())
        rows.append(section.gather_row())
        for label, hw in sizes.frames:
            for filt in (Filter.LINEAR, Filter.PIL_BILINEAR):
                rows.append(section.frame_rows(label, hw, filt))
    except Exception as e:  # a failed CUDA call is this section's FAIL row, not the script's crash
        rows.append(Row("kernels", "FAIL", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"))
    finally:
        section.close()
    return rows


def markdown(rows: list[Row], device: str) -> str:
    """The section as a Markdown table for BENCHMARKS.md, headed by the card."""
    lines = [f"### Kernels on {device}", "", "| check | status | ms | detail |", "|---|---|---|---|"]
    for r in rows:
        if r.check.startswith("kernels"):
            times = ", ".join(f"{k} {v:.3g}" for k, v in r.times_ms.items())
            lines.append(f"| {r.check.removeprefix('kernels: ')} | {r.status} | {times} | {r.detail} |")
    return "\n".join(lines) + "\n"
