"""The words of the tasks: how users ask and how shapes are named and described.

Several phrasings per request, and several ways to refer to one shape ("the red circle",
"the red shape", "the circle", "the shape on the left", "the shape that moves up"), while
the answer and the message's instruction always use the canonical name ("the red
circle"). So the model has to read the question to answer it and to resolve the
reference, not match a template.

Templates are `str.format` strings over these fields: {ref} a referring expression,
{shape} {colour} {kinds} {new} {direction} {shapes}; {region} marks where a
template puts the region placeholder inline (others get it appended by the runtime's rule).
"""

from __future__ import annotations

import numpy as np

from vitron_rt.shapes.palette import PLURALS
from vitron_rt.shapes.scene import Scene, Shape

# ---------------------------------------------------------------- naming shapes and places


def place_phrase(place: str) -> str:
    """"at the top left", "on the left", "in the center": a place as a phrase after a noun."""
    if place == "center":
        return "in the center"
    if place in ("left", "right"):
        return f"on the {place}"
    return f"at the {place}"


def canonical(shape: Shape) -> str:
    """"the red circle": how answers and instructions name a shape."""
    return f"the {shape.name}"


def article(phrase: str) -> str:
    """"a red circle", "an orange star": the indefinite article for `phrase`."""
    return f"{'an' if phrase[:1] in 'aeiou' else 'a'} {phrase}"


def indefinite(shape: Shape) -> str:
    """"a red circle" (answers that introduce a shape)."""
    return article(shape.name)


def referring_expressions(scene: Scene, index: int, video: bool = False) -> list[str]:
    """Every expression that picks out shape `index` alone in `scene`: by colour and kind
    (always), by colour or kind alone, by place, and in a video by its motion."""
    s = scene.shapes[index]
    refs = [canonical(s)]
    if scene.count(colour=s.colour) == 1:
        refs.append(f"the {s.colour} shape")
    if scene.count(kind=s.kind) == 1:
        refs.append(f"the {s.kind}")
    place = scene.place(index)
    if sum(scene.place(i) == place for i in range(len(scene))) == 1:
        refs.append(f"the shape {place_phrase(place)}")
    if video and s.moves and sum(o.motion == s.motion and o.moves for o in scene.shapes) == 1:
        refs.append(f"the shape that moves {s.motion}")
    return refs


def reading_order(scene: Scene) -> list[int]:
    """Shape indices top to bottom, left to right by cell, then by x: the order a
    description lists them in, which the model can see (z-order it mostly cannot)."""
    cell = scene.width / 3

    def key(i: int) -> tuple[int, int, float]:
        s = scene.shapes[i]
        return (int(3 * s.y / scene.height), int(s.x / cell), s.x)

    return sorted(range(len(scene)), key=key)


def join(items: list[str]) -> str:
    """"a, b and c"."""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def describe_scene(scene: Scene) -> str:
    """"2 shapes: a red circle at the top left and a blue square in the center"."""
    parts = [f"{indefinite(scene.shapes[i])} {place_phrase(scene.place(i))}" for i in reading_order(scene)]
    n = len(scene)
    return f"{n} shape{'s' if n != 1 else ''}: {join(parts)}"


def motion_phrase(shape: Shape) -> str:
    return f"moves {shape.motion}" if shape.moves else "does not move"


def describe_video(scene: Scene) -> str:
    """"2 shapes: the red circle moves left and the blue square does not move"."""
    parts = [f"{canonical(scene.shapes[i])} {motion_phrase(scene.shapes[i])}" for i in reading_order(scene)]
    n = len(scene)
    return f"{n} shape{'s' if n != 1 else ''}: {join(parts)}"


def pick(rng: np.random.Generator, options: list[str] | tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def plural(kind: str) -> str:
    return PLURALS[kind]


# ---------------------------------------------------------------- understanding

CAPTION_IMAGE = (
    "Describe the image.",
    "What is in this picture?",
    "What do you see?",
    "List the shapes in the image.",
    "Describe every shape you can see.",
)
CAPTION_VIDEO = (
    "Describe the video.",
    "What happens in this video?",
    "How do the shapes move?",
    "Describe how each shape moves.",
    "Tell me what each shape does in the video.",
)
QA_COLOUR = (
    "What colour is {ref}?",
    "What is the colour of {ref}?",
    "Which colour does {ref} have?",
    "Tell me the colour of {ref}.",
)
QA_KIND = (
    "What shape is {ref}?",
    "What kind of shape is {ref}?",
    "Which shape is {ref}?",
    "Is {ref} a circle, a square, a triangle, a diamond or a star?",
)
QA_PLACE = (
    "Where is {ref}?",
    "Where is {ref} in the image?",
    "In which part of the image is {ref}?",
    "Where can I find {ref}?",
)
QA_COUNT_ALL = (
    "How many shapes are there?",
    "How many shapes do you see?",
    "Count the shapes.",
    "How many shapes are in the image?",
)
QA_COUNT_COLOUR = ("How many {colour} shapes are there?", "Count the {colour} shapes.", "How many shapes are {colour}?")
QA_COUNT_KIND = ("How many {kinds} are there?", "Count the {kinds}.", "How many {kinds} do you see?")
QA_EXIST = (
    "Is there {shape}?",
    "Do you see {shape}?",
    "Is there {shape} in the image?",
    "Does the image have {shape}?",
)
REGION_WHAT = (
    "What is in this region?",
    "What is in {region}?",
    "Which shape is in {region}?",
    "Name the shape in this box.",
    "What do you see in {region}?",
)
REGION_COLOUR = (
    "What colour is the shape in {region}?",
    "What colour is the shape in this region?",
    "Which colour does the shape in {region} have?",
    "Tell me the colour of the shape in this box.",
)
REGION_KIND = (
    "What shape is in {region}?",
    "What kind of shape is in this region?",
    "Which shape is in this box?",
    "Name the kind of shape in {region}.",
)
VIDEO_WHICH_MOVES = (
    "Which shape moves {direction}?",
    "What moves {direction}?",
    "Which shape is moving {direction}?",
    "Which shape goes {direction}?",
)
VIDEO_COLOUR_OF_MOVER = (
    "What colour is the shape that moves {direction}?",
    "The shape moving {direction}: what colour is it?",
    "Which colour does the shape moving {direction} have?",
)
VIDEO_DIRECTION = (
    "Which way does {ref} move?",
    "In which direction does {ref} move?",
    "Where does {ref} go?",
    "How does {ref} move?",
)
VIDEO_COUNT = (
    "How many shapes are in the video?",
    "How many shapes do you see in this video?",
    "Count the shapes in the video.",
)
VIDEO_COUNT_MOVING = ("How many shapes move?", "How many shapes are moving?", "Count the moving shapes.")

# ---------------------------------------------------------------- back-end requests

SEGMENT_IMAGE = (
    "Segment {ref}.",
    "Please segment {ref}.",
    "Give me a mask of {ref}.",
    "Cut out {ref}.",
    "Which pixels belong to {ref}? Segment it.",
)
SEGMENT_REGION = (
    "Segment the shape in this region.",
    "Segment what is in {region}.",
    "Cut out the shape in {region}.",
    "Give me a mask of the shape in this box.",
)
SEGMENT_VIDEO = (
    "Track {ref} in the video.",
    "Segment {ref} in every frame.",
    "Follow {ref} through the video.",
    "Segment {ref} in this video.",
)
GENERATE_IMAGE = (
    "Draw {shapes}.",
    "Generate an image of {shapes}.",
    "Create a picture with {shapes}.",
    "Show me {shapes}.",
    "Make an image with {shapes}.",
)
EDIT_RECOLOUR = (
    "Make {ref} {new}.",
    "Change the colour of {ref} to {new}.",
    "Paint {ref} {new}.",
    "Turn {ref} {new}.",
    "Recolour {ref} {new}.",
)
EDIT_REMOVE = ("Remove {ref}.", "Delete {ref}.", "Erase {ref}.", "Take away {ref}.")
EDIT_VIDEO = (
    "Make {ref} {new} in the video.",
    "In this video, paint {ref} {new}.",
    "Change the colour of {ref} to {new} in every frame.",
    "Recolour {ref} {new} in this video.",
)
