"""The hook between a hybrid message and the back-end task pipelines: a registry of
pipelines by module name, what a pipeline is given, and what it returns.

    @register_pipeline("segment_image")
    def segment_image(request: TaskRequest) -> list[TaskOutput]:
        enc = request.runner("seg_image_encoder")
        with request.timed("seg_image_encoder"):
            ...
        return [TaskOutput("mask", request.out_dir / "mask.png")]

The session calls the pipeline registered for the message's module with the message
(signal embeddings attached), the signal projector's conditioning and the user's media.
A module with no pipeline is not an error: the result says so in its notes.

The built-in pipelines live in `vitron_rt.runtime.pipelines` (a table `PIPELINES` of
classes, each `cls(manifest, runners).run(message, signal, media, out_dir, timings)`);
`get_pipeline` imports that package on first use and registers an adapter for each of
its classes that no pipeline was registered for by hand. A runtime without the package
still serves text. Pipelines write their files atomically (`OutputFiles`,
`media.write_png_atomic`, `media.VideoWriter`): a failed request leaves none.
"""

from __future__ import annotations

import importlib
import inspect
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vitron_rt.bundle import Bundle
from vitron_rt.engines import Runner
from vitron_rt.runtime.errors import MessageError
from vitron_rt.runtime.media import write_png_atomic
from vitron_rt.runtime.messages import MODULES, HybridMessage, back_end_region, resolve_module
from vitron_rt.runtime.region import Box

if TYPE_CHECKING:
    from vitron_rt.runtime.pipelines import DiffusionOptions, SegmentOptions

PIPELINES_PACKAGE = "vitron_rt.runtime.pipelines"
OUTPUT_KINDS = ("mask", "image", "video")
# `--task` verbs -> module, by whether the input is a video.
TASK_VERBS: dict[str, tuple[str, str]] = {
    "segment": ("segment_image", "segment_video"),
    "generate": ("generate_image", "generate_video"),
    "edit": ("edit_image", "edit_video"),
}
# What each back end works on: the user's image, video, or nothing (generation).
MEDIA_NEEDED: dict[str, str | None] = {
    "segment_image": "image",
    "segment_video": "video",
    "generate_image": None,
    "edit_image": "image",
    "generate_video": None,
    "edit_video": "video",
    "image_to_video": "image",
}


@dataclass(frozen=True)
class TaskOutput:
    """One file a pipeline wrote: `kind` mask | image | video."""

    kind: str
    path: Path

    def __post_init__(self) -> None:
        if self.kind not in OUTPUT_KINDS:
            raise ValueError(f"output kind must be one of {', '.join(OUTPUT_KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "path", Path(self.path))

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "path": str(self.path)}


@dataclass
class TaskRequest:
    """What a pipeline is given. Arrays are the caller's: read, do not modify."""

    module: str
    message: HybridMessage  # module, instructions, region; `signal` (K, D) attached
    conditioning: np.ndarray  # (1, K, C) signal_projector.<module> output
    out_dir: Path  # exists and is writable
    bundle: Bundle
    runners: Mapping[str, Runner]  # component -> active runner (resident in the session)
    image: np.ndarray | None = None  # (H, W, 3) uint8 RGB, the user's image
    image_path: Path | None = None  # its file, when it was given as one
    video: Path | None = None  # the user's video file
    frames: np.ndarray | None = None  # (N, H, W, 3) uint8 RGB, the frames the LLM saw
    frame_indices: np.ndarray | None = None  # (N,) their indices in the video
    region: Box | None = None  # the message's region, else the user's box
    sketch: np.ndarray | None = None  # the user's sketch mask, when the region was drawn
    seed: int | None = None  # the request's sampling seed, for stochastic back ends
    # The session's back-end options (`pipelines.DiffusionOptions`, `pipelines.SegmentOptions`);
    # None: each pipeline's defaults.
    diffusion: DiffusionOptions | None = None
    segmentation: SegmentOptions | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)  # add the pipeline's stages here
    notes: list[str] = field(default_factory=list)  # anything the caller should be told
    info: dict = field(default_factory=dict)  # facts about the run that are not times (IoU, frames)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the block's wall time to `timings_ms[stage]`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings_ms[stage] = self.timings_ms.get(stage, 0.0) + (time.perf_counter() - start) * 1e3


Pipeline = Callable[[TaskRequest], list[TaskOutput]]

_PIPELINES: dict[str, Pipeline] = {}
_builtins_loaded = False


def register_pipeline(module: str) -> Callable[[Pipeline], Pipeline]:
    """Decorator: `fn` handles messages for `module` (a `MODULES` name or alias). A module
    has one pipeline; registering a second is an error (unregister the first)."""
    name = resolve_module(module)
    if name == "understand":
        raise MessageError("'understand' has no back end; it takes no pipeline")

    def decorate(fn: Pipeline) -> Pipeline:
        if name in _PIPELINES and _PIPELINES[name] is not fn:
            raise ValueError(f"a pipeline for {name!r} is already registered ({_PIPELINES[name].__qualname__})")
        _PIPELINES[name] = fn
        return fn

    return decorate


def unregister_pipeline(module: str) -> None:
    _PIPELINES.pop(resolve_module(module), None)


def get_pipeline(module: str) -> Pipeline | None:
    """The pipeline for `module`, or None when none is registered."""
    _load_builtins()
    return _PIPELINES.get(resolve_module(module))


def registered_modules() -> tuple[str, ...]:
    _load_builtins()
    return tuple(m for m in MODULES if m in _PIPELINES)


def _load_builtins() -> None:
    """Import the pipelines package once and register an adapter for each of its
    pipeline classes (a pipeline registered by hand for a module wins); absent, nothing."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    try:
        package = importlib.import_module(PIPELINES_PACKAGE)
    except ModuleNotFoundError as e:
        if e.name != PIPELINES_PACKAGE:
            raise  # a broken package fails every request that needs it, not only the first
        package = None
    for module, cls in getattr(package, "PIPELINES", {}).items():
        _PIPELINES.setdefault(resolve_module(module), _adapt(cls))
    _builtins_loaded = True


def _adapt(cls: type) -> Pipeline:
    """A registered pipeline over one of the package's classes: built per request from
    the session's runners (activated once, shared), called with the request's media
    path. An image given as an array is written to a temporary PNG for it; an edit
    pipeline also gets `seg_signal`, the signal tokens through the segment_image
    projector, when the bundle has one. A message that names no region is given the
    request's (the user's box), as `TaskRequest.region` says. The request's options go to
    the pipeline's constructor (`pipelines.pipeline_options`), its seed to the UNet's noise."""

    def run(request: TaskRequest) -> list[TaskOutput]:
        from vitron_rt.runtime.pipelines import pipeline_options

        options = pipeline_options(cls, request.diffusion, request.segmentation, request.seed)
        pipeline = cls(request.bundle.manifest, request.runners, **options)
        message = replace(request.message, region=back_end_region(request.message, request.region))  # keeps the signal
        extra = {}
        if "seg_signal" in inspect.signature(pipeline.run).parameters:
            extra["seg_signal"] = _seg_signal(request)
        scratch = None
        media: Path | None = request.video if request.video is not None else request.image_path
        try:
            if media is None and request.image is not None:
                scratch = Path(tempfile.mkdtemp(prefix="vitron-rt-image-"))
                media = write_png_atomic(scratch / "image.png", request.image)
            result = pipeline.run(message, request.conditioning, media, request.out_dir, request.timings_ms, **extra)
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        request.info.update(getattr(result, "info", {}))
        return [TaskOutput(o.kind, o.path) for o in result.outputs]

    run.__qualname__ = f"{cls.__qualname__}.run (adapted)"
    return run


def _seg_signal(request: TaskRequest) -> np.ndarray | None:
    """The message's signal hidden states through `signal_projector.segment_image`: (1, K, C)."""
    signal = request.bundle.manifest.signal
    component = None if signal is None else signal.projectors.get("segment_image")
    if component is None or request.message.signal is None:
        return None
    runner = request.runners[component]
    with request.timed("signal_projector"):
        out = runner.infer({runner.input_specs[0].name: np.ascontiguousarray(request.message.signal[None])})
    return out[runner.output_specs[0].name]


def resolve_task(task: str | None, video: bool) -> str | None:
    """A request's task -> the forced module, or None for "auto" (the model decides).

    Takes "auto", a `--task` verb (segment, generate, edit: the image or the video module
    by the input), "understand", or any module name or alias. Unknown: `MessageError`."""
    if task is None or task == "auto":
        return None
    if not isinstance(task, str):
        raise MessageError(f"task must be text, got {type(task).__name__}")
    verb = task.strip().lower()
    if verb in TASK_VERBS:
        return TASK_VERBS[verb][1 if video else 0]
    return resolve_module(task)
