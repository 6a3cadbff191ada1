"""segment_image: the LLM's signal embeddings (and region) as a prompt to the SAM halves.

    image (H,W,3) ─► pad-preprocess (1,3,S,S) ─► seg_image_encoder ─► (1,C,E,E)
                                                                          │
    signal (1,K,C) + box (1,4) [has_box] + previous logits [has_mask_input]
                                                                          ▼
                         seg_mask_decoder ─► low_res_masks (1,1,4E,4E), iou_scores (1,1)
                                                                          ▼
           upsample to S x S, crop the padding, resize to H x W, > 0 ─► mask (H,W) bool
                                                                          ▼
                                      mask.png (0/255) + overlay.png (alpha-blended)

Preprocess, mask and overlay run through vitron_rt.kernels (CUDA on a GPU, else the CPU).

`Segmenter` holds the steps apart (preprocess, encode, decode, postprocess) so the video
pipelines can run each on its own thread and carry the low-res logits from one frame to
the next; `SegmentImagePipeline` runs them in order on one image.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitron_rt.bundle import BundleError, ImagePreprocess, Manifest
from vitron_rt.engines import Runner
from vitron_rt.runtime.media import ResizeMode, load_image, preprocess_image
from vitron_rt.runtime.pipelines.base import (
    Clock,
    OutputFiles,
    PipelineResult,
    component_runner,
    infer,
    message_region,
    publish,
    signal_batch,
)
from vitron_rt.runtime.pipelines.postprocess import (
    OVERLAY_ALPHA,
    OVERLAY_COLOR,
    box_to_input_pixels,
    mask_and_overlay,
    mask_logits_to_mask,
    overlay,
)
from vitron_rt.runtime.region import Box

SEG_ENCODER = "seg_image_encoder"
SEG_DECODER = "seg_mask_decoder"
# Tensor names of the two components (vitron_rt/export/specs/segmentation.py).
ENCODER_INPUTS = ("pixel_values",)
ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_INPUTS = ("image_embeddings", "signal_embeddings", "boxes", "has_box", "mask_input", "has_mask_input")
DECODER_OUTPUTS = ("low_res_masks", "iou_scores")


@dataclass(frozen=True)
class SegmentOptions:
    """How masks are cut and shown."""

    # Logit threshold: 0 is probability 0.5, SAM's own.
    threshold: float = 0.0
    color: tuple[int, int, int] = OVERLAY_COLOR
    alpha: float = OVERLAY_ALPHA


@dataclass(frozen=True)
class Prompt:
    """One request's decoder prompt, fixed for every frame of a video: the signal
    embeddings and the box (zeros with has_box 0 when there is no region)."""

    signal: np.ndarray  # (1, K, C) float32
    boxes: np.ndarray  # (1, 4) float32 xyxy, pixels of the padded S x S input
    has_box: np.ndarray  # (1,) float32 0/1


@dataclass(frozen=True)
class Decoded:
    """The mask decoder's answer for one image: low-res logits (what the next video frame
    takes as `mask_input`) and the predicted IoU."""

    logits: np.ndarray  # (1, 1, 4E, 4E) float32
    iou: float


class Segmenter:
    """The SAM halves of a bundle, step by step (see the module docstring)."""

    def __init__(self, manifest: Manifest, runners: Mapping[str, Runner]):
        self.encoder = component_runner(runners, SEG_ENCODER, ENCODER_INPUTS, ENCODER_OUTPUTS)
        self.decoder = component_runner(runners, SEG_DECODER, DECODER_INPUTS, DECODER_OUTPUTS)
        pp = manifest.preprocess.get(SEG_ENCODER)
        if pp is None:
            raise BundleError(f"the manifest has no preprocess entry for {SEG_ENCODER!r} (mean, std, image size)")
        self.preprocess_info: ImagePreprocess = pp
        self.image_size = pp.image_size  # S: the padded square the encoder takes
        mask_spec = next(t for t in self.decoder.input_specs if t.name == "mask_input")
        side = mask_spec.shape[-1]
        if not isinstance(side, int):
            side = int(manifest.components[SEG_DECODER].attributes.get("mask_size", 0))
        if side < 1:
            raise BundleError(f"{SEG_DECODER}: the mask_input size is neither fixed nor given as mask_size")
        self.mask_size = side  # 4E: the low-res mask side

    # ----------------------------------------------------------------- steps

    def preprocess(self, img: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (1, 3, S, S) float32: longest side to S, normalised, padded."""
        return preprocess_image(img, self.preprocess_info, ResizeMode.PAD)

    def encode(self, pixel_values: np.ndarray, clock: Clock) -> np.ndarray:
        """(1, 3, S, S) -> image embeddings (1, C, E, E)."""
        return infer(self.encoder, clock, SEG_ENCODER, {"pixel_values": pixel_values})["image_embeddings"]

    def prompt(self, signal: np.ndarray, region: Box | None, orig_hw: Sequence[int]) -> Prompt:
        """The decoder prompt for an image of `orig_hw` (H, W): signal (1, K, C), and the
        region as a box in the padded input's pixels, or no box."""
        sig = signal_batch(signal, self.decoder, "signal_embeddings")  # (1, K, C)
        if region is None:
            return Prompt(sig, np.zeros((1, 4), np.float32), np.zeros((1,), np.float32))
        return Prompt(sig, box_to_input_pixels(region, orig_hw, self.image_size), np.ones((1,), np.float32))

    def decode(self, embeddings: np.ndarray, prompt: Prompt, previous: np.ndarray | None, clock: Clock) -> Decoded:
        """One mask for `prompt`; `previous` (1, 1, 4E, 4E) low-res logits become the dense
        prompt (a video's last frame), None means no mask prompt."""
        m = self.mask_size
        if previous is None:
            mask_input, has_mask = np.zeros((1, 1, m, m), np.float32), np.zeros((1,), np.float32)
        else:
            mask_input, has_mask = previous, np.ones((1,), np.float32)
        out = infer(
            self.decoder,
            clock,
            SEG_DECODER,
            {
                "image_embeddings": embeddings,  # (1, C, E, E)
                "signal_embeddings": prompt.signal,  # (1, K, C)
                "boxes": prompt.boxes,  # (1, 4)
                "has_box": prompt.has_box,  # (1,)
                "mask_input": mask_input,  # (1, 1, 4E, 4E)
                "has_mask_input": has_mask,  # (1,)
            },
        )
        logits = np.asarray(out["low_res_masks"], dtype=np.float32)  # (1, 1, 4E, 4E)
        return Decoded(logits=logits, iou=float(np.asarray(out["iou_scores"]).reshape(-1)[0]))

    def postprocess(self, logits: np.ndarray, orig_hw: Sequence[int], threshold: float = 0.0) -> np.ndarray:
        """Low-res logits (1, 1, 4E, 4E) -> (H, W) bool mask at the image's own size."""
        return mask_logits_to_mask(logits, orig_hw, self.image_size, threshold)

    def postprocess_onto(self, logits: np.ndarray, frame: np.ndarray, options: SegmentOptions) -> np.ndarray:
        """Low-res logits (1, 1, 4E, 4E) -> (H, W) bool mask at `frame`'s size, with the
        overlay blended into `frame` in place: one pass (one kernel on a GPU)."""
        return mask_and_overlay(logits, frame, self.image_size, options.threshold, options.color, options.alpha)

    def segment(
        self,
        img: np.ndarray,
        signal: np.ndarray,
        region: Box | None,
        clock: Clock,
        threshold: float = 0.0,
        previous: np.ndarray | None = None,
    ) -> tuple[np.ndarray, Decoded]:
        """All steps on one image -> ((H, W) bool mask, decoder answer)."""
        hw = img.shape[:2]
        with clock("preprocess"):
            pixels = self.preprocess(img)  # (1, 3, S, S)
            prompt = self.prompt(signal, region, hw)
        embeddings = self.encode(pixels, clock)  # (1, C, E, E)
        decoded = self.decode(embeddings, prompt, previous, clock)
        with clock("postprocess"):
            mask = self.postprocess(decoded.logits, hw, threshold)  # (H, W)
        return mask, decoded


class SegmentImagePipeline:
    """segment_image: a mask PNG at the input's resolution and an overlay PNG.

    Outputs `mask.png` (kind mask, 0/255 grey) and `overlay.png` (kind image); timings
    `load`, `preprocess`, `seg_image_encoder`, `seg_mask_decoder`, `postprocess`
    (mask upsampling and overlay), `write`; info `iou_score`, `mask_fraction`, `size`.
    """

    module = "segment_image"
    components = (SEG_ENCODER, SEG_DECODER)

    def __init__(self, manifest: Manifest, runners: Mapping[str, Runner], options: SegmentOptions | None = None):
        self.segmenter = Segmenter(manifest, runners)
        self.options = options or SegmentOptions()

    def run(
        self,
        message: Any,
        signal: np.ndarray,
        media: str | os.PathLike,
        out_dir: str | os.PathLike,
        timings: dict[str, float] | None = None,
    ) -> PipelineResult:
        """Segment the image at `media` with `signal` (1, K, C) and the message's region."""
        clock = Clock()
        region = message_region(message)
        with clock("load"):
            img = load_image(media)  # (H, W, 3)
        mask, decoded = self.segmenter.segment(img, signal, region, clock, self.options.threshold)
        with clock("postprocess"):
            shown = overlay(img, mask, self.options.color, self.options.alpha)  # (H, W, 3)
        with clock("write"), OutputFiles(out_dir) as files:
            files.png("mask.png", mask, kind="mask")
            files.png("overlay.png", shown, kind="image")
        info = {
            "iou_score": decoded.iou,
            "mask_fraction": float(mask.mean()),
            "size": [int(img.shape[1]), int(img.shape[0])],
        }
        return PipelineResult(files.outputs, publish(timings, clock.timings), info)

