"""The numpy DDIM sampler against diffusers' DDIMScheduler (the oracle): timesteps, single
steps on random model outputs, the forward process, img2img timesteps, a whole loop."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from vitron_rt.runtime.errors import VitronInputError
from vitron_rt.runtime.pipelines.scheduler import DdimConfig, DDIMScheduler

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# Absolute 1e-5, plus 2e-6 of the value: diffusers keeps alphas_cumprod in float32 (its
# cumulative product drifts ~1e-6 relative by t = 999), this port in float64, and near
# t = 999 the predicted x0 is ~30 in size (x / sqrt(alpha_bar), alpha_bar ~ 5e-3), where
# that drift alone is 2e-5 absolute.
ATOL, RTOL = 1e-5, 2e-6


def reference(config: DdimConfig):
    return diffusers.DDIMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
        set_alpha_to_one=config.set_alpha_to_one,
        steps_offset=config.steps_offset,
        timestep_spacing=config.timestep_spacing,
        prediction_type=config.prediction_type,
        clip_sample=config.clip_sample,
    )


CONFIGS = [
    DdimConfig(),  # SD-1.x
    DdimConfig(timestep_spacing="trailing"),
    DdimConfig(timestep_spacing="linspace", prediction_type="v_prediction"),
    DdimConfig(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, set_alpha_to_one=True, steps_offset=0),
    DdimConfig(clip_sample=True),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.beta_schedule}-{c.timestep_spacing}-{c.prediction_type}")
@pytest.mark.parametrize("steps", [1, 3, 20, 50])
def test_timesteps_match_diffusers(config, steps):
    ref = reference(config)
    ref.set_timesteps(steps)
    np.testing.assert_array_equal(DDIMScheduler(config).timesteps(steps), ref.timesteps.numpy())


def test_sd_defaults():
    """SD-1.x, 20 steps: 951, 901, ..., 1 (leading spacing, offset 1)."""
    t = DDIMScheduler().timesteps(20)
    assert t[0] == 951 and t[-1] == 1 and len(t) == 20 and t.dtype == np.int64


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.beta_schedule}-{c.timestep_spacing}-{c.prediction_type}")
@pytest.mark.parametrize("steps", [4, 20])
def test_steps_match_diffusers(config, steps):
    """Every step of a schedule, random sample and random model output: same x_{t-1} and x0."""
    ours, ref = DDIMScheduler(config), reference(config)
    ref.set_timesteps(steps)
    rng = np.random.default_rng(steps)
    for t in ref.timesteps.tolist():
        x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
        eps = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
        want = ref.step(torch.from_numpy(eps), t, torch.from_numpy(x))
        got = ours.step(eps, t, x, steps)
        assert got.prev_sample.dtype == np.float32
        np.testing.assert_allclose(got.prev_sample, want.prev_sample.numpy(), atol=ATOL, rtol=RTOL)
        np.testing.assert_allclose(got.pred_original_sample, want.pred_original_sample.numpy(), atol=ATOL, rtol=RTOL)


def test_eta_step_matches_diffusers_with_the_same_noise():
    ours, ref = DDIMScheduler(), reference(DdimConfig())
    ref.set_timesteps(10)
    rng = np.random.default_rng(1)
    x, eps, z = (rng.standard_normal((1, 4, 8, 8)).astype(np.float32) for _ in range(3))
    t = int(ref.timesteps[3])
    want = ref.step(torch.from_numpy(eps), t, torch.from_numpy(x), eta=0.7, variance_noise=torch.from_numpy(z))
    got = ours.step(eps, t, x, 10, eta=0.7, variance_noise=z)
    np.testing.assert_allclose(got.prev_sample, want.prev_sample.numpy(), atol=ATOL, rtol=RTOL)
    with pytest.raises(ValueError, match="variance_noise"):
        ours.step(eps, t, x, 10, eta=0.7)


def test_whole_loop_matches_diffusers():
    """20 steps driven by a deterministic stand-in model: the errors must not accumulate."""
    ours, ref = DDIMScheduler(), reference(DdimConfig())
    ref.set_timesteps(20)

    def model(x, t):
        return np.tanh(x * 0.5) * (t / 1000.0) + 0.1 * np.sin(x)

    x0 = np.random.default_rng(2).standard_normal((1, 4, 8, 8)).astype(np.float32)
    a, b = x0, torch.from_numpy(x0)
    for t in ours.timesteps(20).tolist():
        a = ours.step(model(a, t).astype(np.float32), t, a, 20).prev_sample
        b = ref.step(torch.from_numpy(model(b.numpy(), t).astype(np.float32)), t, b).prev_sample
    np.testing.assert_allclose(a, b.numpy(), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("t", [1, 250, 999])
def test_add_noise_matches_diffusers(t):
    ref = reference(DdimConfig())
    rng = np.random.default_rng(t)
    x, z = (rng.standard_normal((1, 4, 8, 8)).astype(np.float32) for _ in range(2))
    want = ref.add_noise(torch.from_numpy(x), torch.from_numpy(z), torch.tensor([t]))
    np.testing.assert_allclose(DDIMScheduler().add_noise(x, z, t), want.numpy(), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(("steps", "strength"), [(20, 0.8), (20, 1.0), (10, 0.35), (50, 0.02)])
def test_img2img_timesteps_match_diffusers(steps, strength):
    from diffusers import StableDiffusionImg2ImgPipeline

    ref = reference(DdimConfig())
    ref.set_timesteps(steps)
    want, _ = StableDiffusionImg2ImgPipeline.get_timesteps(SimpleNamespace(scheduler=ref), steps, strength, "cpu")
    np.testing.assert_array_equal(DDIMScheduler().img2img_timesteps(steps, strength), want.numpy())


@pytest.mark.parametrize(
    ("steps", "strength", "match"),
    [(0, 0.5, "num_inference_steps"), (1001, 0.5, "num_inference_steps"), (20, 0.0, "strength"),
     (20, 1.5, "strength"), (20, float("nan"), "strength"), (4, 0.2, "runs no denoising step")],
)
def test_bad_parameters_are_one_line_input_errors(steps, strength, match):
    with pytest.raises(VitronInputError, match=match) as e:
        DDIMScheduler().img2img_timesteps(steps, strength)
    assert "\n" not in str(e.value)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="timestep_spacing"):
        DdimConfig(timestep_spacing="karras")
