"""A contact sheet: one tile per demo request, input beside output, with the words.

    ┌──────────────────────────────────────────┐
    │ task name                      verdict   │
    │ ┌──────────┐  ┌──────────┐               │
    │ │  input   │  │  output  │   input: the image, or a video's middle frame, the
    │ │ (+ box)  │  │          │   user's box drawn on it; output: the mask over it,
    │ └──────────┘  └──────────┘   the generated / edited picture, or the answer
    │ Q: the prompt, wrapped                   │
    │ A: the reply (expected: the label)       │
    └──────────────────────────────────────────┘

OpenCV drawing only (its Hershey font: ASCII), so it runs wherever the runtime does.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from vitron_rt.runtime.pipelines.postprocess import overlay

PANEL = 192  # side of each picture, px (a 128 px world image at 1.5x)
PAD = 10
CAPTION_LINES = 5
LINE = 15  # px per caption line
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.42
BACKGROUND = (250, 250, 250)
INK = (20, 20, 20)
GOOD, BAD = (20, 140, 40), (200, 30, 30)
BOX = (255, 60, 200)


@dataclass(frozen=True)
class Tile:
    """What one tile shows. `picture`: the output panel (None: the answer is text only,
    shown large instead); `correct`: the verdict against the ground truth, if any."""

    title: str
    prompt: str
    answer: str
    expected: str
    image: np.ndarray | None  # (H, W, 3) input; None: the request had none (text to image)
    picture: np.ndarray | None = None  # (h, w, 3) output
    box: Sequence[float] | None = None  # normalised, drawn on the input
    correct: bool | None = None


def frame_overlay(frame: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """`frame` with `mask` over it in the runtime's overlay colour (a copy)."""
    return frame.copy() if mask is None else overlay(frame, mask)


def _panel(img: np.ndarray) -> np.ndarray:
    return cv2.resize(img, (PANEL, PANEL), interpolation=cv2.INTER_NEAREST)


def _text(canvas: np.ndarray, text: str, x: int, y: int, color=INK, scale: float = FONT_SCALE) -> None:
    cv2.putText(canvas, text.encode("ascii", "replace").decode(), (x, y), FONT, scale, color, 1, cv2.LINE_AA)


def _words_panel(words: str) -> np.ndarray:
    """Words as a picture: an answer, for the tasks whose output is text; "(text only)"
    where the request had no picture."""
    panel = np.full((PANEL, PANEL, 3), 255, np.uint8)
    lines = textwrap.wrap(words, 14)[:6]
    for i, line in enumerate(lines):
        _text(panel, line, 10, 40 + 26 * i, INK, 0.7)
    return panel


def render_tile(tile: Tile) -> np.ndarray:
    """One tile (see the module docstring) as an (H, W, 3) uint8 image."""
    width = 2 * PANEL + 3 * PAD
    height = 24 + PANEL + PAD + CAPTION_LINES * LINE + PAD
    canvas = np.full((height, width, 3), BACKGROUND, np.uint8)
    _text(canvas, tile.title, PAD, 17, INK, 0.5)
    if tile.correct is not None:
        verdict, color = ("correct", GOOD) if tile.correct else ("wrong", BAD)
        _text(canvas, verdict, width - PAD - 60, 17, color, 0.5)
    left = _words_panel("(text only)") if tile.image is None else _panel(tile.image)
    if tile.box is not None:
        x1, y1, x2, y2 = (int(round(v * PANEL)) for v in tile.box)
        cv2.rectangle(left, (x1, y1), (x2 - 1, y2 - 1), BOX, 2)
    right = _words_panel(tile.answer or "(no reply)") if tile.picture is None else _panel(tile.picture)
    top = 24
    canvas[top : top + PANEL, PAD : PAD + PANEL] = left
    canvas[top : top + PANEL, 2 * PAD + PANEL : 2 * PAD + 2 * PANEL] = right
    chars = width // 8
    lines = textwrap.wrap(f"Q: {tile.prompt}", chars)[:2]
    lines += textwrap.wrap(f"A: {tile.answer}", chars)[: CAPTION_LINES - len(lines) - 1]
    lines.append(f"expected: {tile.expected}"[:chars])
    y = top + PANEL + PAD + 11
    for line in lines:
        _text(canvas, line, PAD, y)
        y += LINE
    return canvas


def contact_sheet(tiles: Sequence[Tile], columns: int = 3) -> np.ndarray:
    """The tiles in a grid, row by row: (H, W, 3) uint8."""
    if not tiles:
        raise ValueError("a contact sheet needs at least one tile")
    images = [render_tile(t) for t in tiles]
    h, w = images[0].shape[:2]
    rows = -(-len(images) // columns)
    sheet = np.full((rows * h + (rows + 1) * PAD, columns * w + (columns + 1) * PAD, 3), 225, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        y, x = PAD + r * (h + PAD), PAD + c * (w + PAD)
        sheet[y : y + h, x : x + w] = img
    return sheet
