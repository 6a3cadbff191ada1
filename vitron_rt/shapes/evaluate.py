"""The accuracy table of a ShapesWorld-trained bundle (`vitron-rt eval-mini`).

    held-out world (seed EVAL_WORLD_SEED; training draws from world 0)
      ─► N images over the image tasks, M videos over the video tasks (IMAGE_MIX, VIDEO_MIX)
      ─► each sample through Session (ONNX Runtime: what `vitron-rt run` does, task "auto",
         greedy) and through ReferenceSession (the PyTorch reference modules)
      ─► scored against the ground truth: exact match, mask J / F, the shapes judge
      ─► per task cluster: each runtime's score, and their agreement

A sample's prompt goes in exactly as a user types it (the runtime adds the image and
region placeholders); the model's own hybrid message decides which back end runs, so a
reply that does not parse, or names another module, scores as a miss. Videos are
written losslessly (FFV1), so both runtimes and the ground truth see the same pixels;
a segmented video's masks come back the same way (segment_video's `masks.mkv`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitron_rt.runtime.media import LOSSLESS_FOURCC, VideoReader, VideoWriter, load_image
from vitron_rt.runtime.messages import parse
from vitron_rt.runtime.pipelines.video import read_masks
from vitron_rt.runtime.sampling import SamplingParams
from vitron_rt.runtime.session import RunResult, Session
from vitron_rt.shapes import metrics
from vitron_rt.shapes.judge import ShapeJudge
from vitron_rt.shapes.tasks import TASKS, Sample, TaskGenerator
from vitron_rt.shapes.world import ShapesWorld

# Training draws every sample from this world (the tokenizer's corpus and every stage:
# `vitron_rt.train.trainer.Trainer`'s default `world_seed`). A sample is a pure function of
# (world seed, task, index), so the table's world, another seed, is a held-out set.
TRAINING_WORLD_SEED = 0
EVAL_WORLD_SEED = 1
# Input videos: lossless, so the model sees the rendered frames exactly.
VIDEO_FOURCC, VIDEO_SUFFIX, VIDEO_FPS = LOSSLESS_FOURCC, ".mkv", 8.0
# Longest reply of the tasks (a two-shape generation message with its signal tokens is
# about 60 tokens), with room for a model that rambles before it stops.
MAX_NEW_TOKENS = 96


@dataclass(frozen=True)
class Cluster:
    """A row of the table: a group of tasks scored alike."""

    name: str
    title: str
    metric: str


CLUSTERS: dict[str, Cluster] = {
    c.name: c
    for c in (
        Cluster("qa", "image QA (colour, kind, place, count, exists)", "exact match"),
        Cluster("region_qa", "region QA (what / colour / kind in a box)", "exact match"),
        Cluster("video_qa", "video QA (which moves, its colour, direction, count)", "exact match"),
        Cluster("seg_image", "referring segmentation, images", "mIoU (J) / F"),
        Cluster("seg_video", "referring segmentation, videos", "J&F (J / F)"),
        Cluster("gen_image", "text to image", "judged correct (colour, kind, place)"),
        Cluster("edit_image", "image edit (recolour, remove)", "correct (target as asked, rest unchanged)"),
        Cluster("edit_video", "video edit (recolour)", "correct (target as asked, rest unchanged)"),
    )
}
TASK_CLUSTER: dict[str, str] = {
    **{t: "qa" for t in ("qa_colour", "qa_kind", "qa_place", "qa_count", "qa_exist")},
    **{t: "region_qa" for t in ("region_what", "region_colour", "region_kind")},
    **{t: "video_qa" for t in ("video_which_moves", "video_colour_of_mover", "video_direction", "video_count")},
    "seg_image": "seg_image",
    "seg_image_region": "seg_image",
    "seg_video": "seg_video",
    "gen_image": "gen_image",
    "edit_recolour": "edit_image",
    "edit_remove": "edit_image",
    "edit_video": "edit_video",
}
# How the images and the videos of the set are shared out among their tasks (relative
# weights): every task at least ~40 images (500) and the back-end clusters 50 or more,
# fewer of the costly ones (a generation or an edit runs the UNet 16-20 times, a video
# edit that per frame: ~17 s a video per runtime on a busy 2-core machine, measured).
# Captions are free text with no exact answer: not scored.
IMAGE_MIX: dict[str, float] = {
    "qa_colour": 1.0,
    "qa_kind": 1.0,
    "qa_place": 1.0,
    "qa_count": 1.0,
    "qa_exist": 1.0,
    "region_what": 1.0,
    "region_colour": 1.0,
    "region_kind": 1.0,
    "seg_image": 1.5,
    "seg_image_region": 1.0,
    "gen_image": 1.5,
    "edit_recolour": 1.0,
    "edit_remove": 0.5,
}
VIDEO_MIX: dict[str, float] = {
    "video_which_moves": 1.0,
    "video_colour_of_mover": 1.0,
    "video_direction": 1.0,
    "video_count": 1.0,
    "seg_video": 4.0,
    "edit_video": 1.5,
}


@dataclass(frozen=True)
class EvalOptions:
    """The set's size and world, and the decoding budget."""

    images: int = 500
    videos: int = 50
    seed: int = EVAL_WORLD_SEED
    max_new_tokens: int = MAX_NEW_TOKENS

    def __post_init__(self) -> None:
        if self.images < 0 or self.videos < 0 or self.images + self.videos == 0:
            raise ValueError(f"need images, videos >= 0 and at least one sample, got {self.images}, {self.videos}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def allocate(total: int, mix: Mapping[str, float]) -> dict[str, int]:
    """`total` samples shared out by weight, rounded by largest remainder (sums to `total`)."""
    names = list(mix)
    weights = np.array([mix[n] for n in names], np.float64)
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - int(counts.sum())]:
        counts[i] += 1
    return {n: int(c) for n, c in zip(names, counts)}


def eval_samples(generator: TaskGenerator, images: int, videos: int) -> list[Sample]:
    """The set: samples 0.. of each task, `allocate`d from the two mixes."""
    out = []
    for mix, total in ((IMAGE_MIX, images), (VIDEO_MIX, videos)):
        for task, n in allocate(total, mix).items():
            out += [generator.sample(task, i) for i in range(n)]
    return out


# --------------------------------------------------------------------------- one sample


@dataclass
class Inputs:
    """A sample's media as the runtimes take them: the image array, or the video written
    to a lossless file (and its frames as decoded from it)."""

    image: np.ndarray | None = None  # (H, W, 3)
    video: Path | None = None
    frames: np.ndarray | None = None  # (T, H, W, 3)


def write_video(path: Path, frames: np.ndarray) -> Path:
    """(T, H, W, 3) uint8 RGB frames as a lossless video file (`VIDEO_FOURCC`)."""
    with VideoWriter(path, VIDEO_FPS, fourcc=VIDEO_FOURCC) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def read_video(path: Path) -> np.ndarray:
    """Every frame of a video file: (T, H, W, 3) uint8 RGB."""
    with VideoReader(path) as reader:
        return np.stack(list(reader))


def prepare_inputs(sample: Sample, folder: Path) -> Inputs:
    """The sample's media, a video written into `folder`."""
    if sample.media == "image":
        return Inputs(image=sample.image)
    if sample.media == "video":
        path = write_video(folder / f"input{VIDEO_SUFFIX}", sample.video)
        return Inputs(video=path, frames=read_video(path))
    return Inputs()


@dataclass
class Outcome:
    """One runtime's answer to one sample, and its score against the ground truth."""

    text: str
    module: str | None  # the module the reply's hybrid message names; None: no message
    parse_error: str | None  # why a reply that looks like a message did not parse
    result: RunResult | None  # the request's (None: an outcome built by hand)
    mask: np.ndarray | None = None  # (H, W) or (T, H, W) bool: a segmentation's or an edit's mask
    picture: np.ndarray | None = None  # (H, W, 3) or (T, H, W, 3): a generated or edited image / video
    correct: bool | None = None
    scores: dict[str, float] = field(default_factory=dict)
    wall_ms: float = 0.0  # the request, as the user waits for it


def _output(result: RunResult, kind: str, name: str | None = None) -> Path | None:
    for out in result.outputs:
        if out.kind == kind and (name is None or out.path.name == name):
            return out.path
    return None


def run_sample(
    session: Session, sample: Sample, inputs: Inputs, out_dir: Path, max_new_tokens: int = MAX_NEW_TOKENS
) -> Outcome:
    """Ask `session` the sample's prompt (task "auto", greedy) and read back what its back
    end wrote into `out_dir`."""
    t0 = time.perf_counter()
    result = session.run(
        sample.prompt,
        image=inputs.image,
        video=inputs.video,
        region=sample.region,
        sampling=SamplingParams(greedy=True, max_new_tokens=max_new_tokens),
        out_dir=out_dir,
    )
    wall_ms = (time.perf_counter() - t0) * 1e3
    parsed = parse(result.text)  # what the session parsed: the reply as the user sees it
    module = None if parsed.message is None else parsed.message.module
    outcome = Outcome(text=result.text, module=module, parse_error=parsed.error, result=result, wall_ms=wall_ms)
    ran = None if result.message is None or not result.outputs else result.message.module  # the back end that wrote
    if (path := _output(result, "mask")) is not None:
        if ran == "segment_video":  # every frame's, from masks.mkv
            outcome.mask = read_masks(path, None if inputs.frames is None else inputs.frames.shape[1:3])
        else:
            outcome.mask = load_image(path)[..., 0] > 127
    if ran in ("generate_image", "edit_image"):
        path = _output(result, "image", "image.png" if ran == "generate_image" else "edited.png")
        outcome.picture = None if path is None else load_image(path)
    elif ran == "edit_video":
        outcome.picture = read_video(_output(result, "video"))
    return outcome


# --------------------------------------------------------------------------- scoring


def normalise(text: str) -> str:
    """An answer as exact match compares it: case, surrounding space and a final full
    stop do not count."""
    return " ".join(text.strip().rstrip(".").lower().split())


def score(sample: Sample, outcome: Outcome, judge: ShapeJudge) -> Outcome:
    """Fill `outcome.correct` and `outcome.scores` against the sample's ground truth."""
    cluster = TASK_CLUSTER[sample.task]
    if cluster in ("qa", "region_qa", "video_qa"):
        outcome.correct = normalise(outcome.text) == normalise(sample.label)
    elif cluster == "seg_image":
        pred = outcome.mask if outcome.module == sample.module and outcome.mask is not None else None
        truth = sample.mask
        pred = np.zeros_like(truth) if pred is None or pred.shape != truth.shape else pred
        outcome.scores = {"j": metrics.iou(pred, truth), "f": metrics.boundary_f(pred, truth)}
    elif cluster == "seg_video":
        truth = sample.masks
        pred = outcome.mask if outcome.module == sample.module and outcome.mask is not None else None
        pred = np.zeros_like(truth) if pred is None or pred.shape != truth.shape else pred
        v = metrics.video_score(pred, truth)
        outcome.scores = {"j": v.j, "f": v.f, "jf": v.jf}
    elif cluster == "gen_image":
        ok = exact = False
        if outcome.module == sample.module and outcome.picture is not None:
            verdict = judge.check_all(outcome.picture, sample.specs)
            ok, exact = verdict.ok, verdict.exact
        outcome.correct = ok
        outcome.scores = {"exact": float(exact)}
    elif cluster in ("edit_image", "edit_video"):
        edit = None
        if outcome.module == sample.module and outcome.picture is not None:
            media = sample.image if cluster == "edit_image" else sample.video
            region = sample.mask if cluster == "edit_image" else sample.masks
            if outcome.picture.shape == media.shape:
                edit = metrics.edit_score(
                    _labels(judge, outcome.picture), _labels(judge, media), _labels(judge, sample.target), region
                )
        outcome.correct = bool(edit and edit.correct)
        outcome.scores = {"inside": edit.inside if edit else 0.0, "outside": edit.outside if edit else 1.0}
    return outcome


def _labels(judge: ShapeJudge, pixels: np.ndarray) -> np.ndarray:
    """Palette labels of an image (H, W) or of every frame (T, H, W)."""
    if pixels.ndim == 3:
        return judge.colour_labels(pixels)
    return np.stack([judge.colour_labels(f) for f in pixels])


def agreement(a: Outcome, b: Outcome) -> dict[str, float]:
    """How two runtimes' outcomes of one sample agree: identical reply text, the share of
    generated positions with the same token (over the longer reply), same verdict, mask IoU
    and squared error of the pictures (when both have them)."""
    row: dict[str, float] = {"same_text": float(a.text == b.text), "same_module": float(a.module == b.module)}
    if a.result is not None and b.result is not None:
        x, y = a.result.token_ids, b.result.token_ids
        n = max(len(x), len(y))
        row["token_agreement"] = sum(i == j for i, j in zip(x, y)) / n if n else 1.0
    if a.correct is not None and b.correct is not None:
        row["same_verdict"] = float(a.correct == b.correct)
    if a.mask is not None and b.mask is not None and a.mask.shape == b.mask.shape:
        pairs = zip(a.mask, b.mask) if a.mask.ndim == 3 else [(a.mask, b.mask)]
        row["mask_iou"] = float(np.mean([metrics.iou(x, y) for x, y in pairs]))
    if a.picture is not None and b.picture is not None and a.picture.shape == b.picture.shape:
        row["mse"] = metrics.mean_squared_error(a.picture, b.picture)
    return row


# --------------------------------------------------------------------------- the table


@dataclass
class SampleRecord:
    """One sample's line in the JSON: what it asked and how each runtime did."""

    task: str
    index: int
    prompt: str
    label: str
    ort: dict[str, Any]
    pytorch: dict[str, Any]
    agreement: dict[str, float]


def _summary(o: Outcome) -> dict[str, Any]:
    return {
        "text": o.text,
        "module": o.module,
        "correct": o.correct,
        "scores": {k: round(v, 4) for k, v in o.scores.items()},
        "wall_ms": round(o.wall_ms, 1),
    }


def _mean(values: Iterable[float]) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def _column(records: Sequence[SampleRecord], side: str, cluster: str) -> dict[str, float | None]:
    """One runtime's numbers for a cluster."""
    rows = [getattr(r, side) for r in records]
    if cluster in ("seg_image", "seg_video"):
        out = {k: _mean(r["scores"].get(k) for r in rows) for k in ("j", "f")}
        out["jf"] = None if out["j"] is None else (out["j"] + out["f"]) / 2
        return out
    out = {"accuracy": _mean(float(r["correct"]) for r in rows)}
    if cluster == "gen_image":
        out["exact"] = _mean(r["scores"].get("exact") for r in rows)
    if cluster in ("edit_image", "edit_video"):
        out["inside"] = _mean(r["scores"].get("inside") for r in rows)
        out["outside"] = _mean(r["scores"].get("outside") for r in rows)
    return out


def _agreement_column(records: Sequence[SampleRecord]) -> dict[str, float | None]:
    rows = [r.agreement for r in records]
    out = {
        "same_text": _mean(r["same_text"] for r in rows),
        "token_agreement": _mean(r.get("token_agreement") for r in rows),
        "same_verdict": _mean(r.get("same_verdict") for r in rows),
        "mask_iou": _mean(r.get("mask_iou") for r in rows),
    }
    errors = [r["mse"] for r in rows if "mse" in r]
    if errors:
        out["psnr_db"] = metrics.pooled_psnr(errors)
        out["identical_pictures"] = _mean(float(e == 0.0) for e in errors)
    return {k: v for k, v in out.items() if v is not None or k == "psnr_db"}


def _parse_row(records: Sequence[SampleRecord]) -> dict[str, Any]:
    """The hybrid-message parse rate over the samples whose answer calls a back end."""
    calls = [r for r in records if TASKS[r.task].module != "understand"]
    want = {r.task: TASKS[r.task].module for r in calls}

    def column(side: str) -> dict[str, float | None]:
        rows = [(getattr(r, side), want[r.task]) for r in calls]
        return {
            "parsed": _mean(float(o["module"] is not None) for o, _ in rows),
            "right_module": _mean(float(o["module"] == m) for o, m in rows),
        }

    return {"cluster": "parse", "title": "hybrid-message parse rate", "metric": "parsed / right module",
            "n": len(calls), "ort": column("ort"), "pytorch": column("pytorch"),
            "agreement": {"same_module": _mean(r.agreement["same_module"] for r in calls)}}  # fmt: skip


def table(records: Sequence[SampleRecord]) -> list[dict[str, Any]]:
    """One row per cluster that has samples, then the parse-rate row."""
    rows = []
    for name, cluster in CLUSTERS.items():
        mine = [r for r in records if TASK_CLUSTER[r.task] == name]
        if not mine:
            continue
        rows.append({"cluster": name, "title": cluster.title, "metric": cluster.metric, "n": len(mine),
                     "ort": _column(mine, "ort", name), "pytorch": _column(mine, "pytorch", name),
                     "agreement": _agreement_column(mine)})  # fmt: skip
    if any(TASKS[r.task].module != "understand" for r in records):
        rows.append(_parse_row(records))
    return rows


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def format_cell(cluster: str, col: Mapping[str, float | None]) -> str:
    """A runtime's cell of the Markdown table."""
    if cluster == "seg_image":
        return f"{_num(col['j'])} / {_num(col['f'])}"
    if cluster == "seg_video":
        return f"{_num(col['jf'])} ({_num(col['j'])} / {_num(col['f'])})"
    if cluster == "parse":
        return f"{_pct(col['parsed'])} / {_pct(col['right_module'])}"
    return _pct(col["accuracy"])


def format_agreement(col: Mapping[str, float | None]) -> str:
    """The ORT-vs-PyTorch cell: identical replies and tokens, then what the cluster has of
    verdicts, mask IoU and picture PSNR."""
    parts = []
    if "same_text" in col:
        parts.append(f"replies identical {_pct(col['same_text'])}")
    if col.get("token_agreement") is not None:
        parts.append(f"tokens agree {_pct(col['token_agreement'])}")
    if "same_module" in col and "same_text" not in col:
        parts.append(f"same module {_pct(col['same_module'])}")
    if col.get("same_verdict") is not None:
        parts.append(f"verdicts agree {_pct(col['same_verdict'])}")
    if col.get("mask_iou") is not None:
        parts.append(f"mask IoU {col['mask_iou']:.4f}")
    if "psnr_db" in col:
        psnr = col["psnr_db"]
        parts.append("pictures identical" if psnr is None else f"PSNR {psnr:.1f} dB")
    return ", ".join(parts)


def render_markdown(report: Mapping[str, Any]) -> str:
    """The table as Markdown, with a line saying what it was measured on."""
    lines = ["| task | n | metric | ONNX Runtime | PyTorch | ORT vs PyTorch |", "|---|---:|---|---:|---:|---|"]
    for row in report["rows"]:
        cells = [
            row["title"],
            str(row["n"]),
            row["metric"],
            format_cell(row["cluster"], row["ort"]),
            format_cell(row["cluster"], row["pytorch"]),
            format_agreement(row["agreement"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    src = report.get("source") or {}
    weights = src.get("weights_sha256")
    lines += [
        "",
        f"{report['images']} images and {report['videos']} videos of ShapesWorld seed {report['seed']} "
        f"(held out: training uses seed {TRAINING_WORLD_SEED}); "
        f"bundle `{report['bundle']}` ({src.get('preset') or 'checkpoint'}"
        + (f", weights sha256 {weights[:12]}…" if weights else "")
        + f"); {report['wall_s']:.0f} s wall on {report['cpus']} CPU cores.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the run


@dataclass
class Evaluation:
    """Runs the set through both sessions (see the module docstring): `session` on ONNX
    Runtime, `reference` the PyTorch one (`reference.ReferenceSession`). Cheap to
    construct; `run()` does the work."""

    session: Session
    reference: Session
    options: EvalOptions = field(default_factory=EvalOptions)
    log: Callable[[str], None] = lambda message: None
    judge: ShapeJudge = field(default_factory=ShapeJudge)

    def samples(self) -> list[Sample]:
        k = len(self.session.signal_ids) or 1
        generator = TaskGenerator(ShapesWorld(seed=self.options.seed), num_signal_tokens=k)
        return eval_samples(generator, self.options.images, self.options.videos)

    def run_one(self, sample: Sample, index: int, work: Path) -> SampleRecord:
        """One sample through each session, scored; its files are removed afterwards."""
        folder = Path(tempfile.mkdtemp(prefix="sample-", dir=work))
        try:
            inputs = prepare_inputs(sample, folder)
            tokens = self.options.max_new_tokens
            ort = score(sample, run_sample(self.session, sample, inputs, folder / "ort", tokens), self.judge)
            ref = score(sample, run_sample(self.reference, sample, inputs, folder / "pytorch", tokens), self.judge)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return SampleRecord(
            task=sample.task,
            index=index,
            prompt=sample.prompt,
            label=sample.label,
            ort=_summary(ort),
            pytorch=_summary(ref),
            agreement=agreement(ort, ref),
        )

    def run(self) -> dict[str, Any]:
        """The whole table: {"rows": [...], "samples": [...], and what it ran on}."""
        t0 = time.perf_counter()
        samples = self.samples()
        records: list[SampleRecord] = []
        counters: dict[str, int] = {}
        with tempfile.TemporaryDirectory(prefix="vitron-eval-") as work:
            for i, sample in enumerate(samples):
                index = counters.get(sample.task, 0)
                counters[sample.task] = index + 1
                records.append(self.run_one(sample, index, Path(work)))
                if (i + 1) % 25 == 0 or i + 1 == len(samples):
                    self.log(f"eval: {i + 1}/{len(samples)} samples ({time.perf_counter() - t0:.0f} s)")
        manifest = self.session.manifest
        load = manifest.source.config.get("load", {}) if manifest.source else {}
        return {
            "bundle": str(self.session.bundle.root),
            "source": {"preset": manifest.source.preset if manifest.source else None, **load},
            "seed": self.options.seed,
            "images": self.options.images,
            "videos": self.options.videos,
            "cpus": _cpus(),
            "wall_s": round(time.perf_counter() - t0, 1),
            "rows": table(records),
            "samples": [dataclasses.asdict(r) for r in records],
        }


def _cpus() -> int:
    """The CPU cores this process may run on (what the wall time was measured with)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def write_report(report: Mapping[str, Any], json_path: Path | None, markdown_path: Path | None) -> None:
    """The report as JSON (everything, per sample too) and / or the Markdown table."""
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    if markdown_path is not None:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(render_markdown(report), encoding="utf-8")
