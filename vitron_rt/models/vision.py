"""The vision tower: a CLIP ViT whose penultimate-layer patch states feed the projector.

LLaVA / Vitron run the tower with `output_hidden_states=True`, take
`hidden_states[mm_vision_select_layer]` (-2: the input of the last layer) and drop the CLS
token ('patch' feature select). `VisionEncoder` does the same on a transformers
`CLIPVisionModel`, kept whole in `self.clip` so a CLIP checkpoint loads strictly, key for
key, last layer and `post_layernorm` included:

    pixel_values (B,3,H,W) ─► embeddings ─► pre_layrnorm ─► layer 0 .. layer L-1
                                                 hidden_states[i] = input of layer i
                               features = hidden_states[select_layer][:, 1:]   (B, N, Dv)

The layers after the selected one (and `post_layernorm`) do not reach the output. The
PyTorch reference still runs them (it is the library's forward), but the ONNX exporter's
optimiser drops them as dead code: the exported graph holds only the layers that matter.
"""

from __future__ import annotations

import torch
from torch import nn

from vitron_rt.models.config import VisionConfig


def kept_layers(num_layers: int, select_layer: int) -> int:
    """How many transformer layers `hidden_states[select_layer]` depends on.

    `hidden_states` has `num_layers + 1` entries (the embeddings, then each layer's output),
    so index i (negative counts from the end) is the output of i layers.
    """
    n = num_layers + 1
    if not -n <= select_layer < n:
        raise ValueError(f"select_layer {select_layer} is out of range for {num_layers} layers ({-n}..{n - 1})")
    return select_layer % n


class VisionEncoder(nn.Module):
    """pixel_values (B,3,H,W) -> patch features (B,N,Dv) of `cfg.select_layer`, CLS dropped."""

    def __init__(self, cfg: VisionConfig, clip: nn.Module | None = None):
        super().__init__()
        from transformers import CLIPVisionModel

        kept_layers(cfg.num_layers, cfg.select_layer)  # validates select_layer
        if clip is None:
            clip = CLIPVisionModel(cfg.to_hf())
        elif not isinstance(clip, CLIPVisionModel):
            raise TypeError(f"VisionEncoder wraps a transformers CLIPVisionModel, got {type(clip).__name__}")
        self.cfg = cfg
        self.clip = clip.eval()

    @classmethod
    def from_clip(cls, clip: nn.Module, select_layer: int = -2, **overrides) -> "VisionEncoder":
        """Wrap an existing CLIPVisionModel; its config gives the dimensions.

        `overrides` set VisionConfig fields a CLIP config does not carry (e.g. `image_mean`,
        `image_std` from the checkpoint's preprocessor config).
        """
        hf = clip.config
        cfg = VisionConfig(
            image_size=hf.image_size,
            patch_size=hf.patch_size,
            hidden_size=hf.hidden_size,
            num_layers=hf.num_hidden_layers,
            num_heads=hf.num_attention_heads,
            intermediate_size=hf.intermediate_size,
            select_layer=select_layer,
            layer_norm_eps=hf.layer_norm_eps,
            hidden_act=hf.hidden_act,
            **overrides,
        )
        return cls(cfg, clip)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, 3, H, W), CLIP-normalised -> features (B, N, Dv), N = (H/patch)^2."""
        out = self.clip(pixel_values=pixel_values, output_hidden_states=True)
        hidden = out.hidden_states[self.cfg.select_layer]  # (B, 1+N, Dv)
        return hidden[:, 1:]  # (B, N, Dv): CLS dropped

    def dummy_inputs(self, batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
        """Normal-distributed pixels (the scale of normalised images) at the tower's size.

        Only the batch varies: the position embedding fixes H and W.
        """
        p = next(self.parameters())
        gen = torch.Generator().manual_seed(seed)
        size = self.cfg.image_size
        pixels = torch.randn(batch, 3, size, size, generator=gen)  # (B, 3, H, W)
        return {"pixel_values": pixels.to(device=p.device, dtype=p.dtype)}
