"""A judge that reads shapes back from pixels: the generation-correctness classifier.

Given any RGB image (a render, or what a diffusion model drew), it finds the shapes by
colour and names their kind from simple geometry, so "did the model draw a red circle at
the top left?" has a yes/no answer that needs no learned model:

    image ─► nearest palette colour per pixel (or background / none, beyond a tolerance)
          ─► per colour: connected components ≥ min_area
          ─► per component: fill (area / box), solidity (area / convex hull),
             centroid height in its box ─► kind; centroid ─► place
          ─► Detection(colour, kind, place, box, ...)

The kind rules, with the ranges measured on 300 renders per kind at radius 10-20:

    solidity < 0.8          star      (star 0.57-0.66, every other kind > 0.93)
    fill >= 0.9             square    (1.0)
    fill >= 0.64            circle    (0.72-0.83)
    centroid >= 0.58 down   triangle  (0.65-0.66: point up, mass low; fill 0.51-0.53)
    otherwise               diamond   (0.49-0.51; fill 0.50)

A shape partly hidden by another loses area and corners, so the judge is meant for
generated scenes (whose targets have no occlusion); tests measure it on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from vitron_rt.shapes.palette import BACKGROUND, COLOURS, place_of
from vitron_rt.shapes.world import ShapeSpec

_NAMES = tuple(COLOURS)
_TABLE = np.array([*COLOURS.values(), BACKGROUND], np.float32)  # (C+1, 3): palette, then background
_BACKGROUND = len(COLOURS)
_NONE = -1


@dataclass(frozen=True)
class JudgeConfig:
    """Thresholds (see the module docstring for where the kind thresholds come from)."""

    # A pixel farther than this (RGB distance) from every palette colour and the background
    # belongs to nothing. The palette's closest pair is 104 apart; 60 admits the colour
    # drift of a generated image without letting a blend of two colours pass as a third.
    colour_tolerance: float = 60.0
    # Components smaller than this fraction of the image are noise. The smallest shape
    # (a radius-10 triangle or star) covers ~0.008 of a 128 x 128 image.
    min_area: float = 0.003
    # Smaller images are upscaled (bicubic) to this side first: the geometry of a shape a
    # few pixels wide is read better from a smooth upscale (64 px generations with blur and
    # noise: 96% -> 97% of shapes read right) than from its raw pixels.
    min_side: int = 128
    star_solidity: float = 0.8
    square_fill: float = 0.9
    circle_fill: float = 0.64
    triangle_centroid: float = 0.58


@dataclass(frozen=True)
class Detection:
    """One shape found in an image. Coordinates are normalised to [0, 1]."""

    colour: str
    kind: str
    place: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 (x2, y2 exclusive)
    centre: tuple[float, float]  # centroid x, y
    area: float  # fraction of the image
    mask: np.ndarray = field(repr=False, compare=False)  # (H, W) bool

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"


@dataclass(frozen=True)
class Verdict:
    """Whether a requested shape is in the image: the matching detection, or why not."""

    ok: bool
    spec: ShapeSpec
    found: Detection | None
    reason: str


@dataclass(frozen=True)
class SceneVerdict:
    """A check of several requested shapes: one verdict each, and the shapes nobody asked for."""

    verdicts: tuple[Verdict, ...]
    extra: tuple[Detection, ...]

    @property
    def ok(self) -> bool:
        """Every requested shape was found (extra shapes do not count against it)."""
        return all(v.ok for v in self.verdicts)

    @property
    def exact(self) -> bool:
        """Every requested shape was found and nothing else was drawn."""
        return self.ok and not self.extra


def _shape_features(mask: np.ndarray) -> dict[str, float]:
    """fill, solidity and centroid height of a (H, W) bool mask of one component."""
    ys, xs = np.nonzero(mask)
    x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    area = float(xs.size)
    m8 = mask.astype(np.uint8)
    contours, _ = cv2.findContours(m8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    hull = cv2.convexHull(np.concatenate(contours))
    hull_mask = np.zeros_like(m8)
    cv2.fillPoly(hull_mask, [hull], 1)  # the hull in pixels, comparable with `area`
    return {
        "fill": area / float((x2 - x1) * (y2 - y1)),
        "solidity": area / max(float(hull_mask.sum()), area),
        "centroid": (ys.mean() + 0.5 - y1) / float(y2 - y1),
    }


class ShapeJudge:
    """Finds and names the shapes in an image (see the module docstring)."""

    def __init__(self, config: JudgeConfig | None = None):
        self.config = config or JudgeConfig()

    def colour_labels(self, image: np.ndarray) -> np.ndarray:
        """(H, W) int: palette index of each pixel, len(COLOURS) for background, -1 for none."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
        px = image.reshape(-1, 1, 3).astype(np.float32)
        dist = np.linalg.norm(px - _TABLE[None], axis=2)  # (H*W, C+1)
        labels = dist.argmin(1)
        labels[dist.min(1) > self.config.colour_tolerance] = _NONE
        return labels.reshape(image.shape[:2])

    def classify(self, mask: np.ndarray) -> str:
        """The kind of one shape's (H, W) bool mask."""
        c = self.config
        f = _shape_features(mask)
        if f["solidity"] < c.star_solidity:
            return "star"
        if f["fill"] >= c.square_fill:
            return "square"
        if f["fill"] >= c.circle_fill:
            return "circle"
        return "triangle" if f["centroid"] >= c.triangle_centroid else "diamond"

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Every shape in `image`, largest first. Masks are at the analysis size (the
        image's, or upscaled to `min_side`); boxes and centres are normalised either way."""
        side = min(image.shape[:2])
        if side < self.config.min_side:
            scale = self.config.min_side / side
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
        labels = self.colour_labels(image)
        h, w = labels.shape
        min_px = self.config.min_area * h * w
        found: list[Detection] = []
        for ci, colour in enumerate(_NAMES):
            layer = (labels == ci).astype(np.uint8)
            if layer.sum() < min_px:
                continue
            n, comp, stats, centroids = cv2.connectedComponentsWithStats(layer, connectivity=8)
            for k in range(1, n):
                if stats[k, cv2.CC_STAT_AREA] < min_px:
                    continue
                mask = comp == k
                x, y = centroids[k]
                bx, by, bw, bh = stats[k, :4]
                found.append(
                    Detection(
                        colour=colour,
                        kind=self.classify(mask),
                        place=place_of(x + 0.5, y + 0.5, w, h),
                        box=(bx / w, by / h, (bx + bw) / w, (by + bh) / h),
                        centre=((x + 0.5) / w, (y + 0.5) / h),
                        area=float(stats[k, cv2.CC_STAT_AREA]) / (h * w),
                        mask=mask,
                    )
                )
        found.sort(key=lambda d: -d.area)
        return found

    def check(self, image: np.ndarray, spec: ShapeSpec, detections: Sequence[Detection] | None = None) -> Verdict:
        """Is there a shape matching `spec` (every field given must match) in `image`?"""
        dets = self.detect(image) if detections is None else detections
        return _match(spec, dets)

    def check_all(self, image: np.ndarray, specs: Sequence[ShapeSpec]) -> SceneVerdict:
        """Check each spec; a detection matches at most one spec (two red circles asked for
        need two in the image). Specs are matched most specific first."""
        dets = list(self.detect(image))
        order = sorted(range(len(specs)), key=lambda i: -sum(v is not None for v in vars(specs[i]).values()))
        verdicts: dict[int, Verdict] = {}
        for i in order:
            v = _match(specs[i], dets)
            verdicts[i] = v
            if v.found is not None:
                dets.remove(v.found)
        return SceneVerdict(tuple(verdicts[i] for i in range(len(specs))), tuple(dets))


def _match(spec: ShapeSpec, detections: Sequence[Detection]) -> Verdict:
    def fits(d: Detection, colour: bool = True, kind: bool = True, place: bool = True) -> bool:
        return (
            (not colour or spec.colour is None or d.colour == spec.colour)
            and (not kind or spec.kind is None or d.kind == spec.kind)
            and (not place or spec.place is None or d.place == spec.place)
        )

    for d in detections:
        if fits(d):
            return Verdict(True, spec, d, "found")
    near = [d for d in detections if fits(d, place=False)]
    if near:
        return Verdict(False, spec, None, f"{near[0].name} is at the {near[0].place}, not the {spec.place}")
    near = [d for d in detections if fits(d, kind=False)]
    if near:
        return Verdict(False, spec, None, f"found a {near[0].name} where a {spec.kind} was asked for")
    near = [d for d in detections if fits(d, colour=False)]
    if near:
        return Verdict(False, spec, None, f"found a {near[0].name} where a {spec.colour} one was asked for")
    return Verdict(False, spec, None, "no such shape" if detections else "no shape found")
