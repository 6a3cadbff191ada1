"""`vitron-rt demo`: the mini preset on fresh ShapesWorld by default (tested with the
mini bundle in tests/shapes/test_shapes_demo.py); `--preset tiny` runs every task end to
end on the real image and video that ship in packages, and writes the outputs it reports."""

import json
import shutil

import cv2
import pytest

from vitron_rt import cli, demo


def test_demo_defaults_to_the_trained_preset():
    args = cli.build_parser().parse_args(["demo"])
    assert args.preset == "mini" == demo.PRESETS[0]
    assert (args.eval_images, args.eval_videos) == (demo.SUMMARY_IMAGES, demo.SUMMARY_VIDEOS)
    with pytest.raises(demo.DemoError, match="unknown demo preset"):
        demo.run_demo(demo.Path("unused"), preset="vitron-7b")


def test_tiny_demo_runs_every_task(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    shutil.copytree(tiny_bundle, out / "bundle-tiny")  # already exported: no second export
    summaries = demo.run_demo(out, preset="tiny")
    printed = capsys.readouterr().out
    assert "using the tiny bundle" in printed and "RANDOM weights" in printed
    assert [s["task"] for s in summaries] == [t.name for t in demo.TASKS]
    by_task = {s["task"]: s for s in summaries}
    for s in summaries:
        assert {"prefill", "decode"} <= set(s["timings_ms"])
        for o in s["outputs"]:
            assert (out / s["task"]).exists() and o["path"] in printed
    kinds = {name: sorted(o["kind"] for o in by_task[name]["outputs"]) for name in by_task}
    assert kinds["segment_image"] == ["image", "mask"]
    assert kinds["generate_image"] == ["image"]
    assert kinds["edit_image"] == ["image", "mask"]
    assert kinds["segment_video"] == ["mask", "video"] and kinds["edit_video"] == ["video"]
    # The overlay video keeps the input's frame count.
    _, video = demo.demo_media()
    src, dst = cv2.VideoCapture(str(video)), cv2.VideoCapture(by_task["segment_video"]["outputs"][0]["path"])
    assert int(dst.get(cv2.CAP_PROP_FRAME_COUNT)) == int(src.get(cv2.CAP_PROP_FRAME_COUNT))
    assert json.loads((out / "demo.json").read_text()) == summaries
