"""NV12 -> RGB against OpenCV's COLOR_YUV2RGB_NV12 (tolerance: 0 levels)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vitron_rt.kernels.color import nv12_shape, nv12_to_rgb, split_nv12

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("hw", [(2, 2), (4, 6), (38, 52), (720, 1280), (1080, 1920)] +
                         [tuple(int(v) * 2 for v in RNG.integers(1, 150, 2)) for _ in range(10)])
def test_nv12_matches_opencv_exactly(hw):
    buf = RNG.integers(0, 256, nv12_shape(*hw), dtype=np.uint8)
    np.testing.assert_array_equal(nv12_to_rgb(buf), cv2.cvtColor(buf, cv2.COLOR_YUV2RGB_NV12))


def test_extremes_saturate_like_opencv():
    # Every (Y, U, V) corner: the clamps at 0 and 255 and the Y < 16 floor.
    vals = np.array([0, 15, 16, 128, 235, 240, 255], dtype=np.uint8)
    y = np.repeat(np.repeat(vals[:, None], 2, 0), len(vals) * len(vals) * 2, 1)  # (14, 98)
    uv = np.stack(np.meshgrid(vals, vals, indexing="ij"), -1).reshape(1, -1)  # (1, 98) U,V pairs
    buf = np.concatenate([y, np.repeat(uv, 7, 0)])  # (21, 98)
    np.testing.assert_array_equal(nv12_to_rgb(buf), cv2.cvtColor(buf, cv2.COLOR_YUV2RGB_NV12))


def test_layout_checks():
    y, uv = split_nv12(np.zeros((6, 8), np.uint8))
    assert y.shape == (4, 8) and uv.shape == (2, 8)
    for bad in (np.zeros((5, 8), np.uint8), np.zeros((6, 7), np.uint8), np.zeros((6, 8, 1), np.uint8),
                np.zeros((6, 8), np.float32), np.zeros((0, 8), np.uint8)):
        with pytest.raises(ValueError, match="NV12"):
            split_nv12(bad)
    with pytest.raises(ValueError, match="even"):
        nv12_shape(5, 8)
