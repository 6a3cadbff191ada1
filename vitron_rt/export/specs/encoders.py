"""Specs of the front-end encoders: vision tower, input projector, region encoder."""

from __future__ import annotations

from vitron_rt.export.spec import IO, ExportSpec, register_spec


@register_spec("vision_encoder")
class VisionEncoderSpec(ExportSpec):
    """CLIP tower -> penultimate-layer patch features. The image size is fixed: CLIP's
    position embeddings are learned for one grid, and Vitron feeds 224 px only."""

    inputs = (IO("pixel_values", {0: "batch"}),)
    outputs = (IO("image_features", {0: "batch"}),)
    export_shapes = {"batch": 2}
    validate_shapes = ({"batch": 1}, {"batch": 3})
    # batch = images of one request: 1 image, or the 8 frames of a video.
    profiles = {"batch": (1, 1, 8)}

    def sample_inputs(self, module, shape):
        return module.dummy_inputs(batch=shape["batch"], seed=shape["batch"])


@register_spec("mm_projector")
class MMProjectorSpec(ExportSpec):
    """(B, N, Dv) -> (B, N, D). N is dynamic so one file serves any patch count."""

    inputs = (IO("image_features", {0: "batch", 1: "patches"}),)
    outputs = (IO("image_embeds", {0: "batch", 1: "patches"}),)
    export_shapes = {"batch": 2, "patches": 16}
    validate_shapes = ({"batch": 1}, {"batch": 3, "patches": 7})
    profiles = {"batch": (1, 1, 8), "patches": (1, 256, 1024)}

    def sample_inputs(self, module, shape):
        feeds = module.dummy_inputs(batch=shape["batch"], tokens=shape["patches"], seed=shape["patches"])
        return {"image_features": feeds["features"]}

    def forward(self, module, inputs):
        return module(inputs["image_features"])


@register_spec("region_encoder")
class RegionEncoderSpec(ExportSpec):
    """Mask-pooled patch features + box location MLP -> one region token. The runtime
    rasterises the box (or takes a sketch) into `region_mask` on the patch grid."""

    inputs = (
        IO("image_features", {0: "batch"}),
        IO("boxes", {0: "batch"}),
        IO("region_mask", {0: "batch"}),
    )
    outputs = (IO("region_embeds", {0: "batch"}),)
    export_shapes = {"batch": 2}
    validate_shapes = ({"batch": 1}, {"batch": 3})
    profiles = {"batch": (1, 1, 8)}

    def sample_inputs(self, module, shape):
        feeds = module.dummy_inputs(batch=shape["batch"], seed=shape["batch"])
        return {"image_features": feeds["features"], "boxes": feeds["boxes"], "region_mask": feeds["masks"]}

    def forward(self, module, inputs):
        return module(inputs["image_features"], inputs["boxes"], inputs["region_mask"])

    def attributes(self, module):
        # The runtime's numpy rasteriser must draw the mask the way the model was trained.
        return {"grid": module.cfg.grid, "image_size": module.cfg.image_size}
