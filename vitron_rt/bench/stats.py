"""Timing, memory and machine-limit measurements that every benchmark shares.

A figure is worth only what its reference is worth, so the machine's own limits are
measured in the same run as the figures set against them:

  read_bandwidth()   GB/s of a large fp32 matrix-vector product: the rate a decode step
                     can read weights at (a decode step reads every weight once)
  gemm_rate()        GFLOP/s of a large fp32 matrix product: the ceiling of the
                     compute-bound encoders and UNet steps

`measure(fn)` warms up, repeats and keeps every sample, so median, p90 and p99 come from
the same samples. Percentiles use the nearest-rank method: with 20 samples p99 is the
largest, which is the honest reading of so few.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# Sizes of the machine-limit probes: well beyond the last-level cache, so they read memory.
BANDWIDTH_ROWS = 8192
BANDWIDTH_COLS = 8192  # 256 MiB of fp32 weights
GEMM_N = 2048  # 17.2 GFLOP per product


@dataclass
class Timing:
    """Samples of one timed thing, in milliseconds, and the statistics of them."""

    samples_ms: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile, q in [0, 100]."""
        if not self.samples_ms:
            return math.nan
        ordered = sorted(self.samples_ms)
        rank = max(1, math.ceil(q / 100.0 * len(ordered)))
        return ordered[rank - 1]

    @property
    def median(self) -> float:
        if not self.samples_ms:
            return math.nan
        return float(np.median(self.samples_ms))

    @property
    def p90(self) -> float:
        return self.percentile(90)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples_ms)) if self.samples_ms else math.nan

    def to_dict(self) -> dict[str, float | int]:
        return {
            "median_ms": round(self.median, 4),
            "p90_ms": round(self.p90, 4),
            "p99_ms": round(self.p99, 4),
            "mean_ms": round(self.mean, 4),
            "n": self.n,
        }


def measure(
    fn: Callable[[], object],
    *,
    warmup: int = 2,
    repeat: int = 10,
    min_time_s: float = 0.0,
    max_time_s: float = math.inf,
) -> Timing:
    """Call `fn` `warmup` times untimed, then at least `repeat` times timed (more while
    the timed total is under `min_time_s`), stopping early once `max_time_s` is spent
    with at least 3 samples."""
    for _ in range(warmup):
        fn()
    timing = Timing()
    spent = 0.0
    while True:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        timing.samples_ms.append(dt * 1e3)
        spent += dt
        if timing.n >= repeat and spent >= min_time_s:
            break
        if spent >= max_time_s and timing.n >= 3:
            break
    return timing


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, MiB: VmHWM from /proc on Linux.
    Not getrusage's ru_maxrss there: Linux carries the pre-exec high-water mark into it, so
    a child started by a large process (the bench, with torch loaded) would report its
    parent's peak. Elsewhere ru_maxrss (macOS reports bytes)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024.0


def current_rss_mib() -> float:
    """This process's resident set size now, MiB (from /proc on Linux; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        return peak_rss_mib()


@dataclass(frozen=True)
class MachineLimits:
    """This machine's measured ceilings, with the probe that measured each."""

    read_gb_s: float  # fp32 matrix-vector product, weights read once per call
    gemm_gflop_s: float  # fp32 matrix product
    threads: int
    read_probe: str
    gemm_probe: str

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "read_gb_s": round(self.read_gb_s, 2),
            "gemm_gflop_s": round(self.gemm_gflop_s, 1),
            "threads": self.threads,
            "read_probe": self.read_probe,
            "gemm_probe": self.gemm_probe,
        }


def _ort_single_op(op: str, shapes: dict[str, tuple[int, ...]], weight: np.ndarray, threads: int):
    """An ONNX Runtime session holding one `op` (MatMul) with `weight` as an initializer:
    the probe runs through the same MLAS kernels the bundles do, not numpy's BLAS."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    x_shape = shapes["x"]
    y_shape = shapes["y"]
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "w"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def read_bandwidth(threads: int, *, repeat: int = 20) -> tuple[float, str]:
    """GB/s that a (1,K)x(K,N) fp32 MatMul on ONNX Runtime reads its weight at: the
    decode step's access pattern (every weight read once, no reuse). Median of `repeat`."""
    k, n = BANDWIDTH_ROWS, BANDWIDTH_COLS
    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, n), dtype=np.float32)
    sess = _ort_single_op("MatMul", {"x": (1, k), "y": (1, n)}, w, threads)
    x = rng.standard_normal((1, k), dtype=np.float32)
    t = measure(lambda: sess.run(None, {"x": x}), warmup=3, repeat=repeat)
    gb = w.nbytes / 1e9
    return gb / (t.median / 1e3), f"ORT MatMul (1,{k})x({k},{n}) fp32, {w.nbytes >> 20} MiB weight, median of {t.n}"


def gemm_rate(threads: int, *, repeat: int = 5) -> tuple[float, str]:
    """GFLOP/s of an (N,N)x(N,N) fp32 MatMul on ONNX Runtime (MLAS sgemm). Median."""
    n = GEMM_N
    rng = np.random.default_rng(1)
    w = rng.standard_normal((n, n), dtype=np.float32)
    sess = _ort_single_op("MatMul", {"x": (n, n), "y": (n, n)}, w, threads)
    x = rng.standard_normal((n, n), dtype=np.float32)
    t = measure(lambda: sess.run(None, {"x": x}), warmup=1, repeat=repeat)
    flops = 2.0 * n * n * n
    return flops / (t.median / 1e3) / 1e9, f"ORT MatMul ({n},{n})x({n},{n}) fp32, median of {t.n}"


def machine_limits(threads: int) -> MachineLimits:
    """Measure both ceilings with `threads` intra-op threads."""
    read, read_probe = read_bandwidth(threads)
    gemm, gemm_probe = gemm_rate(threads)
    return MachineLimits(read, gemm, threads, read_probe, gemm_probe)
