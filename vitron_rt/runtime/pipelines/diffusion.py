"""generate_image and edit_image: the UNet + VAE components driven by the numpy DDIM loop.

The projected signal tokens ARE the UNet's cross-attention context here (the paper's
decoding-side projection maps the LLM's signal hidden states into the diffusion model's
conditioning space), so `encoder_hidden_states` is the (1, K, C) signal batch; the
unconditional branch of classifier-free guidance is the same shape of zeros.

    generate:  noise (1,4,h,w) ─► [ unet(x_t, t, signal) ─► DDIM step ] x n ─► vae_decoder ─► image.png

    edit:      image ─► segment (signal or region) ─► mask (H,W)
               image ─► resize to h*f x w*f ─► vae_encoder ─► known latents z0 (1,4,h,w)
               z = add_noise(z0, noise, t_start)                     (strength: where t_start lies)
               [ unet ─► DDIM step ─► z = m * z + (1 - m) * add_noise(z0, noise, t_next) ] x n
               vae_decoder ─► resize to H x W ─► composite: edited inside the mask, the input
               outside, bit for bit ─► edited.png + mask.png

The blend after every step (RePaint-style latent inpainting, as diffusers'
StableDiffusionInpaintPipeline does for a 4-channel UNet) needs no inpainting UNet: the
known region is re-imposed at the current noise level, so the model fills the masked
region consistently with it. m is the mask downsampled to the latent grid with
any-coverage, so latents under the object's edge are free to change.

Latent size: the UNet's native side is its profile's `opt` height (SD-1.x: 64, the tiny
preset: 8) and sides are multiples of the profile's `min` (the UNet's downsampling); an
image is edited at its aspect ratio with the long side native, pixels = latents x the
VAE's `downsample` attribute.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from vitron_rt.bundle import BundleError, Manifest
from vitron_rt.engines import Runner
from vitron_rt.runtime.errors import VitronInputError
from vitron_rt.runtime.media import load_image
from vitron_rt.runtime.pipelines.base import (
    Clock,
    OutputFiles,
    PipelineResult,
    component_runner,
    infer,
    message_region,
    publish,
    signal_batch,
)
from vitron_rt.runtime.pipelines.postprocess import composite, downsample_mask, from_vae_output, to_vae_input
from vitron_rt.runtime.pipelines.scheduler import PREDICTION_TYPES, DdimConfig, DDIMScheduler
from vitron_rt.runtime.pipelines.segmentation import SEG_DECODER, SEG_ENCODER, Segmenter, SegmentOptions

UNET = "unet"
VAE_ENCODER = "vae_encoder"
VAE_DECODER = "vae_decoder"
# Tensor names (vitron_rt/export/specs/diffusion.py).
UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states")
UNET_OUTPUTS = ("noise_pred",)


@dataclass(frozen=True)
class DiffusionOptions:
    """Sampling parameters. The defaults suit SD-1.x weights; the tiny preset's UNet runs
    a step in under a millisecond, so they cost nothing there either."""

    # DDIM steps over the whole schedule (an edit runs the last `strength` of them).
    num_inference_steps: int = 20
    # > 1: classifier-free guidance, eps = eps(0) + g * (eps(signal) - eps(0)), both rows
    # in one UNet call of batch 2; <= 1: one conditional row per call.
    guidance_scale: float = 1.0
    # Edits: how far into the schedule the input is noised (1: from pure noise inside the
    # mask, as diffusers' inpainting pipeline does by default; its img2img default is 0.8).
    # Measured on eval-mini's 18 held-out removals (session 11's no-pixel-grounding bundle):
    # 0.8 left the shape's colour showing through, 5 correct; 1.0, 13 (guidance 1, 20 steps).
    strength: float = 1.0
    seed: int = 0
    # DDIM's eta; 0 is the deterministic sampler.
    eta: float = 0.0
    scheduler: DdimConfig = field(default_factory=DdimConfig)

    def __post_init__(self) -> None:
        n = self.num_inference_steps
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise VitronInputError(f"num_inference_steps must be a positive integer, got {n!r}")
        for name in ("guidance_scale", "eta", "strength"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise VitronInputError(f"{name} must be a finite number >= 0, got {v!r}")
        if not 0 < self.strength <= 1:
            raise VitronInputError(f"strength must be in (0, 1], got {self.strength!r}")

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1.0


# --------------------------------------------------------------------------- the loop


class Denoiser:
    """The UNet and the DDIM loop: latent geometry, seeded noise, conditioning, steps."""

    def __init__(self, manifest: Manifest, runners: Mapping[str, Runner], options: DiffusionOptions):
        self.unet = component_runner(runners, UNET, UNET_INPUTS, UNET_OUTPUTS)
        self.options = options
        self.scheduler = DDIMScheduler(_bundle_scheduler(manifest, options.scheduler))
        sample = next(t for t in self.unet.input_specs if t.name == "sample")
        channels = sample.shape[1]
        if not isinstance(channels, int):
            raise BundleError(f"{UNET}: the latent channel count (sample axis 1) must be fixed, got {channels!r}")
        self.channels = channels
        self.native, self.multiple, self.max_side = _latent_range(manifest, sample.shape)

    def latent_hw(self, image_hw: Sequence[int] | None = None) -> tuple[int, int]:
        """Latent (h, w): native x native for generation; for an image, its aspect ratio
        with the long side native and the short side rounded to the UNet's multiple."""
        if image_hw is None:
            return self.native, self.native
        H, W = (int(v) for v in image_hw)
        m = self.multiple

        def short(s: int, l: int) -> int:
            return min(self.max_side, max(m, round(s * self.native / l / m) * m))

        return (self.native, short(W, H)) if H >= W else (short(H, W), self.native)

    def noise(self, hw: Sequence[int], seed: int) -> np.ndarray:
        """(1, C, h, w) float32 standard normal noise from numpy's PCG64 with `seed`."""
        rng = np.random.default_rng(seed)
        return rng.standard_normal((1, self.channels, *hw), dtype=np.float32)

    def conditioning(self, signal: np.ndarray) -> np.ndarray:
        """encoder_hidden_states: (1, K, C), or (2, K, C) [zeros; signal] when guided."""
        cond = signal_batch(signal, self.unet, "encoder_hidden_states")  # (1, K, C)
        if self.options.guided:
            cond = np.concatenate([np.zeros_like(cond), cond], axis=0)  # (2, K, C)
        return cond

    def eps(self, latents: np.ndarray, t: int, cond: np.ndarray, clock: Clock) -> np.ndarray:
        """One UNet call -> the (guided) noise prediction (1, C, h, w)."""
        b = cond.shape[0]
        sample = np.repeat(latents, b, axis=0) if b > 1 else latents  # (B, C, h, w)
        timestep = np.full((b,), t, dtype=np.float32)  # (B,)
        out = infer(self.unet, clock, UNET, {"sample": sample, "timestep": timestep, "encoder_hidden_states": cond})
        noise_pred = out["noise_pred"].astype(np.float32, copy=False)  # (B, C, h, w)
        if b == 1:
            return noise_pred
        uncond, text = noise_pred[:1], noise_pred[1:]
        return uncond + self.options.guidance_scale * (text - uncond)

    def run(
        self,
        latents: np.ndarray,
        cond: np.ndarray,
        timesteps: np.ndarray,
        clock: Clock,
        *,
        known: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        noise: np.ndarray | None = None,
    ) -> np.ndarray:
        """The DDIM loop from `latents` at timesteps[0] to x0 (1, C, h, w). With `known`
        latents, `mask` (1, 1, h, w) 0/1 and the start `noise`, every step re-imposes
        `known` outside the mask at the next step's noise level (inpainting)."""
        opts, sched = self.options, self.scheduler
        n = opts.num_inference_steps
        rng = np.random.default_rng(opts.seed + 1) if opts.eta > 0 else None
        for i, t in enumerate(timesteps.tolist()):
            eps = self.eps(latents, t, cond, clock)  # (1, C, h, w)
            variance_noise = rng.standard_normal(latents.shape, dtype=np.float32) if rng is not None else None
            latents = sched.step(eps, t, latents, n, eta=opts.eta, variance_noise=variance_noise).prev_sample
            if known is not None:
                level = sched.add_noise(known, noise, timesteps[i + 1]) if i + 1 < len(timesteps) else known
                latents = mask * latents + (1.0 - mask) * level  # (1, C, h, w)
        return latents


def _bundle_scheduler(manifest: Manifest, config: DdimConfig) -> DdimConfig:
    """`config` with the prediction type the bundle's UNet was trained for, where the
    manifest records one (`unet` attribute "prediction_type"); a bundle without it keeps
    the config's (SD-1.x's epsilon by default). What the UNet outputs is a fact of its
    weights, so the bundle's word wins over the options'."""
    entry = manifest.components.get(UNET)
    kind = entry.attributes.get("prediction_type") if entry is not None else None
    if kind is None or kind == config.prediction_type:
        return config
    if kind not in PREDICTION_TYPES:
        raise BundleError(f"{UNET}: prediction_type {kind!r} in the manifest; known: {', '.join(PREDICTION_TYPES)}")
    return dataclasses.replace(config, prediction_type=kind)


def _latent_range(manifest: Manifest, shape: tuple[int | str, ...]) -> tuple[int, int, int]:
    """(native side, multiple, max side) of the UNet's latents, from its first profile's
    height range (opt, min, max), or from a fixed height in the spec."""
    entry = manifest.components.get(UNET)
    height = shape[2]
    if isinstance(height, int):
        return height, height, height
    if entry is not None:
        for profile in entry.profiles:
            r = profile.dims.get(height)
            if r is not None and r.min >= 1:
                return r.opt, r.min, r.max
    raise BundleError(f"{UNET}: no fixed latent height and no profile range for {height!r}; cannot size the latents")


class Vae:
    """The VAE halves: pixels (uint8 RGB at latent x downsample) <-> latents (1, C, h, w)."""

    def __init__(self, manifest: Manifest, runners: Mapping[str, Runner], encoder: bool):
        self.decoder = component_runner(runners, VAE_DECODER, ("latents",), ("images",))
        self.encoder = component_runner(runners, VAE_ENCODER, ("images",), ("latents",)) if encoder else None
        f = manifest.components[VAE_DECODER].attributes.get("downsample")
        if not isinstance(f, int) or f < 1:
            raise BundleError(f"{VAE_DECODER}: no integer 'downsample' attribute in the manifest (got {f!r})")
        self.downsample = f

    def encode(self, vae_input: np.ndarray, clock: Clock) -> np.ndarray:
        """(1, 3, h*f, w*f) in [-1, 1] -> scaled latents (1, C, h, w)."""
        if self.encoder is None:
            raise RuntimeError("this Vae was built without its encoder (Vae(..., encoder=False))")
        out = infer(self.encoder, clock, VAE_ENCODER, {"images": vae_input})["latents"]
        return out.astype(np.float32, copy=False)

    def decode(self, latents: np.ndarray, clock: Clock) -> np.ndarray:
        """(1, C, h, w) -> (h*f, w*f, 3) uint8 RGB."""
        images = infer(self.decoder, clock, VAE_DECODER, {"latents": latents})["images"]  # (1, 3, H, W)
        with clock("postprocess"):
            return from_vae_output(images)


# --------------------------------------------------------------------------- generate


class GenerateImagePipeline:
    """generate_image: an image from the signal embeddings alone.

    Outputs `image.png` (kind image, latent native side x VAE downsample: 512 px for
    SD-1.x, 16 px for the tiny preset); timings `unet` (total), `unet_per_call`,
    `vae_decoder`, `postprocess`, `write`; info `steps`, `unet_calls`, `guidance_scale`,
    `seed`, `size`. `media` is not used (text-to-image).
    """

    module = "generate_image"
    components = (UNET, VAE_DECODER)

    def __init__(self, manifest: Manifest, runners: Mapping[str, Runner], options: DiffusionOptions | None = None):
        self.options = options or DiffusionOptions()
        self.denoiser = Denoiser(manifest, runners, self.options)
        self.vae = Vae(manifest, runners, encoder=False)

    def generate(self, signal: np.ndarray, clock: Clock) -> np.ndarray:
        """(H, W, 3) uint8 RGB for `signal` (1, K, C), in memory."""
        d, opts = self.denoiser, self.options
        cond = d.conditioning(signal)
        hw = d.latent_hw()
        latents = d.noise(hw, opts.seed)  # (1, C, h, w): DDIM's initial sigma is 1
        latents = d.run(latents, cond, d.scheduler.timesteps(opts.num_inference_steps), clock)
        return self.vae.decode(latents, clock)

    def run(
        self,
        message: Any,
        signal: np.ndarray,
        media: str | os.PathLike | None,
        out_dir: str | os.PathLike,
        timings: dict[str, float] | None = None,
    ) -> PipelineResult:
        clock = Clock()
        image = self.generate(signal, clock)
        with clock("write"), OutputFiles(out_dir) as files:
            files.png("image.png", image, kind="image")
        info = _unet_info(clock, self.options) | {"size": [int(image.shape[1]), int(image.shape[0])]}
        return PipelineResult(files.outputs, publish(timings, _with_per_call(clock)), info)


def _with_per_call(clock: Clock) -> dict[str, float]:
    t = dict(clock.timings)
    if clock.counts.get(UNET):
        t["unet_per_call"] = t[UNET] / clock.counts[UNET]
    return t


def _unet_info(clock: Clock, options: DiffusionOptions) -> dict[str, Any]:
    return {
        "steps": options.num_inference_steps,
        "unet_calls": clock.counts.get(UNET, 0),
        "guidance_scale": options.guidance_scale,
        "seed": options.seed,
    }


# --------------------------------------------------------------------------- edit


@dataclass(frozen=True)
class InpaintPlan:
    """What is fixed for one edit request (and for every frame of a video edit)."""

    latent_hw: tuple[int, int]
    pixel_hw: tuple[int, int]
    timesteps: np.ndarray  # (n,) the strength's tail of the schedule
    noise: np.ndarray  # (1, C, h, w) the start noise, also used to noise the known latents
    cond: np.ndarray  # (B, K, C) encoder_hidden_states


class Inpainter:
    """Masked latent editing step by step (see the module docstring), so a video can run
    each step on its own thread: plan, prepare, encode, denoise, decode, finish."""

    def __init__(self, manifest: Manifest, runners: Mapping[str, Runner], options: DiffusionOptions):
        self.options = options
        self.denoiser = Denoiser(manifest, runners, options)
        self.vae = Vae(manifest, runners, encoder=True)

    def plan(self, image_hw: Sequence[int], signal: np.ndarray) -> InpaintPlan:
        d, opts = self.denoiser, self.options
        h, w = d.latent_hw(image_hw)
        f = self.vae.downsample
        return InpaintPlan(
            latent_hw=(h, w),
            pixel_hw=(h * f, w * f),
            timesteps=d.scheduler.img2img_timesteps(opts.num_inference_steps, opts.strength),
            noise=d.noise((h, w), opts.seed),
            cond=d.conditioning(signal),
        )

    def prepare(self, img: np.ndarray, mask: np.ndarray, plan: InpaintPlan) -> tuple[np.ndarray, np.ndarray]:
        """-> VAE input (1, 3, h*f, w*f) in [-1, 1] and the latent mask (1, 1, h, w) 0/1."""
        ph, pw = plan.pixel_hw
        H, W = img.shape[:2]
        interp = cv2.INTER_AREA if ph * pw < H * W else cv2.INTER_CUBIC
        small = cv2.resize(img, (pw, ph), interpolation=interp)  # (ph, pw, 3)
        latent_mask = downsample_mask(mask, plan.latent_hw).astype(np.float32)[None, None]  # (1, 1, h, w)
        return to_vae_input(small), latent_mask

    def denoise(
        self,
        known: np.ndarray,
        latent_mask: np.ndarray,
        plan: InpaintPlan,
        clock: Clock,
        previous: np.ndarray | None = None,
    ) -> np.ndarray:
        """The masked DDIM loop -> final latents (1, C, h, w). The start is `known` noised to
        the first timestep; with `previous` (the last video frame's final latents) the
        masked region starts from those instead, so consecutive frames are denoised from
        the same content (at strength 1 the start is pure noise and `previous` is unused)."""
        sched, t0 = self.denoiser.scheduler, int(plan.timesteps[0])
        if self.options.strength >= 1.0:
            start = plan.noise
        else:
            start = sched.add_noise(known, plan.noise, t0)  # (1, C, h, w)
            if previous is not None:
                start = latent_mask * sched.add_noise(previous, plan.noise, t0) + (1.0 - latent_mask) * start
        return self.denoiser.run(
            start, plan.cond, plan.timesteps, clock, known=known, mask=latent_mask, noise=plan.noise
        )

    def finish(self, img: np.ndarray, edited_small: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The decoded edit resized to the input (H, W) and composited inside the mask."""
        H, W = img.shape[:2]
        up = cv2.resize(edited_small, (W, H), interpolation=cv2.INTER_CUBIC)  # (H, W, 3)
        return composite(img, up, mask)

    def edit(self, img: np.ndarray, mask: np.ndarray, plan: InpaintPlan, clock: Clock) -> np.ndarray:
        """All steps on one image -> (H, W, 3) uint8, equal to `img` outside `mask`."""
        with clock("preprocess"):
            vae_input, latent_mask = self.prepare(img, mask, plan)
        known = self.vae.encode(vae_input, clock)  # (1, C, h, w)
        latents = self.denoise(known, latent_mask, plan, clock)
        small = self.vae.decode(latents, clock)  # (ph, pw, 3)
        with clock("postprocess"):
            return self.finish(img, small, mask)


def seg_signal_for(segmenter: Segmenter, signal: np.ndarray, seg_signal: np.ndarray | None) -> np.ndarray:
    """The signal the segmentation prompt takes in an edit: `seg_signal` (the same signal
    tokens through `signal_projector.segment_image`) when given, else the edit's own
    projection if it has the decoder's width (the tiny preset's do)."""
    if seg_signal is not None:
        return seg_signal
    width = next(t for t in segmenter.decoder.input_specs if t.name == "signal_embeddings").shape[-1]
    if np.ndim(signal) in (2, 3) and np.shape(signal)[-1] == width:
        return signal
    raise ValueError(
        f"the edit's signal embeddings are {np.shape(signal)[-1]} wide, the mask decoder takes {width}: "
        "pass seg_signal, the signal tokens projected by signal_projector.segment_image"
    )


class EditImagePipeline:
    """edit_image: segment the instruction's target, then inpaint inside the mask.

    Outputs `edited.png` (kind image, the input's size, identical to it outside the mask)
    and `mask.png` (kind mask); timings `load`, `preprocess`, `seg_image_encoder`,
    `seg_mask_decoder`, `postprocess`, `vae_encoder`, `unet` (total), `unet_per_call`,
    `vae_decoder`, `write`; info `iou_score`, `mask_fraction`, `edited` (False when the
    mask is empty: nothing to change, no diffusion run), `size`, `latent_size`, steps.
    """

    module = "edit_image"
    components = (SEG_ENCODER, SEG_DECODER, VAE_ENCODER, UNET, VAE_DECODER)

    def __init__(
        self,
        manifest: Manifest,
        runners: Mapping[str, Runner],
        options: DiffusionOptions | None = None,
        segment_options: SegmentOptions | None = None,
    ):
        self.options = options or DiffusionOptions()
        self.segment_options = segment_options or SegmentOptions()
        self.segmenter = Segmenter(manifest, runners)
        self.inpainter = Inpainter(manifest, runners, self.options)

    def run(
        self,
        message: Any,
        signal: np.ndarray,
        media: str | os.PathLike,
        out_dir: str | os.PathLike,
        timings: dict[str, float] | None = None,
        seg_signal: np.ndarray | None = None,
    ) -> PipelineResult:
        """Edit the image at `media`: `signal` (1, K, C) conditions the UNet; the target is
        segmented with `seg_signal` (see `seg_signal_for`) and the message's region."""
        clock = Clock()
        region = message_region(message)
        with clock("load"):
            img = load_image(media)  # (H, W, 3)
        plan = self.inpainter.plan(img.shape[:2], signal)
        prompt_signal = seg_signal_for(self.segmenter, signal, seg_signal)
        mask, decoded = self.segmenter.segment(img, prompt_signal, region, clock, self.segment_options.threshold)
        edited = mask.any()
        out = self.inpainter.edit(img, mask, plan, clock) if edited else img
        with clock("write"), OutputFiles(out_dir) as files:
            files.png("edited.png", out, kind="image")
            files.png("mask.png", mask, kind="mask")
        info = _unet_info(clock, self.options) | {
            "iou_score": decoded.iou,
            "mask_fraction": float(mask.mean()),
            "edited": bool(edited),
            "size": [int(img.shape[1]), int(img.shape[0])],
            "latent_size": [plan.latent_hw[1], plan.latent_hw[0]],
        }
        return PipelineResult(files.outputs, publish(timings, _with_per_call(clock)), info)
