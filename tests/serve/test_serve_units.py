"""The serving pieces on their own: media gate, data URLs, metrics text, config bounds,
client identity, and `vitron-rt serve` refusing a bad bundle in one line."""

from __future__ import annotations

import base64
import os
import re

import numpy as np
import pytest

from vitron_rt import cli
from vitron_rt.runtime.media import write_png_atomic
from vitron_rt.serve.config import ServeConfig
from vitron_rt.serve.errors import ApiError
from vitron_rt.serve.media_inputs import MediaGate, parse_data_url
from vitron_rt.serve.metrics import Counter, Histogram, Metrics
from vitron_rt.serve.worker import client_key


def test_data_urls():
    payload = base64.b64encode(b"\x89PNG\r\n\x1a\nabc").decode()
    wrapped = "\n".join(payload[i : i + 4] for i in range(0, len(payload), 4))  # MIME line breaks are fine
    assert parse_data_url(f"data:image/png;base64,{wrapped}", "p").data == b"\x89PNG\r\n\x1a\nabc"
    assert parse_data_url(f"data:IMAGE/PNG;name=a.png;base64,{payload}", "p").media_type == "image/png"
    for bad, code in [("data:image/png;base64,abc", "bad_base64"), ("data:;base64,", "bad_base64"),
                      ("data:image/png,abc", "bad_data_url"), ("image/png;base64,abc", "bad_data_url")]:
        with pytest.raises(ApiError) as e:
            parse_data_url(bad, "p")
        assert e.value.status == 400 and e.value.code == code and e.value.param == "p"


def test_media_gate_paths(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    write_png_atomic(root / "sub" / "in.png", np.zeros((4, 4, 3), np.uint8))
    write_png_atomic(tmp_path / "out.png", np.zeros((4, 4, 3), np.uint8))
    os.symlink(tmp_path / "out.png", root / "escape.png")
    os.symlink(root / "sub" / "in.png", root / "inner.png")  # a link that stays inside is fine
    os.symlink(tmp_path, root / "up")  # a folder link out of the root
    gate = MediaGate(root, tmp_path / "scratch")
    assert gate.path("sub/in.png", "p") == (root / "sub" / "in.png").resolve()
    assert gate.path("inner.png", "p") == (root / "sub" / "in.png").resolve()
    assert gate.path(f"file://{root}/sub/in.png", "p") == (root / "sub" / "in.png").resolve()
    assert gate.path(f"file://localhost{root}/sub/in%2Epng", "p").name == "in.png"  # percent-decoded
    for ref in ["../out.png", "sub/../../out.png", str(tmp_path / "out.png"), "escape.png", "up/out.png",
                "file://otherhost/sub/in.png", "sub", "nothing.png", "a\x00b", "s3://bucket/key"]:
        with pytest.raises(ApiError) as e:
            gate.path(ref, "p")
        assert e.value.status == 400, ref
    with pytest.raises(ApiError) as e:
        MediaGate(None, tmp_path).path("sub/in.png", "p")
    assert e.value.code == "path_not_allowed" and "no media root" in e.value.message


_LINE = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)+\})? -?[0-9.e+Inf]+$')


def test_metrics_text_format():
    m = Metrics(queue_depth=lambda: 2, queue_capacity=8, running=lambda: 1, artifacts=lambda: (3, 4096))
    m.requests.inc("/v1/chat/completions", "200")
    m.requests.inc("/v1/chat/completions", "200")
    m.requests.inc("/v1/segment", "503")
    for v in (0.02, 0.3, 70.0):
        m.ttft.observe(v)
    m.observe_stages({"prefill": 12.0, "decode": 250.0})
    text = m.render()
    lines = text.splitlines()
    samples = [ln for ln in lines if not ln.startswith("#")]
    assert all(_LINE.match(ln) for ln in samples), [ln for ln in samples if not _LINE.match(ln)]
    assert 'vitron_requests_total{endpoint="/v1/chat/completions",status="200"} 2' in lines
    assert "vitron_queue_depth 2" in lines and "vitron_requests_running 1" in lines
    assert "vitron_artifact_bytes 4096" in lines
    ttft = "vitron_time_to_first_token_seconds_bucket"
    buckets = [float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith(ttft)]
    assert buckets == sorted(buckets) and buckets[-1] == 3  # cumulative; +Inf holds all
    assert 'vitron_time_to_first_token_seconds_bucket{le="0.025"} 1' in lines
    assert 'vitron_stage_seconds_sum{stage="decode"} 0.25' in lines
    for name in ("vitron_requests_total", "vitron_stage_seconds", "vitron_queue_depth"):
        assert f"# TYPE {name} " in text and f"# HELP {name} " in text
    with pytest.raises(ValueError):
        Counter("c", "h", ("a",)).inc()
    assert Histogram("h", "h", (1,), ("x",)).count("y") == 0


def test_config_bounds(tmp_path):
    assert ServeConfig().loopback and ServeConfig(host="::1").loopback and ServeConfig(host="localhost").loopback
    assert not ServeConfig(host="0.0.0.0").loopback
    for bad in (dict(port=70000), dict(queue_depth=-1), dict(request_timeout_s=0), dict(max_body_bytes=0),
                dict(max_per_client=0), dict(media_root=tmp_path / "missing"), dict(default_max_tokens=10**6)):
        with pytest.raises(ValueError):
            ServeConfig(**bad)
    assert ServeConfig(media_root=tmp_path).media_root == tmp_path.resolve()


def test_client_key():
    assert client_key("Bearer abc", "127.0.0.1") == "key:abc"
    assert client_key(None, "127.0.0.1") == client_key("Bearer ", "127.0.0.1") == "addr:127.0.0.1"


def test_cli_serve_refuses_a_bad_bundle_in_one_line(tmp_path, capsys):
    assert cli.main(["serve", str(tmp_path / "nope"), "--port", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitron-rt serve: ") and "\n" not in err and "Traceback" not in err
    assert cli.main(["serve", str(tmp_path), "--queue-depth", "-3"]) == 2
    assert "queue_depth" in capsys.readouterr().err
