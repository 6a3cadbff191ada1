"""ShapesWorld: a seeded generator of scenes and videos of coloured shapes.

Every scene is a pure function of (seed, stream, index): `ShapesWorld(seed=7).scene(123)`
is the same scene on every machine and in every process, without generating scenes 0..122
first, so a data loader, a held-out split and a test can each ask for exactly the scenes
they need. Streams keep the image scenes, the videos and the tasks' own draws apart.

What a scene guarantees (so that every question about it has one right answer):

- 1..4 shapes, no two with the same colour *and* kind ("the red circle" names one shape);
- every shape keeps `min_visible` of its area visible under the shapes in front of it;
- every centre lies `cell_margin` pixels inside its 3 x 3 grid cell, so its place
  ("top left") is never on a cell border;
- in a video every shape stays inside the frame and keeps `video_min_visible` of its area
  visible in every frame; its place is where it starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from vitron_rt.shapes.palette import COLOURS, DIRECTIONS, KINDS, MOTIONS, PLACES, place_cell
from vitron_rt.shapes.render import full_masks, shape_mask, visible_masks
from vitron_rt.shapes.scene import Scene, Shape

# Pixels kept between shapes of a `separate` scene: two same-coloured shapes closer than
# this would read back as one blob.
SEPARATION = 2
# Independent random streams of one seed.
STREAMS: dict[str, int] = {"scene": 0, "video": 1, "task": 2, "split": 3}


class WorldError(RuntimeError):
    """A scene with the requested constraints could not be drawn (see the message)."""


@dataclass(frozen=True)
class WorldConfig:
    """The world's dimensions. Defaults: 128 x 128 images, 16-frame videos."""

    size: int = 128
    min_shapes: int = 1
    max_shapes: int = 4
    # Radius range in pixels: the smallest triangle (radius 10) still covers ~130 px, enough
    # for a 16 px ViT patch grid and for the judge's geometry; the largest shapes leave room
    # for four of them.
    min_radius: float = 10.0
    max_radius: float = 20.0
    min_visible: float = 0.6
    cell_margin: float = 3.0
    frames: int = 16
    # Pixels per frame: over 16 frames a mover travels 24-38 px, a third of the image, so
    # its direction is plain even in the 4 frames the LLM samples.
    min_speed: float = 1.6
    max_speed: float = 2.5
    still_probability: float = 0.3
    video_min_visible: float = 0.4
    # Draws of one shape (then of a whole scene) before giving up.
    max_tries: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.min_shapes <= self.max_shapes:
            raise ValueError(f"need 1 <= min_shapes <= max_shapes, got {self.min_shapes}, {self.max_shapes}")
        if self.max_shapes > len(COLOURS) * len(KINDS):
            raise ValueError("more shapes than distinct (colour, kind) pairs")
        if not 0 < self.min_radius <= self.max_radius:
            raise ValueError(f"need 0 < min_radius <= max_radius, got {self.min_radius}, {self.max_radius}")
        # A corner cell must hold a centre max_radius + 1 from the image's edge and
        # cell_margin from the cell's inner borders.
        if self.max_radius + 1 >= self.size / 3 - self.cell_margin:
            raise ValueError(f"max_radius {self.max_radius} is too large for a {self.size} px image")
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")


@dataclass(frozen=True)
class ShapeSpec:
    """A requested shape: what a text-to-image prompt names. None fields are drawn at random."""

    colour: str | None = None
    kind: str | None = None
    place: str | None = None


def _interval(lo: float, hi: float) -> tuple[float, float] | None:
    return (lo, hi) if hi > lo else None


class ShapesWorld:
    """Seeded scenes and videos (see the module docstring)."""

    def __init__(self, config: WorldConfig | None = None, seed: int = 0):
        self.config = config or WorldConfig()
        self.seed = int(seed)

    def rng(self, stream: str, index: int) -> np.random.Generator:
        """The generator of item `index` of a stream: a pure function of (seed, stream, index)."""
        return np.random.default_rng([self.seed, STREAMS[stream], int(index)])

    # ------------------------------------------------------------------ public draws

    def scene(self, index: int, num_shapes: int | None = None) -> Scene:
        """Image scene `index` of this world."""
        return self.sample_scene(self.rng("scene", index), num_shapes)

    def video(self, index: int, num_shapes: int | None = None) -> Scene:
        """Video scene `index`: shapes with motions; render it with `render_video(scene, frames)`."""
        return self.sample_scene(self.rng("video", index), num_shapes, moving=True)

    def sample_scene(
        self,
        rng: np.random.Generator,
        num_shapes: int | None = None,
        specs: Sequence[ShapeSpec] | None = None,
        moving: bool = False,
        min_visible: float | None = None,
        separate: bool = False,
    ) -> Scene:
        """A scene from `rng`: `num_shapes` random shapes, or one shape per spec (in that
        z-order). `min_visible` overrides the config's. `separate`: no two shapes overlap or
        touch (`SEPARATION` pixels apart at least), what a text-to-image target wants, so
        that every shape in it can be read back on its own. WorldError if the constraints
        cannot be met."""
        c = self.config
        if specs is not None:
            specs = list(specs)
            if num_shapes is not None and num_shapes != len(specs):
                raise ValueError(f"num_shapes {num_shapes} does not match {len(specs)} specs")
            _check_specs(specs)
        n = len(specs) if specs is not None else num_shapes
        if n is None:
            n = int(rng.integers(c.min_shapes, c.max_shapes + 1))
        if not 1 <= n <= c.max_shapes:
            raise ValueError(f"a scene has 1..{c.max_shapes} shapes, got {n}")
        visible = c.min_visible if min_visible is None else min_visible
        for _ in range(c.max_tries):
            shapes: list[Shape] = []
            for i in range(n):
                spec = specs[i] if specs is not None else ShapeSpec()
                shape = self._add_shape(rng, shapes, spec, moving, visible, separate)
                if shape is None:
                    break
                shapes.append(shape)
            else:
                return Scene(tuple(shapes), c.size, c.size)
        raise WorldError(f"no scene of {n} shapes met the constraints in {c.max_tries} tries")

    # ------------------------------------------------------------------ one shape

    def _add_shape(
        self,
        rng: np.random.Generator,
        shapes: list[Shape],
        spec: ShapeSpec,
        moving: bool,
        min_visible: float,
        separate: bool,
    ) -> Shape | None:
        """A shape that fits with `shapes` (drawn in front of them), or None after max_tries."""
        c = self.config
        taken = {(s.colour, s.kind) for s in shapes}
        frames = self._frames(shapes, moving)
        for _ in range(c.max_tries):
            colour = spec.colour or str(rng.choice(list(COLOURS)))
            kind = spec.kind or str(rng.choice(KINDS))
            if (colour, kind) in taken:
                if spec.colour and spec.kind:
                    return None
                continue
            size = float(rng.uniform(c.min_radius, c.max_radius))
            motion, speed = "still", 0.0
            if moving and rng.random() >= c.still_probability:
                motion = str(rng.choice(DIRECTIONS))
                speed = float(rng.uniform(c.min_speed, c.max_speed))
            centre = self._centre(rng, size, motion, speed, spec.place)
            if centre is None:
                continue
            shape = Shape(kind, colour, centre[0], centre[1], size, motion, speed)
            if self._fits(frames, shape, moving, min_visible, separate):
                return shape
        return None

    def _centre(
        self, rng: np.random.Generator, size: float, motion: str, speed: float, place: str | None
    ) -> tuple[float, float] | None:
        """A centre inside a cell (away from its borders) from which the whole motion stays
        in the frame; None if the chosen cell cannot hold one."""
        c = self.config
        travel = speed * (c.frames - 1)
        dx, dy = MOTIONS[motion]
        lo, hi = size + 1.0, c.size - size - 1.0  # the centre keeps the shape inside the frame
        # The start range from which start + d * travel stays in [lo, hi], per axis.
        x_range = _interval(lo - min(0.0, dx * travel), hi - max(0.0, dx * travel))
        y_range = _interval(lo - min(0.0, dy * travel), hi - max(0.0, dy * travel))
        if x_range is None or y_range is None:
            return None
        cell = c.size / 3
        cells = [place_cell(place)] if place else [place_cell(p) for p in PLACES]
        options = []
        for row, col in cells:
            lo_x, hi_x = col * cell + c.cell_margin, (col + 1) * cell - c.cell_margin
            lo_y, hi_y = row * cell + c.cell_margin, (row + 1) * cell - c.cell_margin
            xs = _interval(max(x_range[0], lo_x), min(x_range[1], hi_x))
            ys = _interval(max(y_range[0], lo_y), min(y_range[1], hi_y))
            if xs and ys:
                options.append((xs, ys))
        if not options:
            return None
        xs, ys = options[int(rng.integers(len(options)))]
        return float(rng.uniform(*xs)), float(rng.uniform(*ys))

    def _frames(self, shapes: list[Shape], moving: bool) -> list[_Frame]:
        """The placed shapes in each frame that `_fits` checks (their coverage drawn lazily)."""
        c = self.config
        scene = Scene(tuple(shapes), c.size, c.size)
        frames = range(c.frames) if moving else (0,)
        return [_Frame(scene.at(t)) for t in frames]

    def _fits(
        self,
        frames: list[_Frame],
        shape: Shape,
        moving: bool,
        min_visible: float,
        separate: bool,
    ) -> bool:
        """Whether `shape`, drawn in front of the shapes of `frames` (see `_frames`),
        leaves every shape enough of itself visible in every frame (frame 0: `min_visible`;
        later video frames: `video_min_visible` at most); with `separate`, whether it keeps
        its distance from them.

        The shapes behind were checked when they were added, and the new shape, in front,
        hides nothing it does not overlap: a frame where its box meets no other box passes
        without drawing anything (most frames of most videos)."""
        c = self.config
        need = min(min_visible, c.video_min_visible)
        gap = SEPARATION if separate else 0
        for t, frame in enumerate(frames):
            moved = shape.at(t)
            if not any(_boxes_meet(moved, other, gap if t == 0 else 0) for other in frame.scene.shapes):
                continue
            masks = frame.masks
            new = shape_mask(moved, c.size, c.size)
            if t == 0 and separate:
                kernel = np.ones((2 * SEPARATION + 1, 2 * SEPARATION + 1), np.uint8)
                grown = cv2.dilate(new.astype(np.uint8), kernel).astype(bool)
                if (grown & masks.any(0)).any():
                    return False
            full = np.concatenate([masks, new[None]])  # (n+1, H, W)
            area = np.count_nonzero(full.reshape(len(full), -1), axis=1)
            seen = np.count_nonzero(visible_masks(full).reshape(len(full), -1), axis=1)
            threshold = min_visible if t == 0 else need
            if (area == 0).any() or (seen < threshold * area - 1e-9).any():
                return False
        return True


@dataclass
class _Frame:
    """The shapes placed so far at one frame, and their coverage (n, H, W), drawn the first
    time a new shape's box meets one of theirs (in most frames of most videos, never)."""

    scene: Scene

    @cached_property
    def masks(self) -> np.ndarray:
        return full_masks(self.scene)


def _boxes_meet(a: Shape, b: Shape, gap: float) -> bool:
    """Whether the squares of side 2 * size (+1 px of rasterisation) around two shapes,
    grown by `gap`, overlap: every pixel a shape covers lies in its square."""
    reach = a.size + b.size + 2.0 + gap
    return abs(a.x - b.x) < reach and abs(a.y - b.y) < reach


def _check_specs(specs: Sequence[ShapeSpec]) -> None:
    pairs = [(s.colour, s.kind) for s in specs if s.colour and s.kind]
    if len(pairs) != len(set(pairs)):
        raise ValueError(f"two specs ask for the same colour and kind: {pairs}")
    for s in specs:
        if s.colour is not None and s.colour not in COLOURS:
            raise ValueError(f"unknown colour {s.colour!r}")
        if s.kind is not None and s.kind not in KINDS:
            raise ValueError(f"unknown kind {s.kind!r}")
        if s.place is not None:
            place_cell(s.place)
