"""Train the mini Vitron from scratch, every stage of the recipe, and write its weights.

    python -m vitron_rt.train.mini [--out DIR] [--seed 0] [--scale 1.0] [--threads 2] [--install]
    python -m vitron_rt.train.mini --out DIR --repack [--install]

Steps, not wall time, decide the length (`STEPS`), so one seed and one thread count give
the same weights on any machine; `--scale` multiplies every stage's step count (a quick
run: `--scale 0.01`). The ShapesWorld tokenizer is trained first (world seed 0, as every
mini tokenizer is), then the stages of `vitron_rt.train.stages` in order.

It writes into --out:

    model.safetensors, codes.safetensors   the fp32 weights (`Trainer.save`): the model and
                                           the back ends' code encoders (not shipped)
    mini.safetensors, mini.tokenizer.json, mini.json
                                           the shipped form (`vitron_rt.models.shipped`):
                                           weights in `STORAGE_PLAN`'s schemes, checksums
    log.json                               per stage: every step's losses and seconds

`--repack` writes the shipped form of a finished run again, under the current
`STORAGE_PLAN`. `--install` copies the shipped form into `vitron_rt/models/trained`, where
`from_preset("mini")` (and so `vitron-rt export B --preset mini`) reads it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from vitron_rt.models.config import preset
from vitron_rt.models.shipped import TRAINED_DIR, ShippedFiles, read_record, read_tokenizer, write_shipped
from vitron_rt.models.tokenizer import VICUNA_V1_TEMPLATE, PreparedTokenizer
from vitron_rt.train.stages import STAGES, Stage

# Steps per stage of the full run. Planned first with `python -m vitron_rt.train.budget
# --steps 2` (CPU seconds per step under load, / 1.7 for the second core, the budget's
# SHARES); then trimmed by measured full runs on 2 threads of an otherwise idle machine.
# The run that wrote the shipped weights (stage seconds include building the batches):
#   stage           batch  steps  measured s   note
#   autoencoder         4   1300       185     48 x 48 windows (0.26 s a step whole: 650 took 152)
#   perception         24    900       124     vision tower head
#   seg_perception     24    270        99     SAM encoder head
#   backends           16    230       349     text to image weighs 3 in its mix
#   invocation         16    300        93     text-only requests: the LLM learns to copy
#   alignment          16    230       156     vision tower frozen from here on; + words
#   instruction        16    720       505     LLM loss + words + signal alignment + grounding,
#                                              3 follow-ups, video at half weight
#   pixel               8    220       149
# 27.8 minutes in all, tokenizer and saving included (the 30 allowed), on 2 threads of an
# otherwise idle machine; the recipe before it (650 whole-image autoencoder steps) 26.7 on
# another day. The same stages with instruction 780, autoencoder 750 and
# backends 260, pixel 250 took 31.5 (~1.5 min of it test runs beside it); the recipe
# before (autoencoder 850, perception 1000, backends 260, instruction 520 with video at
# full weight, pixel 250) 28.1 on a slow day and 24.8 on an idle one (27.8 repeated the
# same day, byte-identical weights): leave ~2 minutes of margin.
# An older shipped run (backends 215 at weight 1, the recipe of 24.8 min otherwise) took 28.2
# with ~85 s of test runs beside its first two stages (autoencoder 261 s, perception 180;
# without the word objective, 199 and 153 s, 28.0 min). A recipe with autoencoder 1000,
# seg_perception 300, backends 240 and alignment 240 took 31.1 minutes the same day (the
# shipped run before it, autoencoder 80 at batch 16, took 27.7 a week before). A run with
# seg_perception 500, backends 250, alignment 340 and pixel 380 (no invocation) took 32.4
# minutes and scored better on segmentation than the recipe of its day (probe mIoU 0.55 /
# 0.61 / 0.68 against 0.46 / 0.48 / 0.64 for image / region / video): the cuts cost SAM most.
STEPS: dict[str, int] = {
    "autoencoder": 1300,
    "perception": 900,
    "seg_perception": 270,
    "backends": 230,
    "invocation": 300,
    "alignment": 230,
    "instruction": 720,
    "pixel": 220,
}
# Storage of the shipped weights (`vitron_rt.models.shipped`): name prefix -> scheme, int8
# per output channel for every matrix not named. See the module docstring of shipped.py.
STORAGE_PLAN: dict[str, str] = {}
NAME = "mini"


def scaled_steps(scale: float, steps: Mapping[str, int] = STEPS) -> dict[str, int]:
    """Each stage's steps times `scale`, at least one (a quick run still runs every stage)."""
    if scale <= 0:
        raise ValueError(f"--scale must be > 0, got {scale}")
    return {name: max(1, round(n * scale)) for name, n in steps.items()}


def train(
    out: Path,
    seed: int = 0,
    steps: Mapping[str, int] = STEPS,
    threads: int = 2,
    log: Callable[[str], None] = print,
    stages: Mapping[str, Stage] | None = None,
) -> dict:
    """Tokenizer, then every stage (`stages`, the recipe's `STAGES` by default) for
    `steps[stage]` steps; writes `out` (see the module docstring) and returns the shipped
    record. Outside the stages (which flush them) denormals are kept, as in a fresh
    process, whatever the caller's thread does: its state would otherwise change the bytes."""
    from vitron_rt.train.trainer import flush_denormals

    with flush_denormals(False):
        return _train(out, seed, steps, threads, log, stages)


def _train(
    out: Path,
    seed: int,
    steps: Mapping[str, int],
    threads: int,
    log: Callable[[str], None],
    stages: Mapping[str, Stage] | None,
) -> dict:
    from vitron_rt.models.model import VitronModel
    from vitron_rt.shapes.vocab import shapes_tokenizer
    from vitron_rt.train.perception import init_positions
    from vitron_rt.train.trainer import Trainer

    torch.set_num_threads(threads)
    start = time.perf_counter()

    def say(msg: str) -> None:
        log(f"[{time.perf_counter() - start:7.1f} s] {msg}")

    cfg = dataclasses.replace(preset(NAME), seed=seed)  # the initial weights are the seed's too
    tokenizer = shapes_tokenizer(cfg.llm.vocab_size, cfg.signal.num_tokens, cfg.video_frames)
    say(f"tokenizer: {tokenizer.vocab_size} entries")
    trainer = Trainer(VitronModel.from_config(cfg), tokenizer, seed=seed)
    init_positions(trainer.model.vision_encoder)  # 2D sin-cos: see `perception`
    stages_log = {}
    for name, stage in (stages or STAGES).items():
        n = steps[name]
        t0 = time.perf_counter()
        history = trainer.run(stage, n, log=say, log_every=max(1, n // 10))
        tenth = max(1, n // 10)
        first, last = _mean_losses(history.losses[:tenth]), _mean_losses(history.losses[-tenth:])
        parts = ", ".join(f"{k} {v:.4f}" for k, v in last.items())
        say(
            f"{name} done: {n} steps in {time.perf_counter() - t0:.1f} s; mean loss of the first tenth "
            f"{first['total']:.4f}, of the last {last['total']:.4f} ({parts})"
        )
        stages_log[name] = {"steps": n, "seconds": history.seconds, "losses": history.losses}
    wall = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    trainer.save(out)
    (out / "log.json").write_text(json.dumps(stages_log) + "\n", encoding="utf-8")
    training = {
        "command": "python -m vitron_rt.train.mini",
        "seed": seed,
        "steps": dict(steps),
        "threads": threads,
        "wall_s": round(wall, 1),
        "torch": torch.__version__,
    }
    record = ship(trainer.model, tokenizer, out, training)
    size = ShippedFiles(out, NAME).weights.stat().st_size
    say(f"trained in {wall / 60:.1f} min; wrote {out} (shipped weights {size / 2**20:.2f} MiB)")
    return record


def ship(model: torch.nn.Module, tokenizer: PreparedTokenizer, out: Path, training: dict) -> dict:
    """Write the shipped form of `model` into `out` under `STORAGE_PLAN`; the record."""
    if tokenizer.chat_template != VICUNA_V1_TEMPLATE:
        raise AssertionError("the ShapesWorld tokenizer's chat template is no longer vicuna_v1; update the record")
    return write_shipped(
        model,
        tokenizer.tokenizer.to_str(),
        ShippedFiles(out, NAME),
        config=json.loads(json.dumps(preset(NAME).to_dict())),
        tokenizer_info={
            "chat_template": "vicuna_v1",
            "bos_token": tokenizer.bos_token,
            "eos_token": tokenizer.eos_token,
        },
        plan=STORAGE_PLAN,
        training=training,
    )


def repack(out: Path) -> dict:
    """Write the shipped form of a training folder's fp32 weights again, under the current
    `STORAGE_PLAN` (a storage change needs no retraining); the new record."""
    from vitron_rt.models.model import VitronModel
    from vitron_rt.train.trainer import load_checkpoint

    files = ShippedFiles(out, NAME)
    old = read_record(files)
    cfg = preset(NAME)
    model = load_checkpoint(VitronModel.from_config(cfg), out / "model.safetensors")
    return ship(model, read_tokenizer(files, old, cfg.signal.num_tokens), out, old["training"])


def install(out: Path, folder: Path | None = None) -> Path:
    """Copy the shipped form from a training folder to `folder` (where `from_preset` reads
    it by default), the record last, so a half-copied set fails its checksum instead of
    loading; the folder."""
    folder = folder or TRAINED_DIR
    src, dst = ShippedFiles(out, NAME), ShippedFiles(folder, NAME)
    folder.mkdir(parents=True, exist_ok=True)
    for a, b in ((src.weights, dst.weights), (src.tokenizer, dst.tokenizer), (src.record, dst.record)):
        shutil.copyfile(a, b)
    return folder


def _mean_losses(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in rows for k in r}
    return {k: sum(r[k] for r in rows if k in r) / max(1, sum(k in r for r in rows)) for k in sorted(keys)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitron_rt.train.mini", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("mini-train"), help="folder for the weights and the log")
    parser.add_argument(
        "--seed", type=int, default=0, help="initial weights, data, noise and code encoders (default 0)"
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every stage's step count (0.01: a quick run of a few steps)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the same count reproduces the weights)")
    parser.add_argument(
        "--repack",
        action="store_true",
        help="no training: write the shipped form of --out's fp32 weights again (after a STORAGE_PLAN change)",
    )
    parser.add_argument(
        "--install", action="store_true", help=f"copy the shipped weights to {TRAINED_DIR} for from_preset('mini')"
    )
    args = parser.parse_args(argv)
    try:
        steps = scaled_steps(args.scale)
    except ValueError as e:
        parser.error(str(e))
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.repack:
        record = repack(args.out)
        print(f"repacked {args.out} with plan {record['weights']['plan']}", flush=True)
    else:
        train(args.out, seed=args.seed, steps=steps, threads=args.threads, log=lambda m: print(m, flush=True))
    if args.install:
        print(f"installed into {install(args.out)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
