"""Stages `perception` and `seg_perception`: the vision tower, then SAM's image encoder,
learn what is drawn where, before any language.

Vitron's vision tower comes pretrained (CLIP ViT-L/14); here it starts from random
weights, and learning to see only through the LLM's loss is slow (the first trained mini,
without this stage, answered 34 % of image questions). So the tower is first trained on
the renderer's ground truth, densely, as a dense pretraining objective would:

    pixel_values ─► vision_encoder ─► features (M, N, Dv) ─► PatchHead ─► per patch, per cell
                                                                 (c x c cells of P/c pixels):
                                                                 colour logits (C+1, background)
                                                                 kind logits   (K+1, background)
                                                                 place logits  (9+1: the owning
                                                                 shape's place, background)
    loss: mean cross entropy of the fields against `data.cell_owners`' labels

The place field keeps in each patch's features where the shape it shows sits (what place
questions ask), which colour and kind alone would let the tower forget: the LLM's RoPE
positions reach its attention scores, not the values it reads. SAM's image encoder, also
from scratch, gets the colour and kind objective on its (E x E) embedding, one cell per
position (stage `seg_perception`): the mask decoder then has to match a code (or the LLM's signal)
against features that already say colour and kind, instead of learning to see through
the mask loss alone.

Before the stage the tower's position embedding is set to a 2D sin-cos table
(`init_positions`, as MAE and other from-scratch ViTs do): CLIP's initial embedding
(std 0.02) is ~25x weaker than the patch embedding, and the tower then barely knows where
a patch is. Measured, 500 steps of this stage on the mini: place right on 29 % of shape
cells with CLIP's init, 97 % with sin-cos (colour 99 % both).

The heads are training scaffolding (like the code encoders): nothing exported uses them.
The features they read are the ones the projector, the region encoder and the mask
decoder read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitron_rt.models.tokenizer import PreparedTokenizer
from vitron_rt.models.vision import VisionEncoder
from vitron_rt.shapes.palette import COLOURS, KINDS, PLACES

CELLS = 2  # cells per patch side: 8 x 8 pixel cells on the mini's 16-pixel patches
# Weight of a background cell in the loss against a shape's cell: without it the loss is
# mostly the easy background (measured, 400 steps: kind right on 36 % of shape cells).
BACKGROUND_WEIGHT = 0.1
# The classes of each field, in label order (the words a reply writes for them).
FIELD_CLASSES: dict[str, tuple[str, ...]] = {"colour": tuple(COLOURS), "kind": KINDS, "place": PLACES}
# Classes of each field; the background label of a field is its number of classes.
FIELDS: dict[str, int] = {f: len(classes) for f, classes in FIELD_CLASSES.items()}


def sincos_positions(grid: int, width: int) -> torch.Tensor:
    """(grid * grid, width) 2D sin-cos position table in row-major patch order: a quarter
    of the channels sin and a quarter cos of the row at geometric frequencies 1 ..
    1/10000, the other half the same of the column."""
    if width % 4:
        raise ValueError(f"a 2D sin-cos table needs a width divisible by 4, got {width}")
    q = width // 4
    omega = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float64) / q)  # (q,)
    steps = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(steps, steps, indexing="ij")  # (grid, grid) each
    parts = []
    for pos in (rows.flatten(), cols.flatten()):
        angle = pos[:, None] * omega[None]  # (grid*grid, q)
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()  # (grid*grid, width)


@torch.no_grad()
def init_positions(vision: VisionEncoder) -> None:
    """Set the CLIP tower's position embedding to `sincos_positions` (the class position
    to zero), in place; it stays trainable."""
    table = vision.clip.embeddings.position_embedding.weight  # (1 + N, Dv)
    grid = vision.cfg.grid
    if table.shape[0] != 1 + grid * grid:
        raise ValueError(f"position embedding of {table.shape[0]} rows for a {grid} x {grid} grid and a class token")
    table[0].zero_()
    table[1:] = sincos_positions(grid, table.shape[1])


class PatchHead(nn.Module):
    """(M, N, D) features -> per field, logits (M, N, c*c, classes + 1), the last class
    the background. `fields` picks some of `FIELDS`."""

    def __init__(self, width: int, cells: int = CELLS, fields: tuple[str, ...] = ("colour", "kind", "place")):
        super().__init__()
        self.cells = cells
        self.fields = fields
        self.norm = nn.LayerNorm(width)
        self.heads = nn.ModuleDict({f: nn.Linear(width, cells * cells * (FIELDS[f] + 1)) for f in fields})

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        m, n, _ = features.shape
        h = self.norm(features)
        return {f: head(h).view(m, n, self.cells * self.cells, -1) for f, head in self.heads.items()}


class PerceptionHeads(nn.Module):
    """The two heads of the stage: on the vision tower's patches and on SAM's embedding."""

    def __init__(self, vision: PatchHead, seg: PatchHead):
        super().__init__()
        self.vision = vision
        self.seg = seg


def patch_loss(head: PatchHead, features: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over the head's fields of the cross entropy over the cells, a background cell
    counting `BACKGROUND_WEIGHT` of a shape's (shapes own ~8 % of the cells). `labels`:
    field -> (M, N, c*c) int64."""
    logits = head(features)
    weight = torch.where(labels["colour"] == FIELDS["colour"], BACKGROUND_WEIGHT, 1.0).flatten()  # (M*N*c*c,)
    total = 0.0
    for f in head.fields:
        ce = F.cross_entropy(logits[f].flatten(0, 2), labels[f].flatten(), reduction="none")
        total = total + (ce * weight).sum() / weight.sum()
    return total / len(head.fields)


@torch.no_grad()
def cell_accuracy(head: PatchHead, features: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, float]:
    """Accuracy of each field over the cells a shape owns (background cells are most of
    an image, so they are left out): what the encoder can tell the LLM or the decoder."""
    logits = head(features)
    shape = labels["colour"] != FIELDS["colour"]
    return {f: float((logits[f].argmax(-1) == labels[f])[shape].float().mean()) for f in head.fields}


# --------------------------------------------------------------------------- the projector's words


def word_ids(tokenizer: PreparedTokenizer, names: tuple[str, ...] = tuple(FIELDS)) -> dict[str, list[list[int]]]:
    """Per field, per class (`FIELD_CLASSES`), the token ids of its word(s) as a reply writes
    them (" red", " triangle", " top left"): what the word objective asks a patch to look like."""
    enc = tokenizer.tokenizer.encode
    return {f: [enc(" " + word, add_special_tokens=False).ids for word in FIELD_CLASSES[f]] for f in names}


def word_targets(labels: dict[str, torch.Tensor], words: dict[str, list[list[int]]], vocab: int) -> torch.Tensor:
    """Per-cell labels (field -> (M, N, c*c)) -> (M, N, V) target weights: each field's word
    tokens, weighted by the share of the patch's cells its class owns (a word of t tokens
    shares it), background cells adding nothing."""
    m, n, _ = next(iter(labels.values())).shape
    target = torch.zeros(m, n, vocab)
    for f, ids_per_class in words.items():
        for cls, ids in enumerate(ids_per_class):
            share = (labels[f] == cls).float().mean(-1)  # (M, N)
            for t in ids:
                target[..., t] += share / len(ids)
    return target


def words_loss(
    embeds: torch.Tensor, norm: nn.Module, vocab_matrix: torch.Tensor, target: torch.Tensor
) -> torch.Tensor | None:
    """The projector's word objective: each projected patch (M, N, D), read by the LLM's
    output head (its final `norm`, then the tied `vocab_matrix` (V, D), not trained by this
    loss), predicts the words of what its cells show (`word_targets`): cross entropy
    against the normalised target, over the patches that show a shape (None if none do)."""
    total = target.sum(-1)  # (M, N)
    keep = total > 0
    if not bool(keep.any()):
        return None
    logits = norm(embeds[keep]) @ vocab_matrix.detach().T  # (P, V)
    p = target[keep] / total[keep, None]
    return -(p * F.log_softmax(logits, dim=-1)).sum(-1).mean()
