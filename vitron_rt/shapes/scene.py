"""What a ShapesWorld scene is: shapes in z-order on a plain background, optionally moving.

A scene is plain data (no pixels): `render` draws it, the task templates describe it, and
a video is the same scene at frames 0..T-1 (`Scene.at`). Coordinates are pixels, x to the
right and y down, as OpenCV draws them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vitron_rt.shapes.palette import COLOURS, KINDS, MOTIONS, place_of


@dataclass(frozen=True)
class Shape:
    """One shape: kind and colour name, centre (x, y) and size in pixels, and its motion.

    `size` is the radius of the circle the shape is drawn in (a circle's radius, a star's
    outer radius), so shapes of one size look about equally big whatever their kind.
    A moving shape travels `speed` pixels per frame in its `motion` direction.
    """

    kind: str
    colour: str
    x: float
    y: float
    size: float
    motion: str = "still"
    speed: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; known: {', '.join(COLOURS)}")
        if self.motion not in MOTIONS:
            raise ValueError(f"unknown motion {self.motion!r}; known: {', '.join(MOTIONS)}")
        if not self.size > 0:
            raise ValueError(f"size must be positive, got {self.size}")
        if self.speed < 0:
            raise ValueError(f"speed must be >= 0, got {self.speed}")

    @property
    def name(self) -> str:
        """"red circle": colour then kind, how every answer names a shape."""
        return f"{self.colour} {self.kind}"

    @property
    def moves(self) -> bool:
        return self.motion != "still" and self.speed > 0

    def at(self, frame: float) -> "Shape":
        """This shape after `frame` frames of its motion."""
        dx, dy = MOTIONS[self.motion]
        step = self.speed * frame
        return dataclasses.replace(self, x=self.x + dx * step, y=self.y + dy * step)


@dataclass(frozen=True)
class Scene:
    """Shapes back to front (a later shape occludes an earlier one) on a width x height canvas."""

    shapes: tuple[Shape, ...]
    width: int = 128
    height: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "shapes", tuple(self.shapes))
        if self.width < 8 or self.height < 8:
            raise ValueError(f"a scene needs at least 8 x 8 pixels, got {self.width} x {self.height}")

    def __len__(self) -> int:
        return len(self.shapes)

    def at(self, frame: float) -> "Scene":
        """The scene at video frame `frame` (frame 0 is the scene itself)."""
        return dataclasses.replace(self, shapes=tuple(s.at(frame) for s in self.shapes))

    def place(self, index: int) -> str:
        """The place ("top left", ...) of shape `index`'s centre."""
        s = self.shapes[index]
        return place_of(s.x, s.y, self.width, self.height)

    def index(self, colour: str, kind: str) -> int:
        """The index of the shape with this colour and kind; KeyError if none or several."""
        hits = [i for i, s in enumerate(self.shapes) if s.colour == colour and s.kind == kind]
        if len(hits) != 1:
            raise KeyError(f"{len(hits)} shapes are {colour} {kind}s; expected exactly one")
        return hits[0]

    def count(self, colour: str | None = None, kind: str | None = None) -> int:
        """How many shapes have this colour and/or kind (None: any)."""
        return sum(
            1 for s in self.shapes if (colour is None or s.colour == colour) and (kind is None or s.kind == kind)
        )

    def replace_shape(self, index: int, **changes) -> "Scene":
        """The scene with shape `index` changed (e.g. `colour="blue"`); z-order kept."""
        shapes = list(self.shapes)
        shapes[index] = dataclasses.replace(shapes[index], **changes)
        return dataclasses.replace(self, shapes=tuple(shapes))

    def without(self, index: int) -> "Scene":
        """The scene with shape `index` removed."""
        return dataclasses.replace(self, shapes=self.shapes[:index] + self.shapes[index + 1 :])
