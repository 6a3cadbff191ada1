"""The training forward: the serving data flow of DESIGN.md, in PyTorch, with its losses.

    pixel_values ─► vision_encoder ─► features (M,N,Dv) ─► mm_projector ─► (M,N,D) ─┐
                                          └─► region_encoder (+ box, grid mask) ─► (R,D) ─┤
    input_ids ─► embed_tokens ─► (B,T,D) ── rows at <image> / <region> replaced ◄──────┘
                                   ▼
                 llm_decoder (LLaMA, causal, padded) ─► logits (B,T,V) ─► LM loss (reply + <sig_k>)
                                   └► hidden (B,T,D) at <sig_0..K-1> ─► (B,K,D)
                                            ▼
            signal_projector.<module> ─┬─► seg_mask_decoder (+ seg_image_encoder) ─► mask loss
                                       └─► unet(x_t, t, cond) on VAE latents ─► denoising loss

Every step is the module the runtime runs (the same VitronModel components that export
writes), so what is trained here is what is served; only the batching differs (a padded
batch instead of one prefill, images widened to N placeholder positions beforehand).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vitron_rt.models.model import VitronModel
from vitron_rt.runtime.pipelines.scheduler import DDIMScheduler
from vitron_rt.train.data import IGNORE, Batch, DataSpec

# --------------------------------------------------------------------------- LLM side


def front_end(model: VitronModel, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, 3, S, S) -> features (M, N, Dv) and projected embeddings (M, N, D); M may be 0
    (a batch of text-to-image samples only: the CLIP tower cannot run on no image)."""
    if pixel_values.shape[0] == 0:
        cfg = model.config
        features = pixel_values.new_zeros(0, cfg.vision.num_patches, cfg.vision.hidden_size)
        return features, pixel_values.new_zeros(0, cfg.vision.num_patches, cfg.llm.hidden_size)
    features = model.vision_encoder(pixel_values)  # (M, N, Dv)
    return features, model.mm_projector(features)  # (M, N, D)


def sequence_embeds(
    model: VitronModel, batch: Batch, spec: DataSpec, features: torch.Tensor, embeds: torch.Tensor
) -> torch.Tensor:
    """Token embeddings with every image placeholder run and region placeholder replaced by
    the encoders' rows, in order: (B, T, D)."""
    x = model.embed_tokens(batch.input_ids)  # (B, T, D)
    d = x.shape[-1]
    image_slots = (batch.input_ids == spec.image_id)[..., None]  # (B, T, 1)
    if int(image_slots.sum()) != embeds.shape[0] * embeds.shape[1]:
        raise ValueError(f"{int(image_slots.sum())} image positions for {embeds.shape[0]} x {embeds.shape[1]} rows")
    if embeds.numel():
        x = x.masked_scatter(image_slots, embeds.reshape(-1, d).to(x.dtype))
    region_slots = (batch.input_ids == spec.region_id)[..., None]  # (B, T, 1)
    if int(region_slots.sum()) != batch.region_boxes.shape[0]:
        raise ValueError(f"{int(region_slots.sum())} region positions for {batch.region_boxes.shape[0]} regions")
    if batch.region_boxes.shape[0]:
        regions = model.region_encoder(features[batch.region_image], batch.region_boxes, batch.region_masks)  # (R, D)
        x = x.masked_scatter(region_slots, regions.to(x.dtype))
    return x


def llm_forward(
    model: VitronModel, embeds: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch through the LLaMA decoder (no cache): logits (B, T, V) and the last
    hidden states after the final norm (B, T, D), the states the runtime gathers."""
    hf = model.llm_decoder.model  # transformers LlamaForCausalLM
    b, t = attention_mask.shape
    positions = torch.arange(t, device=embeds.device).expand(b, t)  # (B, T): right padding
    out = hf.model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions, use_cache=False)
    hidden = out.last_hidden_state  # (B, T, D)
    return hf.lm_head(hidden), hidden


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy over the labelled positions (the replies)."""
    v = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1), ignore_index=IGNORE)


def signal_hidden(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, T, D) at each sample's signal positions (B, K) -> (B, K, D); rows of samples
    without signal tokens (-1) hold position 0's state and must not be used."""
    idx = positions.clamp_min(0)[..., None].expand(-1, -1, hidden.shape[-1])  # (B, K, D)
    return hidden.gather(1, idx)


def project(model: VitronModel, modules: Sequence[str], rows: torch.Tensor) -> torch.Tensor:
    """Signal states (Q, K, D), row q through `signal_projector.<modules[q]>` -> (Q, K, C).
    All modules of one call must share a back end (one output width)."""
    outs: list[torch.Tensor | None] = [None] * len(modules)
    for name in sorted(set(modules)):
        idx = [q for q, m in enumerate(modules) if m == name]
        projected = model.signal_projectors.project(name, rows[idx])  # (q, K, C)
        for j, q in enumerate(idx):
            outs[q] = projected[j]
    return torch.stack(outs)  # (Q, K, C)


# --------------------------------------------------------------------------- segmentation


def seg_logits(
    model: VitronModel,
    pixels: torch.Tensor,
    signal: torch.Tensor,
    boxes: torch.Tensor,
    has_box: torch.Tensor,
    prompt_masks: torch.Tensor,
    has_prompt_mask: torch.Tensor,
) -> torch.Tensor:
    """SAM halves: (Q, 3, S, S) + prompts (signal (Q, K, C), K may be 0) -> low-res logits (Q, 1, m, m)."""
    embeddings = model.seg_image_encoder(pixels)  # (Q, C, E, E)
    logits, _iou = model.seg_mask_decoder(embeddings, signal, boxes, has_box, prompt_masks, has_prompt_mask)
    return logits  # (Q, 1, m, m)


def mask_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross entropy + soft Dice on the logits upsampled to the target size, as the
    runtime upsamples them before thresholding at 0. logits (Q, 1, m, m), targets (Q, H, W)."""
    up = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)[:, 0]  # (Q, H, W)
    bce = F.binary_cross_entropy_with_logits(up, targets)
    p = torch.sigmoid(up)
    inter = (p * targets).flatten(1).sum(1)
    dice = 1.0 - (2.0 * inter + 1.0) / (p.flatten(1).sum(1) + targets.flatten(1).sum(1) + 1.0)
    return bce + dice.mean()


@torch.no_grad()
def mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(Q,) IoU of the thresholded upsampled logits with the targets (an empty pair is 1)."""
    up = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)[:, 0] > 0
    t = targets > 0.5
    inter = (up & t).flatten(1).sum(1).float()
    union = (up | t).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


# --------------------------------------------------------------------------- diffusion


class NoiseSchedule:
    """The forward process the runtime's DDIM sampler inverts: its alphas_cumprod
    (`vitron_rt.runtime.pipelines.scheduler`, SD-1.x's scaled-linear betas), as a tensor."""

    def __init__(self, scheduler: DDIMScheduler | None = None):
        sched = scheduler or DDIMScheduler()
        self.alphas_cumprod = torch.tensor(sched.alphas_cumprod, dtype=torch.float32)  # (T,)
        self.num_train_timesteps = len(self.alphas_cumprod)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) for a batch: x0, noise (P, C, h, w), t (P,) int64."""
        a = self.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1.0 - a).sqrt() * noise

    def target(self, prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What a UNet of `prediction_type` should output at (x_t = add_noise(x0, noise, t), t):
        the noise, v = sqrt(a) noise - sqrt(1 - a) x0, or x0 itself ("sample")."""
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "sample":
            return x0
        if prediction_type == "v_prediction":
            a = self.alphas_cumprod[t].reshape(-1, 1, 1, 1)
            return a.sqrt() * noise - (1.0 - a).sqrt() * x0
        raise ValueError(f"unknown prediction_type {prediction_type!r}")


def denoise_loss(
    model: VitronModel,
    schedule: NoiseSchedule,
    images: torch.Tensor,
    cond: torch.Tensor,
    weights: torch.Tensor,
    generator: torch.Generator,
    draws: int = 2,
    uncond_probability: float = 0.1,
) -> torch.Tensor:
    """The UNet's loss (on noise, v or x0: its config's `prediction_type`) on the VAE
    latents of `images` (P, 3, Hv, Wv) in [-1, 1], conditioned on `cond` (P, K, C);
    `draws` timesteps per image (the LLM's cost is paid once for all of them). The
    condition is zeroed with `uncond_probability`, the runtime's unconditional branch for
    classifier-free guidance. `weights` (P, 1, h, w) weight the squared error per latent
    cell. The VAE is not trained here."""
    with torch.no_grad():
        z0 = model.vae_encoder(images)  # (P, C, h, w), scaled latents
    z0 = z0.repeat(draws, 1, 1, 1)
    cond = cond.repeat(draws, 1, 1)  # (P', K, C)
    weights = weights.repeat(draws, 1, 1, 1)
    n = z0.shape[0]
    t = torch.randint(0, schedule.num_train_timesteps, (n,), generator=generator)
    noise = torch.randn(z0.shape, generator=generator)
    keep = (torch.rand(n, generator=generator) >= uncond_probability).float().reshape(-1, 1, 1)
    out = model.unet(schedule.add_noise(z0, noise, t), t.float(), cond * keep)  # (P', C, h, w)
    se = (out - schedule.target(model.unet.config.prediction_type, z0, noise, t)) ** 2 * weights
    return se.sum() / (weights.sum() * z0.shape[1])


def vae_loss(
    model: VitronModel,
    images: torch.Tensor,
    generator: torch.Generator,
    latent_noise: float = 0.1,
    background: tuple[int, int, int] | None = None,
    foreground_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Autoencoder losses on (P, 3, Hv, Wv) images in [-1, 1].

    The runtime encodes with the posterior mean (VaeEncoder), so that is what is trained:
    L1 + MSE reconstruction from the mean plus `latent_noise` Gaussian noise (a decoder
    that tolerates the small errors of denoised latents), and a penalty holding the latents
    at zero mean and unit standard deviation, which the diffusion schedule assumes
    (so the preset's scaling_factor is 1). With a `background` colour (RGB 0..255), a
    pixel that differs from it counts `foreground_weight` times in the reconstruction:
    where the picture is mostly background, an unweighted loss is met by blurred,
    colourless shapes."""
    z = model.vae_encoder(images)  # (P, C, h, w)
    noisy = z + latent_noise * torch.randn(z.shape, generator=generator)
    recon = model.vae_decoder(noisy)  # (P, 3, Hv, Wv)
    err = (recon - images).abs() + (recon - images) ** 2  # (P, 3, Hv, Wv)
    if background is None or foreground_weight == 1.0:
        weights = torch.ones_like(images[:, :1])
    else:
        bg = torch.tensor(background, dtype=images.dtype).reshape(1, 3, 1, 1) / 127.5 - 1.0
        shape = (images - bg).abs().amax(1, keepdim=True) > 0.1  # (P, 1, Hv, Wv)
        weights = torch.where(shape, foreground_weight, 1.0)
    return {
        "recon": (err * weights).sum() / (weights.sum() * 3),
        "latent_scale": (z.std() - 1.0) ** 2 + z.mean() ** 2,
    }
