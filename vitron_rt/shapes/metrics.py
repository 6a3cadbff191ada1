"""The numbers of the accuracy table: region and boundary agreement of masks (DAVIS's J
and F), image agreement (PSNR), and the two criteria of an edit.

Plain numpy and OpenCV over boolean masks and uint8 images, so the same functions score
a runtime against the ground truth and one runtime against another.

    J (region)    |P & G| / |P | G|                          (both empty: 1)
    F (boundary)  2 P R / (P + R) of the 1-pixel boundaries, a boundary pixel counting
                  as matched within `boundary_tolerance(H, W)` pixels of the other's
                  (DAVIS: 0.008 of the diagonal, at least 1 px)          (both empty: 1)
    J&F           (mean J + mean F) / 2 over a video's frames
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

# DAVIS's boundary tolerance, as a fraction of the image diagonal.
BOUNDARY_FRACTION = 0.008


def _bool(mask: np.ndarray, what: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{what} must be an (H, W) mask, got shape {m.shape}")
    return m.astype(bool)


def _pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = _bool(pred, "the predicted mask"), _bool(truth, "the reference mask")
    if p.shape != t.shape:
        raise ValueError(f"masks of different sizes: {p.shape} and {t.shape}")
    return p, t


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Region similarity J of two (H, W) masks; two empty masks agree (1.0)."""
    p, t = _pair(pred, truth)
    union = np.count_nonzero(p | t)
    return 1.0 if union == 0 else float(np.count_nonzero(p & t) / union)


def boundary_tolerance(height: int, width: int) -> int:
    """Pixels within which a boundary pixel counts as matched (DAVIS's rule)."""
    return max(1, math.ceil(BOUNDARY_FRACTION * math.hypot(height, width)))


def boundary(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: the mask's pixels with a 4-neighbour outside it (the image border
    counts as outside)."""
    m = _bool(mask, "the mask").astype(np.uint8)
    eroded = cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return (m > 0) & (eroded == 0)


def boundary_f(pred: np.ndarray, truth: np.ndarray, tolerance: int | None = None) -> float:
    """Boundary F-measure of two (H, W) masks (see the module docstring)."""
    p, t = _pair(pred, truth)
    bp, bt = boundary(p), boundary(t)
    n_p, n_t = np.count_nonzero(bp), np.count_nonzero(bt)
    if n_p == 0 and n_t == 0:
        return 1.0
    if n_p == 0 or n_t == 0:
        return 0.0
    r = boundary_tolerance(*p.shape) if tolerance is None else tolerance
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    near_t = cv2.dilate(bt.astype(np.uint8), disk) > 0
    near_p = cv2.dilate(bp.astype(np.uint8), disk) > 0
    precision = np.count_nonzero(bp & near_t) / n_p
    recall = np.count_nonzero(bt & near_p) / n_t
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class VideoScore:
    """J, F and their mean over a video's frames."""

    j: float
    f: float

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2


def video_score(pred: np.ndarray, truth: np.ndarray) -> VideoScore:
    """J and F of (T, H, W) masks, each averaged over the frames."""
    p, t = np.asarray(pred), np.asarray(truth)
    if p.ndim != 3 or p.shape != t.shape:
        raise ValueError(f"expected two (T, H, W) masks of one shape, got {p.shape} and {t.shape}")
    return VideoScore(
        j=float(np.mean([iou(a, b) for a, b in zip(p, t)])),
        f=float(np.mean([boundary_f(a, b) for a, b in zip(p, t)])),
    )


def mean_squared_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared difference of two uint8 images (or frame stacks) of one shape."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"images of different shapes: {x.shape} and {y.shape}")
    return float(np.mean((x - y) ** 2))


def psnr(mse: float) -> float | None:
    """Peak signal-to-noise ratio in dB of 8-bit images with this mean squared error;
    None for identical images (infinite)."""
    return None if mse <= 0 else 10.0 * math.log10(255.0**2 / mse)


def pooled_psnr(errors: Sequence[float]) -> float | None:
    """PSNR of the mean of several images' squared errors (None: all identical or none)."""
    return psnr(float(np.mean(errors))) if len(errors) else None


# --------------------------------------------------------------------------- edits


@dataclass(frozen=True)
class EditCriteria:
    """When an edit counts as correct: the target changed as asked, the rest unchanged.

    Both are read in palette colours (the judge's nearest-colour labels), so a few levels
    of codec noise on a video do not count as a change and a blurred edge of a colour
    does not count as the wrong colour: pixels that are near no palette colour (blends at
    edges) are left out of both counts."""

    # Inside the target shape's mask: the share of pixels whose colour is the one the
    # target render has there (the new colour, or what the removed shape uncovered).
    inside: float = 0.6
    # Outside the target's mask grown by `margin` pixels: the most of the pixels whose
    # colour may differ from the input's.
    outside: float = 0.02
    margin: int = 2


@dataclass(frozen=True)
class EditScore:
    """How an edited image or video met `EditCriteria`: the share of the target region in
    the asked colour, the share of the rest changed, and the verdict."""

    inside: float
    outside: float
    correct: bool


def edit_score(
    labels_out: np.ndarray,
    labels_in: np.ndarray,
    labels_target: np.ndarray,
    region: np.ndarray,
    criteria: EditCriteria | None = None,
) -> EditScore:
    """Score an edit from colour labels (`judge.ShapeJudge.colour_labels`, -1 = near no
    colour) of the output, the input and the target render, (H, W) or (T, H, W), and the
    edited shape's visible mask in the input, of the same shape."""
    c = criteria or EditCriteria()
    out, inp, tgt = (np.asarray(a) for a in (labels_out, labels_in, labels_target))
    region = np.asarray(region, bool)
    if not (out.shape == inp.shape == tgt.shape == region.shape):
        raise ValueError(f"labels and mask differ in shape: {out.shape}, {inp.shape}, {tgt.shape}, {region.shape}")
    kernel = np.ones((2 * c.margin + 1, 2 * c.margin + 1), np.uint8)
    frames = region.reshape(-1, *region.shape[-2:]).astype(np.uint8)
    grown = np.stack([cv2.dilate(f, kernel) > 0 for f in frames]).reshape(region.shape)
    readable = out >= 0
    inside = region & readable & (tgt >= 0)
    rest = ~grown & readable & (inp >= 0)
    share_in = np.count_nonzero(out[inside] == tgt[inside]) / max(1, np.count_nonzero(inside))
    share_out = np.count_nonzero(out[rest] != inp[rest]) / max(1, np.count_nonzero(rest))
    return EditScore(share_in, share_out, bool(share_in >= c.inside and share_out <= c.outside))
