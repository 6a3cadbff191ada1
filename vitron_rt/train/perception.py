"""Stage `perception`: the vision tower learns what is drawn where, before any language.

Vitron's vision tower comes pretrained (CLIP ViT-L/14); here it starts from random
weights, and learning to see only through the LLM's loss is slow (the first trained mini,
without this stage, answered 34 % of image questions). So the tower is first trained on
the renderer's ground truth, densely, as a dense pretraining objective would:

    pixel_values ─► vision_encoder ─► features (M, N, Dv) ─► PatchHead ─► per patch, per cell
                                                                 (c x c cells of P/c pixels):
                                                                 colour logits (C+1, background)
                                                                 kind logits   (K+1, background)
    loss: cross entropy of both against `data.cell_owners`' labels

SAM's image encoder, also from scratch, gets the same objective on its (E x E) embedding,
one cell per position: the mask decoder then has to match a code (or the LLM's signal)
against features that already say colour and kind, instead of learning to see through
the mask loss alone.

The heads are training scaffolding (like the code encoders): nothing exported uses them.
The features they read are the ones the projector, the region encoder and the mask
decoder read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitron_rt.shapes.palette import COLOURS, KINDS

CELLS = 2  # cells per patch side: 8 x 8 pixel cells on the mini's 16-pixel patches
# Weight of a background cell in the loss against a shape's cell: without it the loss is
# mostly the easy background (measured, 400 steps: kind right on 36 % of shape cells).
BACKGROUND_WEIGHT = 0.1


class PatchHead(nn.Module):
    """(M, N, Dv) features -> colour logits (M, N, c*c, C+1) and kind logits (M, N, c*c, K+1)."""

    def __init__(self, width: int, cells: int = CELLS):
        super().__init__()
        self.cells = cells
        self.norm = nn.LayerNorm(width)
        self.colour = nn.Linear(width, cells * cells * (len(COLOURS) + 1))
        self.kind = nn.Linear(width, cells * cells * (len(KINDS) + 1))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, n, _ = features.shape
        h = self.norm(features)
        cells = self.cells * self.cells
        return self.colour(h).view(m, n, cells, -1), self.kind(h).view(m, n, cells, -1)


class PerceptionHeads(nn.Module):
    """The two heads of the stage: on the vision tower's patches and on SAM's embedding."""

    def __init__(self, vision: PatchHead, seg: PatchHead):
        super().__init__()
        self.vision = vision
        self.seg = seg


def patch_loss(head: PatchHead, features: torch.Tensor, colour: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
    """Mean of the colour and the kind cross entropy over the cells, a background cell
    counting `BACKGROUND_WEIGHT` of a shape's (shapes own ~8 % of the cells)."""
    colour_logits, kind_logits = head(features)
    weight = torch.where(colour == len(COLOURS), BACKGROUND_WEIGHT, 1.0).flatten()  # (M*N*c*c,)
    total = 0.0
    for logits, labels in ((colour_logits, colour), (kind_logits, kind)):
        ce = F.cross_entropy(logits.flatten(0, 2), labels.flatten(), reduction="none")
        total = total + (ce * weight).sum() / weight.sum()
    return 0.5 * total


@torch.no_grad()
def cell_accuracy(head: PatchHead, features: torch.Tensor, colour: torch.Tensor, kind: torch.Tensor) -> dict[str, float]:
    """Accuracy of both labels over the cells a shape owns (background cells are most of
    an image, so they are left out): what the tower can tell the LLM."""
    colour_logits, kind_logits = head(features)
    shape = colour != len(COLOURS)
    return {
        "colour": float((colour_logits.argmax(-1) == colour)[shape].float().mean()),
        "kind": float((kind_logits.argmax(-1) == kind)[shape].float().mean()),
    }
