"""The words of ShapesWorld: colours, shape kinds, places and motions.

Everything a question, an answer or a judge names comes from these tables, so the
generator, the task templates, the tokenizer corpus and the judge cannot drift apart.

Places are the cells of a 3 x 3 grid over the image, named the way people say them:

    top left     top      top right
    left         center   right
    bottom left  bottom   bottom right
"""

from __future__ import annotations

# Named colours, RGB. Far apart in RGB (every pair > 95 apart, see `min_colour_distance`)
# so a judge can tell them by nearest colour even in a blurry generated image.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (240, 230, 40),
    "purple": (160, 60, 210),
    "orange": (250, 130, 10),
    "white": (240, 240, 240),
}
# Dark and neutral: no palette colour is near it, and every colour stands out on it.
BACKGROUND: tuple[int, int, int] = (24, 24, 28)

KINDS: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
# Plural forms for counting questions ("How many circles ...").
PLURALS: dict[str, str] = {k: k + "s" for k in KINDS}

# Motions a video shape can have, and the unit direction of each in image coordinates
# (x right, y down). "still" shapes do not move.
MOTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "still": (0, 0),
}
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")

_ROWS = ("top", "", "bottom")
_COLS = ("left", "", "right")


def place_name(row: int, col: int) -> str:
    """The name of grid cell (row, col), both in 0..2: "top left", "top", "center", ..."""
    if not (0 <= row <= 2 and 0 <= col <= 2):
        raise ValueError(f"grid cell ({row}, {col}) is outside the 3 x 3 grid")
    words = " ".join(w for w in (_ROWS[row], _COLS[col]) if w)
    return words or "center"


PLACES: tuple[str, ...] = tuple(place_name(r, c) for r in range(3) for c in range(3))
_CELL_OF_PLACE: dict[str, tuple[int, int]] = {place_name(r, c): (r, c) for r in range(3) for c in range(3)}


def place_cell(place: str) -> tuple[int, int]:
    """(row, col) of a place name; ValueError for a name that is not one of `PLACES`."""
    try:
        return _CELL_OF_PLACE[place]
    except KeyError:
        raise ValueError(f"unknown place {place!r}; known: {', '.join(PLACES)}") from None


def place_of(x: float, y: float, width: int, height: int) -> str:
    """The place of a point (pixels, x right, y down) in an image of width x height."""
    col = min(2, max(0, int(3 * x / width)))
    row = min(2, max(0, int(3 * y / height)))
    return place_name(row, col)


def min_colour_distance() -> float:
    """The smallest RGB distance between two palette colours, or a colour and the background."""
    cols = [*COLOURS.values(), BACKGROUND]
    return min(
        sum((a - b) ** 2 for a, b in zip(p, q)) ** 0.5 for i, p in enumerate(cols) for q in cols[i + 1 :]
    )
