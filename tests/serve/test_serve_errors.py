"""Malformed requests on the tiny bundle: each is a 400 or 413 with a JSON error body in
OpenAI's shape, never a traceback; a failure inside the engine is a 500 that says only
its request id, with the traceback in the server's log."""

from __future__ import annotations

import json
import logging
import os

import openai
import pytest
from _serve_helpers import client, json_error, png_data_url, random_image, raw, thread_server

from vitron_rt.runtime.media import write_png_atomic
from vitron_rt.runtime.session import Conversation
from vitron_rt.serve.config import MiB, ServeConfig
from vitron_rt.serve.server import open_session

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def media_root(tmp_path_factory):
    base = tmp_path_factory.mktemp("media")
    root = base / "allowed"
    root.mkdir()
    write_png_atomic(root / "ok.png", random_image(0))
    write_png_atomic(base / "secret.png", random_image(1))  # beside the root, not in it
    os.symlink(base / "secret.png", root / "link.png")  # a link out of the root
    return root


@pytest.fixture(scope="module")
def server(tiny_bundle, media_root):
    with open_session(tiny_bundle, ServeConfig(threads=1)) as session:
        with thread_server(session, media_root=media_root, max_body_bytes=1 * MiB) as srv:
            yield srv


def _chat_body(content, **extra) -> bytes:
    return json.dumps({"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 2,
                       **extra}).encode()


def _image_part(url: str) -> list[dict]:
    return [{"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": {"url": url}}]


def test_malformed_json(server):
    for body in (b"{bad", b'{"model": "tiny", "messages": [', b"\xff\xfe\x00garbage", b"[1, 2]", b"null", b""):
        reply = raw(server.url, "POST", CHAT, body)
        assert reply[0] == 400, body
        err = json_error(reply)
        assert err["type"] == "invalid_request_error"
    assert json_error(raw(server.url, "POST", CHAT, b"{bad"))["code"] == "malformed_json"


def test_bad_fields_name_the_field(server):
    cases = [
        (dict(messages="hi"), "messages"),
        (dict(messages=[{"role": "robot", "content": "hi"}]), "messages[0].role"),
        (dict(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]), "messages[1]"),
        (dict(temperature=5), "temperature"),
        (dict(temperature="hot"), "temperature"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(n=2), "n"),
        (dict(stop=[""]), "stop"),
        (dict(presence_penalty=0.5), "presence_penalty"),
        (dict(vitron={"task": "paint"}), "vitron.task"),
        (dict(vitron={"region": [0.5, 0.5, 0.2, 0.2]}), "vitron.region"),
    ]
    for fields, param in cases:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **fields}
        reply = raw(server.url, "POST", CHAT, json.dumps(body).encode())
        assert reply[0] == 400, fields
        assert json_error(reply)["param"] == param, fields


def test_bad_base64_and_unsupported_media(server):
    c = client(server.url)
    cases = [
        ("data:image/png;base64,!!!not-base64!!!", "bad_base64"),
        ("data:image/png;base64,iVBORw0KGgo=%", "bad_base64"),
        ("data:image/png,rawbytes", "bad_data_url"),
        ("data:text/plain;base64,aGVsbG8=", "unsupported_media"),
        ("data:image/png;base64,aGVsbG8gd29ybGQ=", "unsupported_media"),  # "hello world" is no image
        ("https://example.com/cat.png", "unsupported_media"),
        ("ftp://example.com/cat.png", "unsupported_media"),
    ]
    for url, code in cases:
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": _image_part(url)}],
                                      max_tokens=2)
        assert e.value.body["code"] == code, url
        assert e.value.body["param"] == "messages[0].content[1].image_url.url"
    audio = [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": audio}], max_tokens=2)
    assert e.value.body["code"] == "unsupported_media"
    with pytest.raises(openai.BadRequestError) as e:  # a video that is not one
        c.post("/segment", cast_to=object, body={"prompt": "it", "video": "data:video/mp4;base64,aGVsbG8gd29ybGQ="})
    assert e.value.body["code"] == "unsupported_media"
    two = _image_part(png_data_url(random_image(0))) + [{"type": "image_url", "image_url": {"url": "x.png"}}]
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": two}], max_tokens=2)


def test_paths_are_confined_to_the_media_root(server, media_root):
    c = client(server.url)
    ok = c.post("/segment", cast_to=object, body={"prompt": "it", "image": "ok.png", "max_tokens": 2})
    assert len(ok["vitron"]["artifacts"]) == 2
    escapes = [
        "../secret.png",
        "sub/../../secret.png",
        str(media_root.parent / "secret.png"),
        f"file://{media_root.parent / 'secret.png'}",
        "/etc/passwd",
        "file:///etc/passwd",
        "link.png",  # a symlink whose target is outside
        "missing.png",
    ]
    for ref in escapes:
        reply = raw(server.url, "POST", "/v1/segment", json.dumps({"prompt": "it", "image": ref}).encode())
        assert reply[0] == 400, ref
        err = json_error(reply)
        assert err["code"] == "path_not_allowed", ref
        assert str(media_root) not in err["message"], "an error must not tell where the server's files are"


def test_oversized_body_is_413(server):
    big = _chat_body(_image_part("data:image/png;base64," + "A" * (2 * MiB)))
    reply = raw(server.url, "POST", CHAT, big)  # the declared length is over the limit
    assert reply[0] == 413 and json_error(reply)["code"] == "body_too_large"
    reply = raw(server.url, "POST", CHAT, big, chunked=True)  # no length up front: counted as it comes
    assert reply[0] == 413 and json_error(reply)["code"] == "body_too_large"
    noise = png_data_url(random_image(0, (900, 900)))  # ~2.4 MB of PNG: incompressible
    with pytest.raises(openai.APIStatusError) as e:  # what the openai client sees
        client(server.url).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": _image_part(noise)}], max_tokens=2
        )
    assert e.value.status_code == 413
    # The server still answers afterwards.
    assert raw(server.url, "POST", CHAT, _chat_body("hi"))[0] == 200


def test_unknown_routes_and_methods_are_json(server):
    reply = raw(server.url, "GET", "/v1/nothing")
    assert reply[0] == 404 and json_error(reply)["type"] == "not_found_error"
    reply = raw(server.url, "GET", CHAT)
    assert reply[0] == 405 and json_error(reply)


def test_an_engine_failure_is_a_500_without_its_traceback(server, monkeypatch, caplog):
    def broken(self, *args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(Conversation, "run", broken)
    with caplog.at_level(logging.ERROR, logger="vitron_rt.serve"):
        reply = raw(server.url, "POST", CHAT, _chat_body("hi"))
    assert reply[0] == 500
    err = json_error(reply)
    assert "secret" not in reply[2].decode() and "internal error" in err["message"] and "(id " in err["message"]
    logged = [r for r in caplog.records if r.name == "vitron_rt.serve" and r.exc_info]
    assert logged and "secret internal detail" in str(logged[0].exc_info[1])
    monkeypatch.undo()
    assert raw(server.url, "POST", CHAT, _chat_body("hi"))[0] == 200  # the worker lives on
