"""The server's counters, gauges and histograms, written in Prometheus' text format
(version 0.0.4) at GET /metrics.

A registry of a few metric objects rather than the prometheus_client package: the
server needs three kinds, one process and no push gateway, and the runtime's
dependencies stay small. Every update takes one lock; the worker thread and the event
loop both write.

    vitron_requests_total{endpoint,status}       every answered request
    vitron_queue_depth / vitron_queue_capacity   requests waiting, and how many may
    vitron_requests_running                      0 or 1: the LLM is one stream
    vitron_cancelled_total{reason}               disconnect | timeout
    vitron_time_to_first_token_seconds           arrival -> first streamed text
    vitron_decode_tokens_per_second              per request
    vitron_stage_seconds{stage}                  the session's per-stage timings
    vitron_queue_wait_seconds, vitron_request_seconds{endpoint}
    vitron_tokens_total{kind}                    prompt | completion
    vitron_artifacts, vitron_artifact_bytes      what the artifact store holds
    process_resident_memory_bytes                this process's RSS (Linux)
"""

from __future__ import annotations

import math
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence

LabelValues = tuple[str, ...]

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RATE_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: LabelValues, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v))


class _Metric(ABC):
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()):
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: Sequence[str]) -> LabelValues:
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return tuple(str(v) for v in labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    @abstractmethod
    def lines(self) -> list[str]:
        """The sample lines, after the header."""


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()):
        super().__init__(name, help_text, labels)
        self._values: dict[LabelValues, float] = {}

    def inc(self, *labels: str, by: float = 1.0) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + by

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Gauge(_Metric):
    """A value read when /metrics is scraped (`fn`), or set by hand."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, fn: Callable[[], float] | None = None):
        super().__init__(name, help_text)
        self._fn = fn
        self._value = 0.0

    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value)

    def value(self) -> float:
        if self._fn is not None:
            return float(self._fn())
        with self._lock:
            return self._value

    def lines(self) -> list[str]:
        return [f"{self.name} {_number(self.value())}"]


class Histogram(_Metric):
    """Observations in cumulative buckets, with their sum and count, per label set."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Iterable[float], labels: Sequence[str] = ()):
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self._series: dict[LabelValues, list[float]] = {}  # per bucket counts + [sum, count]

    def observe(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        value = float(value)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [0.0] * (len(self.buckets) + 2)
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += value
            series[-1] += 1

    def count(self, *labels: str) -> float:
        with self._lock:
            series = self._series.get(self._key(labels))
            return 0.0 if series is None else series[-1]

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        out = []
        for key, series in items:
            for bound, n in zip((*self.buckets, math.inf), (*series[: len(self.buckets)], series[-1])):
                le = f'le="{_number(bound)}"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {_number(n)}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(series[-2])}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {_number(series[-1])}")
        return out


def resident_memory_bytes() -> float:
    """This process's resident set size from /proc (0 where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            return float(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return 0.0


class Metrics:
    """Every metric the server exports. Gauges read live values through the callables
    given (queue depth from the worker, artifact usage from the store)."""

    def __init__(
        self,
        queue_depth: Callable[[], float],
        queue_capacity: float,
        running: Callable[[], float],
        artifacts: Callable[[], tuple[int, int]],
    ):
        self.requests = Counter("vitron_requests_total", "Requests answered, by endpoint and HTTP status.",
                                ("endpoint", "status"))
        self.cancelled = Counter("vitron_cancelled_total", "Requests cancelled before they finished, by reason.",
                                 ("reason",))
        self.tokens = Counter("vitron_tokens_total", "Tokens pre-filled (prompt) and generated (completion).",
                              ("kind",))
        self.ttft = Histogram("vitron_time_to_first_token_seconds",
                              "From a request's arrival to its first generated text, queue wait included.",
                              TTFT_BUCKETS)
        self.decode_rate = Histogram("vitron_decode_tokens_per_second",
                                     "Decode throughput per request: (completion tokens - 1) / decode time.",
                                     RATE_BUCKETS)
        self.stage = Histogram("vitron_stage_seconds", "Per-stage latency of the requests that ran.",
                               LATENCY_BUCKETS, ("stage",))
        self.queue_wait = Histogram("vitron_queue_wait_seconds", "Time a request waited for the engine.",
                                    LATENCY_BUCKETS)
        self.latency = Histogram("vitron_request_seconds", "From arrival to the answer's last byte, by endpoint.",
                                 LATENCY_BUCKETS, ("endpoint",))
        self._artifacts = artifacts
        self._gauges = [
            Gauge("vitron_queue_depth", "Requests waiting for the engine.", queue_depth),
            Gauge("vitron_queue_capacity", "Requests that may wait before new ones get 503.", lambda: queue_capacity),
            Gauge("vitron_requests_running", "Requests the engine is running (the LLM is one stream).", running),
            Gauge("vitron_artifacts", "Artifact files the server keeps.", lambda: self._artifacts()[0]),
            Gauge("vitron_artifact_bytes", "Bytes of artifact files the server keeps.", lambda: self._artifacts()[1]),
            Gauge("process_resident_memory_bytes", "Resident memory of the server process.", resident_memory_bytes),
        ]

    def observe_stages(self, timings_ms: dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.stage.observe(ms / 1e3, stage)

    def render(self) -> str:
        metrics: list[_Metric] = [self.requests, self.cancelled, self.tokens, self.ttft, self.decode_rate,
                                  self.stage, self.queue_wait, self.latency, *self._gauges]
        lines: list[str] = []
        for m in metrics:
            lines += m.header()
            lines += m.lines()
        return "\n".join(lines) + "\n"
