"""The back-end task pipelines: what runs after the LLM's hybrid message names a module.

    module          pipeline                 components                          outputs
    segment_image   SegmentImagePipeline     seg_image_encoder, seg_mask_decoder mask.png, overlay.png
    segment_video   SegmentVideoPipeline     the same, per frame, mask carried   overlay.mp4
    generate_image  GenerateImagePipeline    unet, vae_decoder                   image.png
    edit_image      EditImagePipeline        SAM halves, vae_encoder, unet,      edited.png, mask.png
                                             vae_decoder
    edit_video      EditVideoPipeline        the same, per frame, mask and       edited.mp4
                                             latents carried

generate_video and image_to_video have no pipeline: the bundle holds an image UNet, not
the temporal UNets (ZeroScope, I2VGen-XL) those modules need (see `video.py`).

Each pipeline is built from the manifest and a `Mapping[str, Runner]` of active runners
(a `RunnerSet` creates them on first use), and has one call:

    runners = RunnerSet(bundle, "ort")
    pipeline = PIPELINES[message.module](bundle.manifest, runners)
    result = pipeline.run(message, signal, media, out_dir, timings)   # -> PipelineResult

`signal` is the module's projected signal embeddings, (1, K, C) or (K, C). The edit
pipelines also take `seg_signal=`, the same tokens projected for the mask decoder (see
`diffusion.seg_signal_for`). Every output file is written atomically and all of a
request's files appear together or not at all (`OutputFiles`).
"""

import inspect
from dataclasses import replace
from typing import Any

from vitron_rt.runtime.pipelines.base import Output, OutputFiles, PipelineResult
from vitron_rt.runtime.pipelines.diffusion import UNET, DiffusionOptions, EditImagePipeline, GenerateImagePipeline
from vitron_rt.runtime.pipelines.postprocess import mask_logits_to_mask, overlay
from vitron_rt.runtime.pipelines.runners import RunnerSet
from vitron_rt.runtime.pipelines.scheduler import DdimConfig, DDIMScheduler
from vitron_rt.runtime.pipelines.segmentation import SegmentImagePipeline, SegmentOptions
from vitron_rt.runtime.pipelines.video import EditVideoPipeline, SegmentVideoPipeline

# Module name -> pipeline class; each class's `components` lists the runners it needs.
PIPELINES = {
    cls.module: cls
    for cls in (
        SegmentImagePipeline,
        SegmentVideoPipeline,
        GenerateImagePipeline,
        EditImagePipeline,
        EditVideoPipeline,
    )
}


def pipeline_options(
    cls: type, diffusion: DiffusionOptions | None, segmentation: SegmentOptions | None, seed: int | None = None
) -> dict[str, Any]:
    """The keyword options for one of `PIPELINES`' classes: `diffusion` for a pipeline that
    runs the UNet, with `seed` (a request's sampling seed) in place of its own when given;
    `segmentation` for one that cuts masks (an edit's `segment_options`). None keeps the
    class's default."""
    if UNET in getattr(cls, "components", ()):
        if seed is not None:
            diffusion = replace(diffusion or DiffusionOptions(), seed=seed)
        out = {} if diffusion is None else {"options": diffusion}
        if segmentation is not None and "segment_options" in inspect.signature(cls).parameters:
            out["segment_options"] = segmentation
        return out
    return {} if segmentation is None else {"options": segmentation}


__all__ = [
    "PIPELINES",
    "DDIMScheduler",
    "DdimConfig",
    "DiffusionOptions",
    "EditImagePipeline",
    "EditVideoPipeline",
    "GenerateImagePipeline",
    "Output",
    "OutputFiles",
    "PipelineResult",
    "RunnerSet",
    "SegmentImagePipeline",
    "SegmentOptions",
    "SegmentVideoPipeline",
    "mask_logits_to_mask",
    "overlay",
    "pipeline_options",
]
