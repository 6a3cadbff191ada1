"""Scene codes: the back ends' own conditioning, the targets the signal projectors align to.

Vitron's back ends come pretrained with their own text conditioning (SEEM's text prompt,
GLIGEN's CLIP text encoder), and the decoding-side projectors are aligned to it
(NExT-GPT: the signal tokens' projection is pulled towards the diffusion model's text
embedding of the caption). ShapesWorld's back ends start from nothing, so they get a
conditioning encoder of their own to be pretrained with, small because the world is:

    code: up to K shapes, each (colour | any, kind | any, place | any), in a fixed order
      ─► slot k = colour_emb + kind_emb + place_emb + slot_emb[k]   (an unused slot: empty_emb)
      ─► (K, C): as many tokens, as wide, as the back end's signal input

    segmentation code  [the referred shape (colour, kind)]         -> seg_mask_decoder's sparse prompt
    diffusion code     [the target image's shapes with places]      -> unet's encoder_hidden_states

Stage `backends` trains SAM and the UNet on these codes without the LLM (cheap: no LLM
step per example); stage `pixel` pulls each module's projected signal tokens towards the
code of its target (an MSE, the alignment) while the end-to-end back-end losses flow
through the projectors. The encoders are training scaffolding: nothing exported uses them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from vitron_rt.shapes.palette import COLOURS, KINDS, PLACES
from vitron_rt.shapes.scene import Scene
from vitron_rt.shapes.templates import reading_order
from vitron_rt.shapes.world import ShapeSpec

# Name -> index of each field (codes here, the perception stage's labels in `data`).
COLOUR_INDEX = {c: i for i, c in enumerate(COLOURS)}
KIND_INDEX = {k: i for i, k in enumerate(KINDS)}
PLACE_INDEX = {p: i for i, p in enumerate(PLACES)}
EMPTY = -1  # an unused slot, in every field


def scene_code(scene: Scene) -> tuple[ShapeSpec, ...]:
    """Every shape of a scene with its place, in reading order (how captions list them)."""
    return tuple(ShapeSpec(scene.shapes[i].colour, scene.shapes[i].kind, scene.place(i)) for i in reading_order(scene))


def code_array(code: Sequence[ShapeSpec], slots: int) -> np.ndarray:
    """(slots, 3) int64: colour, kind, place index per slot (len(...) for "any"), EMPTY rows after."""
    if len(code) > slots:
        raise ValueError(f"a code of {len(code)} shapes does not fit {slots} slots")
    out = np.full((slots, 3), EMPTY, np.int64)
    for k, s in enumerate(code):
        out[k] = (
            COLOUR_INDEX[s.colour] if s.colour is not None else len(COLOURS),
            KIND_INDEX[s.kind] if s.kind is not None else len(KINDS),
            PLACE_INDEX[s.place] if s.place is not None else len(PLACES),
        )
    return out


class CodeEncoder(nn.Module):
    """(B, K, 3) code indices -> (B, K, C) tokens (see the module docstring)."""

    def __init__(self, slots: int, width: int):
        super().__init__()
        self.slots = slots
        self.colour = nn.Embedding(len(COLOURS) + 1, width)  # + "any"
        self.kind = nn.Embedding(len(KINDS) + 1, width)
        self.place = nn.Embedding(len(PLACES) + 1, width)
        self.slot = nn.Parameter(torch.randn(slots, width) * 0.5)
        self.empty = nn.Parameter(torch.randn(width) * 0.5)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        used = codes[..., 0] != EMPTY  # (B, K)
        c = codes.clamp_min(0)
        tokens = self.colour(c[..., 0]) + self.kind(c[..., 1]) + self.place(c[..., 2]) + self.slot  # (B, K, C)
        return torch.where(used[..., None], tokens, self.empty.expand_as(tokens))


class CodeEncoders(nn.Module):
    """One code encoder per back end, at that back end's signal width."""

    def __init__(self, slots: int, segmentation_width: int, diffusion_width: int):
        super().__init__()
        self.segmentation = CodeEncoder(slots, segmentation_width)
        self.diffusion = CodeEncoder(slots, diffusion_width)
