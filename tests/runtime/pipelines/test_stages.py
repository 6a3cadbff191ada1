"""The threaded stage chain: order, bounded memory, overlap, failure."""

from __future__ import annotations

import threading
import time

import pytest

from vitron_rt.runtime.errors import MediaError
from vitron_rt.runtime.pipelines.stages import run_stages


def test_items_arrive_in_order_through_stateful_stages():
    seen: list[int] = []
    running = {"total": 0}

    def accumulate(x):  # state carried from item to item, as the mask tracker does
        running["total"] += x
        return running["total"]

    stats = run_stages(iter(range(100)), [("double", lambda x: 2 * x), ("sum", accumulate), ("sink", seen.append)])
    assert seen == [sum(2 * i for i in range(n + 1)) for n in range(100)]
    assert stats.items == 100 and stats.fps > 0
    assert set(stats.stage_ms) == {"decode", "double", "sum", "sink"}
    assert stats.latency_ms_max >= stats.latency_ms_p50 > 0


def test_items_in_flight_are_bounded_whatever_the_stream_length():
    """A slow sink with a fast source: the source blocks on a full queue rather than
    reading ahead, so the number of live items depends on the queues, not the length."""
    alive = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def source(n):
        for i in range(n):
            with lock:
                alive["now"] += 1
                alive["peak"] = max(alive["peak"], alive["now"])
            yield i

    def sink(_):
        time.sleep(0.0005)
        with lock:
            alive["now"] -= 1

    peaks = []
    for n in (50, 400):
        alive["peak"] = 0
        stats = run_stages(source(n), [("a", lambda x: x), ("b", lambda x: x), ("sink", sink)], maxsize=2)
        assert stats.items == n
        peaks += [alive["peak"], stats.peak_in_flight]
    bound = (3 + 1) * (2 + 1)  # (stages + 1) * (maxsize + 1)
    assert max(peaks) <= bound


def test_stages_overlap():
    """Three stages sleeping 20 ms per item (sleep releases the GIL, as ONNX Runtime
    does): 10 items take about 12 slots of 20 ms, not 30."""
    def slow(x):
        time.sleep(0.02)
        return x

    stats = run_stages(iter(range(10)), [("a", slow), ("b", slow), ("c", slow)])
    assert stats.wall_ms < 0.7 * sum(v for k, v in stats.stage_ms.items() if k != "decode")


def test_first_failure_stops_every_stage_and_is_raised_as_itself():
    def source():
        yield from range(10_000)

    def boom(x):
        if x == 7:
            raise MediaError("frame 7 is corrupt")
        return x

    started = time.perf_counter()
    with pytest.raises(MediaError, match="frame 7 is corrupt") as e:
        run_stages(source(), [("a", lambda x: x), ("boom", boom), ("sink", lambda x: None)])
    assert time.perf_counter() - started < 5
    assert any("'boom' stage" in note for note in e.value.__notes__)
    assert not [t for t in threading.enumerate() if t.name.startswith("vitron-")]


def test_source_failure_is_raised():
    def source():
        yield 1
        raise MediaError("the video ends after 1 of 10 frames")

    with pytest.raises(MediaError, match="ends after 1"):
        run_stages(source(), [("sink", lambda x: None)])


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one stage"):
        run_stages(iter([]), [])
    with pytest.raises(ValueError, match="unique"):
        run_stages(iter([]), [("decode", lambda x: x)])
