"""What this machine's GPU can do for vitron-rt, checked and timed in one go.

    python -m vitron_rt.bench.gpu_check [BUNDLE] [--json FILE] [--kernels-md FILE]

Runs every check the machine allows and skips the rest, saying why (no torch, no CUDA,
no CuPy, no cuda-python, no TensorRT, no onnxruntime-gpu); it never crashes on a
missing piece. Every GPU result is compared against the CPU's:

  torch_matmul       PyTorch CUDA fp32 matmul (TF32 off) vs the CPU product, and times
  cupy_matmul        the same through CuPy, when installed
  cuda_roundtrip     cuda-python: stream, pinned host + device buffers, H2D / D2H copies
                     round-trip exactly; bandwidth from CUDA events
  kernels: ...       vitron_rt.kernels on the GPU (gpu_kernels.py): each kernel against its
                     numpy reference, its GB/s against the device copy bandwidth measured
                     in the same run, and one video frame's preprocess + mask/overlay at
                     720p and 1080p against OpenCV on the CPU (GPU time includes H2D / D2H)
  BUNDLE, per component (the spec's first validation shape):
  ort_cpu            vitron-rt's ONNX Runtime runner vs the PyTorch reference on the CPU
  torch_cuda         the PyTorch reference on CUDA vs on the CPU
  ort_cuda           ONNX Runtime's CUDA execution provider vs the CPU (onnxruntime-gpu)
  trt                a TensorRT engine built into BUNDLE/engines (fp32) vs ONNX Runtime CPU,
                     through TrtRunner.infer and through bind + infer_async on device arrays

Exit status: 0 when nothing failed (skips are not failures), 1 when a comparison failed.
The bundle part uses the export package's specs for inputs and reference calls, as
`vitron-rt check` does (it needs torch, which a GPU check has anyway).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MATMUL_N = 2048
ROUNDTRIP_MIB = 64
REPEATS = 10


@dataclass
class Row:
    """One check: `status` is ok, skipped or FAIL; `detail` says what was compared or why
    it was skipped; `times_ms` holds the timings by what was timed."""

    check: str
    status: str
    detail: str
    times_ms: dict[str, float] = field(default_factory=dict)


def _skip(check: str, why: str) -> Row:
    return Row(check, "skipped", why)


def _timed(fn: Callable[[], Any], repeats: int = REPEATS, sync: Callable[[], None] = lambda: None) -> float:
    """Mean milliseconds per call after one warm-up call."""
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) * 1e3 / repeats


def _rel_err(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.abs(ref.astype(np.float64) - got.astype(np.float64)).max() / (np.abs(ref).max() + 1e-12))


def _torch_cuda() -> tuple[Any, str]:
    """(torch, "") when PyTorch sees a CUDA device, else (torch or None, why not)."""
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed"
    if not torch.cuda.is_available():
        return torch, f"no GPU: torch {torch.__version__} reports torch.cuda.is_available() False"
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for the comparisons
    torch.backends.cudnn.allow_tf32 = False
    return torch, ""


# --------------------------------------------------------------------------- environment


def environment() -> list[str]:
    """One line per piece of the GPU stack: present (with its version) or missing."""
    lines = [f"python {platform.python_version()} on {platform.machine()} {platform.system()}"]
    torch, why = _torch_cuda()
    if torch is None:
        lines.append("torch: not installed")
    else:
        dev = torch.cuda.get_device_name(0) if not why else why
        lines.append(f"torch {torch.__version__}: {dev}")
    for name in ("cupy", "tensorrt", "polygraphy"):
        try:
            mod = __import__(name)
            lines.append(f"{name} {getattr(mod, '__version__', '?')}")
        except Exception as e:  # a broken install is reported, not raised
            lines.append(f"{name}: not usable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    from vitron_rt.engines.deps import require_cudart, require_gpu
    from vitron_rt.engines.errors import MissingDependencyError

    try:
        rt = require_cudart()
        lines.append(f"cuda-python: {require_gpu(rt)} CUDA device(s)")
    except MissingDependencyError as e:
        lines.append(f"cuda-python: {e}")
    import onnxruntime

    lines.append(f"onnxruntime {onnxruntime.__version__}: {', '.join(onnxruntime.get_available_providers())}")
    return lines


# --------------------------------------------------------------------------- GPU basics


def torch_matmul() -> Row:
    """A 2048^2 fp32 matmul on CUDA against the fp64 CPU product, and both timings."""
    torch, why = _torch_cuda()
    if why:
        return _skip("torch_matmul", why)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(MATMUL_N, MATMUL_N, generator=gen)
    b = torch.randn(MATMUL_N, MATMUL_N, generator=gen)
    ref = (a.double() @ b.double()).numpy()
    da, db = a.cuda(), b.cuda()
    got = (da @ db).cpu().numpy()
    err = _rel_err(ref, got)
    cpu_ms = _timed(lambda: a @ b, repeats=3)
    gpu_ms = _timed(lambda: da @ db, sync=torch.cuda.synchronize)
    status = "ok" if err < 1e-4 else "FAIL"
    return Row(
        "torch_matmul",
        status,
        f"{MATMUL_N}^2 fp32 on {torch.cuda.get_device_name(0)}: max rel err {err:.2e} vs fp64 CPU",
        {"cpu": cpu_ms, "cuda": gpu_ms},
    )


def cupy_matmul() -> Row:
    """The same matmul through CuPy (a CUDA stack that does not come with PyTorch)."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a CuPy built for another CUDA
        return _skip("cupy_matmul", f"CuPy is not usable ({type(e).__name__})")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return _skip("cupy_matmul", f"no GPU: CuPy says {str(e).splitlines()[0]}")
    if count < 1:
        return _skip("cupy_matmul", "no GPU: CuPy sees 0 devices")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32)
    b = rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    da, db = cupy.asarray(a), cupy.asarray(b)
    err = _rel_err(ref, cupy.asnumpy(da @ db))
    sync = cupy.cuda.Device().synchronize
    gpu_ms = _timed(lambda: da @ db, sync=sync)
    cpu_ms = _timed(lambda: a @ b, repeats=3)
    return Row(
        "cupy_matmul",
        "ok" if err < 1e-4 else "FAIL",
        f"max rel err {err:.2e} vs fp64 CPU",
        {"cpu": cpu_ms, "cuda": gpu_ms},
    )


def cuda_roundtrip() -> Row:
    """64 MiB through the buffers the TensorRT runner uses: pinned -> device -> pinned on a
    cuda-python stream, checked byte for byte, timed with CUDA events."""
    from vitron_rt.engines.errors import MissingDependencyError

    try:
        from vitron_rt.engines import cuda as cu

        cu.cudart()
    except MissingDependencyError as e:
        return _skip("cuda_roundtrip", str(e))
    nbytes = ROUNDTRIP_MIB << 20
    data = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
    host_in, host_out, dev = cu.PinnedBuffer(nbytes), cu.PinnedBuffer(nbytes), cu.DeviceBuffer(nbytes)
    start, mid, end = cu.Event(), cu.Event(), cu.Event()
    try:
        with cu.Stream() as stream:
            host_in.view(np.uint8, (nbytes,))[:] = data
            host_out.view(np.uint8, (nbytes,))[:] = 0
            start.record(stream)
            cu.copy_async(dev.ptr, host_in.ptr, nbytes, stream)
            mid.record(stream)
            cu.copy_async(host_out.ptr, dev.ptr, nbytes, stream)
            end.record(stream)
            stream.synchronize()
            h2d, d2h = mid.elapsed_ms(start), end.elapsed_ms(mid)
            same = bool(np.array_equal(host_out.view(np.uint8, (nbytes,)), data))
    finally:
        for buf in (host_in, host_out, dev):
            buf.free()
        for ev in (start, mid, end):
            ev.close()

    def gbps(ms: float) -> float:
        return nbytes / (ms / 1e3) / 1e9

    return Row(
        "cuda_roundtrip",
        "ok" if same else "FAIL",
        f"{ROUNDTRIP_MIB} MiB pinned->device->pinned {'identical' if same else 'DIFFERS'}; "
        f"H2D {gbps(h2d):.1f} GB/s, D2H {gbps(d2h):.1f} GB/s",
        {"h2d": h2d, "d2h": d2h},
    )


# --------------------------------------------------------------------------- a bundle


def bundle_checks(path: Path) -> list[Row]:
    """Per component: ONNX Runtime (CPU, and CUDA EP) and TensorRT against the PyTorch
    reference on the CPU and on CUDA."""
    from vitron_rt.bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(path)
    except BundleError as e:
        return [Row("bundle", "FAIL", str(e))]
    try:
        import torch  # noqa: F401

        import vitron_rt.export.specs  # noqa: F401  (registers the component specs)
        from vitron_rt.models.source import from_source
    except ImportError as e:
        return [_skip("bundle", f"the PyTorch reference needs the export extra ({e})")]
    try:
        ref = from_source(bundle.manifest.source)
    except Exception as e:  # a checkpoint that moved: this row fails, the script goes on
        return [Row("bundle", "FAIL", f"cannot rebuild the PyTorch reference: {' '.join(str(e).split())[:300]}")]
    torch_mod, cuda_why = _torch_cuda()
    trt_why = _trt_available()
    ort_cuda_why = _ort_cuda_available()
    # A piece missing for every component is said once, not once per component.
    rows = [
        _skip(f"all components: {c}", why)
        for c, why in (("torch_cuda", cuda_why), ("ort_cuda", ort_cuda_why), ("trt", trt_why))
        if why
    ]
    for name in bundle.manifest.components:
        try:
            rows += _component_rows(bundle, ref, name, torch_mod, not cuda_why, not ort_cuda_why, not trt_why)
        except Exception as e:  # one component's failure is its row, not the end of the report
            rows.append(Row(name, "FAIL", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"))
    return rows


def _component_rows(
    bundle: Any, ref: Any, name: str, torch_mod: Any, torch_cuda: bool, ort_cuda: bool, trt: bool
) -> list[Row]:
    """One component on the spec's first validation shape, on every engine available."""
    from vitron_rt.export.spec import get_spec

    module = ref.components[name]
    spec = get_spec(name).bind(module)
    case = spec.resolve(module).cases[0]
    feeds_t = spec.make_inputs(module, case)
    feeds = {n: t.numpy() for n, t in feeds_t.items()}
    with torch_mod.no_grad():
        cpu_out = [t.numpy() for t in spec.run(module, feeds_t)]
        cpu_ms = _timed(lambda: spec.run(module, feeds_t), repeats=3)
    expected = dict(zip(spec.output_names, cpu_out))
    rows = [_ort_row(bundle, name, feeds, expected, "cpu", cpu_ms)]
    if torch_cuda:
        rows.append(_torch_cuda_row(torch_mod, module, spec, feeds_t, expected, name))
    if ort_cuda:
        rows.append(_ort_row(bundle, name, feeds, expected, "cuda", cpu_ms))
    if trt:
        rows.append(_trt_row(bundle, name, feeds, expected))
    return rows


def _ort_cuda_available() -> str:
    """ "" when this onnxruntime has the CUDA execution provider, else why not."""
    import onnxruntime

    from vitron_rt.engines.deps import ORT_GPU_HINT

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ""
    return f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider: {ORT_GPU_HINT}"


def _max_err(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> tuple[float, str]:
    worst, where = 0.0, ""
    for n, ref in expected.items():
        e = float(np.abs(ref.astype(np.float64) - np.asarray(got[n]).astype(np.float64)).max()) if ref.size else 0.0
        if e >= worst:
            worst, where = e, n
    return worst, where


def _limit(bundle: Any, name: str, output: str) -> float:
    """The component's own tolerance for the worst output (atol, scaled x10 across devices)."""
    tol = bundle.component(name).tolerances.get(output)
    return 10 * (tol.atol if tol is not None else 1e-4)


def _ort_row(bundle: Any, name: str, feeds: dict, expected: dict, device: str, ref_ms: float) -> Row:
    from vitron_rt.engines import MissingDependencyError, OrtOptions, Provider, make_runner

    check = f"{name}: ort_{device}"
    options = OrtOptions(providers=(Provider.CUDA,) if device == "cuda" else (Provider.CPU,), cache_optimized=False)
    try:
        with make_runner(bundle, name, "ort", options) as runner:
            got = runner.infer(feeds)
            ms = _timed(lambda: runner.infer(feeds))
    except MissingDependencyError as e:
        return _skip(check, str(e))
    err, out = _max_err(expected, got)
    status = "ok" if err <= _limit(bundle, name, out) else "FAIL"
    return Row(check, status, f"max abs err {err:.2e} vs torch cpu ({out})", {"torch_cpu": ref_ms, f"ort_{device}": ms})


def _torch_cuda_row(torch: Any, module: Any, spec: Any, feeds_t: dict, expected: dict, name: str) -> Row:
    module.cuda()
    try:
        dev_feeds = {n: t.cuda() for n, t in feeds_t.items()}
        with torch.no_grad():
            got = {n: t.cpu().numpy() for n, t in zip(spec.output_names, spec.run(module, dev_feeds))}
            ms = _timed(lambda: spec.run(module, dev_feeds), sync=torch.cuda.synchronize)
    finally:
        module.cpu()
    err, out = _max_err(expected, got)
    status = "ok" if err <= 1e-3 else "FAIL"
    return Row(f"{name}: torch_cuda", status, f"max abs err {err:.2e} vs torch cpu ({out})", {"torch_cuda": ms})


def _trt_available() -> str:
    """ "" when TensorRT can build and run here, else the one-line reason."""
    from vitron_rt.engines.deps import require_polygraphy, require_trt_stack
    from vitron_rt.engines.errors import MissingDependencyError

    try:
        require_trt_stack()
        require_polygraphy()
    except MissingDependencyError as e:
        return str(e)
    return ""


def _trt_row(bundle: Any, name: str, feeds: dict, expected: dict) -> Row:
    """Build (or reuse) the fp32 engine, run it through `infer`, then again through `bind`
    + `infer_async` on device arrays with a shared activation block."""
    from vitron_rt.engines import cuda as cu
    from vitron_rt.engines.trt import SharedActivationMemory, TrtRunner
    from vitron_rt.engines.trt_build import TrtEngineBuilder

    check = f"{name}: trt"
    try:
        built = TrtEngineBuilder(bundle, name)()
        memory = SharedActivationMemory()
        with cu.Stream() as stream, TrtRunner.for_bundle(bundle, name, memory=memory, stream=stream) as runner:
            got = runner.infer(feeds)
            ms = _timed(lambda: runner.infer(feeds))
            # The same run over device arrays the caller owns, queued on the caller's stream.
            dev = {n: cu.DeviceBuffer(a.nbytes) for n, a in feeds.items()}
            pinned = {n: cu.PinnedBuffer(a.nbytes) for n, a in feeds.items()}
            try:
                for n, a in feeds.items():
                    pinned[n].view(a.dtype, a.shape)[...] = a
                    cu.copy_async(dev[n].ptr, pinned[n].ptr, a.nbytes, stream)
                runner.bind({n: cu.DeviceArray(dev[n].ptr, a.shape, a.dtype) for n, a in feeds.items()})
                runner.infer_async(stream)
                outs = {n: runner.output_array(n) for n in expected}
                for n, o in outs.items():
                    pinned[n + ":out"] = cu.PinnedBuffer(o.nbytes)
                    cu.copy_async(pinned[n + ":out"].ptr, o.ptr, o.nbytes, stream)
                stream.synchronize()
                host = {n: pinned[n + ":out"].view(o.dtype, o.shape).copy() for n, o in outs.items()}
            finally:
                for buf in (*dev.values(), *pinned.values()):
                    buf.free()
    except Exception as e:  # a failed build or run is this row's FAIL, not the script's crash
        return Row(check, "FAIL", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
    err, out = _max_err(expected, got)
    err_async, _ = _max_err(expected, host)
    ok = err <= _limit(bundle, name, out) and err_async <= _limit(bundle, name, out)
    what = "reused" if built.reused else f"built in {built.seconds:.1f} s"
    return Row(
        check,
        "ok" if ok else "FAIL",
        f"engine {what}; max abs err {err:.2e} (infer), {err_async:.2e} (infer_async) vs torch cpu; "
        f"shared activation block {memory.nbytes} B",
        {"trt": ms},
    )


# --------------------------------------------------------------------------- report


def format_rows(rows: list[Row]) -> str:
    """A fixed-width table: check, status, timings, detail."""
    lines = [("check", "status", "times (ms)", "detail")]
    for r in rows:
        times = " ".join(f"{k}={v:.3g}" for k, v in r.times_ms.items())
        lines.append((r.check, r.status, times, r.detail))
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    out = ["  ".join(c.ljust(w) for c, w in zip(line[:3], widths)) + "  " + line[3] for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
    return "\n".join(out)


def run(bundle: Path | None, info: dict | None = None) -> list[Row]:
    """Every check, in the order the table shows them (`info` gets the kernels' device)."""
    from vitron_rt.bench.gpu_kernels import kernel_checks

    rows = [torch_matmul(), cupy_matmul(), cuda_roundtrip()]
    rows += kernel_checks(info=info)
    if bundle is not None:
        rows += bundle_checks(bundle)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitron_rt.bench.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("bundle", nargs="?", type=Path, help="a bundle to run component by component")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--kernels-md", type=Path, metavar="FILE",
                        help="also write the kernels section as a Markdown table (for BENCHMARKS.md)")
    args = parser.parse_args(argv)
    for line in environment():
        print(line)
    print()
    info: dict = {}
    rows = run(args.bundle, info)
    print(format_rows(rows))
    skipped = [r for r in rows if r.status == "skipped"]
    failed = [r for r in rows if r.status == "FAIL"]
    print(f"\n{len(rows) - len(skipped) - len(failed)} ok, {len(skipped)} skipped, {len(failed)} failed")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    if args.kernels_md:
        from vitron_rt.bench.gpu_kernels import markdown

        args.kernels_md.write_text(markdown(rows, info.get("device", "no GPU (section skipped)")))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
