"""segment_video and edit_video: the image pipelines per frame, as a stream of stages.

    segment_video:
    decode ─► preprocess ─► seg_image_encoder ─► seg_mask_decoder ─► postprocess ─► encode
     frames    (1,3,S,S)       (1,C,E,E)          logits carried      mask, overlay   overlay.mp4,
                                                   to the next frame                  masks.mkv

    edit_video:
    decode ─► preprocess ─► seg_image_encoder ─► seg_mask_decoder ─► mask ─► vae_encoder
          ─► unet (DDIM loop; last frame's final latents start the next) ─► vae_decoder
          ─► postprocess (resize, composite) ─► encode                      edited.mp4

Every stage is a thread and the queues between them are bounded (`stages.run_stages`),
so decoding, the engines and encoding overlap and memory does not grow with the video's
length: no list of frames is kept, only a per-frame summary (mask area, IoU score).
The mask decoder takes the previous frame's low-res logits as its `mask_input` from the
second frame on (SAM's mask prompt: the track), with the same signal embeddings and box
on every frame. The output video has the input's frame count and fps. The pixel stages
(preprocess; mask, overlay) run through vitron_rt.kernels: CUDA kernels on a GPU with
cuda-python, OpenCV / numpy elsewhere.

generate_video (ZeroScope-style text-to-video) and image_to_video (I2VGen-XL-style) are
not implemented: the bundle has no temporal UNet to run them with, and an image UNet
looped over frames would not be either of those models.
"""

from __future__ import annotations

import math
import os
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitron_rt.bundle import Manifest
from vitron_rt.engines import Runner
from vitron_rt.runtime.media import LOSSLESS_FOURCC, VideoReader
from vitron_rt.runtime.pipelines.base import Clock, OutputFiles, PipelineResult, message_region, publish
from vitron_rt.runtime.pipelines.diffusion import (
    UNET,
    VAE_DECODER,
    VAE_ENCODER,
    DiffusionOptions,
    Inpainter,
    InpaintPlan,
    seg_signal_for,
)
from vitron_rt.runtime.pipelines.segmentation import SEG_DECODER, SEG_ENCODER, Prompt, Segmenter, SegmentOptions
from vitron_rt.runtime.pipelines.stages import DEFAULT_MAXSIZE, StreamStats, run_stages

# A container that reports no frame rate gets this one (the common rate of web video).
FALLBACK_FPS = 25.0
# segment_video's per-frame masks (`SegmentVideoPipeline`, `read_masks`).
MASKS_NAME = "masks.mkv"


def read_masks(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """(T, H, W) bool: the masks segment_video wrote to `path` (`MASKS_NAME`), cut to
    `size` (H, W), the input video's, when given (an odd side was padded)."""
    with VideoReader(path) as reader:
        masks = np.stack([frame[..., 0] > 127 for frame in reader])
    return masks if size is None else masks[:, : size[0], : size[1]]


@dataclass
class _Frame:
    """One frame on its way through the stages; each stage fills what it makes and drops
    what no later stage reads, so a frame in a queue holds little besides its pixels."""

    image: np.ndarray  # (H, W, 3) uint8
    pixels: np.ndarray | None = None  # (1, 3, S, S) SAM input
    embeddings: np.ndarray | None = None  # (1, C, E, E)
    logits: np.ndarray | None = None  # (1, 1, 4E, 4E)
    mask: np.ndarray | None = None  # (H, W) bool
    vae_input: np.ndarray | None = None  # (1, 3, h*f, w*f)
    latent_mask: np.ndarray | None = None  # (1, 1, h, w)
    latents: np.ndarray | None = None  # (1, C, h, w): known, then denoised
    small: np.ndarray | None = None  # (h*f, w*f, 3) decoded edit
    out: np.ndarray | None = None  # (H, W, 3) the frame to encode


class _Tracker:
    """The mask-decoder stage: one mask per frame, the previous frame's logits as the
    mask prompt. Runs on one thread, in frame order."""

    def __init__(self, segmenter: Segmenter, prompt: Prompt):
        self.segmenter = segmenter
        self.prompt = prompt
        self.previous: np.ndarray | None = None  # (1, 1, 4E, 4E)
        self.clock = Clock()
        self.ious = array("d")

    def __call__(self, f: _Frame) -> _Frame:
        decoded = self.segmenter.decode(f.embeddings, self.prompt, self.previous, self.clock)
        self.previous = decoded.logits
        self.ious.append(decoded.iou)
        f.embeddings, f.logits = None, decoded.logits
        return f


def _fps(reader: VideoReader) -> float:
    return reader.fps if math.isfinite(reader.fps) and reader.fps > 0 else FALLBACK_FPS


def _stream_timings(stats: StreamStats) -> dict[str, float]:
    """Per-stage busy time summed over frames, the stream's wall time, per-frame latency."""
    t = dict(stats.stage_ms)
    t["stream"] = stats.wall_ms
    t["frame_latency_mean"] = stats.latency_ms_mean
    t["frame_latency_p50"] = stats.latency_ms_p50
    t["frame_latency_max"] = stats.latency_ms_max
    return t


def _stream_info(stats: StreamStats, fps: float, reader: VideoReader) -> dict[str, Any]:
    return {
        "frames": stats.items,
        "fps": fps,
        "throughput_fps": round(stats.fps, 3),
        "peak_frames_in_flight": stats.peak_in_flight,
        "size": [reader.width, reader.height],
    }


class SegmentVideoPipeline:
    """segment_video: an overlay MP4 of the tracked mask, the input's frame count and fps,
    and the masks themselves, exact.

    Outputs `overlay.mp4` (kind video) and `masks.mkv` (kind mask: each frame's mask as
    0 / 255 in every channel, lossless FFV1, an odd side padded by one repeated row or
    column like every video written here; `read_masks` reads it back as (T, H, W) bool);
    timings per stage (`decode`, `preprocess`,
    `seg_image_encoder`, `seg_mask_decoder`, `postprocess`, `encode`, each summed over
    frames), `stream` (wall time) and `frame_latency_mean/p50/max`; info `frames`, `fps`,
    `throughput_fps`, `peak_frames_in_flight`, and per frame `mask_fraction`, `iou_score`.
    """

    module = "segment_video"
    components = (SEG_ENCODER, SEG_DECODER)

    def __init__(
        self,
        manifest: Manifest,
        runners: Mapping[str, Runner],
        options: SegmentOptions | None = None,
        maxsize: int = DEFAULT_MAXSIZE,
    ):
        self.segmenter = Segmenter(manifest, runners)
        self.options = options or SegmentOptions()
        self.maxsize = maxsize

    def run(
        self,
        message: Any,
        signal: np.ndarray,
        media: str | os.PathLike,
        out_dir: str | os.PathLike,
        timings: dict[str, float] | None = None,
    ) -> PipelineResult:
        seg, opts = self.segmenter, self.options
        region = message_region(message)
        with VideoReader(media) as reader:
            tracker = _Tracker(seg, seg.prompt(signal, region, (reader.height, reader.width)))
            encoder_clock = Clock()
            fractions = array("d")
            fps = _fps(reader)

            def preprocess(f: _Frame) -> _Frame:
                f.pixels = seg.preprocess(f.image)
                return f

            def encode_image(f: _Frame) -> _Frame:
                f.embeddings, f.pixels = seg.encode(f.pixels, encoder_clock), None
                return f

            def postprocess(f: _Frame) -> _Frame:
                # The decoded frame is this stage's alone: the overlay goes into it in place.
                f.mask = seg.postprocess_onto(f.logits, f.image, opts)
                fractions.append(float(f.mask.mean()))
                f.out, f.image, f.logits = f.image, None, None
                return f

            def encode(f: _Frame) -> None:
                writer.write(f.out)
                masks.write(np.repeat(f.mask[..., None].astype(np.uint8) * 255, 3, axis=2))

            with OutputFiles(out_dir) as files:
                writer = files.video("overlay.mp4", fps)
                masks = files.video(MASKS_NAME, fps, kind="mask", fourcc=LOSSLESS_FOURCC)
                stats = run_stages(
                    (_Frame(image) for image in reader),
                    [
                        ("preprocess", preprocess),
                        (SEG_ENCODER, encode_image),
                        (SEG_DECODER, tracker),
                        ("postprocess", postprocess),
                        ("encode", encode),
                    ],
                    maxsize=self.maxsize,
                )
                writer.close()
                masks.close()
        info = _stream_info(stats, fps, reader) | {
            "mask_fraction": [round(v, 6) for v in fractions],
            "iou_score": [round(v, 6) for v in tracker.ious],
        }
        return PipelineResult(files.outputs, publish(timings, _stream_timings(stats)), info)


class _LatentTrack:
    """The UNet stage of a video edit: each frame's masked DDIM loop starts from the last
    edited frame's final latents (temporal consistency). Frames with an empty mask are
    passed through unedited and leave the track as it was."""

    def __init__(self, inpainter: Inpainter, plan: InpaintPlan):
        self.inpainter = inpainter
        self.plan = plan
        self.previous: np.ndarray | None = None  # (1, C, h, w)
        self.clock = Clock()
        self.edited = 0

    def __call__(self, f: _Frame) -> _Frame:
        if f.latents is not None:
            f.latents = self.inpainter.denoise(f.latents, f.latent_mask, self.plan, self.clock, self.previous)
            self.previous = f.latents
            self.edited += 1
        return f


class EditVideoPipeline:
    """edit_video: per-frame masked editing with the mask tracked and the latents carried.

    Outputs `edited.mp4` (kind video: the input's frame count and fps; each frame equal to
    the input frame outside its mask, up to the video codec); timings per stage
    (`decode`, `preprocess`, `seg_image_encoder`, `seg_mask_decoder`, `mask`,
    `vae_encoder`, `unet`, `vae_decoder`, `postprocess`, `encode`), `unet_per_call`,
    `stream`, `frame_latency_mean/p50/max`; info as segment_video's plus `edited_frames`,
    `unet_calls`, `latent_size` and the sampling parameters.
    """

    module = "edit_video"
    components = (SEG_ENCODER, SEG_DECODER, VAE_ENCODER, UNET, VAE_DECODER)

    def __init__(
        self,
        manifest: Manifest,
        runners: Mapping[str, Runner],
        options: DiffusionOptions | None = None,
        segment_options: SegmentOptions | None = None,
        maxsize: int = DEFAULT_MAXSIZE,
    ):
        self.options = options or DiffusionOptions()
        self.segment_options = segment_options or SegmentOptions()
        self.segmenter = Segmenter(manifest, runners)
        self.inpainter = Inpainter(manifest, runners, self.options)
        self.maxsize = maxsize

    def run(
        self,
        message: Any,
        signal: np.ndarray,
        media: str | os.PathLike,
        out_dir: str | os.PathLike,
        timings: dict[str, float] | None = None,
        seg_signal: np.ndarray | None = None,
    ) -> PipelineResult:
        """Edit the video at `media`; `signal` and `seg_signal` as `EditImagePipeline.run`."""
        seg, inp = self.segmenter, self.inpainter
        region = message_region(message)
        prompt_signal = seg_signal_for(seg, signal, seg_signal)
        with VideoReader(media) as reader:
            hw = (reader.height, reader.width)
            plan = inp.plan(hw, signal)
            tracker = _Tracker(seg, seg.prompt(prompt_signal, region, hw))
            track = _LatentTrack(inp, plan)
            clocks = {name: Clock() for name in (SEG_ENCODER, VAE_ENCODER, VAE_DECODER)}
            fractions = array("d")
            fps = _fps(reader)
            threshold = self.segment_options.threshold

            def preprocess(f: _Frame) -> _Frame:
                f.pixels = seg.preprocess(f.image)
                return f

            def encode_image(f: _Frame) -> _Frame:
                f.embeddings, f.pixels = seg.encode(f.pixels, clocks[SEG_ENCODER]), None
                return f

            def mask(f: _Frame) -> _Frame:
                f.mask = seg.postprocess(f.logits, f.image.shape[:2], threshold)
                f.logits = None
                fractions.append(float(f.mask.mean()))
                if f.mask.any():
                    f.vae_input, f.latent_mask = inp.prepare(f.image, f.mask, plan)
                return f

            def vae_encode(f: _Frame) -> _Frame:
                if f.vae_input is not None:
                    f.latents, f.vae_input = inp.vae.encode(f.vae_input, clocks[VAE_ENCODER]), None
                return f

            def vae_decode(f: _Frame) -> _Frame:
                if f.latents is not None:
                    f.small, f.latents = inp.vae.decode(f.latents, clocks[VAE_DECODER]), None
                return f

            def postprocess(f: _Frame) -> _Frame:
                f.out = f.image if f.small is None else inp.finish(f.image, f.small, f.mask)
                f.image = f.mask = f.small = f.latent_mask = None
                return f

            with OutputFiles(out_dir) as files:
                writer = files.video("edited.mp4", fps)
                stats = run_stages(
                    (_Frame(image) for image in reader),
                    [
                        ("preprocess", preprocess),
                        (SEG_ENCODER, encode_image),
                        (SEG_DECODER, tracker),
                        ("mask", mask),
                        (VAE_ENCODER, vae_encode),
                        (UNET, track),
                        (VAE_DECODER, vae_decode),
                        ("postprocess", postprocess),
                        ("encode", lambda f: writer.write(f.out)),
                    ],
                    maxsize=self.maxsize,
                )
                writer.close()
        measured = _stream_timings(stats)
        calls = track.clock.counts.get(UNET, 0)
        if calls:
            measured["unet_per_call"] = track.clock.timings[UNET] / calls
        opts = self.options
        info = _stream_info(stats, fps, reader) | {
            "edited_frames": track.edited,
            "unet_calls": calls,
            "steps": opts.num_inference_steps,
            "strength": opts.strength,
            "guidance_scale": opts.guidance_scale,
            "seed": opts.seed,
            "latent_size": [plan.latent_hw[1], plan.latent_hw[0]],
            "mask_fraction": [round(v, 6) for v in fractions],
            "iou_score": [round(v, 6) for v in tracker.ious],
        }
        return PipelineResult(files.outputs, publish(timings, measured), info)
