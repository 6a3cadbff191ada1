"""Drawing a scene: the image and its ground truth (visible masks after occlusion, boxes).

Shapes are filled polygons (a circle is OpenCV's filled circle) drawn without
anti-aliasing, so every pixel is either the background or exactly one palette colour
and the masks are exact. Positions keep 4 fractional bits (OpenCV's `shift`), so a shape
moving 1.6 px per frame moves smoothly rather than in whole-pixel jumps.

    shapes back to front ─► full mask per shape ─► painted in z-order ─► image (H,W,3)
                            visible_i = full_i and not any(full_j, j in front of i)
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vitron_rt.shapes.palette import BACKGROUND, COLOURS
from vitron_rt.shapes.scene import Scene, Shape

_SHIFT = 4  # fractional bits of the drawing coordinates
_ONE = 1 << _SHIFT


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


# Unit outlines (radius 1, y down) of the polygon kinds; the circle is drawn by OpenCV.
# The square is drawn inside the circle's bounding box at 0.8 (its corners would reach
# 1.13 otherwise); the triangle is equilateral, inscribed, point up; the diamond is the
# square turned 45 degrees; the star has 5 points and an inner radius of 0.45.
OUTLINES: dict[str, np.ndarray] = {
    "square": np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]]),
    "triangle": np.array([[0.0, -1.0], [np.sqrt(3) / 2, 0.5], [-np.sqrt(3) / 2, 0.5]]),
    "diamond": np.array([[0.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]),
    "star": _star(),
}


def _fixed(v: float) -> int:
    return int(round(v * _ONE))


def draw_shape(canvas: np.ndarray, shape: Shape, value: int | tuple[int, ...]) -> np.ndarray:
    """Fill `shape` into `canvas` (H, W) or (H, W, C) with `value`, in place; returns it."""
    if shape.kind == "circle":
        cv2.circle(
            canvas, (_fixed(shape.x), _fixed(shape.y)), _fixed(shape.size), value, -1, cv2.LINE_8, shift=_SHIFT
        )
    else:
        pts = OUTLINES[shape.kind] * shape.size + np.array([shape.x, shape.y])  # (P, 2) pixels
        cv2.fillPoly(canvas, [np.round(pts * _ONE).astype(np.int32)], value, cv2.LINE_8, shift=_SHIFT)
    return canvas


def shape_mask(shape: Shape, height: int, width: int) -> np.ndarray:
    """(H, W) bool: the pixels `shape` covers, ignoring every other shape."""
    return draw_shape(np.zeros((height, width), np.uint8), shape, 1).astype(bool)


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The normalised box (x1, y1, x2, y2) of a (H, W) mask's pixels, x2 / y2 exclusive
    (a one-pixel mask at (0, 0) is (0, 0, 1/W, 1/H)); all zeros for an empty mask."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)


def jittered_box(mask: np.ndarray, rng: np.random.Generator, pixels: float = 2.0) -> tuple[float, float, float, float]:
    """The mask's box with each side moved by up to `pixels` (a user's box is never
    exact), clipped to the image; normalised x1, y1, x2, y2."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        raise ValueError("an empty mask has no box")
    d = rng.uniform(-pixels, pixels, 4)
    box = ((xs.min() + d[0]) / w, (ys.min() + d[1]) / h, (xs.max() + 1 + d[2]) / w, (ys.max() + 1 + d[3]) / h)
    return tuple(float(min(1.0, max(0.0, v))) for v in box)


@dataclass(frozen=True)
class Render:
    """A drawn scene and its ground truth, shape i of the scene at index i."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    masks: np.ndarray  # (n, H, W) bool, visible pixels (after occlusion)
    full_masks: np.ndarray  # (n, H, W) bool, every pixel the shape covers

    @property
    def boxes(self) -> np.ndarray:
        """(n, 4) float32 normalised x1, y1, x2, y2 of each visible mask."""
        return np.array([mask_box(m) for m in self.masks], np.float32).reshape(-1, 4)

    @property
    def visible_fraction(self) -> np.ndarray:
        """(n,) float: visible pixels / covered pixels per shape."""
        full = self.full_masks.reshape(len(self.full_masks), -1).sum(1)
        seen = self.masks.reshape(len(self.masks), -1).sum(1)
        return seen / np.maximum(full, 1)


def full_masks(scene: Scene) -> np.ndarray:
    """(n, H, W) bool: each shape's own coverage."""
    out = np.zeros((len(scene), scene.height, scene.width), bool)
    for i, s in enumerate(scene.shapes):
        out[i] = shape_mask(s, scene.height, scene.width)
    return out


def visible_masks(full: np.ndarray) -> np.ndarray:
    """(n, H, W) coverage in z-order -> visible masks: what no later shape covers."""
    visible = full.copy()
    covered = np.zeros(full.shape[1:], bool)
    for i in range(len(full) - 1, -1, -1):  # front to back
        visible[i] &= ~covered
        covered |= full[i]
    return visible


def render(scene: Scene) -> Render:
    """Draw `scene` (see the module docstring)."""
    image = np.empty((scene.height, scene.width, 3), np.uint8)
    image[:] = BACKGROUND
    for shape in scene.shapes:  # back to front: the same fill as the masks, so pixels and masks agree
        draw_shape(image, shape, COLOURS[shape.colour])
    full = full_masks(scene)
    return Render(image=image, masks=visible_masks(full), full_masks=full)


@dataclass(frozen=True)
class VideoRender:
    """A drawn video: frame t is `render(scene.at(t))`."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    masks: np.ndarray  # (T, n, H, W) bool visible masks

    @property
    def boxes(self) -> np.ndarray:
        """(T, n, 4) float32 normalised boxes of the visible masks."""
        t, n = self.masks.shape[:2]
        return np.array([[mask_box(m) for m in frame] for frame in self.masks], np.float32).reshape(t, n, 4)


def render_video(scene: Scene, frames: int) -> VideoRender:
    """`frames` frames of `scene` moving (frame 0 is `scene` itself)."""
    if frames < 1:
        raise ValueError(f"a video needs at least one frame, got {frames}")
    drawn = [render(scene.at(t)) for t in range(frames)]
    return VideoRender(
        frames=np.stack([r.image for r in drawn]),  # (T, H, W, 3)
        masks=np.stack([r.masks for r in drawn]),  # (T, n, H, W)
    )
