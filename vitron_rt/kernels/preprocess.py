"""The fused preprocess: a uint8 frame to an encoder's (3, S, S) input in one pass.

    frame (H, W, 3) RGB / BGR, or NV12 (H * 3/2, W)
      │  per source pixel read: NV12 -> RGB (color.py), BGR -> RGB
      ▼
    resize to (nh, nw)        LINEAR: cv2 INTER_LINEAR | PIL_BILINEAR / PIL_BICUBIC: Pillow
      ▼
    place on the S x S canvas CROP: shortest side S, centre crop   (CLIP)
                              PAD: longest side S, pad bottom/right (SAM)
                              LETTERBOX: longest side S, centred pad
      ▼
    normalise                 (x / 255 - mean) / std through a (3, 256) table; the canvas
                              outside the image is `pad_value`
      ▼
    (3, S, S) float32 or float16, CHW, written where the caller says (an engine input)

`placement`, `resize_tables` and `normalise_lut` are the host half: they fix every
number the kernel uses. `preprocess_reference` is the numpy model of the kernel (it
applies the same tables, so the two agree bit for bit); `preprocess_cpu` is the fast CPU
path (OpenCV for LINEAR, the numpy Pillow port for the PIL filters), equal to the
reference within 1 level of the 8-bit resize, i.e. 1 / (255 std) after normalising.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

import cv2
import numpy as np

from vitron_rt.kernels.color import nv12_to_rgb, split_nv12
from vitron_rt.kernels.resample import (
    AxisTable,
    Convention,
    apply_tables,
    cv_linear_table,
    identity_table,
    pil_table,
    pillow_resize,
)


class PixelFormat(str, enum.Enum):
    """How the frame's bytes are laid out. The value order is the kernel's `format` code."""

    RGB = "rgb"  # (H, W, 3)
    BGR = "bgr"  # (H, W, 3), OpenCV's own order
    NV12 = "nv12"  # (H * 3/2, W): Y plane, then interleaved UV at half resolution

    @property
    def code(self) -> int:
        return list(PixelFormat).index(self)


class Filter(str, enum.Enum):
    """The resampling filter and whose arithmetic it reproduces."""

    LINEAR = "linear"  # cv2.resize INTER_LINEAR: the video fast path
    PIL_BILINEAR = "pil_bilinear"  # Pillow BILINEAR, antialiased: SAM's processor
    PIL_BICUBIC = "pil_bicubic"  # Pillow BICUBIC, antialiased: CLIP's processor

    @property
    def convention(self) -> Convention:
        return Convention.OPENCV if self is Filter.LINEAR else Convention.PILLOW


class Fit(str, enum.Enum):
    """How the resized image sits on the S x S canvas."""

    CROP = "crop"  # shortest side to S (truncated, as transformers), centre crop
    PAD = "pad"  # longest side to S (rounded half up, as SAM), top-left, pad bottom/right
    LETTERBOX = "letterbox"  # longest side to S, centred, pad around


DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything that turns a frame into one encoder input (hashable: the device path
    caches its tables by it)."""

    size: int  # S: the square canvas side
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    filter: Filter = Filter.LINEAR
    fit: Fit = Fit.PAD
    dtype: str = "float32"
    # The canvas outside the image, in output units: SAM pads with 0 after normalising.
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "filter", Filter(self.filter))
        object.__setattr__(self, "fit", Fit(self.fit))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"preprocess size must be a positive int, got {self.size!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"preprocess needs 3 means and 3 stds, got {self.mean} and {self.std}")
        if any(s == 0.0 for s in self.std):
            raise ValueError(f"preprocess std must be non-zero, got {self.std}")
        if self.dtype not in DTYPES:
            raise ValueError(f"preprocess dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)


@dataclass(frozen=True)
class Placement:
    """Where the resized frame lands: canvas pixel (y, x) shows resized pixel
    (y - offset[0], x - offset[1]); a negative offset crops, a positive one pads."""

    src_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    offset: tuple[int, int]
    size: int

    def covered(self) -> tuple[slice, slice, slice, slice]:
        """(canvas rows, canvas cols, resized rows, resized cols) of the overlap."""
        (nh, nw), (oy, ox), s = self.resized_hw, self.offset, self.size
        y0, y1 = max(0, oy), min(s, oy + nh)
        x0, x1 = max(0, ox), min(s, ox + nw)
        return slice(y0, y1), slice(x0, x1), slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox)


def fit_shortest_side(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the shorter side = size, the longer scaled and truncated (transformers'
    `get_resize_output_image_size(default_to_square=False)`)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def fit_longest_side(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the longer side = size, the other scaled and rounded half up (SAM's
    `_get_preprocess_shape`); the mask postprocess undoes exactly this."""
    scale = size * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def placement(height: int, width: int, spec: PreprocessSpec) -> Placement:
    """The resize target and canvas offset of an H x W frame under `spec`."""
    if height < 1 or width < 1:
        raise ValueError(f"the frame has no pixels ({width} x {height})")
    s = spec.size
    if spec.fit is Fit.CROP:
        nh, nw = fit_shortest_side(height, width, s)
        offset = (-((nh - s) // 2), -((nw - s) // 2))
    else:
        nh, nw = fit_longest_side(height, width, s)
        nh, nw = max(nh, 1), max(nw, 1)  # a 1 x 5000 strip still keeps one row
        offset = (0, 0) if spec.fit is Fit.PAD else ((s - nh) // 2, (s - nw) // 2)
    return Placement((height, width), (nh, nw), offset, s)


def resize_tables(pl: Placement, filt: Filter) -> tuple[AxisTable, AxisTable]:
    """The (x, y) tables of the resize in `pl`."""
    (h, w), (nh, nw) = pl.src_hw, pl.resized_hw
    if filt is Filter.LINEAR:
        return cv_linear_table(w, nw, "x"), cv_linear_table(h, nh, "y")
    kind = "bilinear" if filt is Filter.PIL_BILINEAR else "bicubic"
    conv = Convention.PILLOW
    x = pil_table(w, nw, kind) if nw != w else identity_table(nw, conv)
    y = pil_table(h, nh, kind) if nh != h else identity_table(nh, conv)
    return x, y


@functools.lru_cache(maxsize=64)
def normalise_lut(spec: PreprocessSpec) -> np.ndarray:
    """(3 * 256 + 3,) float32: for each channel and byte, (x / 255 - mean) / std with
    transformers' arithmetic (the rescale in float64, then float32), then the 3 pad
    values. A table makes the kernel's normalisation exact by construction."""
    x = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)  # (256,)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None]
    lut = ((x[None, :] - mean) / std).astype(np.float32)  # (3, 256)
    out = np.concatenate([lut.reshape(-1), np.full(3, spec.pad_value, dtype=np.float32)])
    out.setflags(write=False)
    return out


# --------------------------------------------------------------------------- frames


def frame_hw(frame: np.ndarray, fmt: PixelFormat) -> tuple[int, int]:
    """The (H, W) of a frame in `fmt`, after checking its dtype and layout."""
    fmt = PixelFormat(fmt)
    if fmt is PixelFormat.NV12:
        y, _ = split_nv12(frame)
        return int(y.shape[0]), int(y.shape[1])
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        got = f"{frame.dtype} array of shape {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"expected an (H, W, 3) uint8 {fmt.value.upper()} frame, got a {got}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"the frame has no pixels (shape {frame.shape})")
    return int(frame.shape[0]), int(frame.shape[1])


def to_rgb(frame: np.ndarray, fmt: PixelFormat) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a frame in `fmt` (OpenCV's conversions; RGB as is)."""
    fmt = PixelFormat(fmt)
    if fmt is PixelFormat.RGB:
        return frame
    if fmt is PixelFormat.BGR:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_YUV2RGB_NV12)


def check_out(out: np.ndarray | None, spec: PreprocessSpec) -> np.ndarray:
    """`out` checked against the spec's (3, S, S) shape and dtype, or a new array."""
    if out is None:
        return np.empty(spec.out_shape, dtype=spec.dtype)
    if not isinstance(out, np.ndarray) or out.shape != spec.out_shape or out.dtype != np.dtype(spec.dtype):
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(f"preprocess output must be a {spec.dtype} array of shape {spec.out_shape}, got {got}")
    return out


def _write_canvas(resized: np.ndarray, pl: Placement, spec: PreprocessSpec, out: np.ndarray) -> np.ndarray:
    """Normalise the covered part of `resized` (nh, nw, 3) into out (3, S, S) through the
    table; fill the rest with the pad value."""
    lut = normalise_lut(spec).astype(spec.dtype)
    cy, cx, ry, rx = pl.covered()
    if (cy.stop - cy.start) * (cx.stop - cx.start) < spec.size * spec.size:
        out[...] = lut[768]  # pad (one value: the spec has one pad_value)
    part = resized[ry, rx]  # (h, w, 3)
    for c in range(3):
        np.take(lut[c * 256 : (c + 1) * 256], part[..., c], out=out[c, cy, cx])
    return out


def preprocess_cpu(
    frame: np.ndarray, spec: PreprocessSpec, fmt: PixelFormat = PixelFormat.RGB, out: np.ndarray | None = None
) -> np.ndarray:
    """The CPU path: frame -> (3, S, S) of `spec.dtype`, into `out` when given."""
    h, w = frame_hw(frame, fmt)
    out = check_out(out, spec)
    pl = placement(h, w, spec)
    rgb = to_rgb(frame, fmt)
    nh, nw = pl.resized_hw
    if spec.filter is Filter.LINEAR:
        resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else rgb
    else:
        resized = pillow_resize(rgb, nh, nw, "bilinear" if spec.filter is Filter.PIL_BILINEAR else "bicubic")
    return _write_canvas(resized, pl, spec, out)


def preprocess_reference(frame: np.ndarray, spec: PreprocessSpec, fmt: PixelFormat = PixelFormat.RGB) -> np.ndarray:
    """The numpy model of the preprocess kernel: the same tables, the same integer
    arithmetic, so a kernel output must equal it exactly."""
    h, w = frame_hw(frame, fmt)
    pl = placement(h, w, spec)
    fmt = PixelFormat(fmt)
    if fmt is PixelFormat.NV12:
        rgb = nv12_to_rgb(frame)
    else:
        rgb = frame[..., ::-1] if fmt is PixelFormat.BGR else frame
    x, y = resize_tables(pl, spec.filter)
    resized = apply_tables(rgb, x, y, spec.filter.convention)
    return _write_canvas(resized, pl, spec, np.empty(spec.out_shape, dtype=spec.dtype))
