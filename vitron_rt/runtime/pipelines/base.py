"""What every task pipeline shares: its result, the output files of one request, and the
checks and timing around engine calls.

    with OutputFiles(out_dir) as files:          # a request's files, committed together
        files.png("mask.png", mask, kind="mask")
        writer = files.video("overlay.mp4", fps)
        ...                                      # an exception here: no file is left
    result = PipelineResult(files.outputs, timings)

Every pipeline has the same call, so a task router registers one with a line:

    pipeline.run(message, signal, media, out_dir, timings) -> PipelineResult

`message`: the parsed `HybridMessage` (its region, when given, is the box prompt);
`signal`: the module's projected signal embeddings, (1, K, C) or (K, C); `media`: the
input image or video path (None for generation); `timings`: a dict the pipeline adds its
per-stage milliseconds to.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitron_rt.bundle import BundleError
from vitron_rt.engines import Runner
from vitron_rt.runtime.errors import MediaError
from vitron_rt.runtime.media import VideoWriter, write_png_atomic
from vitron_rt.runtime.region import Box, validate_region

OUTPUT_KINDS = ("mask", "image", "video")
# Staging files are created private (mkstemp's 0600); outputs are for the user to open
# and share like any file they save, so they get the usual rw-r--r--.
OUTPUT_MODE = 0o644


@dataclass(frozen=True)
class Output:
    """One file a request produced: `kind` is mask, image or video (`run --json`'s outputs)."""

    kind: str
    path: Path

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "path": str(self.path)}


@dataclass
class PipelineResult:
    """The files a pipeline wrote, its per-stage timings in milliseconds (the same numbers
    it added to the caller's dict), and facts about the run that are not times (frames,
    fps, mask area, IoU score)."""

    outputs: tuple[Output, ...]
    timings_ms: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)

    def path(self, kind: str) -> Path:
        """The first output of `kind` (mask, image, video)."""
        for out in self.outputs:
            if out.kind == kind:
                return out.path
        raise KeyError(f"no {kind} output; outputs: {[o.to_dict() for o in self.outputs]}")


# --------------------------------------------------------------------------- output files


class OutputFiles:
    """The output files of one request, all or none.

    Each file is written whole under a hidden staging name in the output folder (PNGs by
    `write_png_atomic`, videos by `VideoWriter`, which are atomic themselves) and renamed
    to its real name only when the `with` block ends without an error; an error deletes
    the staged files and aborts open video writers. A failed request therefore leaves
    neither a half-written file nor a mask without its overlay.
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.outputs: tuple[Output, ...] = ()
        self._staged: list[tuple[Path, Output]] = []  # (staging path, final output)
        self._writers: list[VideoWriter] = []
        self._open = False

    def __enter__(self) -> "OutputFiles":
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise MediaError(f"{self.out_dir}: the output folder is a file") from None
        except OSError as e:
            raise MediaError(f"{self.out_dir}: cannot create the output folder ({e.strerror or e})") from None
        self._open = True
        return self

    def _stage(self, name: str, kind: str) -> Path:
        if not self._open:
            raise RuntimeError("OutputFiles: stage files inside its `with` block")
        if kind not in OUTPUT_KINDS:
            raise ValueError(f"output kind {kind!r}; known: {', '.join(OUTPUT_KINDS)}")
        if Path(name).name != name or name.startswith("."):
            raise ValueError(f"output name {name!r} must be a plain, visible file name")
        final = self.out_dir / name
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".staged" + final.suffix, dir=self.out_dir)
        except OSError as e:
            raise MediaError(f"{final}: cannot write here ({e.strerror or e})") from None
        os.close(fd)
        staged = Path(tmp)
        self._staged.append((staged, Output(kind, final)))
        return staged

    def png(self, name: str, img: np.ndarray, kind: str = "image") -> Path:
        """Stage a PNG (see `write_png_atomic` for the image layouts); returns its final path."""
        staged = self._stage(name, kind)
        write_png_atomic(staged, img)
        return self.out_dir / name

    def video(self, name: str, fps: float, kind: str = "video", fourcc: str = "mp4v") -> VideoWriter:
        """A `VideoWriter` (`fourcc`) on a staged file; `close()` it (frame-count check)
        before the block ends. Writers still open at an error are aborted."""
        writer = VideoWriter(self._stage(name, kind), fps, fourcc=fourcc)
        self._writers.append(writer)
        return writer

    def _discard(self) -> None:
        for writer in self._writers:
            writer.abort()
        for staged, _ in self._staged:
            try:
                staged.unlink()
            except FileNotFoundError:
                pass
        self._staged.clear()

    def __exit__(self, exc_type, exc, tb) -> None:
        self._open = False
        if exc_type is not None:
            self._discard()
            return
        try:
            for writer in self._writers:
                writer.close()  # no-op for a writer the pipeline closed already
            for staged, out in self._staged:
                os.chmod(staged, OUTPUT_MODE)
                os.replace(staged, out.path)
        except OSError as e:
            self._discard()
            raise MediaError(f"{self.out_dir}: cannot move the outputs into place ({e.strerror or e})") from None
        except BaseException:
            self._discard()
            raise
        self.outputs = tuple(out for _, out in self._staged)
        self._staged.clear()


# --------------------------------------------------------------------------- timing


class Clock:
    """Adds wall-clock milliseconds per stage name into a dict (summing repeats), and
    counts the calls (the UNet's per-call time is total / calls). One clock per thread."""

    def __init__(self, timings: dict[str, float] | None = None):
        self.timings: dict[str, float] = {} if timings is None else timings
        self.counts: dict[str, int] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, (time.perf_counter() - start) * 1e3)

    def add(self, stage: str, ms: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + ms
        self.counts[stage] = self.counts.get(stage, 0) + 1


def publish(timings: dict[str, float] | None, measured: Mapping[str, float]) -> dict[str, float]:
    """Copy this run's timings into the caller's dict (when given); returns them, rounded
    to microseconds (finer digits are noise)."""
    rounded = {k: round(v, 3) for k, v in measured.items()}
    if timings is not None:
        timings.update(rounded)
    return rounded


# --------------------------------------------------------------------------- engine feeds


def component_runner(runners: Mapping[str, Runner], name: str, inputs: Sequence[str], outputs: Sequence[str]) -> Runner:
    """The runner of component `name`, checked to have the tensors a pipeline feeds and
    reads (the names the export spec gives them); a bundle that lacks them is refused
    before the first request rather than failing mid-video."""
    try:
        runner = runners[name]
    except KeyError:
        raise BundleError(f"no runner for component {name!r}; the pipeline needs it") from None
    have_in = {t.name for t in runner.input_specs}
    have_out = {t.name for t in runner.output_specs}
    for want, have, what in ((inputs, have_in, "input"), (outputs, have_out, "output")):
        missing = [n for n in want if n not in have]
        if missing:
            raise BundleError(
                f"component {name!r} has no {what} {missing[0]!r} (it has {', '.join(sorted(have))}); "
                "re-export the bundle with this vitron-rt"
            )
    return runner


def cast_feeds(runner: Runner, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`feeds` in the dtypes the runner's inputs declare (fp32 arrays to an fp16 engine),
    C-contiguous; arrays already right are passed through without a copy."""
    dtypes = {t.name: t.dtype for t in runner.input_specs}
    return {k: np.ascontiguousarray(v, dtype=dtypes.get(k, v.dtype)) for k, v in feeds.items()}


def infer(runner: Runner, clock: Clock, stage: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One timed engine call under `stage`."""
    with clock(stage):
        return runner.infer(cast_feeds(runner, feeds))


def signal_batch(signal: np.ndarray, runner: Runner, input_name: str) -> np.ndarray:
    """The projected signal embeddings as a (1, K, C) float32 batch for `runner`'s input
    `input_name`: a (K, C) array gets its batch axis; C must be the input's width."""
    s = np.asarray(signal)
    if s.ndim == 2:
        s = s[None]
    spec = next(t for t in runner.input_specs if t.name == input_name)
    width = spec.shape[-1]
    if s.ndim != 3 or s.shape[0] != 1 or s.shape[1] < 1 or (isinstance(width, int) and s.shape[2] != width):
        c = width if isinstance(width, int) else "C"
        raise ValueError(
            f"signal embeddings for {runner.name}.{input_name} must be (1, K, {c}) or (K, {c}), "
            f"K >= 1, got shape {tuple(np.shape(signal))}"
        )
    if not np.issubdtype(s.dtype, np.floating) or not np.isfinite(s).all():
        raise ValueError(f"signal embeddings for {runner.name}.{input_name} must be finite floats")
    return np.ascontiguousarray(s, dtype=np.float32)  # (1, K, C)


def message_region(message: Any) -> Box | None:
    """The region of a hybrid message (validated again: a message built by hand may skip
    the parser), or None for no message / no region."""
    region = getattr(message, "region", None)
    return None if region is None else validate_region(region)
