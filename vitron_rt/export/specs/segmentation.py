"""Specs of the segmentation back end, split like segment-anything's ONNX export:
the image encoder runs once per image, the mask decoder once per prompt (and once per
video frame with the previous mask carried forward)."""

from __future__ import annotations

from vitron_rt.export.spec import IO, ExportSpec, register_spec


@register_spec("seg_image_encoder")
class SegImageEncoderSpec(ExportSpec):
    """pixel_values (B,3,S,S) -> image_embeddings (B,C,E,E). S is fixed: SAM's absolute
    position embeddings and windowed attention are laid out for one input size."""

    inputs = (IO("pixel_values", {0: "batch"}),)
    outputs = (IO("image_embeddings", {0: "batch"}),)
    export_shapes = {"batch": 2}
    validate_shapes = ({"batch": 1}, {"batch": 3})
    profiles = {"batch": (1, 1, 4)}

    def sample_inputs(self, module, shape):
        return module.dummy_inputs(batch=shape["batch"])

    def attributes(self, module):
        return {"image_size": module.image_size, "embedding_size": module.embedding_size}


@register_spec("seg_mask_decoder")
class SegMaskDecoderSpec(ExportSpec):
    """Image embeddings + prompts (signal embeddings, an optional box, an optional previous
    mask) -> one low-resolution mask and its IoU score."""

    inputs = (
        IO("image_embeddings", {0: "batch"}),
        IO("signal_embeddings", {0: "batch", 1: "signal_tokens"}),
        IO("boxes", {0: "batch"}),
        IO("has_box", {0: "batch"}),
        IO("mask_input", {0: "batch"}),
        IO("has_mask_input", {0: "batch"}),
    )
    outputs = (IO("low_res_masks", {0: "batch"}), IO("iou_scores", {0: "batch"}))
    export_shapes = {"batch": 2, "signal_tokens": 3}
    validate_shapes = ({"batch": 1, "signal_tokens": 2}, {"batch": 3, "signal_tokens": 5})
    profiles = {"batch": (1, 1, 4), "signal_tokens": (1, 4, 64)}

    def sample_inputs(self, module, shape):
        return module.dummy_inputs(batch=shape["batch"], num_signal_tokens=shape["signal_tokens"])

    def attributes(self, module):
        return {
            "image_size": module.image_size,
            "embedding_size": module.embedding_size,
            "mask_size": 4 * module.embedding_size,
        }
