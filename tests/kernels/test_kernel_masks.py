"""The mask postprocess on the CPU: the kernel's numpy model against OpenCV (the runtime's
path) and the overlay table against cv2.addWeighted, on random shapes."""

from __future__ import annotations

import numpy as np
import pytest

from vitron_rt.kernels.backends import CpuKernels
from vitron_rt.kernels.masks import (
    LOGIT_RTOL,
    MaskGeometry,
    blend_lut,
    mask_reference,
    overlay_cpu,
    overlay_reference,
    upsample_cpu,
    upsample_reference,
)
from vitron_rt.kernels.preprocess import fit_longest_side

RNG = np.random.default_rng(5)


def sam_geometry(m: int, s: int, hw: tuple[int, int]) -> MaskGeometry:
    return MaskGeometry((m, m), s, fit_longest_side(*hw, s), hw)


GEOMETRIES = [
    sam_geometry(256, 1024, (1080, 1920)), sam_geometry(256, 1024, (720, 1280)), sam_geometry(32, 64, (333, 200)),
    sam_geometry(32, 64, (40, 30)), sam_geometry(16, 64, (45, 61)), sam_geometry(32, 64, (64, 64)),
    MaskGeometry((7, 9), 20, (13, 20), (1, 1)), MaskGeometry((1, 1), 5, (5, 3), (11, 4)),
]


@pytest.mark.parametrize("geom", GEOMETRIES, ids=str)
def test_reference_logits_match_opencv(geom):
    logits = RNG.standard_normal(geom.logits_hw).astype(np.float32) * 4
    ref = upsample_reference(logits, geom)
    cv = upsample_cpu(logits, geom)
    assert ref.shape == cv.shape == geom.frame_hw and ref.dtype == np.float32
    tol = LOGIT_RTOL * np.abs(logits).max()
    assert np.abs(ref - cv).max() <= tol
    # The masks differ only where the logit is within that tolerance of the threshold.
    for threshold in (0.0, 0.7):
        differ = (ref > threshold) != (cv > threshold)
        assert (np.abs(cv[differ] - threshold) <= tol).all()


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.3, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("color", [(30, 144, 255), (0, 0, 0), (255, 255, 255), (7, 99, 201)])
def test_blend_table_is_addweighted(alpha, color):
    frame = RNG.integers(0, 256, (97, 131, 3), dtype=np.uint8)  # odd width: OpenCV's scalar tail too
    mask = RNG.random((97, 131)) > 0.4
    want = overlay_reference(frame, mask, color, alpha)
    got = frame.copy()
    overlay_cpu(got, mask, color, alpha)
    np.testing.assert_array_equal(got, want)
    assert blend_lut(color, alpha).shape == (3, 256)


def test_overlay_writes_into_a_frame_view():
    """A non-contiguous view (a crop of a bigger frame) is blended in place too, and the
    pixels around it are left alone."""
    big = RNG.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    original = big.copy()
    mask = RNG.random((40, 50)) > 0.5
    view = big[10:50, 20:70]
    want = overlay_reference(view, mask, (30, 144, 255), 0.5)
    overlay_cpu(view, mask, (30, 144, 255), 0.5)
    np.testing.assert_array_equal(big[10:50, 20:70], want)
    big[10:50, 20:70] = original[10:50, 20:70]
    np.testing.assert_array_equal(big, original)


@pytest.mark.parametrize("geom", GEOMETRIES[1:5], ids=str)
def test_cpu_backend_fuses_mask_and_overlay(geom):
    logits = RNG.standard_normal(geom.logits_hw).astype(np.float32)
    frame = RNG.integers(0, 256, (*geom.frame_hw, 3), dtype=np.uint8)
    original = frame.copy()
    res = CpuKernels().mask_postprocess(logits[None, None], geom, 0.2, frame, (30, 144, 255), 0.5)
    want_mask = upsample_cpu(logits, geom) > np.float32(0.2)
    np.testing.assert_array_equal(res.mask, want_mask)
    assert res.pixels == int(want_mask.sum())
    np.testing.assert_array_equal(frame, overlay_reference(original, want_mask, (30, 144, 255), 0.5))
    ref_mask, ref_frame = mask_reference(logits, geom, 0.2, original, (30, 144, 255), 0.5)
    assert (ref_mask != want_mask).mean() < 1e-3  # threshold ties only (see the test above)


def test_bad_geometry_and_inputs():
    with pytest.raises(ValueError, match="positive"):
        MaskGeometry((0, 4), 8, (8, 8), (8, 8))
    with pytest.raises(ValueError, match="exceeds"):
        MaskGeometry((4, 4), 8, (9, 8), (8, 8))
    with pytest.raises(ValueError, match="alpha"):
        blend_lut((0, 0, 0), 1.5)
    with pytest.raises(ValueError, match="colour"):
        blend_lut((0, 0, 300), 0.5)
    with pytest.raises(ValueError, match=r"one \(m, m\) map"):
        upsample_cpu(np.zeros((2, 1, 4, 4), np.float32), MaskGeometry((4, 4), 8, (8, 8), (8, 8)))
