"""segment_image end to end on the tiny bundle and scikit-image's astronaut (512 x 512)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from _pipeline_helpers import signal, visible_and_hidden, with_failure

from vitron_rt.engines import EngineError
from vitron_rt.runtime.errors import MediaError, RegionError
from vitron_rt.runtime.media import load_image
from vitron_rt.runtime.messages import HybridMessage
from vitron_rt.runtime.pipelines import PIPELINES, SegmentImagePipeline
from vitron_rt.runtime.pipelines.base import Clock
from vitron_rt.runtime.pipelines.segmentation import Segmenter

STAGES = {"load", "preprocess", "seg_image_encoder", "seg_mask_decoder", "postprocess", "write"}


def message(region=None):
    return HybridMessage("segment_image", ("the astronaut",), region=region)


def test_mask_and_overlay_at_the_input_resolution(bundle, runners, astronaut, tmp_path):
    timings: dict[str, float] = {}
    result = SegmentImagePipeline(bundle.manifest, runners).run(
        message((0.3, 0.1, 0.7, 0.6)), signal(), astronaut, tmp_path, timings
    )
    assert [o.to_dict() for o in result.outputs] == [
        {"kind": "mask", "path": str(tmp_path / "mask.png")},
        {"kind": "image", "path": str(tmp_path / "overlay.png")},
    ]
    assert visible_and_hidden(tmp_path) == ["mask.png", "overlay.png"]  # no staging file left
    image = load_image(astronaut)
    mask_png = load_image(result.path("mask"))
    assert mask_png.shape == image.shape  # 512 x 512, the input's
    assert set(np.unique(mask_png).tolist()) <= {0, 255}  # binary
    mask = mask_png[..., 0] == 255
    assert 0.0 < mask.mean() < 1.0 and result.info["mask_fraction"] == pytest.approx(mask.mean())
    shown = load_image(result.path("image"))
    np.testing.assert_array_equal(shown[~mask], image[~mask])  # the overlay tints the mask only
    assert (shown[mask] != image[mask]).any()
    assert set(timings) == STAGES and all(v >= 0 for v in timings.values())
    assert result.timings_ms == timings
    assert np.isfinite(result.info["iou_score"])


def test_same_as_the_steps_run_by_hand(bundle, runners, astronaut):
    """The pipeline is the documented chain: pad-preprocess, encode, decode with the box
    in the padded input's pixels, SAM postprocess."""
    seg = Segmenter(bundle.manifest, runners)
    image = load_image(astronaut)
    clock = Clock()
    mask, decoded = seg.segment(image, signal(), (0.3, 0.1, 0.7, 0.6), clock)
    pixels = seg.preprocess(image)
    assert pixels.shape == (1, 3, 64, 64)
    emb = runners["seg_image_encoder"].infer({"pixel_values": pixels})["image_embeddings"]
    out = runners["seg_mask_decoder"].infer(
        {
            "image_embeddings": emb,
            "signal_embeddings": signal(),
            "boxes": np.array([[0.3 * 64, 0.1 * 64, 0.7 * 64, 0.6 * 64]], np.float32),
            "has_box": np.ones(1, np.float32),
            "mask_input": np.zeros((1, 1, 32, 32), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
        }
    )
    np.testing.assert_allclose(decoded.logits, out["low_res_masks"], atol=1e-6)
    assert mask.shape == (512, 512) and mask.dtype == np.bool_
    assert set(clock.counts) == {"preprocess", "seg_image_encoder", "seg_mask_decoder", "postprocess"}


def test_the_region_is_the_box_prompt(bundle, runners, astronaut, tmp_path):
    pipe = SegmentImagePipeline(bundle.manifest, runners)
    a = pipe.run(message(), signal(), astronaut, tmp_path / "a")
    b = pipe.run(message((0.0, 0.0, 0.3, 0.3)), signal(), astronaut, tmp_path / "b")
    assert a.info["iou_score"] != b.info["iou_score"]


def test_registry_names_the_pipeline():
    assert PIPELINES["segment_image"] is SegmentImagePipeline
    assert SegmentImagePipeline.components == ("seg_image_encoder", "seg_mask_decoder")
    assert "generate_video" not in PIPELINES and "image_to_video" not in PIPELINES


@pytest.mark.parametrize(
    ("media", "error", "match"),
    [
        ("missing.png", MediaError, "no such image file"),
        ("notes.txt", MediaError, "not an image"),
        ("empty.png", MediaError, "empty"),
    ],
)
def test_bad_media_is_a_one_line_error_and_writes_nothing(bundle, runners, tmp_path, media, error, match):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    with pytest.raises(error, match=match) as e:
        SegmentImagePipeline(bundle.manifest, runners).run(message(), signal(), tmp_path / media, out)
    assert "\n" not in str(e.value)
    assert visible_and_hidden(out) == []


def test_a_region_outside_the_image_is_refused(bundle, runners, astronaut, tmp_path):
    hand_built = SimpleNamespace(region=(0.2, 0.2, 1.4, 0.9))  # skipped HybridMessage's checks
    with pytest.raises(RegionError, match=r"\[0, 1\]"):
        SegmentImagePipeline(bundle.manifest, runners).run(hand_built, signal(), astronaut, tmp_path)


def test_signal_of_the_wrong_width_is_refused(bundle, runners, astronaut, tmp_path):
    with pytest.raises(ValueError, match=r"must be \(1, K, 32\)"):
        SegmentImagePipeline(bundle.manifest, runners).run(message(), signal(width=16), astronaut, tmp_path)
    # (K, C) is taken as a batch of one.
    SegmentImagePipeline(bundle.manifest, runners).run(message(), signal()[0], astronaut, tmp_path)


def test_an_output_folder_that_is_a_file(bundle, runners, astronaut, tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(MediaError, match="is a file"):
        SegmentImagePipeline(bundle.manifest, runners).run(message(), signal(), astronaut, tmp_path / "out")


def test_engine_failure_leaves_no_file(bundle, runners, astronaut, tmp_path):
    failing = with_failure(runners, "seg_mask_decoder", fail_at=1)
    with pytest.raises(EngineError, match="injected"):
        SegmentImagePipeline(bundle.manifest, failing).run(message(), signal(), astronaut, tmp_path)
    assert visible_and_hidden(tmp_path) == []
