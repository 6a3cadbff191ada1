"""A stream of items through a chain of stages: one thread per stage, bounded queues between.

    source ──► [q] ──► stage 1 ──► [q] ──► stage 2 ──► ... ──► stage n (the sink)
    (decode)          (preprocess)        (encoder)            (encode)

Stages overlap (ONNX Runtime, OpenCV and most numpy kernels release the GIL), and a full
queue blocks the stage before it, so at most about `(stages + 1) * (maxsize + 1)` items
exist at once however long the stream is: a video's memory stays flat. Each stage runs
on one thread, in stream order, so a stage may keep state from one item to the next (the
previous frame's mask, the previous frame's latents).

The first exception in any stage stops every stage (each waits on its queue with a
short timeout and checks a shared flag) and is re-raised by `run_stages` in the caller's
thread, as itself (a `MediaError` stays one), with a note naming the stage.
"""

from __future__ import annotations

import queue
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Queue bound between two stages: enough to absorb one slow frame, small enough that a
# stream of 720p frames holds a few tens of MB.
DEFAULT_MAXSIZE = 4
_POLL_S = 0.05  # how often a blocked stage checks whether another one failed

_END = object()  # end of stream, passed down the chain
_STOPPED = object()  # another stage failed; unwind


@dataclass
class StreamStats:
    """What a stream cost: items, wall time, per-stage busy time (summed over items),
    per-item latency (from the source starting on it to the sink finishing it), and the
    most items that were in flight at once (the memory bound, measured)."""

    items: int = 0
    wall_ms: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)
    latency_ms_mean: float = 0.0
    latency_ms_p50: float = 0.0
    latency_ms_max: float = 0.0
    peak_in_flight: int = 0

    @property
    def fps(self) -> float:
        """Items per second of wall time."""
        return self.items / (self.wall_ms / 1e3) if self.wall_ms > 0 else 0.0


Stage = tuple[str, Callable[[Any], Any]]


def run_stages(
    source: Iterable[Any],
    stages: Sequence[Stage],
    *,
    source_name: str = "decode",
    maxsize: int = DEFAULT_MAXSIZE,
) -> StreamStats:
    """Run every item of `source` through `stages` (name, fn) in order; the last stage's
    return value is dropped. Returns the stream's stats; raises the first stage error."""
    if not stages:
        raise ValueError("run_stages needs at least one stage")
    if maxsize < 1:
        raise ValueError(f"queue maxsize must be >= 1, got {maxsize}")
    names = [source_name] + [name for name, _ in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique, got {names}")

    stop = threading.Event()
    errors: list[BaseException] = []
    lock = threading.Lock()
    stage_ms = {name: 0.0 for name in names}
    latencies = array("d")
    in_flight = [0, 0]  # now, peak
    queues: list[queue.Queue] = [queue.Queue(maxsize) for _ in stages]

    def fail(name: str, exc: BaseException) -> None:
        with lock:
            if not errors:
                exc.add_note(f"(in the {name!r} stage of the stream)")
                errors.append(exc)
        stop.set()

    def put(q: queue.Queue, item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def get(q: queue.Queue) -> Any:
        while not stop.is_set():
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return _STOPPED

    def source_loop() -> None:
        it = iter(source)
        try:
            index = 0
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    payload = next(it)
                except StopIteration:
                    put(queues[0], _END)
                    return
                stage_ms[source_name] += (time.perf_counter() - start) * 1e3
                with lock:
                    in_flight[0] += 1
                    in_flight[1] = max(in_flight[1], in_flight[0])
                if not put(queues[0], (index, start, payload)):
                    return
                index += 1
        except BaseException as e:
            fail(source_name, e)
        finally:
            close = getattr(it, "close", None)  # a generator: release what it holds (a reader)
            if close is not None:
                close()

    def stage_loop(name: str, fn: Callable[[Any], Any], qin: queue.Queue, qout: queue.Queue | None) -> None:
        try:
            while True:
                item = get(qin)
                if item is _STOPPED:
                    return
                if item is _END:
                    if qout is not None:
                        put(qout, _END)
                    return
                index, born, payload = item
                start = time.perf_counter()
                out = fn(payload)
                done = time.perf_counter()
                stage_ms[name] += (done - start) * 1e3
                if qout is None:
                    latencies.append((done - born) * 1e3)
                    with lock:
                        in_flight[0] -= 1
                elif not put(qout, (index, born, out)):
                    return
        except BaseException as e:
            fail(name, e)

    threads = [threading.Thread(target=source_loop, name=f"vitron-{source_name}", daemon=True)]
    for i, (name, fn) in enumerate(stages):
        qout = queues[i + 1] if i + 1 < len(stages) else None
        threads.append(
            threading.Thread(target=stage_loop, args=(name, fn, queues[i], qout), name=f"vitron-{name}", daemon=True)
        )
    start = time.perf_counter()
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException:  # KeyboardInterrupt in the caller: stop the stream, then leave
        stop.set()
        for t in threads:
            t.join()
        raise
    wall_ms = (time.perf_counter() - start) * 1e3
    if errors:
        raise errors[0]
    lat = np.frombuffer(latencies, dtype=np.float64) if len(latencies) else np.zeros(1)
    return StreamStats(
        items=len(latencies),
        wall_ms=wall_ms,
        stage_ms=stage_ms,
        latency_ms_mean=float(lat.mean()),
        latency_ms_p50=float(np.median(lat)),
        latency_ms_max=float(lat.max()),
        peak_in_flight=in_flight[1],
    )
