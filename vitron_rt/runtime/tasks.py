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
Pipelines live in `vitron_rt.runtime.pipelines`, which registers them when imported;
`get_pipeline` imports it on first use, so a runtime without it still serves text (the
result then says in its notes that no pipeline ran). A pipeline writes its files
atomically (`media.write_png_atomic`, `media.VideoWriter`): a failed request leaves none.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitron_rt.bundle import Bundle
from vitron_rt.engines import Runner
from vitron_rt.runtime.errors import MessageError
from vitron_rt.runtime.messages import MODULES, HybridMessage, resolve_module
from vitron_rt.runtime.region import Box

PIPELINES_PACKAGE = "vitron_rt.runtime.pipelines"
OUTPUT_KINDS = ("mask", "image", "video")
# `--task` verbs -> module, by whether the input is a video.
TASK_VERBS: dict[str, tuple[str, str]] = {
    "segment": ("segment_image", "segment_video"),
    "generate": ("generate_image", "generate_video"),
    "edit": ("edit_image", "edit_video"),
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
    runner: Callable[[str], Runner]  # a component's active runner (resident in the session)
    image: np.ndarray | None = None  # (H, W, 3) uint8 RGB, the user's image
    video: Path | None = None  # the user's video file
    frames: np.ndarray | None = None  # (N, H, W, 3) uint8 RGB, the frames the LLM saw
    frame_indices: np.ndarray | None = None  # (N,) their indices in the video
    region: Box | None = None  # the message's region, else the user's box
    sketch: np.ndarray | None = None  # the user's sketch mask, when the region was drawn
    seed: int | None = None  # the request's sampling seed, for stochastic back ends
    timings_ms: dict[str, float] = field(default_factory=dict)  # add the pipeline's stages here
    notes: list[str] = field(default_factory=list)  # anything the caller should be told

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
    """Import the pipelines package once (it registers its pipelines); absent, nothing."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    try:
        importlib.import_module(PIPELINES_PACKAGE)
    except ModuleNotFoundError as e:
        if e.name != PIPELINES_PACKAGE:
            raise


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
