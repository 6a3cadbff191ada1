"""Picking the backend, the package's import rule, and the runtime's pixel work going
through it (media preprocessing, the pipelines' mask postprocess)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vitron_rt import kernels
from vitron_rt.bundle import ImagePreprocess
from vitron_rt.kernels import backends as backend_mod
from vitron_rt.kernels.backends import CpuKernels
from vitron_rt.kernels.errors import KernelUnavailable


def test_kernels_import_nothing_above_them():
    code = (
        "import sys, vitron_rt.kernels as k; k.backend(); "
        "print(','.join(sorted(m for m in sys.modules if m.startswith('vitron_rt.') "
        "and not m.startswith('vitron_rt.kernels'))))"
    )
    env = {"VITRON_KERNELS": "cpu", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == ""
    code = "import sys, vitron_rt.kernels; print(any(m.startswith('cuda') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.fixture
def fresh_choice(monkeypatch):
    """Forget the process's choice for one test (and restore it after)."""
    monkeypatch.setattr(backend_mod, "_chosen", None)
    monkeypatch.setattr(backend_mod, "_reason", "")


def test_env_selects_the_cpu(monkeypatch, fresh_choice):
    monkeypatch.setenv("VITRON_KERNELS", "cpu")
    assert isinstance(kernels.backend(), CpuKernels) and "cpu" in kernels.backend_reason()


def test_auto_falls_back_to_the_cpu_and_says_why(monkeypatch, fresh_choice):
    from vitron_rt.kernels import device

    def unavailable(self):
        raise KernelUnavailable("no usable CUDA GPU: test")

    monkeypatch.setattr(device.CudaKernels, "activate", unavailable)
    monkeypatch.setenv("VITRON_KERNELS", "auto")
    assert kernels.backend().name == "cpu" and kernels.backend_reason() == "no usable CUDA GPU: test"
    monkeypatch.setattr(backend_mod, "_chosen", None)
    monkeypatch.setenv("VITRON_KERNELS", "cuda")
    with pytest.raises(KernelUnavailable, match="test"):
        kernels.backend()
    monkeypatch.setenv("VITRON_KERNELS", "tpu")
    with pytest.raises(ValueError, match="VITRON_KERNELS"):
        kernels.backend()


class Spy(CpuKernels):
    """The CPU backend, counting calls."""

    name = "spy"

    def __init__(self):
        self.calls: list[str] = []

    def preprocess(self, *a, **kw):
        self.calls.append("preprocess")
        return super().preprocess(*a, **kw)

    def mask_postprocess(self, *a, **kw):
        self.calls.append("mask_postprocess")
        return super().mask_postprocess(*a, **kw)

    def overlay(self, *a, **kw):
        self.calls.append("overlay")
        return super().overlay(*a, **kw)


def test_runtime_pixel_work_runs_through_the_kernels():
    from vitron_rt.kernels.masks import overlay_reference, upsample_cpu
    from vitron_rt.runtime.media import ResizeMode, preprocess_image, preprocess_images
    from vitron_rt.runtime.pipelines.postprocess import mask_and_overlay, mask_geometry, mask_logits_to_mask, overlay

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    pp = ImagePreprocess(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    logits = rng.standard_normal((1, 1, 16, 16)).astype(np.float32)
    with kernels.use_backend(Spy()) as spy:
        pixels = preprocess_image(img, pp, ResizeMode.PAD)
        batch = preprocess_images([img, img], pp)
        mask = mask_logits_to_mask(logits, (90, 120), 64)
        shown = overlay(img, mask, (255, 0, 0), 0.5)
        frame = img.copy()
        fused = mask_and_overlay(logits, frame, 64, 0.0, (255, 0, 0), 0.5)
    assert spy.calls == ["preprocess"] * 3 + ["mask_postprocess", "overlay", "mask_postprocess"]
    assert pixels.shape == (1, 3, 64, 64) and batch.shape == (2, 3, 64, 64)
    np.testing.assert_array_equal(mask, upsample_cpu(logits, mask_geometry(logits, (90, 120), 64)) > 0)
    np.testing.assert_array_equal(shown, overlay_reference(img, mask, (255, 0, 0), 0.5))
    np.testing.assert_array_equal(fused, mask)
    np.testing.assert_array_equal(frame, shown)  # in place, the same pixels
