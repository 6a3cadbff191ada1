"""The pure pixel functions against their references: SAM's mask postprocess
(transformers), diffusers' VAE image conversions; overlay, latent mask, composite."""

from __future__ import annotations

import numpy as np
import pytest

from vitron_rt.runtime.media import fit_longest_side
from vitron_rt.runtime.pipelines.postprocess import (
    box_to_input_pixels,
    composite,
    downsample_mask,
    from_vae_output,
    mask_logits_to_mask,
    overlay,
    to_vae_input,
    upsample_mask_logits,
)

torch = pytest.importorskip("torch")


def _sam_reference(logits: np.ndarray, orig_hw, size: int) -> np.ndarray:
    """transformers' SamImageProcessor.post_process_masks, without binarising."""
    from transformers import SamImageProcessor

    proc = SamImageProcessor()
    resized = fit_longest_side(*orig_hw, size)
    out = proc.post_process_masks(
        [torch.from_numpy(logits)], [list(orig_hw)], [list(resized)], binarize=False,
        pad_size={"height": size, "width": size},
    )
    return out[0][0, 0].numpy()  # (H, W)


@pytest.mark.parametrize(
    ("orig_hw", "size", "m"),
    [((512, 512), 64, 32), ((720, 1280), 64, 32), ((333, 200), 64, 32), ((480, 640), 1024, 256), ((40, 30), 64, 32)],
)
def test_mask_upsampling_matches_sam_postprocess(orig_hw, size, m):
    logits = np.random.default_rng(sum(orig_hw)).standard_normal((1, 1, m, m)).astype(np.float32) * 3
    want = _sam_reference(logits, orig_hw, size)
    got = upsample_mask_logits(logits, orig_hw, size)
    assert got.shape == orig_hw and got.dtype == np.float32
    # OpenCV's float bilinear resize rounds its interpolation weights (to ~1e-4 at 4x
    # upscaling); PyTorch's are exact. Only the threshold below decides the mask.
    np.testing.assert_allclose(got, want, atol=1.5e-4, rtol=0)
    mask = mask_logits_to_mask(logits, orig_hw, size)
    assert mask.dtype == np.bool_ and mask.shape == orig_hw
    # Logits within the resize error of 0 may land on either side of the threshold.
    assert (mask == (want > 0)).mean() > 0.999


@pytest.mark.parametrize("shape", [(32, 32), (1, 32, 32), (1, 1, 32, 32)])
def test_mask_logits_shapes(shape):
    logits = np.ones(shape, np.float32)
    assert mask_logits_to_mask(logits, (10, 20), 64).all()
    with pytest.raises(ValueError, match="one \\(m, m\\) map"):
        mask_logits_to_mask(np.ones((2, 1, 32, 32), np.float32), (10, 20), 64)


def test_box_to_input_pixels_scales_with_the_resized_image():
    # 720 x 1280 -> longest side 64: 36 x 64 (the padding below y = 36 is not image).
    box = box_to_input_pixels((0.25, 0.5, 0.75, 1.0), (720, 1280), 64)
    np.testing.assert_allclose(box, [[16.0, 18.0, 48.0, 36.0]])
    assert box.dtype == np.float32 and box.shape == (1, 4)


def test_overlay_blends_only_the_mask():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    mask = np.zeros((30, 40), bool)
    mask[5:20, 10:30] = True
    out = overlay(frame, mask, color=(255, 0, 0), alpha=0.25)
    np.testing.assert_array_equal(out[~mask], frame[~mask])
    want = np.round(frame[mask] * 0.75 + np.array([255, 0, 0]) * 0.25)
    assert np.abs(out[mask].astype(int) - want).max() <= 1
    np.testing.assert_array_equal(overlay(frame, mask, alpha=0.0), frame)
    with pytest.raises(ValueError, match="mask"):
        overlay(frame, mask[:10])


def test_downsample_mask_is_any_coverage():
    mask = np.zeros((64, 64), bool)
    mask[0, 0] = True  # one pixel of the first 8 x 8 cell
    mask[40:48, 40:48] = True  # exactly cell (5, 5)
    got = downsample_mask(mask, (8, 8))
    want = np.zeros((8, 8), bool)
    want[0, 0] = want[5, 5] = True
    np.testing.assert_array_equal(got, want)
    assert not downsample_mask(np.zeros((64, 48), bool), (8, 6)).any()


def test_composite_is_exact_outside_the_mask():
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(2))
    mask = rng.random((20, 30)) > 0.5
    out = composite(a, b, mask)
    np.testing.assert_array_equal(out[~mask], a[~mask])
    np.testing.assert_array_equal(out[mask], b[mask])


def test_vae_conversions_match_diffusers():
    from diffusers.image_processor import VaeImageProcessor

    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    x = to_vae_input(img)
    assert x.shape == (1, 3, 16, 24) and x.dtype == np.float32
    proc = VaeImageProcessor(do_resize=False)
    want = proc.normalize(torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)[None]).numpy()
    np.testing.assert_allclose(x, want, atol=1e-6)

    decoded = rng.standard_normal((1, 3, 16, 24)).astype(np.float32) * 1.5  # beyond [-1, 1] too
    want_img = proc.postprocess(torch.from_numpy(decoded), output_type="np")[0]  # (H, W, 3) in [0, 1]
    np.testing.assert_array_equal(from_vae_output(decoded), (want_img * 255).round().astype(np.uint8))
