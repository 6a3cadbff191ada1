"""What the serving tests share: servers on ephemeral ports (in a thread, or the CLI in a
subprocess), clients, media as data URLs, raw HTTP for bodies the openai client will not
send, and /metrics read back as numbers."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import cv2
import numpy as np
import openai

import vitron_rt
from vitron_rt.serve.config import ServeConfig
from vitron_rt.serve.server import BackgroundServer

REPO = Path(vitron_rt.__file__).resolve().parents[1]


@contextmanager
def thread_server(session, **overrides) -> Iterator[BackgroundServer]:
    """The app over `session` on 127.0.0.1:<ephemeral>, in a thread of this process."""
    config = ServeConfig(port=0, log_level="warning", **overrides)
    with BackgroundServer(session, config) as server:
        yield server


@dataclass(frozen=True)
class CliServer:
    url: str
    pid: int


@contextmanager
def cli_server(bundle: Path, *args: str, log: Path) -> Iterator[CliServer]:
    """`vitron-rt serve B --port 0 ...` in a subprocess; yields its URL and pid once it
    listens; stops it with SIGINT (as Ctrl-C would) and waits for it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vitron_rt.cli", "serve", str(bundle), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            cwd=REPO,
        )
        try:
            line = proc.stdout.readline().decode()  # the server prints one line once it listens
            m = re.search(r"http://[0-9.]+:\d+", line)
            if m is None:
                proc.wait(10)
                raise RuntimeError(f"the server did not start: {line!r}\n{log.read_text()}")
            yield CliServer(m.group(0), proc.pid)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def client(url: str, key: str = "test", timeout: float = 120.0) -> openai.OpenAI:
    """The official client, without its automatic retries (a 503 must be seen)."""
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=timeout)


def png_data_url(img: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def random_image(seed: int = 0, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def raw(url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
        chunked: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One request over a fresh connection: (status, headers, body). The body is sent in
    64 KiB pieces (with `chunked`, as Transfer-Encoding: chunked, with no length up front)
    even when the server answers early, as a client that streams an upload would."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    pieces = None if body is None else [body[i : i + (1 << 16)] for i in range(0, len(body), 1 << 16)]
    try:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if chunked:
            conn.request(method, path, body=iter(pieces or []), headers=hdrs, encode_chunked=True)
        else:
            conn.putrequest(method, path)
            if body is not None:
                hdrs["Content-Length"] = str(len(body))
            for k, v in hdrs.items():
                conn.putheader(k, v)
            conn.endheaders()
            for piece in pieces or []:
                conn.send(piece)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get_bytes(url: str) -> tuple[int, str, bytes]:
    u = urlparse(url)
    status, headers, body = raw(f"{u.scheme}://{u.netloc}", "GET", u.path)
    return status, headers.get("content-type", ""), body


def json_error(status_body: tuple[int, dict[str, str], bytes]) -> dict:
    """The error object of an error reply, checked to be JSON with no traceback in it."""
    status, headers, body = status_body
    assert headers.get("content-type", "").startswith("application/json"), headers
    text = body.decode()
    assert not any(mark in text for mark in ("Traceback", 'File "')), text
    err = json.loads(text)["error"]
    assert isinstance(err["message"], str) and err["message"] and "\n" not in err["message"]
    return err


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def scrape(url: str) -> dict[str, float]:
    """GET /metrics as {'name{labels}': value}, every line checked against the text format."""
    status, headers, body = raw(url, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in body.decode().splitlines():
        if line.startswith("# "):
            assert line.startswith(("# HELP ", "# TYPE ")), line
            continue
        m = _SAMPLE.match(line)
        assert m is not None, f"not a Prometheus sample line: {line!r}"
        samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return samples


def wait_until(predicate, timeout_s: float, interval_s: float = 0.02) -> float:
    """Seconds until `predicate()` held; AssertionError past `timeout_s`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not true within {timeout_s} s")
        time.sleep(interval_s)
    return time.monotonic() - start


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")
