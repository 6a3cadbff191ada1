"""segment_video and edit_video end to end on a 12-frame clip of Big Buck Bunny (1280 x 720,
25 fps), and flat memory on long videos."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
from _pipeline_helpers import CLIP_FRAMES, RecordingRunner, signal, visible_and_hidden, with_failure

from vitron_rt.engines import EngineError
from vitron_rt.runtime.errors import MediaError
from vitron_rt.runtime.media import VideoReader, VideoWriter
from vitron_rt.runtime.messages import HybridMessage
from vitron_rt.runtime.pipelines import DiffusionOptions, EditVideoPipeline, SegmentVideoPipeline
from vitron_rt.runtime.pipelines.video import read_masks

REGION = (0.3, 0.1, 0.7, 0.9)
STREAM_KEYS = {"decode", "encode", "stream", "frame_latency_mean", "frame_latency_p50", "frame_latency_max"}


def message(module="segment_video", region=REGION):
    return HybridMessage(module, ("the bunny",), region=region)


def video_facts(path):
    with VideoReader(path) as r:
        return r.frame_count, r.fps, (r.width, r.height)


def test_segment_video_tracks_the_mask_from_frame_to_frame(bundle, runners, bunny_clip, tmp_path):
    recorder = RecordingRunner(runners["seg_mask_decoder"])
    pipe_runners = {"seg_image_encoder": runners["seg_image_encoder"], "seg_mask_decoder": recorder}
    timings: dict[str, float] = {}
    result = SegmentVideoPipeline(bundle.manifest, pipe_runners).run(message(), signal(), bunny_clip, tmp_path, timings)

    assert [o.to_dict() for o in result.outputs] == [
        {"kind": "video", "path": str(tmp_path / "overlay.mp4")},
        {"kind": "mask", "path": str(tmp_path / "masks.mkv")},
    ]
    assert visible_and_hidden(tmp_path) == ["masks.mkv", "overlay.mp4"]
    assert video_facts(result.path("video")) == (CLIP_FRAMES, 25.0, (1280, 720))
    # The masks, exact: each frame's area is the one the pipeline measured.
    masks = read_masks(result.path("mask"))
    assert masks.shape == (CLIP_FRAMES, 720, 1280) and masks.dtype == bool
    np.testing.assert_allclose(masks.mean(axis=(1, 2)), result.info["mask_fraction"], atol=1e-6)
    assert 0 < masks.mean() < 1
    assert result.info["frames"] == CLIP_FRAMES and result.info["fps"] == 25.0
    assert len(result.info["mask_fraction"]) == len(result.info["iou_score"]) == CLIP_FRAMES
    assert set(timings) == STREAM_KEYS | {"preprocess", "seg_image_encoder", "seg_mask_decoder", "postprocess"}

    feeds = [f for f, _ in recorder.calls]
    outs = [o for _, o in recorder.calls]
    assert [float(f["has_mask_input"][0]) for f in feeds] == [0.0] + [1.0] * (CLIP_FRAMES - 1)
    for i in range(1, CLIP_FRAMES):  # frame i's mask prompt is frame i-1's low-res logits
        np.testing.assert_array_equal(feeds[i]["mask_input"], outs[i - 1]["low_res_masks"])
    box = np.array([[0.3 * 64, 0.1 * 36, 0.7 * 64, 0.9 * 36]], np.float32)  # 720p -> 36 x 64 in the SAM input
    for f in feeds:  # the same prompt on every frame
        np.testing.assert_allclose(f["boxes"], box, rtol=1e-6)
        np.testing.assert_array_equal(f["signal_embeddings"], signal())


def test_edit_video_keeps_frame_count_and_fps(bundle, runners, bunny_clip, tmp_path):
    opts = DiffusionOptions(num_inference_steps=5, strength=0.6)
    timings: dict[str, float] = {}
    result = EditVideoPipeline(bundle.manifest, runners, opts).run(
        message("edit_video"), signal(), bunny_clip, tmp_path, timings
    )
    assert visible_and_hidden(tmp_path) == ["edited.mp4"]
    assert video_facts(result.path("video")) == (CLIP_FRAMES, 25.0, (1280, 720))
    info = result.info
    assert info["frames"] == CLIP_FRAMES and 0 < info["edited_frames"] <= CLIP_FRAMES
    assert info["unet_calls"] == info["edited_frames"] * int(5 * 0.6)
    assert info["latent_size"] == [8, 4]
    assert STREAM_KEYS | {"unet", "unet_per_call", "vae_encoder", "vae_decoder", "mask"} <= set(timings)


def test_an_engine_failure_mid_video_leaves_no_file(bundle, runners, bunny_clip, tmp_path):
    failing = with_failure(runners, "seg_mask_decoder", fail_at=5)
    with pytest.raises(EngineError, match="injected failure at call 5"):
        SegmentVideoPipeline(bundle.manifest, failing).run(message(), signal(), bunny_clip, tmp_path)
    assert visible_and_hidden(tmp_path) == []  # neither the video nor a staging / temp file
    assert not [t for t in threading.enumerate() if t.name.startswith("vitron-")]

    failing = with_failure(runners, "unet", fail_at=7)
    with pytest.raises(EngineError, match="injected"):
        EditVideoPipeline(bundle.manifest, failing, DiffusionOptions(num_inference_steps=4)).run(
            message("edit_video"), signal(), bunny_clip, tmp_path
        )
    assert visible_and_hidden(tmp_path) == []


def test_bad_videos_are_one_line_errors(bundle, runners, bunny_clip, tmp_path):
    cut = tmp_path / "cut.mp4"
    data = bunny_clip.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.mp4").write_text("not a video")
    pipe = SegmentVideoPipeline(bundle.manifest, runners)
    for media, match in ((tmp_path / "notes.mp4", "not a readable video|cannot decode"), (cut, "truncated|cut short|ends after"),
                         (tmp_path / "none.mp4", "no such video file")):
        with pytest.raises(MediaError, match=match) as e:
            pipe.run(message(), signal(), media, tmp_path / "out")
        assert "\n" not in str(e.value)
        assert visible_and_hidden(tmp_path / "out") == []


_RSS_CHILD = """
import sys
import numpy as np
from vitron_rt.bundle import load_bundle
from vitron_rt.engines import OrtOptions
from vitron_rt.runtime.pipelines import RunnerSet, SegmentVideoPipeline

bundle = load_bundle(sys.argv[1], verify=False)
sig = np.random.default_rng(0).standard_normal((1, 2, 32)).astype(np.float32)
# No optimized-model cache: a run that builds it would peak higher than one that reads it.
with RunnerSet(bundle, "ort", OrtOptions(intra_op_threads=1, cache_optimized=False)) as runners:
    result = SegmentVideoPipeline(bundle.manifest, runners).run(None, sig, sys.argv[2], sys.argv[3])
# VmHWM (KiB), not ru_maxrss: Linux carries ru_maxrss over exec from the forking parent,
# so a child of a large pytest process would report the parent's size.
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(result.info["frames"], hwm, result.info["throughput_fps"])
"""


def test_memory_is_flat_in_the_video_length(tiny_bundle, bunny_frames_small, tmp_path):
    """Peak RSS of segment_video on 250 frames is within 10% of that on 50 (each run in a
    fresh process, 640 x 360 frames looped from Big Buck Bunny). Keeping every frame
    would add 200 x 0.69 MB = 138 MB, far beyond the margin."""
    peaks = {}
    for n in (50, 250):
        path = tmp_path / f"loop{n}.mp4"
        with VideoWriter(path, 25.0) as writer:
            for i in range(n):
                k = i % 50
                writer.write(bunny_frames_small[k if k < 25 else 49 - k])
        out = subprocess.run(
            [sys.executable, "-c", _RSS_CHILD, str(tiny_bundle), str(path), str(tmp_path / f"out{n}")],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        frames, rss, _fps = out.stdout.split()
        assert int(frames) == n
        peaks[n] = int(rss)
    unit = 1024  # VmHWM is in KiB
    held = 200 * bunny_frames_small[0].nbytes
    assert 0.10 * peaks[50] * unit < held  # the test can see frames being kept
    assert peaks[250] <= 1.10 * peaks[50], f"peak RSS {peaks[250] * unit >> 20} MiB vs {peaks[50] * unit >> 20} MiB"
