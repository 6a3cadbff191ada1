"""The input projector `mm_projector`: vision-tower features into the LLM's embedding space.

LLaVA (and Vitron, which inherits it) builds the projector from `config.mm_projector_type`:

    linear        Linear(Dv, D)
    mlp{N}x_gelu  Linear(Dv, D), then N-1 times (GELU, Linear(D, D))   (Vitron: mlp2x_gelu)
    identity      no weights (Dv == D)

`MMProjector` is an `nn.Sequential` of exactly those layers, so for the MLP kinds its
state-dict keys are the released `model.mm_projector.*` keys with the prefix stripped
(`0.weight, 0.bias, 2.weight, 2.bias` for mlp2x_gelu). The released `linear` projector is a
bare `nn.Linear` (keys `weight, bias`); here it is a one-layer Sequential (`0.weight,
0.bias`) and `released_key_map` gives the renaming the checkpoint loader applies.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from vitron_rt.models.config import ProjectorConfig

_MLP_GELU = re.compile(r"^mlp(\d+)x_gelu$")


def projector_layers(kind: str, in_dim: int, out_dim: int) -> list[nn.Module]:
    """The layers LLaVA's `build_vision_projector` makes for `kind`; ValueError if unknown."""
    if kind == "linear":
        return [nn.Linear(in_dim, out_dim)]
    if kind == "identity":
        if in_dim != out_dim:
            raise ValueError(f"identity projector needs in_dim == out_dim, got {in_dim} and {out_dim}")
        return [nn.Identity()]
    match = _MLP_GELU.match(kind)
    if match and int(match.group(1)) >= 1:
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(1, int(match.group(1))):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        return layers
    raise ValueError(f"unknown projector kind {kind!r}; known: linear, identity, mlp<N>x_gelu (e.g. mlp2x_gelu)")


def released_key_map(kind: str) -> dict[str, str]:
    """Released sub-key -> `MMProjector` sub-key where they differ (only the `linear` kind)."""
    if kind == "linear":
        return {"weight": "0.weight", "bias": "0.bias"}
    return {}


class MMProjector(nn.Sequential):
    """(B, N, Dv) patch features -> (B, N, D) LLM embeddings; layers as LLaVA builds them."""

    def __init__(self, cfg: ProjectorConfig):
        super().__init__(*projector_layers(cfg.kind, cfg.in_dim, cfg.out_dim))
        self.cfg = cfg

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, N, Dv) -> (B, N, D)."""
        return super().forward(features)

    def dummy_inputs(self, batch: int = 1, tokens: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
        """Random features of `tokens` patches (any N works: the projector is per token)."""
        p = next(self.parameters(), None)
        gen = torch.Generator().manual_seed(seed)
        features = torch.randn(batch, tokens, self.cfg.in_dim, generator=gen)  # (B, N, Dv)
        if p is not None:
            features = features.to(device=p.device, dtype=p.dtype)
        return {"features": features}
