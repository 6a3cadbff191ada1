"""`vitron-rt demo` on its default, the trained mini preset: every task on fresh ShapesWorld
inputs, what each back end wrote, the contact sheet and the accuracy summary."""

import json
import shutil

import cv2

from vitron_rt import demo
from vitron_rt.runtime.media import VideoReader
from vitron_rt.shapes import sheet
from vitron_rt.shapes.tasks import TASKS


def test_mini_demo(mini_bundle, tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    shutil.copytree(mini_bundle, out / "bundle-mini")  # exported from the installed weights: reused
    summaries = demo.run_demo(out, summary_images=4, summary_videos=1)
    printed = capsys.readouterr().out
    assert "using the mini bundle" in printed
    assert [s["task"] for s in summaries] == list(demo.SHAPES_TASKS)
    for s in summaries:
        task = TASKS[demo.SHAPES_TASKS[s["task"]]]
        folder = out / s["task"]
        media = {"image": ["input.png"], "video": ["input.mkv"], "none": []}[task.media]
        assert all((folder / f).is_file() for f in media)
        assert s["prompt"] in printed and repr(s["expected"]) in printed
        # Whatever the model decided to call, what it wrote is on disk and reported.
        for o in s["outputs"]:
            assert o["path"] in printed
            if o["path"].endswith(".png"):
                assert cv2.imread(o["path"]) is not None
            else:  # a video, or a video's masks
                with VideoReader(o["path"]) as reader:
                    assert reader.frame_count > 0
        if s["module"] == task.module and task.module != "understand":
            assert s["outputs"], f"{s['task']}: the reply called {task.module} but nothing was written"
    # One tile per request, three to a row.
    tile = sheet.render_tile(sheet.Tile("t", "q", "a", "e", None))
    grid = cv2.imread(str(out / "contact_sheet.png"))
    rows = -(-len(summaries) // 3)
    assert grid.shape[:2] == (rows * tile.shape[0] + (rows + 1) * sheet.PAD, 3 * tile.shape[1] + 4 * sheet.PAD)
    report = json.loads((out / "accuracy.json").read_text())
    assert (report["images"], report["videos"], len(report["samples"])) == (4, 1, 5)
    assert (out / "accuracy.md").read_text() in printed
    assert json.loads((out / "demo.json").read_text()) == summaries
