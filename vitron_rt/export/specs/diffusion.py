"""Specs of the diffusion back end: the denoising UNet and the two VAE halves. The
scheduler loop runs in numpy in the runtime, so one UNet call is one component call."""

from __future__ import annotations

from vitron_rt.export.spec import IO, ExportSpec, register_spec


def _multiple(n: int, f: int) -> int:
    return max(f, n // f * f)


@register_spec("unet")
class UNetSpec(ExportSpec):
    """sample (B,C,h,w), timestep (B,), encoder_hidden_states (B,L,Cx) -> noise (B,C,h,w).
    Latent height/width are dynamic in multiples of the UNet's downsampling factor; L is
    dynamic so the signal embeddings (K tokens) or a text context (77) both fit."""

    inputs = (
        IO("sample", {0: "batch", 2: "height", 3: "width"}),
        IO("timestep", {0: "batch"}),
        IO("encoder_hidden_states", {0: "batch", 1: "context"}),
    )
    outputs = (IO("noise_pred", {0: "batch", 2: "height", 3: "width"}),)

    def _factor(self, module) -> int:
        return 2 ** (len(module.unet.config.block_out_channels) - 1)

    def shapes_for_export(self, module):
        side = module.unet.config.sample_size
        return {"batch": 2, "height": side, "width": side, "context": 4}

    def shapes_for_validation(self, module):
        side, f = module.unet.config.sample_size, self._factor(module)
        return [
            {"batch": 1, "context": 2},
            {"batch": 3, "height": _multiple(side // 2, f), "width": _multiple(side * 3 // 2, f), "context": 7},
        ]

    def profiles_for(self, module):
        side, f = module.unet.config.sample_size, self._factor(module)
        from vitron_rt.bundle import DimRange, Profile

        return (
            Profile(
                "default",
                {
                    "batch": DimRange(1, 2, 4),  # 2: classifier-free guidance runs cond + uncond
                    "height": DimRange(f, side, 2 * side),
                    "width": DimRange(f, side, 2 * side),
                    "context": DimRange(1, 77, 128),
                },
            ),
        )

    def sample_inputs(self, module, shape):
        return module.dummy_inputs(
            batch=shape["batch"], height=shape["height"], width=shape["width"], seq_len=shape["context"]
        )

    def attributes(self, module):
        # What noise_pred holds, which the runtime's DDIM step must know.
        return {"prediction_type": module.config.prediction_type}


class _VaeSpec(ExportSpec):
    def _factor(self, module) -> int:
        return 2 ** (len(module.vae.config.block_out_channels) - 1)

    def profiles_for(self, module):
        from vitron_rt.bundle import DimRange, Profile

        side, f = self._side(module), self._pixel_factor(module)
        return (
            Profile(
                "default",
                {
                    "batch": DimRange(1, 1, 4),
                    "height": DimRange(f, side, 2 * side),
                    "width": DimRange(f, side, 2 * side),
                },
            ),
        )

    def shapes_for_export(self, module):
        return {"batch": 2, "height": self._side(module), "width": self._side(module)}

    def shapes_for_validation(self, module):
        side, f = self._side(module), self._pixel_factor(module)
        return [{"batch": 1}, {"batch": 3, "height": _multiple(side // 2, f), "width": _multiple(side * 3 // 2, f)}]

    def sample_inputs(self, module, shape):
        return module.dummy_inputs(batch=shape["batch"], height=shape["height"], width=shape["width"])

    def attributes(self, module):
        return {"scaling_factor": float(module.vae.config.scaling_factor), "downsample": self._factor(module)}


@register_spec("vae_encoder")
class VaeEncoderSpec(_VaeSpec):
    """images (B,3,H,W) in [-1,1] -> latents (B,4,H/f,W/f), the posterior mean times the
    scaling factor (deterministic: edits start from the image's own latents)."""

    inputs = (IO("images", {0: "batch", 2: "height", 3: "width"}),)
    outputs = (IO("latents", {0: "batch", 2: "latent_height", 3: "latent_width"}),)

    def _side(self, module):
        return module.vae.config.sample_size

    def _pixel_factor(self, module):
        return self._factor(module)


@register_spec("vae_decoder")
class VaeDecoderSpec(_VaeSpec):
    """latents (B,4,h,w) -> images (B,3,h*f,w*f) in [-1,1]."""

    inputs = (IO("latents", {0: "batch", 2: "height", 3: "width"}),)
    outputs = (IO("images", {0: "batch", 2: "image_height", 3: "image_width"}),)

    def _side(self, module):
        return module.vae.config.sample_size // self._factor(module)

    def _pixel_factor(self, module):
        return 1
