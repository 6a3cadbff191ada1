"""The diffusion back end: a diffusers UNet2DConditionModel and AutoencoderKL, as components.

    images (B,3,H,W) in [-1,1] ─► VaeEncoder ─► latents (B,4,H/f,W/f)      (edit / inpaint)
    noise ─► [ UNet(sample, t, encoder_hidden_states) ─► scheduler step ] x T ─► latents
    latents ─► VaeDecoder ─► images (B,3,H,W) in [-1,1]

The scheduler loop runs in the runtime (numpy), so each network is exported on its own
with plain tensor inputs. `encoder_hidden_states` is the signal projector's output for
the diffusion modules (width = the UNet's cross_attention_dim). Latents cross the
component boundary already scaled by the VAE's scaling_factor, as diffusers pipelines
keep them, so the runtime never needs to know the factor. f, the VAE's downsampling,
is 8 for SD (2 for the tiny preset's two-block VAE).

A UNet with `layout_channels` (the mini preset's) first draws a layout from its
conditioning tokens, GLIGEN's grounding learned from the tokens themselves: each token
says where (a softmax over the latent grid) and what (a vector), and their sum over the
tokens is concatenated to the latents. Cross-attention alone must learn where from the
positions the convolutions' padding leaves; measured on ShapesWorld (UNet alone, 250 steps
of text-to-image on true scene codes, x0 prediction), a shape of the asked colour stood in
the asked place 82 % of the time with the layout and 29 % without.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from vitron_rt.models.config import UNetConfig, VaeConfig
from vitron_rt.models.weights import CheckpointError


def _dims(given: dict, defaults: dict) -> dict:
    """`defaults` updated with `given`; an unknown dimension name is a TypeError."""
    unknown = set(given) - set(defaults)
    if unknown:
        raise TypeError(f"unknown dims {sorted(unknown)}; this component takes {sorted(defaults)}")
    return {**defaults, **given}


def _diffusers_folder(path: str | Path, class_name: str, subfolder: str) -> tuple[Path, str | None]:
    """(root, subfolder) of a local diffusers model folder holding `class_name`.

    Accepts the model's own folder or a pipeline folder with it under `subfolder`
    (`unet/`, `vae/`), as Stable Diffusion checkpoints are laid out.
    """
    path = Path(path)
    for root, sub in ((path, None), (path, subfolder)):
        config_file = (root / sub if sub else root) / "config.json"
        if not config_file.is_file():
            continue
        try:
            found = json.loads(config_file.read_text()).get("_class_name")
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{config_file}: unreadable config ({e})") from None
        if found != class_name:
            raise CheckpointError(f"{config_file}: holds a {found!r}, expected {class_name!r}")
        return root, sub
    raise CheckpointError(
        f"{path}: not a diffusers {class_name} folder (no config.json there or in {subfolder}/)"
    )


def _load_diffusers(cls, path: str | Path, subfolder: str):
    """`cls.from_pretrained` on a local folder, fp32, refusing partially initialised models."""
    root, sub = _diffusers_folder(path, cls.__name__, subfolder)
    try:
        model, info = cls.from_pretrained(
            str(root),
            subfolder=sub,
            local_files_only=True,
            torch_dtype=torch.float32,
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot load {cls.__name__} ({type(e).__name__}: {e})") from None
    problems = []
    for kind in ("missing_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in info.get(kind) or ())
        if keys:
            shown = ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else "")
            problems.append(f"{kind.replace('_', ' ')} {len(keys)}: {shown}")
    if problems:
        raise CheckpointError(f"{path}: weights do not cover the {cls.__name__}; " + "; ".join(problems))
    return model.eval()


def _param(module: nn.Module) -> torch.Tensor:
    """Any parameter: where dummy inputs should live (device, dtype)."""
    return next(module.parameters())


# ───────────────────────────────────────── UNet ─────────────────────────────────────────


def unet_config_from_diffusers(unet, context_length: int = 77) -> UNetConfig:
    """The UNetConfig fields of a diffusers UNet2DConditionModel's config.

    Exact for SD-1.x-style UNets; fields UNetConfig does not model (linear projection,
    added embeddings, ...) stay in the diffusers config. `context_length` is not part of
    a diffusers config: 77 is CLIP's text length, what SD UNets were trained with.
    """
    c = unet.config

    def tup(v):
        return tuple(v) if isinstance(v, (list, tuple)) else v

    return UNetConfig(
        sample_size=c.sample_size,
        in_channels=c.in_channels,
        out_channels=c.out_channels,
        block_out_channels=tuple(c.block_out_channels),
        layers_per_block=c.layers_per_block,
        cross_attention_dim=c.cross_attention_dim,
        attention_head_dim=tup(c.attention_head_dim),
        norm_num_groups=c.norm_num_groups,
        down_block_types=tuple(c.down_block_types),
        up_block_types=tuple(c.up_block_types),
        context_length=context_length,
    )


class Layout(nn.Module):
    """Conditioning tokens (B, K, Cx) -> a layout map (B, channels, h, w): token k's
    `what` (channels) spread over the softmax of its `where` logits over the side x side
    grid, summed over k. The map is scaled so that a token whose softmax covers `SPREAD`
    cells puts its `what` there at full size. A grid other than side x side is resampled
    bilinearly. `where` starts at zero: every token spreads evenly until it learns a place.

    With a `kernel` side r > 1, each token also draws an r x r silhouette (`form`, from
    the token) that is swept over its `where` (a convolution with a kernel of the token's
    own): where says the place, the kernel the form drawn there, so a kind can be drawn
    at any place. The kernel starts as a single centre cell: the plain layout."""

    SPREAD = 16

    def __init__(self, width: int, side: int, channels: int, kernel: int = 0):
        super().__init__()
        self.side = side
        self.where = nn.Linear(width, side * side)
        self.what = nn.Linear(width, channels)
        nn.init.zeros_(self.where.weight)
        nn.init.zeros_(self.where.bias)
        self.kernel = kernel if kernel > 1 else 0
        if self.kernel:
            self.form = nn.Linear(width, self.kernel * self.kernel)
            nn.init.zeros_(self.form.weight)
            with torch.no_grad():
                self.form.bias.zero_()
                self.form.bias[self.kernel * self.kernel // 2] = 1.0

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, k, _ = tokens.shape
        s = self.side
        where = self.where(tokens).softmax(-1).reshape(b * k, 1, s, s) * (s * s / self.SPREAD)  # (B*K, 1, s, s)
        if self.kernel:
            where = self._swept(where, self.form(tokens).reshape(b * k, -1))
        where = nn.functional.interpolate(where, size=(height, width), mode="bilinear", align_corners=False)
        where = where.reshape(b, k, height * width)
        # A batched MatMul (not an einsum: every engine runs that well).
        out = torch.matmul(self.what(tokens).transpose(1, 2), where)  # (B, channels, h*w)
        return out.reshape(b, -1, height, width)

    def _swept(self, where: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """(N, 1, s, s) maps, (N, r*r) kernels -> (N, 1, s, s): each map convolved with its
        own kernel, zero-padded, as r*r shifted copies (static slices: no per-sample
        convolution weights, which a graph with a dynamic batch cannot express)."""
        r, s = self.kernel, self.side
        padded = nn.functional.pad(where, (r // 2,) * 4)  # (N, 1, s+r-1, s+r-1)
        shifted = torch.cat([padded[:, :, dy : dy + s, dx : dx + s] for dy in range(r) for dx in range(r)], 1)
        return (shifted * kernels[:, :, None, None]).sum(1, keepdim=True)  # (N, 1, s, s)


class UNet(nn.Module):
    """The denoiser: one scheduler step's prediction (`config.prediction_type`: noise,
    v or x0), conditioned by cross-attention and, with `layout_channels`, a `Layout`.

    `UNet(config)` builds random weights (the caller seeds torch);
    `UNet.from_diffusers(unet)` wraps an existing UNet2DConditionModel without copying.
    """

    def __init__(self, config: UNetConfig, unet=None):
        super().__init__()
        if unet is None:
            from diffusers import UNet2DConditionModel

            unet = UNet2DConditionModel(**config.to_diffusers())
        self.config = config
        self.unet = unet.eval()
        c = config
        self.layout = None
        if c.layout_channels:
            self.layout = Layout(c.cross_attention_dim, c.sample_size, c.layout_channels, c.layout_kernel)

    @classmethod
    def from_diffusers(cls, unet, context_length: int = 77) -> "UNet":
        """Wrap an existing UNet2DConditionModel (shared, not copied)."""
        return cls(unet_config_from_diffusers(unet, context_length), unet=unet)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """sample (B,Cin,h,w), timestep (B,) float32, encoder_hidden_states (B,L,Cx)
        -> noise_pred (B,Cout,h,w) (named for SD's epsilon, whatever `prediction_type` is)."""
        if self.layout is not None:
            h, w = sample.shape[-2:]
            sample = torch.cat([sample, self.layout(encoder_hidden_states, h, w)], 1)  # (B, Cin+L, h, w)
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]  # (B, Cout, h, w)

    def dummy_inputs(self, batch: int = 1, **dims) -> dict[str, torch.Tensor]:
        """Seeded inputs; dims: `height`, `width` (latent pixels, default sample_size) and
        `seq_len` (default the config's context_length)."""
        c = self.config
        side, seq = c.sample_size, c.context_length
        d = _dims(dims, {"height": side, "width": side, "seq_len": seq})
        p = _param(self.unet)
        g = torch.Generator().manual_seed(0)
        inputs = {
            "sample": torch.randn(batch, c.in_channels, d["height"], d["width"], generator=g),  # (B,Cin,h,w)
            "timestep": torch.randint(0, 1000, (batch,), generator=g).float(),  # (B,)
            "encoder_hidden_states": torch.randn(batch, d["seq_len"], c.cross_attention_dim, generator=g),
        }
        return {k: v.to(device=p.device, dtype=p.dtype) for k, v in inputs.items()}


def load_unet(path: str | Path, context_length: int = 77) -> UNet:
    """A UNet from a local diffusers folder: the UNet's own or a pipeline's (`unet/`)."""
    from diffusers import UNet2DConditionModel

    return UNet.from_diffusers(_load_diffusers(UNet2DConditionModel, path, "unet"), context_length)


# ───────────────────────────────────────── VAE ──────────────────────────────────────────


def build_vae(cfg: VaeConfig):
    """A randomly initialised diffusers AutoencoderKL of `cfg`'s shape, in eval mode.

    One AutoencoderKL is shared by VaeEncoder and VaeDecoder; the caller seeds torch.
    """
    from diffusers import AutoencoderKL

    return AutoencoderKL(**cfg.to_diffusers()).eval()


def load_vae(path: str | Path):
    """An AutoencoderKL from a local diffusers folder: the VAE's own or a pipeline's (`vae/`)."""
    from diffusers import AutoencoderKL

    return _load_diffusers(AutoencoderKL, path, "vae")


def _downsample(vae) -> int:
    """The VAE's spatial factor: one 2x downsample between consecutive encoder blocks."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


class VaeEncoder(nn.Module):
    """Pixels -> scaled latents, deterministically: the posterior *mean*, not a sample.

    Editing and inpainting start from the encoded image; sampling the posterior would add
    noise the runtime cannot reproduce, and the mean is what parity checks can compare.
    latents = (mean - shift_factor) * scaling_factor, with shift_factor 0 for SD-1.x.
    """

    def __init__(self, vae):
        super().__init__()
        self.vae = vae  # shared with VaeDecoder, not copied

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B,3,H,W) in [-1,1], H and W multiples of f -> latents (B,4,H/f,W/f)."""
        c = self.vae.config
        mean = self.vae.encode(images).latent_dist.mean  # (B, 4, H/f, W/f)
        if c.shift_factor is not None:
            mean = mean - c.shift_factor
        return mean * c.scaling_factor

    def dummy_inputs(self, batch: int = 1, **dims) -> dict[str, torch.Tensor]:
        """Seeded images in [-1,1]; dims: `height`, `width` (pixels, multiples of the VAE's
        downsampling factor, default sample_size)."""
        c = self.vae.config
        d = _dims(dims, {"height": c.sample_size, "width": c.sample_size})
        f = _downsample(self.vae)
        if d["height"] % f or d["width"] % f:
            raise ValueError(f"image height/width must be multiples of {f}, got {d['height']}x{d['width']}")
        p = _param(self.vae)
        g = torch.Generator().manual_seed(0)
        images = torch.rand(batch, c.in_channels, d["height"], d["width"], generator=g) * 2 - 1  # (B,3,H,W)
        return {"images": images.to(device=p.device, dtype=p.dtype)}


class VaeDecoder(nn.Module):
    """Scaled latents -> pixels: undoes VaeEncoder's scaling, then the AutoencoderKL decoder.

    The output is nominally in [-1,1] but not clamped, exactly as diffusers returns it;
    postprocessing clamps when it converts to 8-bit.
    """

    def __init__(self, vae):
        super().__init__()
        self.vae = vae  # shared with VaeEncoder, not copied

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B,4,h,w) scaled -> images (B,3,f*h,f*w)."""
        c = self.vae.config
        z = latents / c.scaling_factor
        if c.shift_factor is not None:
            z = z + c.shift_factor
        return self.vae.decode(z, return_dict=False)[0]  # (B, 3, f*h, f*w)

    def dummy_inputs(self, batch: int = 1, **dims) -> dict[str, torch.Tensor]:
        """Seeded latents; dims: `height`, `width` (latent pixels, default sample_size / f)."""
        c = self.vae.config
        side = c.sample_size // _downsample(self.vae)
        d = _dims(dims, {"height": side, "width": side})
        p = _param(self.vae)
        g = torch.Generator().manual_seed(0)
        latents = torch.randn(batch, c.latent_channels, d["height"], d["width"], generator=g)  # (B, 4, h, w)
        return {"latents": latents.to(device=p.device, dtype=p.dtype)}
