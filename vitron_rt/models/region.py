"""The region encoder: one LLM token for a box on the image (Vitron's `region_extractor`).

What the released extractor (SkyworkAI/Vitron, vitron/model/region_extractor/layer.py)
computes, for one box in pixels of a 224 x 224 frame:

    box ──► mask: ones in the box, drawn at 224 x 224 ──► bilinear resize to the G x G grid
                                                           ──► > 0  (binary, G x G)
    features (N = G*G, Dv) ──► mean over the patches in the mask ──► (Dv)
        ──► region_linear: Linear(Dv,D) ReLU Linear(D,D) ReLU Linear(D,D) ──┐
    box (pixels) ──► loc_encoder: Linear(4,D/2) ReLU Linear(D/2,D) ─────────┴─ + ─► (D)

The features are the vision tower's selected-layer patch states (before `mm_projector`).

Here the mask is an input of `forward` (so a sketch or a segmentation mask can stand in
for the box) and `box_to_mask` makes it from a box. Boxes are normalised (x1, y1, x2, y2)
in [0,1]; the encoder scales them to the released pixel frame (`RegionConfig.image_size`)
before the location MLP, so the released weights see what they were trained on.

Submodule names reproduce the released state-dict keys with the prefix
`model.region_extractor.` stripped: `region_linear.layers.{0,1,2}.{weight,bias}` and
`loc_encoder.loc_encoder.{0,2}.{weight,bias}`.
"""

from __future__ import annotations

import torch
from torch import nn

from vitron_rt.models.config import RegionConfig


def _axis_cover(lo: torch.Tensor, hi: torch.Tensor, grid: int, image_size: int) -> torch.Tensor:
    """(B, G) bool: grid cells whose bilinear sample touches pixels lo <= p < hi.

    Reproduces `F.interpolate(mode="bilinear", align_corners=False)` from `image_size` to
    `grid` along one axis, followed by `> 0`: cell i samples source position
    s = (i + 0.5) * image_size / grid - 0.5 (clamped at 0) between pixels floor(s) and
    floor(s) + 1, and is on when a pixel with a non-zero weight is in the box. A box mask
    is separable (rows x columns), so the 2-D resize is the product of two 1-D ones.
    """
    scale = torch.tensor(image_size / grid, dtype=torch.float32)  # PyTorch's float scale
    dst = torch.arange(grid, dtype=torch.float32, device=lo.device)
    src = ((dst + 0.5) * scale - 0.5).clamp_min(0.0)  # (G,)
    i0 = src.floor()
    lam = src - i0  # weight of the right neighbour
    i0 = i0.long()
    i1 = torch.where(i0 < image_size - 1, i0 + 1, i0)

    def inside(p: torch.Tensor) -> torch.Tensor:
        return (p[None] >= lo[:, None]) & (p[None] < hi[:, None])  # (B, G)

    return (inside(i0) & (lam < 1)[None]) | (inside(i1) & (lam > 0)[None])


def box_to_mask(
    boxes: torch.Tensor, grid: int, image_size: int | None = None, transpose: bool = False
) -> torch.Tensor:
    """Rasterise boxes onto the patch grid: (B, 4) normalised x1,y1,x2,y2 -> (B, G, G) float 0/1.

    Rows are y and columns are x, matching the row-major order of the patch features.

    `image_size` reproduces the released rasterisation: the box is scaled to pixels of an
    `image_size` frame and truncated to integers (`int(x1)`), drawn there, resized to the
    grid bilinearly, and every cell with a non-zero value is on. Without it the box is drawn
    on the grid directly (the same rule with one pixel per cell).

    `transpose=True` reproduces the released code exactly: it indexes the mask as
    `mask[x1:x2, y1:y2]`, so rows carry the x range and the pooled region is the box
    mirrored about the diagonal. The released weights were trained on such masks; pass
    `transpose=True` for parity with the released model, leave it False for the geometry
    the box describes.

    Coordinates outside [0,1] are clipped; a box with x2 <= x1 or y2 <= y1 gives an empty
    mask (which the encoder pools to zeros).
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (B, 4) x1,y1,x2,y2, got {tuple(boxes.shape)}")
    size = grid if image_size is None else image_size
    pix = torch.trunc(boxes.float().clamp(0.0, 1.0) * size).long()  # (B, 4) pixel bounds, like int()
    x1, y1, x2, y2 = pix.unbind(-1)
    cols = _axis_cover(x1, x2, grid, size)  # (B, G) cells covered along x
    rows = _axis_cover(y1, y2, grid, size)  # (B, G) cells covered along y
    if transpose:
        rows, cols = cols, rows
    mask = rows[:, :, None] & cols[:, None, :]  # (B, G, G)
    dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
    return mask.to(dtype)


def mask_pool(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean of the patch features inside each mask: (B, N, Dv), (B, G, G) -> (B, Dv), N = G*G.

    The mask is binarised (> 0) as in the released MaskPooling. An empty mask pools to zeros
    (the count is clamped to 1), not NaN; for a binary mask this equals the released
    `sum / (count + 1e-8)` to float precision.
    """
    m = (masks > 0).to(features.dtype).flatten(1)  # (B, N)
    count = m.sum(dim=1, keepdim=True).clamp_min(1.0)  # (B, 1)
    pooled = torch.bmm((m / count).unsqueeze(1), features)  # (B, 1, Dv)
    return pooled.squeeze(1)  # (B, Dv)


class FeatureMLP(nn.Module):
    """The released `MLP`: `num_layers` Linear layers, ReLU between them (none after the last)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = torch.relu(x)
        return x


class LocationMLP(nn.Module):
    """The released `LocationEncoder`: box (.., 4) in pixels -> Linear, ReLU, Linear -> (.., D)."""

    def __init__(self, hidden_dim: int, out_dim: int):
        super().__init__()
        self.loc_encoder = nn.Sequential(nn.Linear(4, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, boxes: torch.Tensor) -> torch.Tensor:
        return self.loc_encoder(boxes)


class RegionEncoder(nn.Module):
    """features (B,N,Dv) + box (B,4) + mask (B,G,G) -> one region token (B,D) (see module doc)."""

    def __init__(self, cfg: RegionConfig):
        super().__init__()
        self.cfg = cfg
        self.region_linear = FeatureMLP(cfg.feature_dim, cfg.out_dim, cfg.out_dim, cfg.feature_layers)
        self.loc_encoder = LocationMLP(cfg.loc_hidden, cfg.out_dim)

    def forward(self, features: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """features (B, N, Dv) from the vision encoder; boxes (B, 4) normalised x1,y1,x2,y2;
        masks (B, G, G) on the patch grid, rows = y (see `box_to_mask`) -> (B, D)."""
        pooled = mask_pool(features, masks)  # (B, Dv)
        region = self.region_linear(pooled)  # (B, D)
        loc = self.loc_encoder(boxes * self.cfg.image_size)  # (B, D): the released MLP takes pixels
        return region + loc

    def box_mask(self, boxes: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """`box_to_mask` on this encoder's grid and pixel frame: (B, 4) -> (B, G, G)."""
        return box_to_mask(boxes, self.cfg.grid, self.cfg.image_size, transpose=transpose)

    def dummy_inputs(self, batch: int = 1, grid: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
        """Random features, random non-empty boxes and their masks; `grid` may differ from the config's."""
        g = self.cfg.grid if grid is None else grid
        p = next(self.parameters())
        gen = torch.Generator().manual_seed(seed)
        features = torch.randn(batch, g * g, self.cfg.feature_dim, generator=gen)  # (B, N, Dv)
        xs = torch.rand(batch, 2, generator=gen).sort(dim=1).values  # (B, 2)
        ys = torch.rand(batch, 2, generator=gen).sort(dim=1).values
        # Widen each box to at least half the image so its mask is never empty.
        x1 = xs[:, 0] * 0.5
        y1 = ys[:, 0] * 0.5
        boxes = torch.stack([x1, y1, x1 + 0.5 + xs[:, 1] * (0.5 - x1), y1 + 0.5 + ys[:, 1] * (0.5 - y1)], -1)
        boxes = boxes.clamp(0.0, 1.0)  # (B, 4)
        masks = box_to_mask(boxes, g, self.cfg.image_size)  # (B, G, G)
        cast = dict(device=p.device, dtype=p.dtype)
        return {"features": features.to(**cast), "boxes": boxes.to(**cast), "masks": masks.to(**cast)}
