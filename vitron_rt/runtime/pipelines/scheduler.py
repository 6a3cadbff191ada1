"""The DDIM sampler in numpy: the scheduler half of the diffusion loop (the UNet is the other).

A port of diffusers' `DDIMScheduler` (Song et al., "Denoising Diffusion Implicit Models"),
so the runtime drives an exported SD-1.x UNet exactly as the diffusers pipeline it was
trained under would, without torch:

    timesteps(n)          the n inference timesteps, high noise first ("leading" spacing
                          + steps_offset 1 for SD-1.x: 951, 901, ..., 1 for n = 20)
    step(eps, t, x_t, n)  x_t -> x_{t-1} (eta = 0: deterministic)
    add_noise(x0, e, t)   the forward process q(x_t | x_0), for img2img / inpainting starts
    img2img_timesteps     the tail of timesteps(n) an edit of a given strength runs

Stateless (the number of inference steps is an argument, not a field), so one scheduler
serves any number of pipelines and threads. The tests compare every method with
diffusers' on the same inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vitron_rt.runtime.errors import VitronInputError

BETA_SCHEDULES = ("scaled_linear", "linear")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class DdimConfig:
    """The scheduler config. Defaults are Stable Diffusion 1.x's `scheduler_config.json`
    (what Vitron's SD-1.4-based back ends were trained with), not diffusers' class defaults."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    # SD's "scaled_linear": linear in sqrt(beta); "linear" is DDPM's original.
    beta_schedule: str = "scaled_linear"
    # SD-1.x: False, the last step lands on alphas_cumprod[0] rather than 1.
    set_alpha_to_one: bool = False
    # SD-1.x: 1, so the "leading" timesteps end at 1 rather than 0.
    steps_offset: int = 1
    timestep_spacing: str = "leading"
    prediction_type: str = "epsilon"
    # SD-1.x: no clipping of the predicted x0 (latents are not bounded to [-1, 1]).
    clip_sample: bool = False
    clip_sample_range: float = 1.0

    def __post_init__(self) -> None:
        for name, value, known in (
            ("beta_schedule", self.beta_schedule, BETA_SCHEDULES),
            ("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS),
            ("prediction_type", self.prediction_type, PREDICTION_TYPES),
        ):
            if value not in known:
                raise ValueError(f"DdimConfig.{name} {value!r}; known: {', '.join(known)}")
        if self.num_train_timesteps < 1:
            raise ValueError(f"DdimConfig.num_train_timesteps must be >= 1, got {self.num_train_timesteps}")


@dataclass(frozen=True)
class StepOutput:
    """One DDIM step: the sample at the previous timestep and the x0 it was derived from."""

    prev_sample: np.ndarray
    pred_original_sample: np.ndarray


class DDIMScheduler:
    """Numpy DDIM over the config's noise schedule (see the module docstring)."""

    def __init__(self, config: DdimConfig | None = None):
        self.config = config or DdimConfig()
        c = self.config
        n = c.num_train_timesteps
        if c.beta_schedule == "scaled_linear":
            betas = np.linspace(c.beta_start**0.5, c.beta_end**0.5, n, dtype=np.float64) ** 2
        else:
            betas = np.linspace(c.beta_start, c.beta_end, n, dtype=np.float64)
        # float64 (diffusers keeps float32: the two agree to ~1e-7, well inside the tests' 1e-5).
        self.alphas_cumprod = np.cumprod(1.0 - betas)  # (T,)
        self.final_alpha_cumprod = 1.0 if c.set_alpha_to_one else float(self.alphas_cumprod[0])

    # ----------------------------------------------------------------- schedules

    def _check_steps(self, num_inference_steps: int) -> None:
        if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool):
            raise VitronInputError(f"num_inference_steps must be an integer, got {num_inference_steps!r}")
        if not 1 <= num_inference_steps <= self.config.num_train_timesteps:
            raise VitronInputError(
                f"num_inference_steps must be in 1..{self.config.num_train_timesteps}, got {num_inference_steps}"
            )

    def timesteps(self, num_inference_steps: int) -> np.ndarray:
        """(n,) int64 timesteps, noisiest first, as diffusers' `set_timesteps` makes them."""
        self._check_steps(num_inference_steps)
        c, n = self.config, num_inference_steps
        if c.timestep_spacing == "linspace":
            return np.linspace(0, c.num_train_timesteps - 1, n).round()[::-1].astype(np.int64)
        if c.timestep_spacing == "leading":
            ratio = c.num_train_timesteps // n
            return (np.arange(0, n) * ratio).round()[::-1].astype(np.int64) + c.steps_offset
        ratio = c.num_train_timesteps / n  # trailing
        return np.round(np.arange(c.num_train_timesteps, 0, -ratio)).astype(np.int64) - 1

    def img2img_timesteps(self, num_inference_steps: int, strength: float) -> np.ndarray:
        """The last `int(n * strength)` of `timesteps(n)`: an edit starts from the input
        noised to the first of them (diffusers' img2img / inpaint `get_timesteps`)."""
        if not (isinstance(strength, (int, float)) and math.isfinite(strength) and 0.0 < strength <= 1.0):
            raise VitronInputError(f"strength must be in (0, 1], got {strength!r}")
        steps = self.timesteps(num_inference_steps)
        keep = min(int(num_inference_steps * strength), num_inference_steps)
        if keep < 1:
            raise VitronInputError(
                f"strength {strength:g} with {num_inference_steps} steps runs no denoising step; "
                f"raise strength to at least {1 / num_inference_steps:.3g} or use more steps"
            )
        return steps[num_inference_steps - keep :]

    # ----------------------------------------------------------------- steps

    def _alpha_prev(self, timestep: int, num_inference_steps: int) -> float:
        # diffusers steps back by T // n whatever the spacing; kept so the samples match.
        prev = int(timestep) - self.config.num_train_timesteps // num_inference_steps
        return float(self.alphas_cumprod[prev]) if prev >= 0 else self.final_alpha_cumprod

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        num_inference_steps: int,
        eta: float = 0.0,
        variance_noise: np.ndarray | None = None,
    ) -> StepOutput:
        """x_t -> x_{t-1} (DDIM eq. 12). `eta` > 0 adds sigma_t-scaled `variance_noise`
        (required then, so the caller owns the randomness); eta = 0 is deterministic.
        Arrays keep `sample`'s dtype."""
        self._check_steps(num_inference_steps)
        c = self.config
        a_t = float(self.alphas_cumprod[int(timestep)])
        a_prev = self._alpha_prev(timestep, num_inference_steps)
        b_t = 1.0 - a_t
        dtype = sample.dtype
        if c.prediction_type == "epsilon":
            x0 = (sample - b_t**0.5 * model_output) / a_t**0.5
            eps = model_output
        elif c.prediction_type == "v_prediction":
            x0 = a_t**0.5 * sample - b_t**0.5 * model_output
            eps = a_t**0.5 * model_output + b_t**0.5 * sample
        else:  # sample
            x0 = model_output
            eps = (sample - a_t**0.5 * x0) / b_t**0.5
        if c.clip_sample:
            x0 = np.clip(x0, -c.clip_sample_range, c.clip_sample_range)
        # sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)   (eq. 16)
        variance = (1.0 - a_prev) / b_t * (1.0 - a_t / a_prev)
        std = eta * variance**0.5
        direction = max(1.0 - a_prev - std**2, 0.0) ** 0.5 * eps
        prev = a_prev**0.5 * x0 + direction
        if eta > 0:
            if variance_noise is None:
                raise ValueError("DDIM step with eta > 0 needs variance_noise (the caller's seeded noise)")
            prev = prev + std * variance_noise
        return StepOutput(prev_sample=prev.astype(dtype, copy=False), pred_original_sample=x0.astype(dtype, copy=False))

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timestep: int) -> np.ndarray:
        """q(x_t | x_0) = sqrt(a_t) x_0 + sqrt(1 - a_t) noise, in `original`'s dtype."""
        a_t = float(self.alphas_cumprod[int(timestep)])
        return (a_t**0.5 * original + (1.0 - a_t) ** 0.5 * noise).astype(original.dtype, copy=False)
