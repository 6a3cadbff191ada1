"""The resampling tables against the libraries they reproduce: OpenCV's INTER_LINEAR on
uint8 (bit-exact) and float32 (to float32 rounding), Pillow's BILINEAR / BICUBIC."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from vitron_rt.kernels.resample import (
    Convention,
    apply_tables,
    cv_linear_table,
    identity_table,
    pil_table,
    resize_float_linear,
    resize_opencv_linear,
    resize_pillow,
)

RNG = np.random.default_rng(2024)
# (H, W, out H, out W): odd sizes, 1-pixel sides, upscale, downscale, exact 2x (OpenCV
# takes its INTER_AREA shortcut there), 1080p to SAM's 1024 and to CLIP's 224.
FIXED_SHAPES = [
    (1, 1, 5, 7), (3, 1, 1, 9), (2, 2, 1, 1), (17, 3, 400, 2), (1000, 13, 7, 999), (64, 48, 32, 24),
    (1080, 1920, 576, 1024), (720, 1280, 224, 398), (37, 53, 37, 53),
]
RANDOM_SHAPES = [tuple(int(v) for v in RNG.integers(1, 200, 4)) for _ in range(40)]


@pytest.mark.parametrize("shape", FIXED_SHAPES + RANDOM_SHAPES)
@pytest.mark.parametrize("channels", [1, 3])
def test_opencv_linear_reference_is_bit_exact(shape, channels):
    h, w, oh, ow = shape
    img = RNG.integers(0, 256, (h, w, 3) if channels == 3 else (h, w), dtype=np.uint8)
    ref = cv2.resize(img, (ow, oh), interpolation=cv2.INTER_LINEAR)
    got = resize_opencv_linear(img, oh, ow)
    assert got.shape == ref.shape and got.dtype == np.uint8
    # The issue allows 1 level; OpenCV 4.x and 5.0 are matched exactly.
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("kind", ["bilinear", "bicubic"])
@pytest.mark.parametrize("shape", [(37, 53, 224, 224), (400, 600, 224, 336), (600, 400, 300, 150), (5, 1000, 5, 7),
                                   (64, 64, 64, 64), (1, 3, 2, 9)])
def test_pillow_tables_equal_pillow(kind, shape):
    h, w, oh, ow = shape
    img = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    pil = Image.Resampling.BICUBIC if kind == "bicubic" else Image.Resampling.BILINEAR
    ref = np.asarray(Image.fromarray(img).resize((ow, oh), pil))
    np.testing.assert_array_equal(resize_pillow(img, oh, ow, kind), ref)
    # The kernel's form (both tables, identity where a side keeps its size) is the same.
    x = pil_table(w, ow, kind) if ow != w else identity_table(ow, Convention.PILLOW)
    y = pil_table(h, oh, kind) if oh != h else identity_table(oh, Convention.PILLOW)
    np.testing.assert_array_equal(apply_tables(img, x, y, Convention.PILLOW), ref)


def test_opencv_identity_table_is_identity():
    img = RNG.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    ident = identity_table(11, Convention.OPENCV), identity_table(9, Convention.OPENCV)
    np.testing.assert_array_equal(apply_tables(img, *ident, Convention.OPENCV), img)
    np.testing.assert_array_equal(
        apply_tables(img, cv_linear_table(11, 11, "x"), cv_linear_table(9, 9, "y"), Convention.OPENCV), img
    )


# Two float32 products and a sum per output; OpenCV's float path (IPP on x86) rounds in
# another order. Measured: <= 2.1e-7 of the largest |value| over these shapes.
FLOAT_RTOL = 5e-7


@pytest.mark.parametrize("shape", [(256, 256, 1024, 1024), (1024, 768, 1080, 1920), (37, 53, 101, 17),
                                   (768, 1024, 384, 512), (5, 5, 3, 9), (1, 7, 1, 3), (300, 1, 2, 1), (1, 1, 4, 4)])
def test_float_linear_matches_opencv_to_rounding(shape):
    h, w, oh, ow = shape
    x = RNG.standard_normal((h, w)).astype(np.float32) * 10
    ref = cv2.resize(x, (ow, oh), interpolation=cv2.INTER_LINEAR)
    got = resize_float_linear(x, oh, ow)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.abs(got - ref).max() <= FLOAT_RTOL * np.abs(x).max()


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="cannot resize"):
        cv_linear_table(0, 5, "x")
    with pytest.raises(ValueError, match="axis"):
        cv_linear_table(5, 5, "z")
    with pytest.raises(ValueError, match="Pillow filter"):
        pil_table(5, 5, "lanczos")
