"""Running a stage: its batches, its losses, the optimiser, and a log per step.

    Trainer(model, tokenizer, seed)            cheap: no batch drawn, nothing trained; owns the
                                               back ends' code encoders (`conditioning`) and the
                                               perception stage's patch heads (`perception`)
      .batch(stage, step)                      the step's batch: a pure function of (seed, stage, step)
      .losses(stage, batch, generator)         named loss tensors (the stage's kind decides which)
      .run(stage, steps)                       AdamW over the stage's groups, warmup + cosine, clipping
                                               -> StageLog (every loss, the time of every step)

Sample indices of a stage live in their own range (the stage name's hash in the high
bits), so no two stages train on the same sample; a held-out set is a Trainer (or a
TaskGenerator) over a world with another seed.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitron_rt.models.model import VitronModel
from vitron_rt.models.tokenizer import PreparedTokenizer
from vitron_rt.shapes.palette import BACKGROUND
from vitron_rt.shapes.tasks import TASKS, Sample, TaskGenerator
from vitron_rt.shapes.world import ShapesWorld
from vitron_rt.train import forward as fw
from vitron_rt.train.conditioning import CodeEncoders
from vitron_rt.train.data import (
    BackendBatch,
    Batch,
    DataSpec,
    PerceptionBatch,
    backend_batch,
    collate,
    perception_batch,
)
from vitron_rt.train.grounding import (
    capture_attention_input,
    capture_layer_output,
    grounding_loss,
    head_attention,
)
from vitron_rt.train.perception import (
    PatchHead,
    PerceptionHeads,
    patch_loss,
    word_ids,
    word_targets,
    words_loss,
)
from vitron_rt.train.stages import Stage


def group_parameters(
    model: VitronModel, codes: CodeEncoders, group: str, patch_head: PerceptionHeads | None = None
) -> list[torch.nn.Parameter]:
    """The parameters of a trainable group (see `stages.GROUPS`)."""
    sam = model.seg_image_encoder.sam
    if group == "patch_head":
        return [] if patch_head is None else list(patch_head.parameters())
    modules = {
        "codes": codes,
        "vision": model.vision_encoder,
        "projector": model.mm_projector,
        "region": model.region_encoder,
        "llm": model.llm_decoder,
        "signal": model.signal_projectors,
        "seg_encoder": sam.vision_encoder,
        "unet": model.unet,
        "vae": model.vae_encoder.vae,
    }
    if group == "seg_decoder":
        return [p for n, p in sam.named_parameters() if not n.startswith("vision_encoder.")]
    if group not in modules:
        raise KeyError(f"unknown group {group!r}")
    return list(modules[group].parameters())


# The VAE's reconstruction weight on shape pixels against ShapesWorld's background (which
# is most of a picture). Measured, 140 autoencoder steps from scratch, held-out batch:
# the palette colour of 14 % of the shape pixels survived encode/decode at weight 1, 85 %
# at 10 (weight 1 gave pale blobs, and generation and edits inherit the VAE's colours).
VAE_FOREGROUND_WEIGHT = 10.0


def denormals_flushed() -> bool:
    """Whether this thread flushes denormal float results to zero (x86 FTZ), seen from a
    product that underflows (1e-30 * 1e-9 is a float32 denormal)."""
    return float((torch.full((1,), 1e-30) * 1e-9)[0]) == 0.0


@contextmanager
def flush_denormals(enabled: bool) -> Iterator[None]:
    """Run the block with denormals flushed (`enabled`) or kept, then put back the thread's
    state as it was. The state changes float results wherever a denormal occurs (measured:
    the same one-step training run wrote other weights when the caller had flushing on),
    so a run that promises the same bytes for the same seed pins it instead of inheriting it."""
    before = denormals_flushed()
    torch.set_flush_denormal(enabled)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


@dataclass
class StageLog:
    """Per step: each named loss, the weighted total, and the step's wall time."""

    stage: str
    losses: list[dict[str, float]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def series(self, name: str = "total") -> list[float]:
        return [row[name] for row in self.losses]


class Trainer:
    """Trains one VitronModel stage by stage (see the module docstring)."""

    def __init__(self, model: VitronModel, tokenizer: PreparedTokenizer, seed: int = 0, world_seed: int = 0):
        if tokenizer.vocab_size != model.config.llm.vocab_size:
            raise ValueError(
                f"the tokenizer has {tokenizer.vocab_size} entries, the LLM {model.config.llm.vocab_size} rows"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.seed = seed
        self.spec = DataSpec.build(model.config, tokenizer)
        self.tasks = TaskGenerator(ShapesWorld(seed=world_seed), num_signal_tokens=self.spec.num_signal_tokens)
        self.words = word_ids(tokenizer)  # the word objective's targets (`perception.words_loss`)
        self.schedule = fw.NoiseSchedule()
        sig = model.config.signal
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.codes = CodeEncoders(sig.num_tokens, sig.segmentation_dim, sig.diffusion_dim).eval()
            self.patch_head = PerceptionHeads(
                PatchHead(model.config.vision.hidden_size),
                PatchHead(model.config.seg.prompt_dim, cells=1, fields=("colour", "kind")),
            ).eval()

    # ------------------------------------------------------------------ data

    def _rng(self, stage: Stage, step: int, what: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(stage.name.encode()), zlib.crc32(what.encode()), step])

    def samples(self, stage: Stage, step: int) -> list[Sample]:
        """The step's samples: `batch_size` draws from the stage's mix (from one media
        bucket when the stage buckets), at indices no other stage, step or seed uses (seed 0's
        are those of the runs before the seed took part)."""
        mix = stage.mix
        if stage.bucket_by_media:
            video = {t: w for t, w in mix.items() if TASKS[t].media == "video"}
            still = {t: w for t, w in mix.items() if TASKS[t].media != "video"}
            if video and still:
                share = sum(video.values()) / sum(mix.values())
                mix = video if self._rng(stage, step, "bucket").random() < share else still
        base = (self.seed << 48) + ((zlib.crc32(stage.name.encode()) & 0xFFFF) << 32)
        first = base + step * stage.batch_size
        samples = [self.tasks.mixed(mix, first + j) for j in range(stage.batch_size)]
        if stage.follow_ups:
            samples = [self.tasks.with_follow_ups(s, stage.follow_ups, first + j) for j, s in enumerate(samples)]
        return samples

    def batch(self, stage: Stage, step: int) -> Batch | BackendBatch | PerceptionBatch:
        """The step's batch (`BackendBatch`, `PerceptionBatch` for the stages without the LLM)."""
        samples = self.samples(stage, step)
        rng = self._rng(stage, step, "collate")
        w = stage.loss_weights
        if stage.kind == "perception":
            encoders = [e for e, loss in (("vision", "patch"), ("seg", "seg_patch")) if w.get(loss)]
            return perception_batch(samples, self.spec, rng, self.patch_head.vision.cells, encoders)
        if stage.kind in ("autoencoder", "backends"):
            return backend_batch(samples, self.spec, rng, vae_crop=stage.vae_crop)
        words = self.patch_head.vision.cells if w.get("words") or w.get("region_words") else 0
        backends, ground = stage.kind == "pixel", bool(w.get("ground") or w.get("ground_words"))
        return collate(samples, self.tokenizer, self.spec, rng, backends=backends, words=words, ground=ground)

    # ------------------------------------------------------------------ losses

    def losses(self, stage: Stage, batch: Batch | BackendBatch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The named losses of one batch, before weighting (a loss of weight 0 is skipped)."""
        model, w = self.model, stage.loss_weights
        if stage.kind == "autoencoder":
            return fw.vae_loss(
                model, batch.vae_images, generator, background=BACKGROUND, foreground_weight=VAE_FOREGROUND_WEIGHT
            )
        if stage.kind == "perception":
            out = {}
            if w.get("patch"):
                features = model.vision_encoder(batch.pixel_values)  # (M, N, Dv)
                out["patch"] = patch_loss(self.patch_head.vision, features, batch.labels)
            if w.get("seg_patch"):
                embeddings = model.seg_image_encoder(batch.seg_pixel_values)  # (M, C, E, E)
                features = embeddings.flatten(2).transpose(1, 2)  # (M, E*E, C), row-major like the labels
                out["seg_patch"] = patch_loss(self.patch_head.seg, features, batch.seg_labels)
            return out
        trains = set(stage.trainable)
        if stage.kind == "backends":
            out = {}
            if w.get("code_mask") and len(batch.seg_pixels):
                prompt = self.codes.segmentation(batch.seg_codes)  # (Q, K, C)
                out["code_mask"] = fw.mask_loss(self._seg(batch, prompt, trains), batch.seg_targets)
            if w.get("code_denoise") and len(batch.diff_images):
                cond = self.codes.diffusion(batch.diff_codes)  # (P, K, C)
                out["code_denoise"] = fw.denoise_loss(
                    model, self.schedule, batch.diff_images, cond, batch.diff_weights, generator, stage.diffusion_draws
                )
            return out
        with torch.set_grad_enabled(bool(trains & {"vision", "projector"}) and torch.is_grad_enabled()):
            features, embeds = fw.front_end(model, batch.pixel_values)
        x = fw.sequence_embeds(model, batch, self.spec, features, embeds)
        hf = model.llm_decoder.model
        grounded = batch.ground_rows is not None
        heads = self._ground_heads(stage, batch) if grounded and (w.get("ground") or w.get("ground_words")) else []
        layers = {layer for layer, _, _ in heads}  # each hooked once, whichever roles share it
        lens = (hf.model.norm, hf.lm_head.weight)  # how the word objectives read a state
        with ExitStack() as stack:
            seen = {i: stack.enter_context(capture_attention_input(hf, i)) for i in layers if w.get("ground")}
            after = {i: stack.enter_context(capture_layer_output(hf, i)) for i in layers if w.get("ground_words")}
            logits, hidden = fw.llm_forward(model, x, batch.attention_mask)
        out = {"lm": fw.lm_loss(logits, batch.labels)}
        if w.get("ground_words") and heads:
            states = [after[layer]["hidden"][batch.ground_rows[i], batch.ground_queries[i]] for layer, _, i in heads]
            items = torch.cat([i for _, _, i in heads])
            fields = {f: v[:, items] for f, v in batch.ground_fields.items()}  # (1, G', 1)
            target = word_targets(fields, self.words, logits.shape[-1])
            out["ground_words"] = words_loss(torch.cat(states)[None], *lens, target)
        if heads and w.get("ground"):
            losses = []
            for layer, head, items in heads:
                attn = hf.model.layers[layer].self_attn
                rows, queries = batch.ground_rows[items], batch.ground_queries[items]
                probs = head_attention(attn, seen[layer], head, rows, queries, batch.attention_mask)
                losses.append(grounding_loss(probs, batch.ground_targets[items]) * len(items))
            out["ground"] = sum(losses) / sum(len(items) for _, _, items in heads)
        if w.get("words") and batch.patch_labels is not None:
            target = word_targets(batch.patch_labels, self.words, logits.shape[-1])
            words = words_loss(embeds, *lens, target)
            if words is not None:
                out["words"] = words
        if w.get("region_words") and batch.region_labels is not None and len(batch.region_boxes):
            target = word_targets(batch.region_labels, self.words, logits.shape[-1])  # (1, R, V)
            regions = x[batch.input_ids == self.spec.region_id][None]  # (1, R, D), in the regions' order
            out["region_words"] = words_loss(regions, *lens, target)
        if stage.kind != "pixel":
            return out
        signal = fw.signal_hidden(hidden, batch.signal_positions)  # (B, K, D)
        align = []
        if len(batch.seg_owner):
            prompt = fw.project(model, batch.seg_projector, signal[batch.seg_owner])  # (Q, K, C)
            if w.get("align"):
                with torch.no_grad():
                    target = self.codes.segmentation(batch.seg_codes)
                align.append(F.mse_loss(prompt, target))
            if w.get("mask"):
                out["mask"] = fw.mask_loss(self._seg(batch, prompt, trains), batch.seg_targets)
        if len(batch.diff_owner):
            cond = fw.project(model, batch.diff_projector, signal[batch.diff_owner])  # (P, K, C)
            if w.get("align"):
                with torch.no_grad():
                    target = self.codes.diffusion(batch.diff_codes)
                align.append(F.mse_loss(cond, target))
            if w.get("denoise"):
                out["denoise"] = fw.denoise_loss(
                    model, self.schedule, batch.diff_images, cond, batch.diff_weights, generator, stage.diffusion_draws
                )
        if align:
            out["align"] = sum(align) / len(align)
        return out

    @staticmethod
    def _ground_heads(stage: Stage, batch: Batch) -> list[tuple[int, int, torch.Tensor]]:
        """(layer, head, indices of the grounded items it learns from) for each grounded role
        of the stage that the batch has items of."""
        out = []
        roles = (
            (0, stage.ground_layer, stage.ground_head),
            (1, stage.ground_ref_layer, stage.ground_ref_head),
            (2, stage.ground_read_layer, stage.ground_read_head),
        )
        for role, layer, head in roles:
            items = (batch.ground_roles == role).nonzero()[:, 0]
            if role in stage.ground_roles and len(items):
                out.append((layer, head, items))
        return out

    def _seg(self, batch: Batch | BackendBatch, prompt: torch.Tensor, trains: set[str]) -> torch.Tensor:
        """Mask logits of the batch's segmentation items under `prompt` (Q, K, C); the SAM
        image encoder runs without gradients when the stage does not train it."""
        model = self.model
        with torch.set_grad_enabled("seg_encoder" in trains and torch.is_grad_enabled()):
            embeddings = model.seg_image_encoder(batch.seg_pixels)  # (Q, C, E, E)
        logits, _iou = model.seg_mask_decoder(
            embeddings,
            prompt,
            batch.seg_boxes,
            batch.seg_has_box,
            batch.seg_prompt_masks,
            batch.seg_has_prompt_mask,
        )
        return logits  # (Q, 1, m, m)

    # ------------------------------------------------------------------ optimisation

    def _prepare(self, stage: Stage) -> list[dict]:
        """Freeze everything, unfreeze the stage's groups; AdamW parameter groups (each
        parameter once, in the first group that names it) with their learning rates."""
        self.model.requires_grad_(False)
        self.codes.requires_grad_(False)
        self.patch_head.requires_grad_(False)
        seen: set[int] = set()
        groups = []
        for group in stage.trainable:
            params = []
            for p in group_parameters(self.model, self.codes, group, self.patch_head):
                if id(p) not in seen:
                    seen.add(id(p))
                    p.requires_grad_(True)
                    params.append(p)
            if params:
                groups.append({"params": params, "lr": stage.lr * stage.lr_scale.get(group, 1.0)})
        self.model.train()
        self.codes.train()
        self.patch_head.train()
        return groups

    def run(
        self,
        stage: Stage,
        steps: int,
        fixed_batch: bool = False,
        log: Callable[[str], None] | None = None,
        log_every: int = 10,
    ) -> StageLog:
        """Train `stage` for `steps` steps. `fixed_batch`: every step sees step 0's batch
        and noise (a smoke test's check that the losses can go down)."""
        groups = self._prepare(stage)
        params = [p for g in groups for p in g["params"]]
        opt = torch.optim.AdamW(groups, betas=(0.9, 0.98), weight_decay=stage.weight_decay)
        warmup = min(stage.warmup, max(1, steps // 10))

        def factor(i: int) -> float:
            if i < warmup:
                return (i + 1) / warmup
            progress = (i - warmup) / max(1, steps - warmup)
            return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        history = StageLog(stage.name)
        fixed = self.batch(stage, 0) if fixed_batch else None
        # Denormal floats (tiny gradients deep in a backward pass) run ~20x slower on x86;
        # measured: a VAE step at batch 3 took 2.7 s after one at batch 16 with them, 0.1 s
        # with them flushed to zero.
        with flush_denormals(True):
            try:
                for i in range(steps):
                    t0 = time.perf_counter()
                    batch = fixed if fixed is not None else self.batch(stage, i)
                    gen = torch.Generator().manual_seed(self.seed * 1_000_003 + (0 if fixed_batch else i))
                    losses = self.losses(stage, batch, gen)
                    total = sum(stage.loss_weights.get(k, 0.0) * v for k, v in losses.items())
                    if not isinstance(total, torch.Tensor):
                        raise ValueError(f"stage {stage.name!r}: the batch gave none of its weighted losses")
                    opt.zero_grad(set_to_none=True)
                    total.backward()
                    torch.nn.utils.clip_grad_norm_(params, stage.clip_norm)
                    opt.step()
                    sched.step()
                    row = {k: float(v.detach()) for k, v in losses.items()}
                    row["total"] = float(total.detach())
                    history.losses.append(row)
                    history.seconds.append(time.perf_counter() - t0)
                    if log is not None and (i % log_every == 0 or i == steps - 1):
                        parts = " ".join(f"{k} {v:.4f}" for k, v in row.items())
                        log(f"{stage.name} step {i + 1}/{steps} ({history.seconds[-1]:.2f} s): {parts}")
            finally:
                self.model.eval().requires_grad_(False)
                self.codes.eval().requires_grad_(False)
                self.patch_head.eval().requires_grad_(False)
        return history

    def save(self, folder: str | Path) -> Path:
        """The model (`model.safetensors`), the code encoders (`codes.safetensors`) and the
        perception head (`patch_head.safetensors`)."""
        folder = Path(folder)
        save_checkpoint(self.model, folder / "model.safetensors")
        save_checkpoint(self.codes, folder / "codes.safetensors")
        save_checkpoint(self.patch_head, folder / "patch_head.safetensors")
        return folder

    def load(self, folder: str | Path) -> None:
        """Load what `save` wrote (a run resumed between stages; a folder from before the
        perception stage has no head, which keeps its initial weights)."""
        folder = Path(folder)
        load_checkpoint(self.model, folder / "model.safetensors")
        load_checkpoint(self.codes, folder / "codes.safetensors")
        if (folder / "patch_head.safetensors").is_file():
            load_checkpoint(self.patch_head, folder / "patch_head.safetensors")


def save_checkpoint(model: torch.nn.Module, path: str | Path) -> Path:
    """Every weight of `model` as one safetensors file (shared weights stored once)."""
    from safetensors.torch import save_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path))
    return path


def load_checkpoint(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load `save_checkpoint`'s file into a model of the same shape (strict)."""
    from safetensors.torch import load_model

    missing, unexpected = load_model(model, str(path), strict=True)
    if missing or unexpected:
        raise ValueError(f"{path}: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    return model
