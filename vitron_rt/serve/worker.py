"""The one thread that owns the session, and the bounded queue in front of it.

    event loop (many requests)                 worker thread (one stream)
    admit ──► 503 / 429 beyond the bounds
      │ media decoded (a bad one: 400, slot released)
    submit ──► deque (queue_depth) ──────────► conversation.reset(); run(...)
      ▲                                          on_text: check cancel/deadline, emit Delta
      └──────── Delta / Done / Failed / Cancelled ◄── loop.call_soon_threadsafe

The LLM is one stream on an edge device, so one worker runs one request at a time and
the session's runners stay resident for the server's life. Each request gets the
worker's one conversation, reset before and after: the KV cache buffers are allocated
once and reused, and nothing of one request's context reaches the next.

Cancellation is a flag: a waiting job is taken out of the queue at once; a running job
stops at its next decode step (`on_text` raises `Cancelled` inside the generation loop;
the conversation drops its cache state). A back-end pipeline that has started is not
interruptible: it runs to its end and its files are discarded.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitron_rt.runtime.errors import VitronInputError
from vitron_rt.runtime.sampling import SamplingParams
from vitron_rt.runtime.session import RunResult, Session
from vitron_rt.serve.artifacts import Artifact, ArtifactStore
from vitron_rt.serve.errors import ApiError
from vitron_rt.serve.metrics import Metrics

log = logging.getLogger("vitron_rt.serve")


class Cancelled(Exception):
    """Raised inside the worker to stop a request: `reason` is disconnect, timeout or shutdown."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class RunRequest:
    """One user turn over a history, as the session takes it (media already read)."""

    prompt: str
    history: list[dict[str, str]]  # system / user / assistant messages before the turn
    sampling: SamplingParams
    task: str = "auto"
    image: np.ndarray | None = None  # (H, W, 3) uint8 RGB
    video: Path | None = None
    scratch: list[Path] = field(default_factory=list)  # files to delete when the request ends
    region: tuple[float, ...] | None = None
    stream: bool = False


@dataclass
class Completed:
    """A finished request: the session's result and the artifacts it published."""

    result: RunResult
    artifacts: list[Artifact]


# Events from the worker to the request's handler.
@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Done:
    completed: Completed


@dataclass(frozen=True)
class Failed:
    error: ApiError


@dataclass(frozen=True)
class Stopped:
    reason: str  # disconnect | timeout | shutdown


Event = Delta | Done | Failed | Stopped


class Job:
    """One admitted request: where its events go, its deadline, its cancel flag."""

    def __init__(self, client: str, endpoint: str, loop: asyncio.AbstractEventLoop, arrived: float, timeout_s: float):
        self.id = secrets.token_hex(12)
        self.client = client
        self.endpoint = endpoint
        self.arrived = arrived  # time.monotonic()
        self.deadline = arrived + timeout_s
        self.created = int(time.time())
        self.request: RunRequest | None = None
        self.state = "reserved"  # reserved -> queued -> running -> finished
        self.cancel_reason: str | None = None
        self.first_token_at: float | None = None
        self._loop = loop
        self.events: asyncio.Queue[Event] = asyncio.Queue()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def emit(self, event: Event) -> None:
        """Hand an event to the handler's loop (from any thread)."""
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            pass

    def check(self) -> None:
        """In the worker, between steps: raise `Cancelled` if the request was cancelled
        or is past its deadline."""
        if self.cancel_reason is None and time.monotonic() > self.deadline:
            self.cancel_reason = "timeout"
        if self.cancel_reason is not None:
            raise Cancelled(self.cancel_reason)


class Worker:
    """Runs admitted jobs one at a time on `session`, which nothing else may use while
    the worker runs (a session serves one request at a time)."""

    def __init__(self, session: Session, store: ArtifactStore, queue_depth: int, max_per_client: int | None):
        self.session = session
        self.store = store
        self.queue_depth = queue_depth
        self.max_per_client = max_per_client
        self.metrics: Metrics | None = None  # set by the app once it has made them
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._reserved = 0  # admitted, media still being read
        self._running: Job | None = None
        self._clients: dict[str, int] = {}  # client -> jobs admitted and not finished
        self._closing = False
        self._service_s = 1.0  # moving average of a job's run time, for Retry-After
        self._thread = threading.Thread(target=self._loop, name="vitron-serve-worker", daemon=True)
        self._conversation = session.conversation()

    # -- state, for /metrics and /health

    @property
    def pending(self) -> int:
        """Jobs admitted and not yet running."""
        with self._cond:
            return len(self._queue) + self._reserved

    @property
    def running(self) -> int:
        with self._cond:
            return 0 if self._running is None else 1

    # -- lifecycle

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop taking jobs, cancel the waiting ones and the running one, join the thread.
        The session stays open: it is its opener's (`serve()` closes the one it opened)."""
        with self._cond:
            self._closing = True
            waiting = list(self._queue)
            self._queue.clear()
            if self._running is not None:
                self._running.cancel_reason = "shutdown"
            self._cond.notify_all()
        for job in waiting:
            self._finish_unrun(job, Stopped("shutdown"))
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("the worker did not stop within %.0f s", timeout_s)

    # -- admission

    def admit(self, client: str, endpoint: str, loop: asyncio.AbstractEventLoop, arrived: float,
              timeout_s: float) -> Job:
        """Reserve a place for a request, or refuse: 503 when the queue is full (or the
        server is stopping), 429 when this client already has its share."""
        with self._cond:
            if self._closing:
                raise ApiError(503, "the server is shutting down", code="shutting_down")
            busy = len(self._queue) + self._reserved + (0 if self._running is None else 1)
            if self.max_per_client is not None and self._clients.get(client, 0) >= self.max_per_client:
                raise ApiError(
                    429,
                    f"this client already has {self.max_per_client} request(s) queued or running; retry later",
                    code="client_limit",
                    headers={"Retry-After": str(self._retry_after_locked())},
                )
            if busy >= self.queue_depth + 1:
                raise ApiError(
                    503,
                    f"the server is busy ({busy - 1} request(s) waiting, the most it queues is {self.queue_depth}); "
                    "retry later",
                    code="queue_full",
                    headers={"Retry-After": str(self._retry_after_locked())},
                )
            self._reserved += 1
            self._clients[client] = self._clients.get(client, 0) + 1
        return Job(client, endpoint, loop, arrived, timeout_s)

    def _retry_after_locked(self) -> int:
        """Seconds a refused client should wait: the requests ahead of it at the average
        service time, 1 to 60."""
        ahead = len(self._queue) + self._reserved + (0 if self._running is None else 1)
        return int(min(60, max(1, math.ceil(self._service_s * max(ahead, 1)))))

    def release(self, job: Job) -> None:
        """Give back a reservation whose request was refused before it was queued."""
        with self._cond:
            if job.state != "reserved":
                return
            job.state = "finished"
            self._reserved -= 1
            self._drop_client(job.client)
        self._delete_scratch(job)

    def submit(self, job: Job, request: RunRequest) -> None:
        """Queue a reserved job with its request (a job cancelled meanwhile is dropped)."""
        job.request = request
        with self._cond:
            if job.state != "reserved":
                return
            self._reserved -= 1
            if job.cancel_reason is None and not self._closing:
                job.state = "queued"
                self._queue.append(job)
                self._cond.notify()
                return
            job.state = "finished"
            self._drop_client(job.client)
        reason = job.cancel_reason or "shutdown"
        if self.metrics is not None:
            self.metrics.cancelled.inc(reason)
        self._delete_scratch(job)
        job.emit(Stopped(reason))

    def cancel(self, job: Job, reason: str) -> None:
        """Cancel from the handler (client gone, deadline passed): a waiting job leaves the
        queue now; a running one stops at its next decode step."""
        with self._cond:
            if job.cancel_reason is None:
                job.cancel_reason = reason
            if job.state != "queued":
                return  # reserved: `submit` drops it; running: `check` stops it; finished: nothing to do
            self._queue.remove(job)
        if self.metrics is not None:
            self.metrics.cancelled.inc(reason)
        self._finish_unrun(job, Stopped(reason))

    def _finish_unrun(self, job: Job, event: Event) -> None:
        with self._cond:
            job.state = "finished"
            self._drop_client(job.client)
        self._delete_scratch(job)
        job.emit(event)

    def _drop_client(self, client: str) -> None:
        n = self._clients.get(client, 0) - 1
        if n > 0:
            self._clients[client] = n
        else:
            self._clients.pop(client, None)

    @staticmethod
    def _delete_scratch(job: Job) -> None:
        if job.request is not None:
            for path in job.request.scratch:
                path.unlink(missing_ok=True)

    # -- the thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                job = self._queue.popleft()
                job.state = "running"
                self._running = job
            started = time.monotonic()
            try:
                self._run(job)
            finally:
                took = time.monotonic() - started
                with self._cond:
                    self._running = None
                    job.state = "finished"
                    self._drop_client(job.client)
                    self._service_s = 0.8 * self._service_s + 0.2 * took

    def _run(self, job: Job) -> None:
        metrics = self.metrics
        if metrics is not None:
            metrics.queue_wait.observe(time.monotonic() - job.arrived)
        try:
            try:
                job.check()
                result = self._execute(job)
            finally:
                # The inputs are read (or never will be): gone before any reply is sent, so
                # a client that sees the reply sees no upload left behind.
                self._delete_scratch(job)
            artifacts = self.store.publish(job.id, result.outputs)
            if job.cancel_reason is not None:  # cancelled while a back end ran: nobody wants the files
                raise Cancelled(job.cancel_reason)
        except Cancelled as c:
            self.store.discard(job.id)
            if metrics is not None:
                metrics.cancelled.inc(c.reason)
            job.emit(Stopped(c.reason))
            return
        except VitronInputError as e:
            self.store.discard(job.id)
            job.emit(Failed(ApiError(400, str(e), code="invalid_input")))
            return
        except Exception:
            self.store.discard(job.id)
            log.exception("request %s failed", job.id)
            job.emit(Failed(ApiError(500, f"internal error while running the request (id {job.id})",
                                     code="internal_error")))
            return
        if metrics is not None:
            self._record(job, result, metrics)
        job.emit(Done(Completed(result, artifacts)))

    def _execute(self, job: Job) -> RunResult:
        req = job.request
        assert req is not None  # a queued job always has one
        metrics = self.metrics

        def on_text(delta: str) -> None:
            job.check()
            if job.first_token_at is None:
                job.first_token_at = time.monotonic()
                if metrics is not None:
                    metrics.ttft.observe(job.first_token_at - job.arrived)
            if req.stream:
                job.emit(Delta(delta))

        conv = self._conversation
        conv.reset()
        conv.messages = [dict(m) for m in req.history]
        try:
            return conv.run(
                req.prompt,
                image=req.image,
                video=req.video,
                region=req.region,
                task=req.task,
                sampling=req.sampling,
                out_dir=self.store.folder(job.id),
                on_text=on_text,
            )
        finally:
            conv.reset()  # the KV cache keeps nothing of this request

    @staticmethod
    def _record(job: Job, result: RunResult, metrics: Metrics) -> None:
        usage, timings = result.usage, result.timings_ms
        metrics.tokens.inc("prompt", by=usage.prompt_tokens)
        metrics.tokens.inc("completion", by=usage.completion_tokens)
        metrics.observe_stages(timings)
        decode_ms = timings.get("decode", 0.0)
        if usage.completion_tokens > 1 and decode_ms > 0:
            metrics.decode_rate.observe((usage.completion_tokens - 1) / (decode_ms / 1e3))


def client_key(authorization: str | None, host: str | None) -> str:
    """Who a request counts against for the per-client limit: its bearer token when it
    sends one (clients behind one address stay apart), else its address."""
    if authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
        if token:
            return "key:" + token[:128]
    return "addr:" + (host or "unknown")

