"""Task endpoints and hybrid messages on the tiny bundle: an image goes in, an artifact
comes out at a URL the server serves; chat answers carry the `vitron` field."""

from __future__ import annotations

import base64
import os

import cv2
import numpy as np
import openai
import pytest
from _serve_helpers import client, get_bytes, png_data_url, random_image, thread_server
from skimage import data

from vitron_rt.runtime.media import VideoReader, VideoWriter, write_png_atomic
from vitron_rt.serve.config import ServeConfig
from vitron_rt.serve.server import open_session


@pytest.fixture(scope="module")
def media_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    write_png_atomic(root / "astronaut.png", data.astronaut())
    return root


@pytest.fixture(scope="module")
def server(tiny_bundle, media_root):
    with open_session(tiny_bundle, ServeConfig(threads=1)) as session:
        with thread_server(session, media_root=media_root) as srv:
            yield srv


def _decode(png: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None, "not a PNG"
    return img


def test_segment_round_trip(server):
    astronaut = data.astronaut()  # (512, 512, 3)
    c = client(server.url)
    reply = c.post(
        "/segment",
        cast_to=object,
        body={"prompt": "the astronaut", "image": png_data_url(astronaut), "region": [0.1, 0.05, 0.9, 0.95]},
    )
    assert reply["object"] == "vitron.task" and reply["task"] == "segment_image"
    message = reply["vitron"]["message"]
    assert message["module"] == "segment_image" and message["instructions"] == ["the astronaut"]
    arts = {a["kind"]: a for a in reply["vitron"]["artifacts"]}
    assert set(arts) == {"mask", "image"}
    assert reply["usage"]["total_tokens"] == reply["usage"]["prompt_tokens"] + reply["usage"]["completion_tokens"]
    assert reply["timings_ms"]["seg_mask_decoder"] > 0 and reply["timings_ms"]["prefill"] > 0

    status, ctype, body = get_bytes(arts["mask"]["url"])
    assert status == 200 and ctype == "image/png" and len(body) == arts["mask"]["bytes"]
    mask = _decode(body)
    assert mask.shape == astronaut.shape[:2] and set(np.unique(mask)) <= {0, 255}
    status, _, body = get_bytes(arts["image"]["url"])
    overlay = cv2.cvtColor(_decode(body), cv2.COLOR_BGR2RGB)
    assert overlay.shape == astronaut.shape
    # The overlay is the photo, tinted exactly where the mask is on.
    np.testing.assert_array_equal(overlay[mask == 0], astronaut[mask == 0])

    # An artifact of this request is the only thing under its URL: no other name, no traversal.
    base = arts["mask"]["url"].rsplit("/", 1)[0]
    assert get_bytes(base + "/..%2F..%2Fetc%2Fpasswd")[0] == 404
    assert get_bytes(base + "/nothing.png")[0] == 404


def test_file_paths_inside_the_media_root(server, media_root):
    c = client(server.url)
    for ref in ("astronaut.png", f"file://{media_root / 'astronaut.png'}", str(media_root / "astronaut.png")):
        reply = c.post("/segment", cast_to=object, body={"prompt": "the astronaut", "image": ref, "max_tokens": 4})
        assert [a["name"] for a in reply["vitron"]["artifacts"]] == ["mask.png", "overlay.png"], ref


def test_generate_and_edit(server):
    c = client(server.url)
    gen = c.post("/generate", cast_to=object, body={"prompt": "a red cube", "max_tokens": 4, "seed": 3})
    assert gen["task"] == "generate_image"
    (image,) = gen["vitron"]["artifacts"]
    assert image["kind"] == "image" and _decode(get_bytes(image["url"])[2]).ndim == 3

    edit = c.post(
        "/edit",
        cast_to=object,
        body={"prompt": "make it blue", "image": png_data_url(random_image(1, (64, 64))), "max_tokens": 4},
    )
    assert edit["task"] == "edit_image"
    assert {a["name"] for a in edit["vitron"]["artifacts"]} == {"edited.png", "mask.png"}

    with pytest.raises(openai.BadRequestError) as e:  # nothing to segment
        c.post("/segment", cast_to=object, body={"prompt": "the dog"})
    assert e.value.body["param"] == "image"


def test_chat_with_an_image_carries_the_hybrid_message(server):
    c = client(server.url)
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_url(random_image(2))}},
        {"type": "text", "text": "Segment the object."},
    ]}]
    reply = c.chat.completions.create(
        model="tiny", messages=messages, max_tokens=6, temperature=0,
        extra_body={"vitron": {"task": "segment", "region": [0.2, 0.2, 0.8, 0.8]}},
    )
    field = reply.vitron
    assert field["message"] == {"module": "segment_image", "instructions": ["Segment the object."],
                                "region": [0.2, 0.2, 0.8, 0.8]}
    assert {a["kind"] for a in field["artifacts"]} == {"mask", "image"}
    assert all(get_bytes(a["url"])[0] == 200 for a in field["artifacts"])

    chunks = list(c.chat.completions.create(
        model="tiny", messages=messages, max_tokens=6, temperature=0, stream=True,
        extra_body={"vitron": {"task": "segment"}},
    ))
    final = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(final) == 1 and final[0].vitron["message"]["module"] == "segment_image"
    assert final[0].usage.completion_tokens == 6
    urls = [a["url"] for a in final[0].vitron["artifacts"]]
    assert len(urls) == 2 and all(get_bytes(u)[0] == 200 for u in urls)

    plain = c.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0)
    assert getattr(plain, "vitron", None) is None  # the random model writes no message: no field


def test_artifact_folder_is_the_servers_and_bounded(tiny_bundle, tmp_path):
    art = tmp_path / "artifacts"
    with open_session(tiny_bundle, ServeConfig(threads=1)) as session:
        with thread_server(session, artifact_dir=art, max_artifacts=4) as srv:
            c = client(srv.url)
            urls = []
            for seed in range(4):
                reply = c.post("/segment", cast_to=object,
                               body={"prompt": "it", "image": png_data_url(random_image(seed)), "max_tokens": 2})
                urls.append([a["url"] for a in reply["vitron"]["artifacts"]])
            # Two files a request, four files kept: the two newest requests' files remain.
            assert [get_bytes(u)[0] for u in urls[-1] + urls[-2]] == [200] * 4
            assert [get_bytes(u)[0] for u in urls[0] + urls[1]] == [404] * 4
            assert sum(len(files) for _, _, files in os.walk(art)) == 4
    assert not any(art.iterdir())  # the server removes what it published when it stops


def test_video_segmentation_through_chat_and_task(server, tmp_path):
    clip = tmp_path / "clip.mp4"
    with VideoWriter(clip, fps=8) as writer:
        for i in range(12):
            writer.write(random_image(10 + i, (48, 64)))
    video_url = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    c = client(server.url)
    reply = c.post("/segment", cast_to=object, body={"prompt": "the moving thing", "video": video_url,
                                                     "max_tokens": 4})
    assert reply["task"] == "segment_video"
    video, masks = reply["vitron"]["artifacts"]  # the overlay, and the per-frame masks
    assert (video["kind"], masks["kind"], masks["name"]) == ("video", "mask", "masks.mkv")
    status, ctype, body = get_bytes(video["url"])
    assert status == 200 and ctype == "video/mp4" and len(body) == video["bytes"]
    out = tmp_path / "out.mp4"
    out.write_bytes(body)
    with VideoReader(out) as reader:
        assert (reader.width, reader.height) == (64, 48) and reader.frame_count == 12

    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video_url}},
                                             {"type": "text", "text": "Track the thing."}]}]
    chat = c.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0,
                                     extra_body={"vitron": {"task": "segment"}})
    assert chat.vitron["message"]["module"] == "segment_video" and len(chat.vitron["artifacts"]) == 2
    # The inline video was written to the server's scratch folder for the reader, and removed.
    uploads = server.app.state.vitron.store.uploads
    assert not uploads.exists() or not any(uploads.iterdir())
