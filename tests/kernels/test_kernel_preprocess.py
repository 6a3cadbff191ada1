"""The fused preprocess on the CPU: its numpy model (what the kernel must equal) against
an obvious OpenCV / Pillow composition, and the CPU path against the model."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from vitron_rt.kernels.color import nv12_shape
from vitron_rt.kernels.preprocess import (
    Filter,
    Fit,
    PixelFormat,
    PreprocessSpec,
    fit_longest_side,
    fit_shortest_side,
    normalise_lut,
    placement,
    preprocess_cpu,
    preprocess_reference,
)

RNG = np.random.default_rng(11)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# One level of the 8-bit resize after normalising: the "1 LSB-equivalent".
ONE_LEVEL = 1 / (255 * min(STD)) + 1e-6


def frame(fmt: PixelFormat, h: int, w: int) -> np.ndarray:
    shape = nv12_shape(h, w) if fmt is PixelFormat.NV12 else (h, w, 3)
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def obvious(img: np.ndarray, spec: PreprocessSpec, fmt: PixelFormat) -> np.ndarray:
    """The preprocess written the plain way: OpenCV / Pillow resize, numpy crop or pad."""
    rgb = {PixelFormat.RGB: lambda f: f, PixelFormat.BGR: lambda f: cv2.cvtColor(f, cv2.COLOR_BGR2RGB),
           PixelFormat.NV12: lambda f: cv2.cvtColor(f, cv2.COLOR_YUV2RGB_NV12)}[fmt](img)
    h, w = rgb.shape[:2]
    s = spec.size
    if spec.fit is Fit.CROP:
        nh, nw = fit_shortest_side(h, w, s)
    else:
        nh, nw = (max(v, 1) for v in fit_longest_side(h, w, s))
    if spec.filter is Filter.LINEAR:
        resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    else:
        pil = Image.Resampling.BILINEAR if spec.filter is Filter.PIL_BILINEAR else Image.Resampling.BICUBIC
        resized = np.asarray(Image.fromarray(rgb).resize((nw, nh), pil))
    x = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)  # (nh, nw, 3)
    canvas = np.full((s, s, 3), spec.pad_value, dtype=np.float32)
    if spec.fit is Fit.CROP:
        top, left = (nh - s) // 2, (nw - s) // 2
        canvas[:] = x[top : top + s, left : left + s]
    else:
        top, left = (0, 0) if spec.fit is Fit.PAD else ((s - nh) // 2, (s - nw) // 2)
        canvas[top : top + nh, left : left + nw] = x
    return canvas.transpose(2, 0, 1).astype(spec.dtype)


SIZES = [(37, 53), (38, 52), (720, 1280), (30, 100), (2, 2), (16, 16), (240, 320)]


@pytest.mark.parametrize("filt", list(Filter))
@pytest.mark.parametrize("fit", list(Fit))
@pytest.mark.parametrize("fmt", list(PixelFormat))
@pytest.mark.parametrize("hw", SIZES)
def test_reference_and_cpu_path_equal_the_obvious_composition(filt, fit, fmt, hw):
    h, w = (v + v % 2 for v in hw) if fmt is PixelFormat.NV12 else hw
    img = frame(fmt, h, w)
    spec = PreprocessSpec(64, MEAN, STD, filt, fit, pad_value=0.5 if fit is Fit.LETTERBOX else 0.0)
    want = obvious(img, spec, fmt)
    ref = preprocess_reference(img, spec, fmt)
    cpu = preprocess_cpu(img, spec, fmt)
    assert ref.shape == cpu.shape == (3, 64, 64) and ref.dtype == cpu.dtype == np.float32
    if filt is Filter.LINEAR:
        # Allowed: 1 level of the resize; OpenCV 5.0 is matched exactly (measured 0).
        assert np.abs(ref - want).max() <= ONE_LEVEL
        assert np.abs(cpu - ref).max() <= ONE_LEVEL
    else:
        np.testing.assert_array_equal(ref, want)
        np.testing.assert_array_equal(cpu, ref)


@pytest.mark.parametrize("fit", list(Fit))
def test_float16_output_is_the_float32_one_rounded(fit):
    img = frame(PixelFormat.RGB, 81, 47)
    spec32 = PreprocessSpec(48, MEAN, STD, Filter.LINEAR, fit)
    spec16 = PreprocessSpec(48, MEAN, STD, Filter.LINEAR, fit, "float16")
    ref16 = preprocess_reference(img, spec16)
    assert ref16.dtype == np.float16
    np.testing.assert_array_equal(ref16, preprocess_reference(img, spec32).astype(np.float16))
    np.testing.assert_array_equal(preprocess_cpu(img, spec16), ref16)


def test_placements():
    spec = PreprocessSpec(224, MEAN, STD, fit=Fit.CROP)
    pl = placement(480, 640, spec)
    assert pl.resized_hw == (224, 298) and pl.offset == (0, -37)
    spec = PreprocessSpec(1024, MEAN, STD, fit=Fit.PAD)
    pl = placement(1080, 1920, spec)
    assert pl.resized_hw == (576, 1024) and pl.offset == (0, 0)
    pl = placement(1080, 1920, PreprocessSpec(1024, MEAN, STD, fit=Fit.LETTERBOX))
    assert pl.offset == (224, 0)
    assert placement(1, 5000, spec).resized_hw == (1, 1024)  # a strip keeps a row


def test_normalise_lut_is_transformers_arithmetic():
    spec = PreprocessSpec(8, MEAN, STD, pad_value=-1.5)
    lut = normalise_lut(spec)
    v = np.arange(256, dtype=np.uint8)
    for c in range(3):
        x = (v.astype(np.float64) * (1 / 255)).astype(np.float32)
        np.testing.assert_array_equal(lut[c * 256 : (c + 1) * 256], (x - np.float32(MEAN[c])) / np.float32(STD[c]))
    np.testing.assert_array_equal(lut[768:], [-1.5] * 3)


def test_writes_into_the_callers_buffer():
    batch = np.full((2, 3, 32, 32), np.nan, dtype=np.float32)  # an engine input, two slots
    img = frame(PixelFormat.BGR, 50, 70)
    spec = PreprocessSpec(32, MEAN, STD, fit=Fit.PAD)
    got = preprocess_cpu(img, spec, PixelFormat.BGR, out=batch[1])
    assert got is batch[1] or np.shares_memory(got, batch)
    np.testing.assert_array_equal(batch[1], preprocess_reference(img, spec, PixelFormat.BGR))
    assert np.isnan(batch[0]).all()  # the other slot is not touched
    with pytest.raises(ValueError, match="float32 array of shape"):
        preprocess_cpu(img, spec, PixelFormat.BGR, out=np.empty((3, 31, 32), np.float32))
    with pytest.raises(ValueError, match="float32 array of shape"):
        preprocess_cpu(img, spec, PixelFormat.BGR, out=np.empty((3, 32, 32), np.float16))


def test_bad_specs_and_frames():
    with pytest.raises(ValueError, match="3 means"):
        PreprocessSpec(8, (0.5,), STD)
    with pytest.raises(ValueError, match="dtype"):
        PreprocessSpec(8, MEAN, STD, dtype="int8")
    with pytest.raises(ValueError, match="size"):
        PreprocessSpec(0, MEAN, STD)
    with pytest.raises(ValueError):
        PreprocessSpec(8, MEAN, STD, fit="stretch")
    spec = PreprocessSpec(8, MEAN, STD)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 RGB"):
        preprocess_cpu(np.zeros((4, 4, 3), np.float32), spec)
    with pytest.raises(ValueError, match="NV12"):
        preprocess_cpu(np.zeros((5, 4), np.uint8), spec, PixelFormat.NV12)
