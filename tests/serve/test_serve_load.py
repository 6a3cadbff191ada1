"""Bounded load on the tiny bundle: more concurrent clients than the queue admits (each
ends in 200, 503 or 429, none hangs), memory flat across bursts, a client that goes away
frees its slot and its cache, and the request timeout."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import openai
import pytest
from _serve_helpers import (
    cli_server,
    client,
    png_data_url,
    random_image,
    raw,
    rss_bytes,
    scrape,
    thread_server,
    wait_until,
)

from vitron_rt.serve.config import ServeConfig
from vitron_rt.serve.server import open_session

CONCURRENT = 64
BURSTS = 6
TEXT = [{"role": "user", "content": "Hello there."}]


@pytest.fixture(scope="module")
def session(tiny_bundle):
    with open_session(tiny_bundle, ServeConfig(threads=1)) as s:
        yield s


@pytest.fixture
def slow_decode(session, monkeypatch):
    """Each decode step takes `delay` seconds longer: a device slow enough that a client
    can leave mid-stream (the tiny model decodes a token in about a millisecond)."""
    embedder = session.generator.embedder
    real = embedder.embed_one

    def slow(token):
        time.sleep(0.01)
        return real(token)

    monkeypatch.setattr(embedder, "embed_one", slow)


def _call(c: openai.OpenAI, kind: str, image_url: str) -> tuple[int, str | None]:
    """One request with the openai client: (status, Retry-After of a refusal)."""
    try:
        if kind == "chat":
            c.chat.completions.create(model="tiny", messages=TEXT, max_tokens=16, temperature=0)
        else:
            c.post("/segment", cast_to=object, body={"prompt": "it", "image": image_url, "max_tokens": 4})
        return 200, None
    except openai.APIStatusError as e:
        assert e.response.headers["content-type"] == "application/json", "a refusal from the app, not uvicorn"
        return e.status_code, e.response.headers.get("retry-after")


def _burst(url: str, image_url: str, clients: int) -> list[tuple[int, str | None]]:
    """CONCURRENT requests at once (each thread's client made before the barrier),
    spread over `clients` API keys, half chat, half segment."""
    start = threading.Barrier(CONCURRENT)

    def one(i: int):
        with client(url, key=f"client-{i % clients}", timeout=120) as c:
            start.wait()
            return _call(c, "chat" if i % 2 else "segment", image_url)

    with ThreadPoolExecutor(CONCURRENT) as pool:
        futures = [pool.submit(one, i) for i in range(CONCURRENT)]
        done, not_done = wait(futures, timeout=300)
        assert not not_done, f"{len(not_done)} requests hung"
    return [f.result() for f in futures]


def test_64_concurrent_requests_end_in_200_503_or_429(session):
    image_url = png_data_url(random_image(0))
    with thread_server(session, queue_depth=2, max_per_client=2) as srv:
        # Two clients of 32 requests at once: 3 fit (1 running + 2 waiting), so one client
        # has its share (2) and hears 429, the other finds the queue full and hears 503.
        results = _burst(srv.url, image_url, clients=2)
        statuses = [s for s, _ in results]
        assert set(statuses) <= {200, 429, 503}, statuses
        assert statuses.count(200) >= 3 and statuses.count(503) >= 1 and statuses.count(429) >= 1, statuses
        assert all(r is not None and int(r) >= 1 for s, r in results if s != 200)
        m = scrape(srv.url)
        for status in (200, 429, 503):
            answered = sum(v for k, v in m.items()
                           if k.startswith("vitron_requests_total{") and f'status="{status}"' in k)
            assert answered == statuses.count(status)
        assert m["vitron_queue_depth"] == 0 and m["vitron_requests_running"] == 0


def test_memory_stays_flat_across_bursts(tiny_bundle, tmp_path):
    """The server in a process of its own (`vitron-rt serve`), so its RSS is its own."""
    image_url = png_data_url(random_image(3, (240, 320)))
    rss = []
    with cli_server(tiny_bundle, "--queue-depth", "4", log=tmp_path / "server.log") as srv:
        for _ in range(BURSTS):
            statuses = [s for s, _ in _burst(srv.url, image_url, clients=CONCURRENT)]
            assert set(statuses) <= {200, 503} and statuses.count(200) >= 5 and statuses.count(503) >= 1
            m = scrape(srv.url)
            assert m["vitron_queue_depth"] == 0 and m["vitron_requests_running"] == 0
            rss.append(rss_bytes(srv.pid))
            assert abs(m["process_resident_memory_bytes"] - rss[-1]) < 0.1 * rss[-1]  # the gauge is the RSS
    # RSS moves by +-10 MB from burst to burst (allocator caches; measured 154-173 MB over
    # 8 bursts on the 2-core machine). A leak adds up instead, and shows as the later
    # bursts' peak rising above the earlier ones': keeping each request's body (a 0.3 MB
    # data URL, refused ones included) would add ~19 MB a burst, ~57 MB over three.
    half = BURSTS // 2
    growth_mb = (max(rss[half:]) - max(rss[:half])) / 2**20
    assert growth_mb < 16, [round(r / 2**20, 1) for r in rss]
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_disconnect_mid_stream_frees_the_slot_and_the_cache(session, slow_decode):
    with thread_server(session, queue_depth=1) as srv:
        c = client(srv.url)
        before = c.chat.completions.create(model="tiny", messages=TEXT, max_tokens=8, temperature=0)

        stream = c.chat.completions.create(model="tiny", messages=TEXT, max_tokens=300, temperature=0, stream=True)
        for i, _ in enumerate(stream):
            if i == 3:
                break
        t0 = time.monotonic()
        stream.close()  # the client goes away with ~300 decode steps (>3 s) still to run
        wait_until(lambda: scrape(srv.url).get('vitron_cancelled_total{reason="disconnect"}', 0) == 1, 2.0)
        wait_until(lambda: scrape(srv.url)["vitron_requests_running"] == 0, 1.0)
        assert time.monotonic() - t0 < 2.0
        m = scrape(srv.url)
        assert m['vitron_tokens_total{kind="completion"}'] == 8  # the cancelled request generated on no further

        after = c.chat.completions.create(model="tiny", messages=TEXT, max_tokens=8, temperature=0)
        assert after.choices[0].message.content == before.choices[0].message.content
        assert after.usage == before.usage  # nothing of the cancelled request was left in the cache


def test_disconnect_while_queued_frees_the_queue_slot(session, slow_decode):
    with thread_server(session, queue_depth=1) as srv:
        c = client(srv.url)
        stream = c.chat.completions.create(model="tiny", messages=TEXT, max_tokens=300, temperature=0, stream=True)
        next(iter(stream))  # running now
        host, port = srv.url.removeprefix("http://").split(":")
        body = json.dumps({"model": "tiny", "messages": TEXT, "max_tokens": 4}).encode()
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_until(lambda: scrape(srv.url)["vitron_queue_depth"] == 1, 2.0)
        status, headers, _ = raw(srv.url, "POST", "/v1/chat/completions", body)
        assert status == 503 and int(headers["retry-after"]) >= 1  # one running, one waiting: full
        sock.close()  # the waiting client leaves
        wait_until(lambda: scrape(srv.url)["vitron_queue_depth"] == 0, 2.0)
        assert scrape(srv.url).get('vitron_cancelled_total{reason="disconnect"}', 0) == 1
        assert scrape(srv.url)["vitron_requests_running"] == 1  # the stream is still being served
        stream.close()


def test_request_timeout(session, slow_decode):
    with thread_server(session, request_timeout_s=0.5) as srv:
        c = client(srv.url)
        start = time.monotonic()
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model="tiny", messages=TEXT, max_tokens=300, temperature=0)
        assert e.value.status_code == 504 and "within 0.5 s" in e.value.body["message"]
        assert time.monotonic() - start < 2.0
        with pytest.raises(openai.APIError) as e:  # a stream that has started ends with an error event
            for _ in c.chat.completions.create(model="tiny", messages=TEXT, max_tokens=300, temperature=0,
                                                stream=True):
                pass
        assert "within 0.5 s" in str(e.value)
        assert scrape(srv.url).get('vitron_cancelled_total{reason="timeout"}', 0) == 2
        reply = c.chat.completions.create(model="tiny", messages=TEXT, max_tokens=4, temperature=0)
        assert reply.usage.completion_tokens == 4  # the slot is free again
