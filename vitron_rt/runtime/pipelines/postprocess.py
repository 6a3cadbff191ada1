"""Pixel work around the back-end engines, as pure numpy / OpenCV functions.

Pure (arrays in, new arrays out, no state, no I/O) so that each can be held against its
reference (SAM's `post_process_masks`, diffusers' image processor). The mask work runs
through `vitron_rt.kernels` (the CUDA kernel on a GPU with cuda-python, OpenCV
elsewhere, with the same results: see vitron_rt/kernels/masks.py):

    box_to_input_pixels    normalised box -> xyxy pixels of the padded S x S SAM input
    upsample_mask_logits   low-res logits (4E x 4E) -> logits at the input's H x W
    mask_logits_to_mask    ... thresholded at 0 -> (H, W) bool              (kernels)
    overlay                colour the masked pixels of a frame, alpha-blended (kernels)
    mask_and_overlay       both in one pass, the frame blended in place      (kernels)
    downsample_mask        (H, W) mask -> (h, w) latent mask, any-coverage
    composite              edited pixels inside the mask, the original's outside
    to_vae_input           uint8 RGB at the working size -> (1, 3, h, w) in [-1, 1]
    from_vae_output        (1, 3, h, w) in [-1, 1] -> uint8 RGB
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from vitron_rt import kernels
from vitron_rt.kernels.masks import logits_2d, upsample_cpu
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


def mask_geometry(logits: np.ndarray, orig_hw: Sequence[int], padded_size: int) -> kernels.MaskGeometry:
    """The sizes of SAM's postprocess for `logits` and an image of `orig_hw` (H, W) fed at
    `padded_size`: the valid corner of the padded input is the resized image."""
    h, w = _hw(orig_hw)
    nh, nw = fit_longest_side(h, w, padded_size)
    m_h, m_w = logits_2d(logits).shape
    return kernels.MaskGeometry((m_h, m_w), int(padded_size), (nh, nw), (h, w))


def upsample_mask_logits(logits: np.ndarray, orig_hw: Sequence[int], padded_size: int) -> np.ndarray:
    """Low-res mask logits -> (H, W) float32 logits at the original image size.

    SAM's postprocess (transformers' `post_process_masks`): bilinear (half-pixel centres,
    as `align_corners=False`) to the padded S x S input, crop the padding away (the
    resized image's nh x nw top-left corner), bilinear to H x W. `logits`: (1, 1, m, m),
    (1, m, m) or (m, m). The logits themselves are for inspection and tests, so this one
    stays on the CPU; the masks below run where the kernels run."""
    return upsample_cpu(logits, mask_geometry(logits, orig_hw, padded_size))


def mask_logits_to_mask(
    logits: np.ndarray, orig_hw: Sequence[int], padded_size: int, threshold: float = 0.0
) -> np.ndarray:
    """Low-res mask logits -> (H, W) bool mask at the original image size (logit > 0:
    probability > 0.5). See `upsample_mask_logits`."""
    return kernels.mask_postprocess(logits, mask_geometry(logits, orig_hw, padded_size), threshold).mask


def _check_overlay(frame: np.ndarray, mask_shape: Sequence[int], alpha: float) -> None:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"overlay needs an (H, W, 3) uint8 frame, got {frame.dtype} {frame.shape}")
    if tuple(mask_shape) != frame.shape[:2]:
        raise ValueError(f"overlay mask is {tuple(mask_shape)}, the frame {frame.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must be in [0, 1], got {alpha}")


def overlay(
    frame: np.ndarray,
    mask: np.ndarray,
    color: Sequence[int] = OVERLAY_COLOR,
    alpha: float = OVERLAY_ALPHA,
) -> np.ndarray:
    """(H, W, 3) uint8 RGB with the pixels under `mask` (H, W) blended towards `color`:
    out = round((1 - alpha) * frame + alpha * color) there (OpenCV's addWeighted, to the
    byte), the frame unchanged elsewhere. `frame` itself is left as it was."""
    _check_overlay(frame, np.shape(mask), alpha)
    out = frame.copy()
    kernels.overlay(out, np.asarray(mask, dtype=bool), tuple(int(c) for c in color), float(alpha))
    return out


def mask_and_overlay(
    logits: np.ndarray,
    frame: np.ndarray,
    padded_size: int,
    threshold: float = 0.0,
    color: Sequence[int] = OVERLAY_COLOR,
    alpha: float = OVERLAY_ALPHA,
) -> np.ndarray:
    """`mask_logits_to_mask` and `overlay` in one pass: returns the (H, W) bool mask and
    blends the overlay into `frame` in place (a video frame no later stage reads as it was)."""
    _check_overlay(frame, frame.shape[:2], alpha)
    geom = mask_geometry(logits, frame.shape[:2], padded_size)
    return kernels.mask_postprocess(logits, geom, threshold, frame, tuple(int(c) for c in color), float(alpha)).mask


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
