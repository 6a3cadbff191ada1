"""Regions in numpy: `box_to_mask` equals the PyTorch reference bit for bit, regions are
validated and read from text with the documented 0-100 rule, sketches follow the box rule."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitron_rt.models.region import box_to_mask as torch_box_to_mask
from vitron_rt.runtime.errors import RegionError, VitronInputError
from vitron_rt.runtime.region import (
    box_to_mask,
    mask_bbox,
    parse_region,
    region_from_box,
    region_from_sketch,
    sketch_to_binary,
    sketch_to_grid,
    validate_region,
)

coord = st.floats(min_value=-0.25, max_value=1.25, allow_nan=False, width=32)
boxes = st.lists(st.tuples(coord, coord, coord, coord), min_size=1, max_size=6)
grids = st.integers(min_value=1, max_value=24)
image_sizes = st.one_of(st.none(), st.sampled_from([224, 336, 37, 16, 7]), st.integers(min_value=1, max_value=300))


@settings(max_examples=300, deadline=None)
@given(boxes, grids, image_sizes, st.booleans())
def test_box_to_mask_equals_torch_reference(bs, grid, image_size, transpose):
    arr = np.array(bs, dtype=np.float32)  # (B, 4)
    ours = box_to_mask(arr, grid, image_size, transpose=transpose)
    ref = torch_box_to_mask(torch.from_numpy(arr), grid, image_size, transpose=transpose).numpy()
    assert ours.dtype == ref.dtype and ours.shape == ref.shape == (len(bs), grid, grid)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int64])
def test_box_to_mask_dtypes_follow_torch(dtype):
    arr = np.array([[0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9]]).astype(dtype)
    ours = box_to_mask(arr, 16, 224)
    ref = torch_box_to_mask(torch.from_numpy(arr), 16, 224).numpy()
    assert ours.dtype == ref.dtype
    np.testing.assert_array_equal(ours, ref)


def test_released_geometry():
    # Rows are y: a box in the top-left quarter lights the top-left cells only.
    m = box_to_mask(np.array([[0.0, 0.0, 0.5, 0.25]], dtype=np.float32), 16, 224)[0]
    assert m[:4, :8].all() and not m[4:, :].any() and not m[:, 8:].any()
    # The released code's transposed indexing mirrors it about the diagonal.
    mt = box_to_mask(np.array([[0.0, 0.0, 0.5, 0.25]], dtype=np.float32), 16, 224, transpose=True)[0]
    np.testing.assert_array_equal(mt, m.T)


@pytest.mark.parametrize("bad", [np.zeros((4,)), np.zeros((2, 3)), np.array([[np.nan, 0, 1, 1]])])
def test_box_to_mask_rejects_malformed(bad):
    with pytest.raises(RegionError):
        box_to_mask(bad, 16)


def test_validate_region():
    assert validate_region([0, 0.25, 1, 1]) == (0.0, 0.25, 1.0, 1.0)
    for bad, what in [
        ((0.5, 0.1, 0.2, 0.9), "x1 < x2"),
        ((0.1, 0.5, 0.2, 0.5), "y1 < y2"),
        ((-0.1, 0.1, 0.2, 0.9), r"\[0, 1\]"),
        ((0.1, 0.1, 1.2, 0.9), r"\[0, 1\]"),
        ((0.1, float("nan"), 0.2, 0.9), "finite"),
        ((0.1, 0.2, 0.3), "four numbers"),
        ("abcd", "four numbers"),
    ]:
        with pytest.raises(RegionError, match=what) as e:
            validate_region(bad)
        assert "\n" not in str(e.value) and isinstance(e.value, VitronInputError)


@pytest.mark.parametrize(
    "text, box",
    [
        ("(0.1, 0.2, 0.5, 0.9)", (0.1, 0.2, 0.5, 0.9)),
        ("  [0.1,0.2 ,0.5,  0.9] ", (0.1, 0.2, 0.5, 0.9)),
        ("0.1 0.2 0.5 0.9", (0.1, 0.2, 0.5, 0.9)),
        ("(0, 0, 1, 1)", (0.0, 0.0, 1.0, 1.0)),  # all <= 1: normalised, the whole image
        ("(10, 20, 50, 60)", (0.1, 0.2, 0.5, 0.6)),  # any > 1: percent
        ("(0, 0, 100, 100)", (0.0, 0.0, 1.0, 1.0)),
        ("(23.0, 35, 41, 66)", (0.23, 0.35, 0.41, 0.66)),  # whole numbers written with .0
        (".5, .25, 1., 1e0", (0.5, 0.25, 1.0, 1.0)),
    ],
)
def test_parse_region_scales(text, box):
    assert parse_region(text) == pytest.approx(box, abs=0)


@pytest.mark.parametrize(
    "text, what",
    [
        ("(0.5, 20, 60, 80)", "whole numbers"),  # mixed scales are refused, not guessed
        ("(10, 20, 50.5, 60)", "whole numbers"),
        ("(10, 20, 150, 60)", "whole numbers"),
        ("(0.23, 0.35, 0.11, 0.26)", "x1 < x2"),  # the paper's example reads as inverted
        ("(1, 2, 3)", "cannot read"),
        ("left half", "cannot read"),
        ("(-0.1, 0, 0.5, 0.5)", r"\[0, 1\]"),
    ],
)
def test_parse_region_errors(text, what):
    with pytest.raises(RegionError, match=what):
        parse_region(text)


@settings(max_examples=150, deadline=None)
@given(st.tuples(coord, coord, coord, coord), grids, st.sampled_from([224, 64, 50, 16]))
def test_sketch_of_a_box_gives_the_box_mask(box, grid, size):
    box32 = np.array([box], dtype=np.float32).clip(0, 1)
    expected = box_to_mask(box32, grid, size)[0]
    x1, y1, x2, y2 = (np.trunc(box32[0] * np.float32(size)).astype(int))
    canvas = np.zeros((size, size), dtype=np.uint8)
    canvas[y1:y2, x1:x2] = 255
    np.testing.assert_array_equal(sketch_to_grid(canvas, grid), expected)


def test_sketch_channels_and_bbox():
    h, w = 120, 200
    rgba = np.zeros((h, w, 4), dtype=np.uint8)
    rgba[30:60, 50:150, 3] = 255  # strokes in alpha only, on a transparent canvas
    assert sketch_to_binary(rgba).sum() == 30 * 100
    rgb = np.zeros((h, w, 3), dtype=np.uint8)
    rgb[30:60, 50:150, 1] = 200
    rgb[0, 0] = 40  # JPEG-like noise below half range is not a stroke
    np.testing.assert_array_equal(sketch_to_binary(rgb), sketch_to_binary(rgba))
    assert mask_bbox(sketch_to_binary(rgb)) == (50 / w, 30 / h, 150 / w, 60 / h)
    region = region_from_sketch(rgb, 16)
    assert region.box == (0.25, 0.25, 0.75, 0.5) and not region.empty
    assert region.mask.dtype == np.float32 and region.mask.shape == (16, 16)
    assert region.mask[4:8, 4:12].all() and region.mask.sum() == 4 * 8


def test_empty_sketch_and_bad_shapes():
    with pytest.raises(RegionError, match="empty"):
        region_from_sketch(np.zeros((10, 10), dtype=np.uint8), 16)
    with pytest.raises(RegionError, match="shape"):
        sketch_to_binary(np.zeros((10, 10, 2), dtype=np.uint8))


def test_region_from_box():
    r = region_from_box((0.1, 0.2, 0.5, 0.9), 16, 224)
    np.testing.assert_array_equal(r.mask, box_to_mask(np.array([[0.1, 0.2, 0.5, 0.9]], np.float32), 16, 224)[0])
    with pytest.raises(RegionError):
        region_from_box((0.5, 0.2, 0.1, 0.9), 16)
