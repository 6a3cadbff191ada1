"""Resampling as tables, and the 8-bit and float resizers that apply them, in numpy.

A separable resize is described per axis by a table: for every output coordinate, the
first source index and the weights of its taps. The tables are computed here, once per
geometry, and the CUDA kernels receive them as they are, so the host and the device
share the one piece of arithmetic that is easy to get subtly wrong (where a pixel
centre lands, how a weight is rounded); the kernels only multiply and add.

    convention   what it reproduces                        weights      between passes
    OPENCV       cv2.resize INTER_LINEAR, uint8            11-bit       int, unrounded
    PILLOW       PIL Image.resize BILINEAR/BICUBIC, 8-bit  22-bit       rounded to uint8
    float        cv2.resize INTER_LINEAR, float32 (masks)  float32      float32

OPENCV is bit-exact with OpenCV's fixed-point path (weights `rint(w * 2048)`; the
vertical pass as its SIMD code does it, `((h >> 4) * b >> 16)` summed, `+ 2 >> 2`): on
OpenCV 4.x and 5.0 the tests find no differing byte. PILLOW is the port of Pillow's
`precompute_coeffs` / `normalize_coeffs_8bpc` the runtime has always used (antialiased
when shrinking, so the encoders see what transformers' PIL path shows the references).
The float convention matches OpenCV to a few float32 ulps, not bit for bit (OpenCV's
float path runs through IPP on x86, which rounds in its own order).

One known gap: Pillow 13.0 runs the vertical pass first for some shapes where both sides
shrink (e.g. 100 x 30 -> 64 x 19), which rounds the 8-bit intermediate differently (up to
a few levels on noise). The port keeps the horizontal-first order of Pillow <= 12, the
order transformers' processors were validated with; the rule Pillow 13 uses to choose
is not in the Pillow source this was checked against.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np


class Convention(enum.IntEnum):
    """How taps are combined; the value is what the preprocess kernel's `convention` takes."""

    OPENCV = 0
    PILLOW = 1


# OpenCV: INTER_RESIZE_COEF_BITS = 11.
CV_COEF_BITS = 11
CV_COEF_SCALE = 1 << CV_COEF_BITS
# Pillow: PRECISION_BITS = 32 - 8 - 2 for 8-bit images.
PIL_PRECISION_BITS = 32 - 8 - 2


@dataclass(frozen=True)
class AxisTable:
    """One axis of a fixed-point resize: output coordinate i reads source indices
    `first[i] + j` (clamped to the source) with weights `weights[i, j]`, j < taps."""

    first: np.ndarray  # (n,) int32
    weights: np.ndarray  # (n, taps) int32

    @property
    def taps(self) -> int:
        return int(self.weights.shape[1])

    @property
    def size(self) -> int:
        return int(self.first.shape[0])


@dataclass(frozen=True)
class FloatAxis:
    """One axis of a float32 bilinear resize: output i = src[index[i, 0]] * weight[i, 0]
    + src[index[i, 1]] * weight[i, 1], both indices already clamped to the source."""

    index: np.ndarray  # (n, 2) int32
    weight: np.ndarray  # (n, 2) float32


def identity_table(size: int, convention: Convention) -> AxisTable:
    """The table of an axis that is not resized: one tap of weight one. Pillow skips such
    a pass; one full-weight tap rounds to the same byte, so the kernels need no branch."""
    one = 1 << PIL_PRECISION_BITS if convention is Convention.PILLOW else CV_COEF_SCALE
    return AxisTable(np.arange(size, dtype=np.int32), np.full((size, 1), one, dtype=np.int32))


# --------------------------------------------------------------------------- OpenCV


def _cv_positions(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's source position of each output pixel centre: floor and fraction.

    `scale = 1 / (out / in)` in double, `fx = (float)((dx + 0.5) * scale - 0.5)`,
    `sx = floor(fx)`, `fx -= sx` in float (resize.cpp, the fixed-point setup)."""
    scale = 1.0 / (out_size / in_size)
    f = ((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    return s, (f - s.astype(np.float32)).astype(np.float32)


def _cv_weights(frac: np.ndarray) -> np.ndarray:
    """(n,) float32 fraction -> (n, 2) int32 weights, `saturate_cast<short>(w * 2048)`
    (round half to even, as cvRound)."""
    one = np.float32(CV_COEF_SCALE)
    w0 = np.rint((np.float32(1.0) - frac) * one)
    w1 = np.rint(frac * one)
    return np.stack([w0, w1], axis=1).astype(np.int32)


def cv_linear_table(in_size: int, out_size: int, axis: str) -> AxisTable:
    """OpenCV INTER_LINEAR fixed-point table for one axis (`axis` "x" or "y").

    Columns past either edge are clamped with the fraction set to 0 (OpenCV's xofs /
    alpha setup); rows keep their fraction and read clamped rows (its row buffer), which
    is why the two axes differ."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"cannot resize {in_size} pixels to {out_size}")
    s, f = _cv_positions(in_size, out_size)
    if axis == "x":
        low = s < 0
        f = np.where(low, np.float32(0), f)
        s = np.where(low, 0, s)
        high = s >= in_size - 1
        f = np.where(high, np.float32(0), f)
        s = np.where(high, in_size - 1, s)
    elif axis != "y":
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    return AxisTable(s.astype(np.int32), _cv_weights(f))


# --------------------------------------------------------------------------- Pillow


def _pil_bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic kernel (a = -0.5), support 2."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _pil_bilinear(x: np.ndarray) -> np.ndarray:
    """Pillow's bilinear (triangle) kernel, support 1."""
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


PIL_FILTERS = {"bicubic": (_pil_bicubic, 2.0), "bilinear": (_pil_bilinear, 1.0)}


def pil_table(in_size: int, out_size: int, kind: str) -> AxisTable:
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for one axis: for each output
    pixel the first input pixel and the fixed-point weights of the taps from it. Taps past
    the end carry weight 0 (the kernels clamp their index and add nothing)."""
    if kind not in PIL_FILTERS:
        raise ValueError(f"Pillow filter must be one of {', '.join(PIL_FILTERS)}, got {kind!r}")
    if in_size < 1 or out_size < 1:
        raise ValueError(f"cannot resize {in_size} pixels to {out_size}")
    filt, support = PIL_FILTERS[kind]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)  # widen the kernel when shrinking (antialiasing)
    support = support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale  # (out,)
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C's (int) truncation
    xmax = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin  # taps used
    taps = np.arange(ksize)
    w = filt(((taps[None, :] + xmin[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale))  # (out, K)
    w = np.where(taps[None, :] < xmax[:, None], w, 0.0)
    total = np.zeros(out_size)
    for j in range(ksize):  # sequential, as Pillow sums (numpy's pairwise sum rounds differently)
        total += w[:, j]
    w = np.where(total[:, None] != 0.0, w / np.where(total == 0.0, 1.0, total)[:, None], w)
    one = float(1 << PIL_PRECISION_BITS)
    fixed = np.where(w < 0, np.trunc(-0.5 + w * one), np.trunc(0.5 + w * one)).astype(np.int32)
    return AxisTable(xmin.astype(np.int32), fixed)


# --------------------------------------------------------------------------- applying tables


def _horizontal(src: np.ndarray, table: AxisTable) -> np.ndarray:
    """(H, W, C) uint8 -> (H, n, C) int64 sums of pixel x weight over the taps."""
    w_in = src.shape[1]
    acc = np.zeros((src.shape[0], table.size, src.shape[2]), dtype=np.int64)
    x = src.astype(np.int64)
    for j in range(table.taps):
        idx = np.clip(table.first.astype(np.int64) + j, 0, w_in - 1)
        acc += x[:, idx] * table.weights[:, j].astype(np.int64)[None, :, None]
    return acc


def _vertical(rows: np.ndarray, table: AxisTable, term) -> np.ndarray:
    """(H, n, C) int64 per-row values -> (m, n, C) int64 sums of `term(value, weight)`."""
    h_in = rows.shape[0]
    acc = np.zeros((table.size,) + rows.shape[1:], dtype=np.int64)
    for j in range(table.taps):
        idx = np.clip(table.first.astype(np.int64) + j, 0, h_in - 1)
        acc += term(rows[idx], table.weights[:, j].astype(np.int64)[:, None, None])
    return acc


def apply_tables(img: np.ndarray, x: AxisTable, y: AxisTable, convention: Convention) -> np.ndarray:
    """Resize (H, W, C) or (H, W) uint8 with one table per axis, horizontal pass first,
    exactly as the preprocess kernel does (the kernel computes each output pixel on its
    own, re-deriving the horizontal sums it needs; the integers are the same)."""
    src = img if img.ndim == 3 else img[..., None]
    h = _horizontal(src, x)  # (H, n, C)
    if convention is Convention.OPENCV:
        v = _vertical(h, y, lambda r, w: ((r >> 4) * w) >> 16)
        out = (v + 2) >> 2
    else:
        half = 1 << (PIL_PRECISION_BITS - 1)
        h8 = np.clip((h + half) >> PIL_PRECISION_BITS, 0, 255)  # Pillow's 8-bit intermediate
        out = (_vertical(h8, y, lambda r, w: r * w) + half) >> PIL_PRECISION_BITS
    out = np.clip(out, 0, 255).astype(np.uint8)
    return out if img.ndim == 3 else out[..., 0]


def resize_opencv_linear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """numpy reference of `cv2.resize(img, (width, height), interpolation=INTER_LINEAR)`
    on uint8: the arithmetic the preprocess kernel does with convention OPENCV."""
    x = cv_linear_table(img.shape[1], width, "x")
    y = cv_linear_table(img.shape[0], height, "y")
    return apply_tables(img, x, y, Convention.OPENCV)


def _pil_pass(img: np.ndarray, axis: int, table: AxisTable) -> np.ndarray:
    """One separable pass of Pillow's 8-bit resampler along `axis` (0: rows, 1: columns),
    in int32 as Pillow accumulates: pixel (<= 255) x weight (< 2^23) summed over the taps
    stays below 2^31 for these kernels. Faster than `apply_tables` (int32, one pass at a
    time), with the same integers."""
    src = np.ascontiguousarray(np.moveaxis(img, axis, 0))  # (in, other, C): taps gather whole rows
    in_size = src.shape[0]
    fixed = table.weights
    acc = np.full((table.size,) + src.shape[1:], 1 << (PIL_PRECISION_BITS - 1), dtype=np.int32)  # rounding
    bcast = (-1,) + (1,) * (src.ndim - 1)
    for j in range(table.taps):
        idx = np.minimum(table.first + j, in_size - 1)  # taps past the end carry weight 0
        acc += src[idx] * fixed[:, j].reshape(bcast)
    out = np.clip(acc >> PIL_PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))


def resize_pillow(img: np.ndarray, height: int, width: int, kind: str = "bicubic") -> np.ndarray:
    """Resize (H, W, C) uint8 to (height, width, C) exactly as Pillow's `Image.resize` with
    BICUBIC or BILINEAR does for an 8-bit image: horizontal pass, then vertical, each
    skipped when that side keeps its size."""
    if kind not in PIL_FILTERS:
        raise ValueError(f"resize kind must be one of {', '.join(PIL_FILTERS)}, got {kind!r}")
    out = img
    if width != img.shape[1]:
        out = _pil_pass(out, 1, pil_table(img.shape[1], width, kind))
    if height != img.shape[0]:
        out = _pil_pass(out, 0, pil_table(img.shape[0], height, kind))
    return out


def pillow_resize(img: np.ndarray, height: int, width: int, kind: str = "bicubic") -> np.ndarray:
    """The CPU path of `resize_pillow`: Pillow's own C resampler, whose integers that
    function models (tests hold the two equal), 3-4x faster (1280 x 720 to 1024 wide:
    7.9 ms against 32 ms, measured here)."""
    from PIL import Image

    if kind not in PIL_FILTERS:
        raise ValueError(f"resize kind must be one of {', '.join(PIL_FILTERS)}, got {kind!r}")
    if (height, width) == img.shape[:2]:
        return img
    pil = Image.Resampling.BICUBIC if kind == "bicubic" else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((width, height), pil))


# --------------------------------------------------------------------------- float (mask logits)


def float_linear_axis(in_size: int, out_size: int, axis: str) -> FloatAxis:
    """OpenCV INTER_LINEAR on a float32 image, one axis (`axis` "x" or "y"): the source
    position of each output centre in double (`(d + 0.5) * in / out - 0.5`; OpenCV 5's
    float path keeps it in double, unlike its uint8 path), floor and fraction. As in
    `cv_linear_table`, columns past an edge collapse onto the border pixel with weight 1,
    rows past an edge keep their fraction and read the clamped row."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"cannot resize {in_size} pixels to {out_size}")
    scale = 1.0 / (out_size / in_size)
    pos = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    s = np.floor(pos)
    frac = (pos - s).astype(np.float32)
    s = s.astype(np.int64)
    if axis == "x":
        low = s < 0
        frac = np.where(low, np.float32(0), frac)
        s = np.where(low, 0, s)
        high = s >= in_size - 1
        frac = np.where(high, np.float32(0), frac)
        s = np.where(high, in_size - 1, s)
    elif axis != "y":
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    i0 = np.clip(s, 0, in_size - 1)
    i1 = np.clip(s + 1, 0, in_size - 1)
    w = np.stack([np.float32(1.0) - frac, frac], axis=1).astype(np.float32)
    return FloatAxis(np.stack([i0, i1], axis=1).astype(np.int32), w)


def apply_float_axes(img: np.ndarray, x: FloatAxis, y: FloatAxis) -> np.ndarray:
    """(H, W) float32 -> (len(y), len(x)) float32, horizontal pass then vertical, each
    output `a * w0 + b * w1` with float32 products and sum (no fused multiply-add): what
    the mask kernel computes, operation for operation."""
    src = np.asarray(img, dtype=np.float32)
    h = src[:, x.index[:, 0]] * x.weight[:, 0] + src[:, x.index[:, 1]] * x.weight[:, 1]  # (H, n)
    return h[y.index[:, 0]] * y.weight[:, 0:1] + h[y.index[:, 1]] * y.weight[:, 1:2]  # (m, n)


def resize_float_linear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """numpy reference of `cv2.resize` INTER_LINEAR on a (H, W) float32 image."""
    x = float_linear_axis(img.shape[1], width, "x")
    return apply_float_axes(img, x, float_linear_axis(img.shape[0], height, "y"))
