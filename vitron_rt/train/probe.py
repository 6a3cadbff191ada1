"""A quick PyTorch check of a trained mini Vitron on held-out ShapesWorld samples, and of
what the shipped storage does to its outputs.

    python -m vitron_rt.train.probe --weights DIR [--n 48] [--plan PREFIX=SCHEME,... ...]

Held out: the samples of a world with another seed (1) than training's (0). All of it is
teacher-forced, one LLM forward per batch (the full evaluation, through the exported
bundle, is `vitron_rt.shapes.eval`'s job):

    QA exact match   every reply token and the closing </s> is the argmax after the true
                     prefix: exactly the samples greedy decoding answers word for word
    seg mIoU         SAM's mask from the signal tokens against the true mask (a video's
                     later frames prompted with the true previous mask, as in training)
    generation       DDIM from the signal tokens (the runtime's scheduler, 20 steps, no
                     guidance: its defaults), decoded, and read back by the judge: every
                     asked shape there, in its colour, kind and place

It reads a training folder's fp32 `model.safetensors` (`--weights DIR`) and compares it with
its stored form under each storage plan (`mini.STORAGE_PLAN`, or each `--plan`; "" is
int8 for every matrix): the same scores, plus the agreement of the two: reply-token agreement, IoU between the
two models' masks, and the generated images' mean absolute difference.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vitron_rt.models.model import VitronModel
from vitron_rt.runtime.pipelines.postprocess import from_vae_output
from vitron_rt.runtime.pipelines.scheduler import DdimConfig, DDIMScheduler
from vitron_rt.shapes.judge import ShapeJudge
from vitron_rt.shapes.tasks import TASKS, Sample
from vitron_rt.train import forward as fw
from vitron_rt.train.data import IGNORE, collate
from vitron_rt.train.trainer import Trainer

HELD_OUT_WORLD = 1
QA_TASKS = tuple(n for n, t in TASKS.items() if t.module == "understand" and not n.startswith("caption"))
SEG_TASKS = ("seg_image", "seg_image_region", "seg_video")
GEN_TASKS = ("gen_image",)
DDIM_STEPS = 20  # the runtime's DiffusionOptions default
BATCH = 8


@dataclass
class Outputs:
    """What one model produced on the probe's samples, per sample in order."""

    tasks: list[str] = field(default_factory=list)
    exact: list[bool] = field(default_factory=list)  # every reply token right (teacher-forced)
    tokens: list[np.ndarray] = field(default_factory=list)  # argmax at the reply positions
    mask_tasks: list[str] = field(default_factory=list)
    ious: list[float] = field(default_factory=list)  # per segmentation item
    masks: list[np.ndarray] = field(default_factory=list)  # (H, W) bool per item
    gen_ok: list[bool] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)  # (h, w, 3) uint8 per generation


def held_out(trainer: Trainer, tasks: Sequence[str], n: int) -> list[Sample]:
    """`n` samples of each task from the trainer's (held-out) world."""
    return [trainer.tasks.sample(task, i) for task in tasks for i in range(n)]


@torch.no_grad()
def run(trainer: Trainer, samples: Sequence[Sample], seed: int = 0) -> Outputs:
    """Teacher-forced replies, masks and DDIM generations of `trainer.model` on `samples`."""
    model, spec, judge = trainer.model.eval(), trainer.spec, ShapeJudge()
    sched = DDIMScheduler(DdimConfig(prediction_type=model.config.unet.prediction_type))
    out = Outputs()
    for start in range(0, len(samples), BATCH):
        chunk = list(samples[start : start + BATCH])
        batch = collate(chunk, trainer.tokenizer, spec, np.random.default_rng([seed, start]))
        if len(batch.pixel_values):
            features, embeds = fw.front_end(model, batch.pixel_values)
        else:  # text-only prompts (generation): no image rows to splice
            features = embeds = torch.zeros(0, spec.num_patches, 0)
        x = fw.sequence_embeds(model, batch, spec, features, embeds)
        logits, hidden = fw.llm_forward(model, x, batch.attention_mask)
        pred, labels = logits[:, :-1].argmax(-1), batch.labels[:, 1:]  # (B, T-1)
        for i, s in enumerate(chunk):
            keep = labels[i] != IGNORE
            out.tasks.append(s.task)
            out.tokens.append(pred[i][keep].numpy())
            out.exact.append(bool((pred[i][keep] == labels[i][keep]).all()))
        signal = fw.signal_hidden(hidden, batch.signal_positions)  # (B, K, D)
        if len(batch.seg_owner):
            prompt = fw.project(model, batch.seg_projector, signal[batch.seg_owner])  # (Q, K, C)
            seg = fw.seg_logits(
                model,
                batch.seg_pixels,
                prompt,
                batch.seg_boxes,
                batch.seg_has_box,
                batch.seg_prompt_masks,
                batch.seg_has_prompt_mask,
            )  # (Q, 1, m, m)
            up = torch.nn.functional.interpolate(seg, size=batch.seg_targets.shape[-2:], mode="bilinear")[:, 0] > 0
            for q, owner in enumerate(batch.seg_owner.tolist()):
                out.mask_tasks.append(chunk[owner].task)
                out.masks.append(up[q].numpy())
            out.ious.extend(fw.mask_iou(seg, batch.seg_targets).tolist())
        gens = [(p, o) for p, o in enumerate(batch.diff_owner.tolist()) if chunk[o].task in GEN_TASKS]
        if gens:
            cond = fw.project(model, batch.diff_projector, signal[batch.diff_owner])  # (P, K, C)
            for p, owner in gens:
                image = _generate(model, sched, cond[p : p + 1], seed=start + owner)
                out.images.append(image)
                out.gen_ok.append(judge.check_all(image, chunk[owner].specs).ok)
    return out


def _generate(model: VitronModel, sched: DDIMScheduler, cond: torch.Tensor, seed: int) -> np.ndarray:
    """The runtime's generation loop in PyTorch: seeded noise, DDIM, VAE decode -> (h, w, 3) uint8."""
    cfg = model.config.unet
    latents = np.random.default_rng(seed).standard_normal(
        (1, cfg.in_channels, cfg.sample_size, cfg.sample_size), dtype=np.float32
    )
    for t in sched.timesteps(DDIM_STEPS).tolist():
        pred = model.unet(torch.from_numpy(latents), torch.tensor([float(t)]), cond).numpy()  # (1, C, h, w)
        latents = sched.step(pred, t, latents, DDIM_STEPS).prev_sample
    return from_vae_output(model.vae_decoder(torch.from_numpy(latents)).numpy())


def scores(out: Outputs) -> dict[str, float]:
    """Per-task and overall figures of one model's outputs."""
    res: dict[str, float] = {}
    qa = [e for t, e in zip(out.tasks, out.exact) if t in QA_TASKS]
    if qa:
        res["qa_exact"] = float(np.mean(qa))
    for task in sorted(set(out.tasks)):
        res[f"exact/{task}"] = float(np.mean([e for t, e in zip(out.tasks, out.exact) if t == task]))
    for task in SEG_TASKS:
        ious = [v for t, v in zip(out.mask_tasks, out.ious) if t == task]
        if ious:
            res[f"miou/{task}"] = float(np.mean(ious))
    seg = [v for t, v in zip(out.mask_tasks, out.ious) if t in SEG_TASKS]
    if seg:
        res["seg_miou"] = float(np.mean(seg))
    if out.gen_ok:
        res["gen_correct"] = float(np.mean(out.gen_ok))
    return res


def agreement(a: Outputs, b: Outputs) -> dict[str, float]:
    """How close two models' outputs on the same samples are."""
    same = np.concatenate([x == y for x, y in zip(a.tokens, b.tokens)])
    ious = []
    for x, y in zip(a.masks, b.masks):
        union = (x | y).sum()
        ious.append(float((x & y).sum() / union) if union else 1.0)
    diff = [np.abs(x.astype(np.int16) - y.astype(np.int16)).mean() for x, y in zip(a.images, b.images)]
    return {
        "token_agreement": float(same.mean()),
        "exact_agreement": float(np.mean([x == y for x, y in zip(a.exact, b.exact)])),
        "mask_iou_between": float(np.mean(ious)) if ious else float("nan"),
        "image_mean_abs_diff": float(np.mean(diff)) if diff else float("nan"),
    }


def stored_model(model: VitronModel, plan: Mapping[str, str]) -> VitronModel:
    """A copy of `model` holding what its weights become in the shipped storage."""
    from vitron_rt.models.shipped import stored_copy
    from vitron_rt.models.weights import assign_strict

    other = copy.deepcopy(model)
    assign_strict(other, stored_copy(model, plan), "stored copy")
    return other


def _stored_bytes(model: VitronModel, plan: Mapping[str, str]) -> int:
    """Bytes of the stored tensors under `plan` (the file adds a small JSON header)."""
    from vitron_rt.models.shipped import pack_state

    tensors, _ = pack_state(model, plan)
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _parse_plan(text: str) -> dict[str, str]:
    """"unet.=int4g32,vae_encoder.=int8" -> {"unet.": "int4g32", "vae_encoder.": "int8"}."""
    plan = {}
    for item in filter(None, text.split(",")):
        prefix, _, scheme = item.partition("=")
        plan[prefix.strip()] = scheme.strip()
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitron_rt.train.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True, help="a training folder (its fp32 model.safetensors)")
    parser.add_argument("--n", type=int, default=48, help="held-out samples per task")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--plan",
        action="append",
        metavar="PREFIX=SCHEME,...",
        help="a storage plan to compare with fp32 (repeatable; default: mini's STORAGE_PLAN)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from vitron_rt.models.config import preset
    from vitron_rt.shapes.vocab import shapes_tokenizer
    from vitron_rt.train.mini import STORAGE_PLAN
    from vitron_rt.train.trainer import load_checkpoint

    cfg = preset("mini")
    model = load_checkpoint(VitronModel.from_config(cfg), args.weights / "model.safetensors")
    tokenizer = shapes_tokenizer(cfg.llm.vocab_size, cfg.signal.num_tokens, cfg.video_frames)
    trainer = Trainer(model, tokenizer, world_seed=HELD_OUT_WORLD)
    samples = held_out(trainer, (*QA_TASKS, *SEG_TASKS, *GEN_TASKS), args.n)
    t0 = time.perf_counter()
    full = run(trainer, samples)
    report: dict = {"samples_per_task": args.n, "fp32": scores(full)}
    print(f"fp32 ({time.perf_counter() - t0:.0f} s): {json.dumps(report['fp32'], indent=1)}", flush=True)
    report["stored"] = []
    for plan in [_parse_plan(p) for p in args.plan] if args.plan else [STORAGE_PLAN]:
        t0 = time.perf_counter()
        packed = run(Trainer(stored_model(model, plan), tokenizer, world_seed=HELD_OUT_WORLD), samples)
        row = {"plan": plan, "bytes": _stored_bytes(model, plan), "scores": scores(packed), "agreement": agreement(full, packed)}
        report["stored"].append(row)
        print(f"stored {plan} ({time.perf_counter() - t0:.0f} s): {json.dumps(row, indent=1)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
