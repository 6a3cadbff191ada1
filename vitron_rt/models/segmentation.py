"""The segmentation back end: a transformers SamModel split into encode-once / decode-many.

SAM's image encoder is the expensive half and depends on the image alone; the mask
decoder is cheap and runs once per prompt (and per frame in a video, with the previous
mask carried forward). So the two halves are exported and served as separate
components that share one SamModel here, like segment-anything's own ONNX export of
the decoder:

    pixel_values (B,3,S,S) ─► SegImageEncoder ─► image_embeddings (B,C,E,E)
                                                        │
    boxes (B,4), has_box (B,) ─► box corners ─┐         │
    signal_embeddings (B,K,C) ────────────────┴► sparse (B,1,2+K,C)
    mask_input (B,1,4E,4E), has_mask_input (B,) ─► dense (B,C,E,E)
                                                        ▼
                            SegMaskDecoder ─► low_res_masks (B,1,4E,4E), iou_scores (B,1)

Optional prompts are selected with 0/1 flags instead of `None`, so one graph serves
every prompt combination: a missing box becomes SAM's "not a point" token on both
corners (segment-anything's ONNX model does the same with point label -1), a missing
mask becomes SAM's no-mask dense embedding.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from vitron_rt.models.config import SegConfig
from vitron_rt.models.weights import CheckpointError


def build_sam(cfg: SegConfig):
    """A randomly initialised transformers SamModel of `cfg`'s shape, in eval mode.

    The caller seeds torch (VitronModel does, per component); under `torch.device("meta")`
    this builds shapes only.
    """
    from transformers import SamModel

    hf = cfg.to_hf()
    # transformers' SamVisionConfig initialises the encoder with std 1e-10 (it is only ever
    # overwritten by pretrained weights); random weights that small make the embeddings
    # ~1e-21 and every parity check vacuous, so use the usual 0.02 like the rest of SAM.
    hf.vision_config.initializer_range = hf.initializer_range
    return SamModel(hf).eval()


def load_sam(path: str | Path):
    """A SamModel from a local transformers folder (`config.json` + weights), in fp32.

    Never touches a model hub. A folder that is missing, holds another model type, or
    whose weights do not cover every parameter is a CheckpointError, never a silently
    half-random model.
    """
    from transformers import SamModel

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: not a transformers SAM folder (no config.json)")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{config_file}: unreadable config ({e})") from None
    if model_type != "sam":
        raise CheckpointError(f"{path}: config.json is model_type {model_type!r}, expected 'sam'")
    try:
        sam, info = SamModel.from_pretrained(
            str(path), local_files_only=True, dtype=torch.float32, output_loading_info=True
        )
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot load SamModel ({type(e).__name__}: {e})") from None
    _require_complete(path, info)
    return sam.eval()


def _require_complete(path: Path, info: dict) -> None:
    """Raise if from_pretrained left parameters at their random initialisation."""
    problems = []
    for kind in ("missing_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in info.get(kind) or ())
        if keys:
            shown = ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else "")
            problems.append(f"{kind.replace('_', ' ')} {len(keys)}: {shown}")
    if problems:
        raise CheckpointError(f"{path}: weights do not cover the model; " + "; ".join(problems))


def _dims(given: dict, defaults: dict) -> dict:
    """`defaults` updated with `given`; an unknown dimension name is a TypeError."""
    unknown = set(given) - set(defaults)
    if unknown:
        raise TypeError(f"unknown dims {sorted(unknown)}; this component takes {sorted(defaults)}")
    return {**defaults, **given}


class SegImageEncoder(nn.Module):
    """SAM's ViT image encoder + neck: the encode-once half.

    The input size is fixed at the model's S (SAM's absolute and relative position
    embeddings are sized for it); only the batch is dynamic.
    """

    def __init__(self, sam):
        super().__init__()
        self.sam = sam  # shared with SegMaskDecoder, not copied

    @property
    def image_size(self) -> int:
        return self.sam.config.vision_config.image_size

    @property
    def embedding_size(self) -> int:
        """E, the side of the embedding grid (S / patch size)."""
        v = self.sam.config.vision_config
        return v.image_size // v.patch_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B,3,S,S), normalised with the config's mean/std -> (B,C,E,E)."""
        return self.sam.vision_encoder(pixel_values).last_hidden_state  # (B, C, E, E)

    def dummy_inputs(self, batch: int = 1, **dims) -> dict[str, torch.Tensor]:
        """Seeded inputs for export and parity checks; takes no dims besides `batch`
        (S is fixed by the weights)."""
        _dims(dims, {})
        p = next(self.sam.parameters())
        g = torch.Generator().manual_seed(0)
        s = self.image_size
        pixel_values = torch.randn(batch, 3, s, s, generator=g)  # (B, 3, S, S)
        return {"pixel_values": pixel_values.to(device=p.device, dtype=p.dtype)}


class SegMaskDecoder(nn.Module):
    """SAM's prompt encoding + mask decoder for one prompt per image: the decode-many half.

    The prompt is a box (optional, `has_box`), the LLM's projected signal tokens
    (appended after the box corners as extra sparse prompt tokens), and a previous
    low-resolution mask (optional, `has_mask_input`; in video, the last frame's logits).
    One mask is predicted (SAM's multimask_output=False: the first mask token).
    """

    def __init__(self, sam):
        super().__init__()
        self.sam = sam  # shared with SegImageEncoder, not copied

    @property
    def prompt_dim(self) -> int:
        return self.sam.config.prompt_encoder_config.hidden_size

    @property
    def embedding_size(self) -> int:
        return self.sam.config.prompt_encoder_config.image_embedding_size

    @property
    def image_size(self) -> int:
        return self.sam.config.prompt_encoder_config.image_size

    def embed_box(self, boxes: torch.Tensor, has_box: torch.Tensor) -> torch.Tensor:
        """boxes (B,4) xyxy in input pixels, has_box (B,) 0/1 -> corner tokens (B,1,2,C).

        SAM's box embedding (pixel-centre shift, Fourier features of the normalised
        corners, plus the learned top-left / bottom-right embeddings); where has_box is 0
        both tokens are SAM's `not_a_point_embed`, so the box values cannot leak in.
        """
        pe = self.sam.prompt_encoder
        b = boxes.shape[0]
        corners = (boxes.reshape(b, 1, 2, 2) + 0.5) / self.image_size  # (B, 1, 2, 2) in [0, 1]
        tokens = pe.shared_embedding(corners)  # (B, 1, 2, C)
        corner_embed = torch.cat([pe.point_embed[2].weight, pe.point_embed[3].weight], dim=0)  # (2, C)
        tokens = tokens + corner_embed
        present = (has_box > 0.5).reshape(b, 1, 1, 1)
        return torch.where(present, tokens, pe.not_a_point_embed.weight)  # (B, 1, 2, C)

    def embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """mask_input (B,1,4E,4E) logits, has_mask_input (B,) 0/1 -> dense embedding (B,C,E,E).

        `torch.where` rather than SAM-ONNX's multiply-and-add, so a non-finite value in
        an unused mask_input cannot turn the output into NaN.
        """
        pe = self.sam.prompt_encoder
        b = mask_input.shape[0]
        dense = pe.mask_embed(mask_input)  # (B, C, E, E)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)  # (1, C, 1, 1)
        present = (has_mask_input > 0.5).reshape(b, 1, 1, 1)
        return torch.where(present, dense, no_mask)  # (B, C, E, E)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        signal_embeddings: torch.Tensor,
        boxes: torch.Tensor,
        has_box: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (low_res_masks (B,1,4E,4E) logits, iou_scores (B,1)). K may be 0."""
        if signal_embeddings.dim() != 3 or signal_embeddings.shape[-1] != self.prompt_dim:
            raise ValueError(
                f"signal_embeddings must be (B, K, {self.prompt_dim}), got {tuple(signal_embeddings.shape)}"
            )
        b = image_embeddings.shape[0]
        box_tokens = self.embed_box(boxes, has_box)  # (B, 1, 2, C)
        sparse = torch.cat([box_tokens, signal_embeddings.unsqueeze(1)], dim=2)  # (B, 1, 2+K, C)
        dense = self.embed_mask(mask_input, has_mask_input)  # (B, C, E, E)
        image_pe = self.sam.get_image_wide_positional_embeddings()  # (1, C, E, E)
        masks, iou = self.sam.mask_decoder(
            image_embeddings=image_embeddings,
            image_positional_embeddings=image_pe.expand(b, -1, -1, -1),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )  # (B, 1, 1, 4E, 4E), (B, 1, 1)
        return masks[:, 0], iou[:, 0]  # (B, 1, 4E, 4E), (B, 1)

    def dummy_inputs(self, batch: int = 1, **dims) -> dict[str, torch.Tensor]:
        """Seeded inputs; dims: `num_signal_tokens` (K, default 2).

        Boxes are valid xyxy boxes inside the image; every prompt has a box, and
        has_mask_input alternates 0, 1, ... so a batch of two covers both mask paths.
        """
        d = _dims(dims, {"num_signal_tokens": 2})
        p = next(self.sam.parameters())
        g = torch.Generator().manual_seed(0)
        c, e, s = self.prompt_dim, self.embedding_size, self.image_size
        lo = torch.rand(batch, 2, generator=g) * (s / 2)
        hi = lo + (0.25 + torch.rand(batch, 2, generator=g) * 0.25) * s
        inputs = {
            "image_embeddings": torch.randn(batch, c, e, e, generator=g),  # (B, C, E, E)
            "signal_embeddings": torch.randn(batch, d["num_signal_tokens"], c, generator=g),  # (B, K, C)
            "boxes": torch.cat([lo, hi], dim=1),  # (B, 4) xyxy
            "has_box": torch.ones(batch),  # (B,)
            "mask_input": torch.randn(batch, 1, 4 * e, 4 * e, generator=g),  # (B, 1, 4E, 4E)
            "has_mask_input": (torch.arange(batch) % 2).float(),  # (B,)
        }
        return {k: v.to(device=p.device, dtype=p.dtype) for k, v in inputs.items()}
