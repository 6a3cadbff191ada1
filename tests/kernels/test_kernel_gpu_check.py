"""The GPU check's kernels section (vitron_rt/bench/gpu_kernels.py) runs end to end on
the kernel emulator with tiny sizes (its timings mean nothing there; its parity checks
and its code paths do), and is one skipped row without a GPU."""

from __future__ import annotations

import shutil

import pytest

from vitron_rt.bench.gpu_kernels import Sizes, kernel_checks, markdown
from vitron_rt.kernels.device import CudaKernels

TINY = Sizes(frames=(("tiny", (30, 46)),), sam_size=32, clip_size=16, logits_side=8, vocab=300, hidden=64,
             signal_tokens=3, copy_mib=1, repeats=2)


def test_section_runs_on_the_emulator(tmp_path):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH")
    from _kernel_emulation import FakeDriver, build_emulator, nvrtc_or_placeholder_images

    k = CudaKernels(driver=FakeDriver(build_emulator(tmp_path)), images=nvrtc_or_placeholder_images(False),
                    sample_threads=64).activate()
    info: dict = {}
    rows = kernel_checks(k, TINY, info)
    assert [r.status for r in rows] == ["ok"] * len(rows), [r for r in rows if r.status != "ok"]
    checks = [r.check for r in rows]
    assert checks[0] == "kernels: device copy" and "kernels: sample token" in checks
    assert sum(c.startswith("kernels: frame") for c in checks) == 2  # linear and pillow
    assert info["device"] == "Emulated CUDA device (sm_89)"
    table = markdown(rows, info["device"])
    assert table.startswith("### Kernels on Emulated CUDA device (sm_89)") and table.count("\n| ") == len(rows) + 1


def test_section_is_one_skipped_row_without_a_gpu(monkeypatch):
    from vitron_rt.kernels.errors import KernelUnavailable

    def unavailable(self):
        raise KernelUnavailable("no usable CUDA GPU: test")

    monkeypatch.setattr(CudaKernels, "activate", unavailable)
    rows = kernel_checks()
    assert [(r.check, r.status, r.detail) for r in rows] == [("kernels", "skipped", "no usable CUDA GPU: test")]
