"""OutputFiles: a request's files appear together, whole, or not at all."""

from __future__ import annotations

import stat

import numpy as np
import pytest
from _pipeline_helpers import visible_and_hidden

from vitron_rt.runtime.errors import MediaError
from vitron_rt.runtime.pipelines import OutputFiles

IMG = np.full((8, 10, 3), 200, np.uint8)


def test_files_appear_on_success_only(tmp_path):
    with OutputFiles(tmp_path / "new") as files:
        files.png("mask.png", IMG[..., 0] > 100, kind="mask")
        writer = files.video("clip.mp4", 10.0)
        for _ in range(3):
            writer.write(IMG)
        assert [p for p in visible_and_hidden(tmp_path / "new") if not p.startswith(".")] == []
    assert visible_and_hidden(tmp_path / "new") == ["clip.mp4", "mask.png"]
    assert [o.kind for o in files.outputs] == ["mask", "video"]
    assert stat.S_IMODE((tmp_path / "new" / "mask.png").stat().st_mode) == 0o644


def test_an_error_after_the_first_file_leaves_none(tmp_path):
    (tmp_path / "mask.png").write_bytes(b"old")  # a previous request's file is kept as it was
    with pytest.raises(RuntimeError, match="mid-request"):
        with OutputFiles(tmp_path) as files:
            files.png("mask.png", IMG)
            writer = files.video("clip.mp4", 10.0)
            writer.write(IMG)
            raise RuntimeError("mid-request")
    assert visible_and_hidden(tmp_path) == ["mask.png"]
    assert (tmp_path / "mask.png").read_bytes() == b"old"


def test_a_video_with_missing_frames_is_not_committed(tmp_path):
    with pytest.raises(MediaError, match="no frames were written"):
        with OutputFiles(tmp_path) as files:
            files.png("a.png", IMG)
            files.video("clip.mp4", 10.0)
    assert visible_and_hidden(tmp_path) == []


def test_names_and_kinds_are_checked(tmp_path):
    with OutputFiles(tmp_path) as files:
        with pytest.raises(ValueError, match="plain, visible"):
            files.png("../x.png", IMG)
        with pytest.raises(ValueError, match="kind"):
            files.png("x.png", IMG, kind="audio")
    assert visible_and_hidden(tmp_path) == []
