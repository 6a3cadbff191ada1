"""Decoding-side signal projectors: signal-token hidden states -> a back end's conditioning.

The paper projects the LLM's hidden states at the signal tokens into each back end through
a task-invariant part (shared by every module) and a task-specific part, concatenated
(NExT-GPT-style output projection). The released code has no such layers (its back ends
get plain text), so these are new weights:

    signal_hidden (B,K,D) ─┬─► invariant MLP (shared)  ─► (B,K,Di) ─┐
                           └─► specific MLP (<module>) ─► (B,K,Ds) ─┴─ concat ─► Linear ─► (B,K,out)

out is the back end's width: SAM's prompt embedding for the segmentation modules, the
UNet's cross-attention width for the diffusion ones (`SignalConfig.out_dim`). Each module
is its own exported component (`signal_projector.<module>`), which is why every
`SignalProjector` holds the shared invariant MLP itself (the same module object, not a
copy): exported alone it carries those weights, and in PyTorch one set of weights serves
all modules.
"""

from __future__ import annotations

import torch
from torch import nn

from vitron_rt.models.config import SIGNAL_MODULES, SignalConfig


def signal_mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    """Linear(in, out), GELU, Linear(out, out): the shape of both the invariant and specific parts."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class SignalProjector(nn.Module):
    """One module's projector: (B,K,D) -> (B,K,out). `invariant` is the shared MLP."""

    def __init__(self, invariant: nn.Module, cfg: SignalConfig, module: str):
        super().__init__()
        self.cfg = cfg
        self.module = module
        self.invariant = invariant  # shared with every other module's projector
        self.specific = signal_mlp(cfg.in_dim, cfg.specific_dim)
        self.out = nn.Linear(cfg.invariant_dim + cfg.specific_dim, cfg.out_dim(module))

    def forward(self, signal_hidden: torch.Tensor) -> torch.Tensor:
        """signal_hidden (B, K, D), last-layer hidden states at the signal tokens -> (B, K, out)."""
        shared = self.invariant(signal_hidden)  # (B, K, Di)
        own = self.specific(signal_hidden)  # (B, K, Ds)
        return self.out(torch.cat([shared, own], dim=-1))  # (B, K, out)

    def dummy_inputs(self, batch: int = 1, tokens: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
        """Random hidden states for `tokens` signal tokens (default: the configured K)."""
        k = self.cfg.num_tokens if tokens is None else tokens
        p = next(self.parameters())
        gen = torch.Generator().manual_seed(seed)
        hidden = torch.randn(batch, k, self.cfg.in_dim, generator=gen)  # (B, K, D)
        return {"signal_hidden": hidden.to(device=p.device, dtype=p.dtype)}


class SignalProjectors(nn.Module):
    """Every module's `SignalProjector` (in `.projectors`, keyed by module name) and the
    task-invariant MLP they share (`.invariant`)."""

    def __init__(self, cfg: SignalConfig, modules: tuple[str, ...] = SIGNAL_MODULES):
        super().__init__()
        self.cfg = cfg
        self.invariant = signal_mlp(cfg.in_dim, cfg.invariant_dim)
        self.projectors = nn.ModuleDict({m: SignalProjector(self.invariant, cfg, m) for m in modules})

    def project(self, module: str, signal_hidden: torch.Tensor) -> torch.Tensor:
        """Project for one module: (B, K, D) -> (B, K, out(module)). Export and the model use
        each `projectors[module]` as its own component; this is a PyTorch convenience."""
        if module not in self.projectors:
            raise KeyError(f"no signal projector for module {module!r}; known: {', '.join(self.projectors)}")
        return self.projectors[module](signal_hidden)
