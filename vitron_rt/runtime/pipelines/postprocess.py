"""Pixel work around the back-end engines, as pure numpy / OpenCV functions.

Pure (arrays in, new arrays out, no state, no I/O) so that a CUDA kernel of
`vitron_rt.kernels` can replace any one of them with the same signature, and the tests
can hold each against its reference (SAM's `post_process_masks`, diffusers' image
processor):

    box_to_input_pixels    normalised box -> xyxy pixels of the padded S x S SAM input
    upsample_mask_logits   low-res logits (4E x 4E) -> logits at the input's H x W
    mask_logits_to_mask    ... thresholded at 0 -> (H, W) bool
    overlay                colour the masked pixels of a frame, alpha-blended
    downsample_mask        (H, W) mask -> (h, w) latent mask, any-coverage
    composite              edited pixels inside the mask, the original's outside
    to_vae_input           uint8 RGB at the working size -> (1, 3, h, w) in [-1, 1]
    from_vae_output        (1, 3, h, w) in [-1, 1] -> uint8 RGB
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from vitron_rt.runtime.media import fit_longest_side

# The overlay's default colour (RGB) and opacity: a saturated blue reads on skin, sky
# and foliage alike, and half opacity keeps the object visible under it.
OVERLAY_COLOR: tuple[int, int, int] = (30, 144, 255)
OVERLAY_ALPHA = 0.5


def _hw(orig_hw: Sequence[int]) -> tuple[int, int]:
    h, w = (int(v) for v in orig_hw)
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {h} x {w}")
    return h, w


def box_to_input_pixels(box: Sequence[float], orig_hw: Sequence[int], padded_size: int) -> np.ndarray:
    """A normalised box (x1, y1, x2, y2) -> (1, 4) float32 xyxy in pixels of the SAM input:
    the image resized so its longest side is `padded_size`, padded bottom/right, so the
    box scales with the resized image (nw, nh), not with the padded square."""
    h, w = _hw(orig_hw)
    nh, nw = fit_longest_side(h, w, padded_size)
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([[x1 * nw, y1 * nh, x2 * nw, y2 * nh]], dtype=np.float32)  # (1, 4)


def upsample_mask_logits(logits: np.ndarray, orig_hw: Sequence[int], padded_size: int) -> np.ndarray:
    """Low-res mask logits -> (H, W) float32 logits at the original image size.

    SAM's postprocess (transformers' `post_process_masks`): bilinear (half-pixel centres,
    as `align_corners=False`) to the padded S x S input, crop the padding away (the
    resized image's nh x nw top-left corner), bilinear to H x W. `logits`: (1, 1, m, m),
    (1, m, m) or (m, m)."""
    h, w = _hw(orig_hw)
    lo = np.asarray(logits, dtype=np.float32)
    while lo.ndim > 2 and lo.shape[0] == 1:
        lo = lo[0]
    if lo.ndim != 2:
        raise ValueError(f"mask logits must be one (m, m) map (batch 1), got shape {np.shape(logits)}")
    nh, nw = fit_longest_side(h, w, padded_size)
    up = cv2.resize(lo, (padded_size, padded_size), interpolation=cv2.INTER_LINEAR)  # (S, S)
    return cv2.resize(up[:nh, :nw], (w, h), interpolation=cv2.INTER_LINEAR)  # (H, W)


def mask_logits_to_mask(
    logits: np.ndarray, orig_hw: Sequence[int], padded_size: int, threshold: float = 0.0
) -> np.ndarray:
    """Low-res mask logits -> (H, W) bool mask at the original image size (logit > 0:
    probability > 0.5). See `upsample_mask_logits`."""
    return upsample_mask_logits(logits, orig_hw, padded_size) > threshold


def overlay(
    frame: np.ndarray,
    mask: np.ndarray,
    color: Sequence[int] = OVERLAY_COLOR,
    alpha: float = OVERLAY_ALPHA,
) -> np.ndarray:
    """(H, W, 3) uint8 RGB with the pixels under `mask` (H, W) blended towards `color`:
    out = round((1 - alpha) * frame + alpha * color) there, the frame unchanged elsewhere."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"overlay needs an (H, W, 3) uint8 frame, got {frame.dtype} {frame.shape}")
    if mask.shape != frame.shape[:2]:
        raise ValueError(f"overlay mask is {mask.shape}, the frame {frame.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must be in [0, 1], got {alpha}")
    tint = np.empty_like(frame)
    tint[:] = np.asarray(color, dtype=np.uint8)  # (H, W, 3)
    blended = cv2.addWeighted(frame, 1.0 - alpha, tint, alpha, 0.0)  # rounded to nearest
    out = frame.copy()
    np.copyto(out, blended, where=np.asarray(mask, dtype=bool)[..., None])
    return out


def downsample_mask(mask: np.ndarray, hw: Sequence[int]) -> np.ndarray:
    """(H, W) mask -> (h, w) bool: a cell is on when any pixel it covers is (area
    resampling, > 0). Used for latents, where a cell touching the object must be free to
    change or the edit leaves a seam of old content along the mask's edge."""
    h, w = _hw(hw)
    area = cv2.resize(np.asarray(mask, dtype=np.float32), (w, h), interpolation=cv2.INTER_AREA)  # (h, w)
    return area > 0.0


def composite(original: np.ndarray, edited: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: `edited` where `mask`, else `original` bit for bit."""
    if original.shape != edited.shape or mask.shape != original.shape[:2]:
        raise ValueError(f"composite needs equal sizes, got {original.shape}, {edited.shape}, mask {mask.shape}")
    return np.where(np.asarray(mask, dtype=bool)[..., None], edited, original)


def to_vae_input(img: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 RGB -> (1, 3, h, w) float32 in [-1, 1] (diffusers: 2 x / 255 - 1)."""
    x = img.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)  # (h, w, 3)
    return np.ascontiguousarray(x.transpose(2, 0, 1))[None]  # (1, 3, h, w)


def from_vae_output(images: np.ndarray) -> np.ndarray:
    """(1, 3, h, w) decoder output in [-1, 1] -> (h, w, 3) uint8 RGB, as diffusers'
    `VaeImageProcessor.postprocess`: clip((x + 1) / 2, 0, 1) * 255, rounded."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"expected one (1, 3, h, w) image, got shape {x.shape}")
    x = np.clip(x[0] * 0.5 + 0.5, 0.0, 1.0)  # (3, h, w)
    return np.ascontiguousarray((x * 255.0).round().astype(np.uint8).transpose(1, 2, 0))  # (h, w, 3)
