"""Regions on the patch grid, in numpy: what the `region_encoder` component takes as its mask.

A region reaches the runtime as a box (normalised x1, y1, x2, y2, from `--region` or a
hybrid message) or as a sketch (a mask image the user drew). Both become a (G, G) mask on
the vision encoder's patch grid, rows = y, plus the box that the encoder's location MLP
reads.

`box_to_mask` is an exact port of `vitron_rt.models.region.box_to_mask` (the released
Vitron rasterisation: draw the box at `image_size` pixels, bilinear-resize to the grid,
keep every cell > 0), with the same float32 arithmetic, so the runtime feeds the exported
encoder the masks its PyTorch reference was checked with. The tests compare the two.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vitron_rt.runtime.errors import RegionError

Box = tuple[float, float, float, float]


def validate_region(box: Sequence[float]) -> Box:
    """Check a normalised box (x1, y1, x2, y2) and return it as four floats.

    Every value must be finite and inside [0, 1], with x1 < x2 and y1 < y2 (a box of
    zero width or height selects no pixel). Raises `RegionError` naming the problem.
    """
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        raise RegionError(f"region must be four numbers x1, y1, x2, y2; got {box!r}") from None
    if len(values) != 4:
        raise RegionError(f"region must be four numbers x1, y1, x2, y2; got {len(values)}: {_show(values)}")
    if not all(math.isfinite(v) for v in values):
        raise RegionError(f"region values must be finite; got {_show(values)}")
    if not all(0.0 <= v <= 1.0 for v in values):
        raise RegionError(f"region values must lie in [0, 1] (normalised to the image); got {_show(values)}")
    x1, y1, x2, y2 = values
    if not x1 < x2:
        raise RegionError(f"region needs x1 < x2 (left < right); got {_show(values)}")
    if not y1 < y2:
        raise RegionError(f"region needs y1 < y2 (top < bottom); got {_show(values)}")
    return (x1, y1, x2, y2)


def _show(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


# --------------------------------------------------------------------------- boxes


def _bilinear_taps(size: int, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where `F.interpolate(mode="bilinear", align_corners=False)` from `size` to `grid`
    samples along one axis, in PyTorch's float32 arithmetic: cell i reads source
    s = (i + 0.5) * size / grid - 0.5 (clamped at 0) from pixels i0 = floor(s) and
    i1 = i0 + 1 (clamped to the last pixel). Returns (i0, i1, i0 has weight, i1 has
    weight), each (G,)."""
    scale = np.float32(size / grid)  # PyTorch's float scale
    dst = np.arange(grid, dtype=np.float32)
    src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0.0))  # (G,)
    i0f = np.floor(src)
    lam = src - i0f  # weight of the right neighbour
    i0 = i0f.astype(np.int64)
    i1 = np.where(i0 < size - 1, i0 + 1, i0)
    return i0, i1, lam < 1, lam > 0


def _axis_cover(lo: np.ndarray, hi: np.ndarray, grid: int, image_size: int) -> np.ndarray:
    """(B, G) bool: grid cells whose bilinear sample touches pixels lo <= p < hi (a box mask
    is separable, so the 2-D resize followed by `> 0` is the product of two 1-D ones)."""
    i0, i1, w0, w1 = _bilinear_taps(image_size, grid)

    def inside(p: np.ndarray) -> np.ndarray:
        return (p[None] >= lo[:, None]) & (p[None] < hi[:, None])  # (B, G)

    return (inside(i0) & w0[None]) | (inside(i1) & w1[None])


def box_to_mask(
    boxes: np.ndarray | Sequence[Sequence[float]],
    grid: int,
    image_size: int | None = None,
    transpose: bool = False,
) -> np.ndarray:
    """Rasterise boxes onto the patch grid: (B, 4) normalised x1,y1,x2,y2 -> (B, G, G) 0/1.

    Rows are y and columns are x, matching the row-major order of the patch features.
    `image_size` reproduces the released rasterisation (box scaled to pixels of an
    `image_size` frame, truncated like `int()`, drawn, resized to the grid bilinearly,
    every non-zero cell on); without it the box is drawn on the grid directly.
    `transpose=True` reproduces the released `mask[x1:x2, y1:y2]` indexing (the box
    mirrored about the diagonal), for parity with the released weights.

    Coordinates outside [0,1] are clipped; an inverted box gives an empty mask. The result
    has the boxes' float dtype (float32 for other inputs), like the PyTorch reference.
    """
    arr = np.asarray(boxes)
    if arr.ndim != 2 or arr.shape[-1] != 4:
        raise RegionError(f"boxes must be (B, 4) x1,y1,x2,y2, got shape {tuple(arr.shape)}")
    if grid < 1 or (image_size is not None and image_size < 1):
        raise RegionError(f"grid and image_size must be positive, got grid={grid}, image_size={image_size}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise RegionError(f"boxes must be real numbers, got dtype {arr.dtype}")
    b32 = arr.astype(np.float32)
    if not np.isfinite(b32).all():
        raise RegionError("boxes must be finite numbers")
    size = grid if image_size is None else image_size
    pix = np.trunc(np.clip(b32, np.float32(0.0), np.float32(1.0)) * np.float32(size)).astype(np.int64)  # (B, 4)
    x1, y1, x2, y2 = pix.T
    cols = _axis_cover(x1, x2, grid, size)  # (B, G) cells covered along x
    rows = _axis_cover(y1, y2, grid, size)  # (B, G) cells covered along y
    if transpose:
        rows, cols = cols, rows
    mask = rows[:, :, None] & cols[:, None, :]  # (B, G, G)
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float32
    return mask.astype(dtype)


# --------------------------------------------------------------------------- sketches


def sketch_to_binary(sketch: np.ndarray) -> np.ndarray:
    """A user's mask image -> (H, W) bool, True where the user drew.

    (H, W) or (H, W, 1): the values. (H, W, 3): any colour channel. (H, W, 4): the alpha
    channel when it varies (strokes on a transparent canvas), else the colour channels.
    A pixel is "drawn" when bool, or above half the range of its dtype (uint8 > 127, float
    > 0.5), so JPEG noise around black does not count as a stroke.
    """
    arr = np.asarray(sketch)
    if arr.ndim == 3 and arr.shape[2] == 4:
        alpha = arr[..., 3]
        arr = alpha if alpha.min() != alpha.max() else arr[..., :3]
    if arr.ndim == 3 and arr.shape[2] in (1, 3):
        arr = arr.max(axis=2)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise RegionError(f"a sketch mask must be an (H, W), (H, W, 3) or (H, W, 4) image, got shape {sketch.shape}")
    if arr.dtype == np.bool_:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        return arr > np.iinfo(arr.dtype).max // 2
    if np.issubdtype(arr.dtype, np.floating):
        return np.nan_to_num(arr, nan=0.0) > 0.5
    raise RegionError(f"a sketch mask must be a bool, integer or float image, got dtype {arr.dtype}")


def mask_bbox(mask: np.ndarray) -> Box:
    """The normalised box (x1, y1, x2, y2) around the True pixels of an (H, W) mask.

    Pixel edges, not centres: a mask whose only pixel is (row 0, col 0) of a W x H image
    gives (0, 0, 1/W, 1/H), so the box always has positive size.
    """
    m = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        raise RegionError("the sketch mask is empty: nothing was drawn")
    h, w = m.shape
    return (float(cols[0] / w), float(rows[0] / h), float((cols[-1] + 1) / w), float((rows[-1] + 1) / h))


def sketch_to_grid(sketch: np.ndarray, grid: int) -> np.ndarray:
    """A user's mask image -> (G, G) float32 0/1 on the patch grid, rows = y.

    The released rule for boxes, applied to the drawing at its own resolution: bilinear
    resize (align_corners=False) of the binary mask to G x G, every cell > 0 on. A cell
    is therefore on when the drawing covers a pixel next to the cell's centre sample, so
    a box drawn on an `image_size` canvas gives exactly `box_to_mask(box, grid,
    image_size)`. A stroke thinner than a cell that misses its centre does not count:
    regions are meant to be filled shapes. The sketch is in the pixel frame of the image
    it was drawn on (rows from its height, columns from its width).
    """
    if grid < 1:
        raise RegionError(f"grid must be positive, got {grid}")
    drawn = sketch_to_binary(sketch)  # (H, W)
    r0, r1, rw0, rw1 = _bilinear_taps(drawn.shape[0], grid)  # (G,) each
    c0, c1, cw0, cw1 = _bilinear_taps(drawn.shape[1], grid)
    on = np.zeros((grid, grid), dtype=bool)
    for rows, rw in ((r0, rw0), (r1, rw1)):
        for cols, cw in ((c0, cw0), (c1, cw1)):
            on |= drawn[np.ix_(rows, cols)] & rw[:, None] & cw[None, :]  # (G, G)
    return on.astype(np.float32)


@dataclass(frozen=True)
class GridRegion:
    """A region as the region encoder takes it: the normalised box (its location MLP's
    input) and the (G, G) float32 mask on the patch grid (its pooling mask), rows = y."""

    box: Box
    mask: np.ndarray  # (G, G) float32 0/1

    @property
    def empty(self) -> bool:
        """Whether no grid cell is on (the encoder then pools zeros)."""
        return not bool(self.mask.any())


def region_from_box(
    box: Sequence[float], grid: int, image_size: int | None = None, transpose: bool = False
) -> GridRegion:
    """Validate a box and rasterise it (see `box_to_mask`)."""
    b = validate_region(box)
    return GridRegion(box=b, mask=box_to_mask(np.array([b], dtype=np.float32), grid, image_size, transpose)[0])


def region_from_sketch(sketch: np.ndarray, grid: int) -> GridRegion:
    """A sketch's grid mask (see `sketch_to_grid`) and its bounding box (see `mask_bbox`)."""
    drawn = sketch_to_binary(sketch)
    return GridRegion(box=mask_bbox(drawn), mask=sketch_to_grid(drawn, grid))


# --------------------------------------------------------------------------- text

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_REGION_TEXT = re.compile(
    rf"\s*[(\[]?\s*({_NUM})\s*[,\s]\s*({_NUM})\s*[,\s]\s*({_NUM})\s*[,\s]\s*({_NUM})\s*[)\]]?\s*"
)
PERCENT_SCALE = 100  # the 0-100 integer form a figure of the paper uses


def parse_region(text: str) -> Box:
    """Read "(x1, y1, x2, y2)" as a normalised box; raises `RegionError`.

    Parentheses or brackets are optional; values are separated by commas or whitespace.
    Two scales are read:

    - all four values <= 1: normalised coordinates, taken as they are;
    - any value > 1: the 0-100 scale (Vitron's figures write boxes as integers out of
      100): every value must then be a whole number in 0..100, and all four are divided
      by 100. A mix such as (0.5, 20, 60, 80) is refused rather than guessed at.

    So (0, 0, 1, 1) is the whole image, never a 1 % box. The result is then checked by
    `validate_region` (inside [0, 1], x1 < x2, y1 < y2).
    """
    if not isinstance(text, str):
        raise RegionError(f"region must be text like (x1, y1, x2, y2), got {type(text).__name__}")
    m = _REGION_TEXT.fullmatch(text)
    if m is None:
        shown = text.strip()
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise RegionError(f"cannot read region {shown!r}: expected four numbers (x1, y1, x2, y2)")
    values = [float(g) for g in m.groups()]
    if any(v > 1.0 for v in values):
        if not all(math.isfinite(v) and v.is_integer() and 0 <= v <= PERCENT_SCALE for v in values):
            raise RegionError(
                f"region {_show(values)}: values must all lie in [0, 1], or all be whole numbers "
                f"in 0..{PERCENT_SCALE} (percent of the image)"
            )
        values = [v / PERCENT_SCALE for v in values]
    return validate_region(values)
