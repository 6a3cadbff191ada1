"""generate_image and edit_image end to end on the tiny bundle (UNet latents 8 x 8, VAE
downsample 2: 16 px images), the loop checked against diffusers driving the same UNet."""

from __future__ import annotations

import numpy as np
import pytest
from _pipeline_helpers import signal, visible_and_hidden, with_failure

from vitron_rt.bundle import BundleError
from vitron_rt.engines import EngineError
from vitron_rt.runtime.errors import VitronInputError
from vitron_rt.runtime.media import load_image
from vitron_rt.runtime.messages import HybridMessage
from vitron_rt.runtime.pipelines import (
    DiffusionOptions,
    EditImagePipeline,
    GenerateImagePipeline,
    SegmentOptions,
)
from vitron_rt.runtime.pipelines.base import Clock
from vitron_rt.runtime.pipelines.diffusion import Denoiser, Inpainter, seg_signal_for

# An edit below full strength: its masked region starts from the input's noised latents.
FAST = DiffusionOptions(num_inference_steps=6, strength=0.8)
EDIT_REGION = (0.3, 0.1, 0.7, 0.6)


def edit_message(region=EDIT_REGION):
    return HybridMessage("edit_image", ("make the suit gold",), region=region)


# --------------------------------------------------------------------------- generate


def test_generate_writes_a_png_of_the_latent_size(bundle, runners, tmp_path):
    timings: dict[str, float] = {}
    result = GenerateImagePipeline(bundle.manifest, runners, FAST).run(None, signal(), None, tmp_path, timings)
    assert [o.to_dict() for o in result.outputs] == [{"kind": "image", "path": str(tmp_path / "image.png")}]
    assert visible_and_hidden(tmp_path) == ["image.png"]
    image = load_image(result.path("image"))
    assert image.shape == (16, 16, 3)  # 8 latents x downsample 2
    assert image.std() > 0
    assert result.info["unet_calls"] == 6 and result.info["size"] == [16, 16]
    assert set(timings) == {"unet", "unet_per_call", "vae_decoder", "postprocess", "write"}
    assert timings["unet_per_call"] == pytest.approx(timings["unet"] / 6, rel=1e-3)


def test_generate_is_deterministic_per_seed_and_follows_the_signal(bundle, runners, tmp_path):
    pipe = GenerateImagePipeline(bundle.manifest, runners, FAST)
    clock = Clock()
    a, b = pipe.generate(signal(seed=1), clock), pipe.generate(signal(seed=1), clock)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, pipe.generate(signal(seed=2), clock))
    other_seed = GenerateImagePipeline(bundle.manifest, runners, DiffusionOptions(num_inference_steps=6, seed=5))
    assert not np.array_equal(a, other_seed.generate(signal(seed=1), clock))


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_the_loop_matches_diffusers_driving_the_same_unet(bundle, runners, guidance):
    """Our numpy DDIM + guidance against diffusers' DDIMScheduler, both calling the ONNX UNet."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    opts = DiffusionOptions(num_inference_steps=8, guidance_scale=guidance)
    den = Denoiser(bundle.manifest, runners, opts)
    cond = den.conditioning(signal())
    noise = den.noise(den.latent_hw(), 0)
    ours = den.run(noise, cond, den.scheduler.timesteps(8), Clock())

    ref = diffusers.DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    ref.set_timesteps(8)
    unet = runners["unet"]
    x = torch.from_numpy(noise)
    zeros = np.zeros_like(signal())

    def eps(x, t, c):
        feeds = {"sample": x.numpy(), "timestep": np.array([t], np.float32), "encoder_hidden_states": c}
        return unet.infer(feeds)["noise_pred"]

    for t in ref.timesteps.tolist():
        e = eps(x, t, signal())
        if guidance > 1:
            u = eps(x, t, zeros)
            e = u + guidance * (e - u)
        x = ref.step(torch.from_numpy(e), t, x).prev_sample
    np.testing.assert_allclose(ours, x.numpy(), atol=1e-4, rtol=1e-4)


def _with_prediction_type(manifest, kind):
    import dataclasses

    unet = manifest.components["unet"]
    entry = dataclasses.replace(unet, attributes={**unet.attributes, "prediction_type": kind})
    return dataclasses.replace(manifest, components={**manifest.components, "unet": entry})


def test_the_bundle_says_what_its_unet_predicts_and_the_sampler_follows(bundle, runners):
    assert bundle.component("unet").attributes["prediction_type"] == "epsilon"  # the tiny preset's
    assert Denoiser(bundle.manifest, runners, FAST).scheduler.config.prediction_type == "epsilon"
    x0 = Denoiser(_with_prediction_type(bundle.manifest, "sample"), runners, FAST)
    assert x0.scheduler.config.prediction_type == "sample"
    assert x0.scheduler.config.num_train_timesteps == FAST.scheduler.num_train_timesteps  # the rest kept
    eps = Denoiser(bundle.manifest, runners, FAST)
    cond, noise, steps = eps.conditioning(signal()), eps.noise(eps.latent_hw(), 0), eps.scheduler.timesteps(6)
    assert not np.allclose(x0.run(noise, cond, steps, Clock()), eps.run(noise, cond, steps, Clock()))
    with pytest.raises(BundleError, match="prediction_type 'x0'"):
        Denoiser(_with_prediction_type(bundle.manifest, "x0"), runners, FAST)


def test_guidance_runs_one_unet_call_of_batch_two_per_step(bundle, runners, tmp_path):
    opts = DiffusionOptions(num_inference_steps=3, guidance_scale=7.5)
    result = GenerateImagePipeline(bundle.manifest, runners, opts).run(None, signal(), None, tmp_path)
    assert result.info["unet_calls"] == 3 and result.info["guidance_scale"] == 7.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"num_inference_steps": 0}, "num_inference_steps"), ({"guidance_scale": float("inf")}, "guidance_scale"),
     ({"strength": 0.0}, "strength"), ({"strength": 2.0}, "strength")],
)
def test_bad_sampling_options_are_input_errors(kwargs, match):
    with pytest.raises(VitronInputError, match=match):
        DiffusionOptions(**kwargs)


def test_latent_sizes_follow_the_aspect_ratio(bundle, runners):
    den = Denoiser(bundle.manifest, runners, FAST)
    assert den.latent_hw() == (8, 8)
    assert den.latent_hw((512, 512)) == (8, 8)
    assert den.latent_hw((720, 1280)) == (4, 8)  # 4.5 rounded to the UNet's multiple of 2
    assert den.latent_hw((1000, 100)) == (8, 2)  # never below the multiple


# --------------------------------------------------------------------------- edit


def test_edit_changes_only_the_masked_pixels(bundle, runners, astronaut, tmp_path):
    timings: dict[str, float] = {}
    result = EditImagePipeline(bundle.manifest, runners, FAST).run(
        edit_message(), signal(), astronaut, tmp_path, timings
    )
    assert visible_and_hidden(tmp_path) == ["edited.png", "mask.png"]
    original = load_image(astronaut)
    edited = load_image(result.path("image"))
    mask_png = load_image(result.path("mask"))
    assert edited.shape == original.shape and mask_png.shape == original.shape
    assert set(np.unique(mask_png).tolist()) <= {0, 255}
    mask = mask_png[..., 0] == 255
    assert 0.05 < mask.mean() < 0.95  # a real partial mask, so the next two lines mean something
    np.testing.assert_array_equal(edited[~mask], original[~mask])  # bit for bit outside
    assert (edited[mask] != original[mask]).any(axis=-1).mean() > 0.5
    assert result.info["edited"] and result.info["unet_calls"] == int(6 * 0.8)
    assert {"seg_image_encoder", "seg_mask_decoder", "vae_encoder", "unet", "unet_per_call", "vae_decoder",
            "preprocess", "postprocess", "write", "load"} == set(timings)
    # The default redraws the masked region from pure noise, every step (inpainting's default).
    full = DiffusionOptions(num_inference_steps=6)
    assert full.strength == 1.0
    pipe = EditImagePipeline(bundle.manifest, runners, full)
    again = pipe.run(edit_message(), signal(), astronaut, tmp_path / "full")
    assert again.info["unet_calls"] == 6
    np.testing.assert_array_equal(load_image(again.path("image"))[~mask], original[~mask])


def test_an_empty_mask_edits_nothing(bundle, runners, astronaut, tmp_path):
    pipe = EditImagePipeline(bundle.manifest, runners, FAST, SegmentOptions(threshold=1e9))
    result = pipe.run(edit_message(), signal(), astronaut, tmp_path)
    assert not result.info["edited"] and result.info["unet_calls"] == 0
    np.testing.assert_array_equal(load_image(result.path("image")), load_image(astronaut))


def test_the_previous_frames_latents_start_the_masked_region(bundle, runners, astronaut):
    """edit_video's temporal link: with `previous`, the masked region starts from it; with
    previous = the frame's own latents, the start is the plain edit's."""
    inp = Inpainter(bundle.manifest, runners, FAST)
    image = load_image(astronaut)
    mask = np.zeros(image.shape[:2], bool)
    mask[100:400, 150:350] = True
    plan = inp.plan(image.shape[:2], signal())
    vae_input, latent_mask = inp.prepare(image, mask, plan)
    known = inp.vae.encode(vae_input, Clock())
    plain = inp.denoise(known, latent_mask, plan, Clock())
    np.testing.assert_allclose(inp.denoise(known, latent_mask, plan, Clock(), previous=known), plain, atol=1e-6)
    carried = inp.denoise(known, latent_mask, plan, Clock(), previous=plain)
    inside = latent_mask[0, 0] > 0
    assert not np.allclose(carried[..., inside], plain[..., inside])
    np.testing.assert_allclose(carried[..., ~inside], plain[..., ~inside], atol=1e-6)  # known outside


def test_the_target_is_segmented_with_seg_signal_when_given(bundle, runners, astronaut, tmp_path):
    """The edit's projection conditions the UNet; the mask decoder takes `seg_signal` (the
    same tokens through signal_projector.segment_image) when given; without it the edit's
    own projection stands in only if it has the decoder's width (the tiny preset's does)."""
    pipe = EditImagePipeline(bundle.manifest, runners, FAST)
    own = pipe.run(edit_message(None), signal(seed=0), astronaut, tmp_path / "own")
    other = pipe.run(edit_message(None), signal(seed=0), astronaut, tmp_path / "seg", seg_signal=signal(seed=3))
    assert own.info["iou_score"] != other.info["iou_score"]
    wide = signal(width=768)  # SD-1.x's cross-attention width against SAM's 256 (here 32)
    assert seg_signal_for(pipe.segmenter, wide, signal()) is not wide
    with pytest.raises(ValueError, match="pass seg_signal"):
        seg_signal_for(pipe.segmenter, wide, None)


def test_failure_in_the_decoder_leaves_no_file(bundle, runners, astronaut, tmp_path):
    failing = with_failure(runners, "vae_decoder", fail_at=1)
    with pytest.raises(EngineError, match="injected"):
        EditImagePipeline(bundle.manifest, failing, FAST).run(edit_message(), signal(), astronaut, tmp_path)
    assert visible_and_hidden(tmp_path) == []
