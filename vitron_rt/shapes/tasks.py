"""Instruction samples in Vitron's form, drawn from ShapesWorld.

Every sample is one user turn and the assistant's reply, with its inputs (image, video,
region) and the back end's targets (training may add follow-up questions about an image:
`TaskGenerator.with_follow_ups`):

    task              module          input          reply                      targets
    ───────────────── ─────────────── ────────────── ────────────────────────── ──────────────────
    caption_image     understand      image          "2 shapes: a red ..."      -
    qa_colour/kind/   understand      image          "red" / "circle" /         -
      place/count/exist                              "top left" / "3" / "yes"
    region_what/      understand      image + box    "a red circle" / "red"     -
      colour/kind
    caption_video,    understand      video          "the red circle" / "left"  -
      video_*
    seg_image         segment_image   image          prose + message            mask (H,W)
    seg_image_region  segment_image   image + box    prose + message (no region:  mask (H,W)
                                                     SAM gets the user's box)
    seg_video         segment_video   video          prose + message            masks (T,H,W)
    gen_image         generate_image  -              prose + message            target (H,W,3), specs
    edit_recolour/    edit_image      image          prose + message            target (H,W,3), mask
      edit_remove
    edit_video        edit_video      video          prose + message            target (T,H,W,3), masks

Understanding replies are plain prose (no tags: the runtime's `understand` path);
back-end replies are `replies.hybrid_reply`. The prompt is what a user types: no `<image>`
placeholders (the runtime prepends one per image or frame) and a `<region>` placeholder
only where a template puts it inline (the runtime appends one otherwise).

A sample is a pure function of (world seed, task, index): `TaskGenerator.sample`. A held-out
set is the same generator over a world with another seed.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from vitron_rt.models.tokenizer import REGION_TOKEN
from vitron_rt.shapes import templates as T
from vitron_rt.shapes.palette import COLOURS, DIRECTIONS, KINDS, PLACES
from vitron_rt.shapes.render import Render, VideoRender, jittered_box, render, render_video
from vitron_rt.shapes.replies import hybrid_reply, round_box
from vitron_rt.shapes.scene import Scene
from vitron_rt.shapes.world import STREAMS, ShapeSpec, ShapesWorld, WorldError

MEDIA = ("image", "video", "none")


@dataclass(frozen=True)
class Sample:
    """One instruction sample (see the module docstring for which fields each task fills).

    A sample holds scenes, not pixels: `image`, `video`, `mask`, `masks` and `target` are
    drawn from them on first use (and kept), so text-only uses (the tokenizer's corpus,
    a data loader's bucketing) never pay for rendering videos.
    """

    task: str
    module: str  # the module the reply calls; "understand" for plain prose
    media: str  # "image" | "video" | "none"
    prompt: str  # the user's text as typed
    answer: str  # the assistant's reply: prose [+ hybrid message + signal tokens]
    label: str  # the canonical answer (understanding), or the message's instruction
    scene: Scene | None = None  # the input scene (frame 0 of a video)
    target_scene: Scene | None = None  # the scene a generation or an edit should produce
    shape: int | None = None  # index in `scene` of the shape the task is about (its mask is the target)
    region: tuple[float, float, float, float] | None = None  # the user's box, normalised
    specs: tuple[ShapeSpec, ...] = ()  # what a generated image must show (the judge checks it)
    frames: int = 16  # video length
    # Further (prompt, answer) exchanges about the same input, after the reply (training
    # only: `TaskGenerator.with_follow_ups`).
    turns: tuple[tuple[str, str], ...] = ()
    # The shape each turn asks about (its index in `scene`, or None), as `shape` is the
    # reply's: empty, or one per turn.
    turn_shapes: tuple[int | None, ...] = ()

    def __post_init__(self) -> None:
        if self.media not in MEDIA:
            raise ValueError(f"media must be one of {MEDIA}, got {self.media!r}")
        if self.media != "none" and self.scene is None:
            raise ValueError(f"a sample with {self.media} input needs its scene")
        if self.shape is not None and (self.scene is None or not 0 <= self.shape < len(self.scene)):
            raise ValueError(f"shape index {self.shape} is not a shape of the scene")
        if self.turn_shapes and len(self.turn_shapes) != len(self.turns):
            raise ValueError(f"{len(self.turn_shapes)} turn shapes for {len(self.turns)} turns")

    @cached_property
    def _input(self) -> Render | VideoRender | None:
        if self.scene is None:
            return None
        return render_video(self.scene, self.frames) if self.media == "video" else render(self.scene)

    @cached_property
    def _output(self) -> Render | VideoRender | None:
        if self.target_scene is None:
            return None
        return render_video(self.target_scene, self.frames) if self.media == "video" else render(self.target_scene)

    @property
    def image(self) -> np.ndarray | None:
        """(H, W, 3) uint8: the input image (image samples)."""
        return self._input.image if self.media == "image" else None

    @property
    def video(self) -> np.ndarray | None:
        """(T, H, W, 3) uint8: the input video (video samples)."""
        return self._input.frames if self.media == "video" else None

    @property
    def mask(self) -> np.ndarray | None:
        """(H, W) bool: the visible mask of the shape the task is about (images)."""
        if self.shape is None or self.media != "image":
            return None
        return self._input.masks[self.shape]

    @property
    def masks(self) -> np.ndarray | None:
        """(T, H, W) bool: that shape's visible mask in every frame (videos)."""
        if self.shape is None or self.media != "video":
            return None
        return self._input.masks[:, self.shape]

    @property
    def shape_masks(self) -> np.ndarray | None:
        """Visible masks of every shape of the input: (n, H, W), or (T, n, H, W) for a video."""
        return None if self._input is None else self._input.masks

    @property
    def target(self) -> np.ndarray | None:
        """The back end's target: (H, W, 3) generated / edited image, (T, H, W, 3) edited video."""
        out = self._output
        if out is None:
            return None
        return out.frames if isinstance(out, VideoRender) else out.image


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class TaskDef:
    """A registered task: its module, its input media and the builder.

    The builder draws from `rng` and returns a Sample, or None when the scene it drew
    does not allow the question (e.g. no shape moves left); the generator then draws again.
    """

    name: str
    module: str
    media: str
    build: Callable[["TaskContext"], Sample | None]


TASKS: dict[str, TaskDef] = {}


def register_task(name: str, module: str, media: str):
    """Decorator: register a builder under `name`."""

    def decorate(fn: Callable[["TaskContext"], Sample | None]):
        if name in TASKS:
            raise ValueError(f"task {name!r} is already registered")
        TASKS[name] = TaskDef(name, module, media, fn)
        return fn

    return decorate


@dataclass
class TaskContext:
    """What a builder gets: the random stream, the world and the sample's fixed facts."""

    rng: np.random.Generator
    world: ShapesWorld
    task: TaskDef
    num_signal_tokens: int
    gen_radius: tuple[float, float]
    max_gen_shapes: int
    given: Scene | None = None  # a follow-up's scene: `scene()` returns it instead of drawing one

    def pick(self, options) -> str:
        return T.pick(self.rng, options)

    def scene(self, **kwargs) -> Scene:
        if self.given is not None:
            return self.given
        return self.world.sample_scene(self.rng, **kwargs)

    def video(self, **kwargs) -> Scene:
        return self.world.sample_scene(self.rng, moving=True, **kwargs)

    def reply(self, prose: str, instruction: str, region=None) -> str:
        return hybrid_reply(prose, self.task.module, instruction, self.num_signal_tokens, region)

    def sample(self, prompt: str, answer: str, label: str, **fields) -> Sample:
        return Sample(
            task=self.task.name,
            module=self.task.module,
            media=self.task.media,
            prompt=prompt,
            answer=answer,
            label=label,
            **fields,
        )

    def jittered_box(self, mask: np.ndarray) -> tuple[float, float, float, float]:
        """The mask's box, jittered (`render.jittered_box`) and rounded as replies write it."""
        return round_box(jittered_box(mask, self.rng))


def _with_region(template: str) -> str:
    return template.replace("{region}", REGION_TOKEN)


# --------------------------------------------------------------------------- understanding: images


@register_task("caption_image", "understand", "image")
def _caption_image(ctx: TaskContext) -> Sample:
    scene = ctx.scene()
    text = T.describe_scene(scene)
    return ctx.sample(ctx.pick(T.CAPTION_IMAGE), text, text, scene=scene)


def _target(ctx: TaskContext, scene: Scene) -> int:
    return int(ctx.rng.integers(len(scene)))


@register_task("qa_colour", "understand", "image")
def _qa_colour(ctx: TaskContext) -> Sample | None:
    scene = ctx.scene()
    i = _target(ctx, scene)
    # "the red circle" would give the answer away; refer by kind or place only.
    refs = [r for r in T.referring_expressions(scene, i) if scene.shapes[i].colour not in r]
    if not refs:
        return None
    answer = scene.shapes[i].colour
    prompt = ctx.pick(T.QA_COLOUR).format(ref=ctx.pick(refs))
    return ctx.sample(prompt, answer, answer, scene=scene, shape=i)


@register_task("qa_kind", "understand", "image")
def _qa_kind(ctx: TaskContext) -> Sample | None:
    scene = ctx.scene()
    i = _target(ctx, scene)
    refs = [r for r in T.referring_expressions(scene, i) if scene.shapes[i].kind not in r]
    if not refs:
        return None
    answer = scene.shapes[i].kind
    prompt = ctx.pick(T.QA_KIND).format(ref=ctx.pick(refs))
    return ctx.sample(prompt, answer, answer, scene=scene, shape=i)


@register_task("qa_place", "understand", "image")
def _qa_place(ctx: TaskContext) -> Sample:
    scene = ctx.scene()
    i = _target(ctx, scene)
    refs = [r for r in T.referring_expressions(scene, i) if not r.startswith("the shape ")]
    answer = scene.place(i)
    prompt = ctx.pick(T.QA_PLACE).format(ref=ctx.pick(refs))
    return ctx.sample(prompt, answer, answer, scene=scene, shape=i)


@register_task("qa_count", "understand", "image")
def _qa_count(ctx: TaskContext) -> Sample:
    scene = ctx.scene()
    what = int(ctx.rng.integers(3))
    if what == 0:
        prompt, n = ctx.pick(T.QA_COUNT_ALL), len(scene)
    elif what == 1:
        colour = ctx.pick([s.colour for s in scene.shapes] + list(COLOURS))  # present colours more often
        prompt, n = ctx.pick(T.QA_COUNT_COLOUR).format(colour=colour), scene.count(colour=colour)
    else:
        kind = ctx.pick([s.kind for s in scene.shapes] + list(KINDS))
        prompt, n = ctx.pick(T.QA_COUNT_KIND).format(kinds=T.plural(kind)), scene.count(kind=kind)
    return ctx.sample(prompt, str(n), str(n), scene=scene)


@register_task("qa_exist", "understand", "image")
def _qa_exist(ctx: TaskContext) -> Sample:
    scene = ctx.scene()
    i = _target(ctx, scene)
    s = scene.shapes[i]
    shape = None  # a "no" is about no shape of the scene; a "yes" about the one it names
    if ctx.rng.random() < 0.5:
        colour, kind, answer, shape = s.colour, s.kind, "yes", i
    else:
        # A near miss: the right colour with another kind, or the right kind in another colour.
        pairs = {(x.colour, x.kind) for x in scene.shapes}
        misses = [(s.colour, k) for k in KINDS] + [(c, s.kind) for c in COLOURS]
        misses = [p for p in misses if p not in pairs]
        colour, kind = misses[int(ctx.rng.integers(len(misses)))]
        answer = "no"
    prompt = ctx.pick(T.QA_EXIST).format(shape=T.article(f"{colour} {kind}"))
    return ctx.sample(prompt, answer, answer, scene=scene, shape=shape)


def _region_sample(ctx: TaskContext, templates, answer_of) -> Sample:
    scene = ctx.scene()
    drawn = render(scene)
    i = _target(ctx, scene)
    answer = answer_of(scene.shapes[i])
    return ctx.sample(
        _with_region(ctx.pick(templates)),
        answer,
        answer,
        region=ctx.jittered_box(drawn.masks[i]),
        scene=scene,
        shape=i,
    )


@register_task("region_what", "understand", "image")
def _region_what(ctx: TaskContext) -> Sample:
    return _region_sample(ctx, T.REGION_WHAT, T.indefinite)


@register_task("region_colour", "understand", "image")
def _region_colour(ctx: TaskContext) -> Sample:
    return _region_sample(ctx, T.REGION_COLOUR, lambda s: s.colour)


@register_task("region_kind", "understand", "image")
def _region_kind(ctx: TaskContext) -> Sample:
    return _region_sample(ctx, T.REGION_KIND, lambda s: s.kind)


# --------------------------------------------------------------------------- understanding: videos


def _video(ctx: TaskContext, scene: Scene, shape: int | None = None) -> dict:
    return {"scene": scene, "shape": shape, "frames": ctx.world.config.frames}


@register_task("caption_video", "understand", "video")
def _caption_video(ctx: TaskContext) -> Sample:
    scene = ctx.video()
    text = T.describe_video(scene)
    return ctx.sample(ctx.pick(T.CAPTION_VIDEO), text, text, **_video(ctx, scene))


def _unique_movers(scene: Scene) -> dict[str, int]:
    """direction -> the index of the one shape moving that way (directions with one mover)."""
    out = {}
    for d in DIRECTIONS:
        hits = [i for i, s in enumerate(scene.shapes) if s.moves and s.motion == d]
        if len(hits) == 1:
            out[d] = hits[0]
    return out


@register_task("video_which_moves", "understand", "video")
def _video_which_moves(ctx: TaskContext) -> Sample | None:
    scene = ctx.video()
    movers = _unique_movers(scene)
    if not movers:
        return None
    direction = ctx.pick(sorted(movers))
    answer = T.canonical(scene.shapes[movers[direction]])
    prompt = ctx.pick(T.VIDEO_WHICH_MOVES).format(direction=direction)
    return ctx.sample(prompt, answer, answer, **_video(ctx, scene, movers[direction]))


@register_task("video_colour_of_mover", "understand", "video")
def _video_colour_of_mover(ctx: TaskContext) -> Sample | None:
    scene = ctx.video()
    movers = _unique_movers(scene)
    if not movers:
        return None
    direction = ctx.pick(sorted(movers))
    answer = scene.shapes[movers[direction]].colour
    prompt = ctx.pick(T.VIDEO_COLOUR_OF_MOVER).format(direction=direction)
    return ctx.sample(prompt, answer, answer, **_video(ctx, scene, movers[direction]))


@register_task("video_direction", "understand", "video")
def _video_direction(ctx: TaskContext) -> Sample:
    scene = ctx.video()
    i = _target(ctx, scene)
    refs = [r for r in T.referring_expressions(scene, i, video=True) if "moves" not in r]
    s = scene.shapes[i]
    answer = s.motion if s.moves else "it does not move"
    prompt = ctx.pick(T.VIDEO_DIRECTION).format(ref=ctx.pick(refs))
    return ctx.sample(prompt, answer, answer, **_video(ctx, scene, i))


@register_task("video_count", "understand", "video")
def _video_count(ctx: TaskContext) -> Sample:
    scene = ctx.video()
    if ctx.rng.random() < 0.5:
        prompt, n = ctx.pick(T.VIDEO_COUNT), len(scene)
    else:
        prompt, n = ctx.pick(T.VIDEO_COUNT_MOVING), sum(s.moves for s in scene.shapes)
    return ctx.sample(prompt, str(n), str(n), **_video(ctx, scene))


# --------------------------------------------------------------------------- segmentation


@register_task("seg_image", "segment_image", "image")
def _seg_image(ctx: TaskContext) -> Sample:
    scene = ctx.scene()
    i = _target(ctx, scene)
    name = T.canonical(scene.shapes[i])
    prompt = ctx.pick(T.SEGMENT_IMAGE).format(ref=ctx.pick(T.referring_expressions(scene, i)))
    answer = ctx.reply(f"Here is {name}.", name)
    return ctx.sample(prompt, answer, name, scene=scene, shape=i)


@register_task("seg_image_region", "segment_image", "image")
def _seg_image_region(ctx: TaskContext) -> Sample:
    scene = ctx.scene()
    drawn = render(scene)
    i = _target(ctx, scene)
    name = T.canonical(scene.shapes[i])
    box = ctx.jittered_box(drawn.masks[i])
    # The reply names no region: the runtime gives SAM the user's box when the message has
    # none. Writing the box back meant reading coordinates off region features, which the
    # model did badly (24 of 37 eval replies had x1 > x2 and failed to parse).
    answer = ctx.reply(f"Here is {name}.", name)
    prompt = _with_region(ctx.pick(T.SEGMENT_REGION))
    return ctx.sample(prompt, answer, name, region=box, scene=scene, shape=i)


@register_task("seg_video", "segment_video", "video")
def _seg_video(ctx: TaskContext) -> Sample:
    scene = ctx.video()
    i = _target(ctx, scene)
    name = T.canonical(scene.shapes[i])
    prompt = ctx.pick(T.SEGMENT_VIDEO).format(ref=ctx.pick(T.referring_expressions(scene, i, video=True)))
    answer = ctx.reply(f"Here is {name}, tracked through the video.", name)
    return ctx.sample(prompt, answer, name, **_video(ctx, scene, i))


# --------------------------------------------------------------------------- generation


@register_task("gen_image", "generate_image", "none")
def _gen_image(ctx: TaskContext) -> Sample:
    """1..max_gen_shapes shapes, each in a distinct named place 3 times in 4 (else
    anywhere), drawn apart from each other and at `gen_radius`."""
    n = int(ctx.rng.integers(1, ctx.max_gen_shapes + 1))
    with_place = ctx.rng.random() < 0.75
    places = [str(p) for p in ctx.rng.choice(PLACES, size=n, replace=False)] if with_place else [None] * n
    specs, seen = [], set()
    while len(specs) < n:
        colour, kind = ctx.pick(list(COLOURS)), ctx.pick(KINDS)
        if (colour, kind) not in seen:
            seen.add((colour, kind))
            specs.append(ShapeSpec(colour, kind, places[len(specs)]))
    lo, hi = ctx.gen_radius
    config = dataclasses.replace(ctx.world.config, min_radius=lo, max_radius=hi)
    scene = ShapesWorld(config, ctx.world.seed).sample_scene(ctx.rng, specs=specs, separate=True)
    phrases = [T.article(f"{s.colour} {s.kind}") + (f" {T.place_phrase(s.place)}" if s.place else "") for s in specs]
    shapes = T.join(phrases)
    answer = ctx.reply(f"Here is {shapes}.", shapes)
    prompt = ctx.pick(T.GENERATE_IMAGE).format(shapes=shapes)
    return ctx.sample(prompt, answer, shapes, specs=tuple(specs), target_scene=scene)


# --------------------------------------------------------------------------- editing


def _new_colour(ctx: TaskContext, scene: Scene, i: int) -> str | None:
    s = scene.shapes[i]
    free = [c for c in COLOURS if c != s.colour and (c, s.kind) not in {(x.colour, x.kind) for x in scene.shapes}]
    return ctx.pick(free) if free else None


@register_task("edit_recolour", "edit_image", "image")
def _edit_recolour(ctx: TaskContext) -> Sample | None:
    scene = ctx.scene()
    i = _target(ctx, scene)
    new = _new_colour(ctx, scene, i)
    if new is None:
        return None
    edited = scene.replace_shape(i, colour=new)
    s = scene.shapes[i]
    instruction = f"make {T.canonical(s)} {new}"
    prompt = ctx.pick(T.EDIT_RECOLOUR).format(ref=ctx.pick(T.referring_expressions(scene, i)), new=new)
    answer = ctx.reply(f"Done: {T.canonical(s)} is {new} now.", instruction)
    return ctx.sample(
        prompt,
        answer,
        instruction,
        scene=scene,
        shape=i,
        target_scene=edited,
    )


@register_task("edit_remove", "edit_image", "image")
def _edit_remove(ctx: TaskContext) -> Sample:
    scene = ctx.scene()
    i = _target(ctx, scene)
    edited = scene.without(i)
    name = T.canonical(scene.shapes[i])
    instruction = f"remove {name}"
    prompt = ctx.pick(T.EDIT_REMOVE).format(ref=ctx.pick(T.referring_expressions(scene, i)))
    answer = ctx.reply(f"Done: {name} is gone.", instruction)
    return ctx.sample(
        prompt,
        answer,
        instruction,
        scene=scene,
        shape=i,
        target_scene=edited,
    )


@register_task("edit_video", "edit_video", "video")
def _edit_video(ctx: TaskContext) -> Sample | None:
    scene = ctx.video()
    i = _target(ctx, scene)
    new = _new_colour(ctx, scene, i)
    if new is None:
        return None
    edited = scene.replace_shape(i, colour=new)
    s = scene.shapes[i]
    instruction = f"make {T.canonical(s)} {new}"
    refs = T.referring_expressions(scene, i, video=True)
    prompt = ctx.pick(T.EDIT_VIDEO).format(ref=ctx.pick(refs), new=new)
    answer = ctx.reply(f"Done: {T.canonical(s)} is {new} in every frame.", instruction)
    return ctx.sample(
        prompt,
        answer,
        instruction,
        target_scene=edited,
        **_video(ctx, scene, i),
    )


# --------------------------------------------------------------------------- mixes and the generator

# Relative weights of the tasks in each training stage's data.
ALIGNMENT_MIX: dict[str, float] = {"caption_image": 3.0, "caption_video": 1.0}
INSTRUCTION_MIX: dict[str, float] = {
    "caption_image": 1.0,
    "qa_colour": 2.0,
    "qa_kind": 2.0,
    "qa_place": 2.0,
    "qa_count": 2.0,
    "qa_exist": 1.0,
    "region_what": 1.0,
    "region_colour": 0.5,
    "region_kind": 0.5,
    "caption_video": 0.5,
    "video_which_moves": 1.0,
    "video_colour_of_mover": 0.5,
    "video_direction": 1.0,
    "video_count": 0.5,
    "seg_image": 2.0,
    "seg_image_region": 1.0,
    "seg_video": 1.5,
    "gen_image": 2.0,
    "edit_recolour": 1.5,
    "edit_remove": 0.5,
    "edit_video": 1.0,
}
# Pixel-level alignment: the tasks whose reply drives a back end.
PIXEL_MIX: dict[str, float] = {
    name: w for name, w in INSTRUCTION_MIX.items() if TASKS[name].module != "understand"
}
# The questions a follow-up turn asks about an image (`TaskGenerator.with_follow_ups`).
FOLLOW_UP_TASKS: tuple[str, ...] = ("qa_colour", "qa_kind", "qa_place", "qa_count", "qa_exist")
MIXES: dict[str, dict[str, float]] = {"alignment": ALIGNMENT_MIX, "instruction": INSTRUCTION_MIX, "pixel": PIXEL_MIX}


def _question(sample: Sample) -> tuple:
    """What a question asks, its wording aside: the task and the shape it is about, or
    (a count, an existence question) the task and its answer."""
    if sample.shape is None or sample.task == "qa_exist":
        return (sample.task, sample.label)
    return (sample.task, sample.shape)


class TaskError(RuntimeError):
    """A task could not produce a sample (see the message)."""


class TaskGenerator:
    """Samples of every registered task from one world (see the module docstring).

    `num_signal_tokens` is K of the model the samples are for; `gen_radius` the shape
    size of text-to-image targets, larger than the world's, so that a 64 px generation (a
    16 x 16 latent) still shows a star's points. Larger ones were measured and not adopted
    (see the README): at 22-28 the shipped VAE's round trip keeps 59 of 64 held-out targets
    (50 at 14-20) and a UNet alone on true codes draws more kinds right, but the full recipe
    with them (and grounding) scored lower on eval-mini. `max_gen_shapes` how many shapes a
    text-to-image prompt names.
    """

    def __init__(
        self,
        world: ShapesWorld,
        num_signal_tokens: int = 4,
        gen_radius: tuple[float, float] = (14.0, 20.0),
        max_gen_shapes: int = 2,
        max_tries: int = 50,
    ):
        if num_signal_tokens < 1:
            raise ValueError(f"num_signal_tokens must be >= 1, got {num_signal_tokens}")
        self.world = world
        self.num_signal_tokens = num_signal_tokens
        self.gen_radius = gen_radius
        self.max_gen_shapes = max_gen_shapes
        self.max_tries = max_tries

    def rng(self, task: str, index: int) -> np.random.Generator:
        return np.random.default_rng([self.world.seed, STREAMS["task"], zlib.crc32(task.encode()), int(index)])

    def _context(self, task: str, rng: np.random.Generator, given: Scene | None = None) -> TaskContext:
        if task not in TASKS:
            raise KeyError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        return TaskContext(
            rng=rng,
            world=self.world,
            task=TASKS[task],
            num_signal_tokens=self.num_signal_tokens,
            gen_radius=self.gen_radius,
            max_gen_shapes=self.max_gen_shapes,
            given=given,
        )

    def sample(self, task: str, index: int) -> Sample:
        """Sample `index` of `task`."""
        ctx = self._context(task, self.rng(task, index))
        for _ in range(self.max_tries):
            try:
                out = ctx.task.build(ctx)
            except WorldError:
                out = None
            if out is not None:
                return out
        raise TaskError(f"task {task!r} found no suitable scene for sample {index} in {self.max_tries} draws")

    def mixed(self, mix: Mapping[str, float], index: int) -> Sample:
        """Sample `index` of a mix: the task is drawn by weight, then that task's sample."""
        names = sorted(mix)
        weights = np.array([mix[n] for n in names], np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("mix weights must be >= 0 with a positive sum")
        rng = self.rng("mix", index)
        task = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        return self.sample(task, index)

    def with_follow_ups(self, sample: Sample, n: int, index: int) -> Sample:
        """`sample` with `n` follow-up turns: questions of `FOLLOW_UP_TASKS` about its
        scene, none asked twice, as LLaVA's conversations ask several about one image.
        Only an image-understanding sample without a region gets them (the others are
        returned as they are): one image forward then teaches n + 1 answers. Drawn from
        their own stream, so the sample itself is the one `sample` gives."""
        if n < 1 or sample.module != "understand" or sample.media != "image" or sample.region is not None:
            return sample
        rng = self.rng("follow_up", index)
        asked, turns, shapes = {_question(sample)}, [], []
        for _ in range(self.max_tries * n):
            if len(turns) == n:
                break
            task = FOLLOW_UP_TASKS[int(rng.integers(len(FOLLOW_UP_TASKS)))]
            out = TASKS[task].build(self._context(task, rng, given=sample.scene))
            if out is not None and _question(out) not in asked:
                asked.add(_question(out))
                turns.append((out.prompt, out.answer))
                shapes.append(out.shape)
        return dataclasses.replace(sample, turns=tuple(turns), turn_shapes=tuple(shapes))
