"""The ASGI app: routes, request bodies, waiting on the worker, and error replies.

    GET  /health                  liveness, queue state
    GET  /v1/models               the one served model
    GET  /metrics                 Prometheus text format
    POST /v1/chat/completions     OpenAI chat, streamed as server-sent events or not
    POST /v1/segment | /v1/generate | /v1/edit     task endpoints: media in, artifact out
    GET  /v1/artifacts/{job}/{name}                files the requests produced

A request is read (at most `max_body_bytes`), parsed and checked, admitted (or refused
with 503 / 429 and Retry-After), has its media decoded on a small thread pool (a bad
image gives back its slot), and is queued for the worker. The handler then waits for the
worker's events while watching for the client's disconnect and the request's deadline;
either cancels the job. Every error is a JSON body in OpenAI's shape; a failure that is
not the client's is logged with its traceback and answered with a request id only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from vitron_rt.runtime.prefill import VISION_ENCODER
from vitron_rt.runtime.session import Session
from vitron_rt.runtime.tasks import MEDIA_NEEDED, get_pipeline, resolve_task
from vitron_rt.serve.artifacts import ArtifactStore
from vitron_rt.serve.config import ServeConfig
from vitron_rt.serve.errors import ApiError, bad_request
from vitron_rt.serve.media_inputs import MediaGate
from vitron_rt.serve.metrics import Metrics
from vitron_rt.serve.protocol import Turn, parse_chat, parse_task
from vitron_rt.serve.responses import (
    DONE_LINE,
    FINISH_REASONS,
    chat_completion,
    chunk,
    sse,
    sse_error,
    task_result,
    usage_dict,
    vitron_field,
)
from vitron_rt.serve.worker import (
    Completed,
    Delta,
    Done,
    Event,
    Failed,
    Job,
    RunRequest,
    Stopped,
    Worker,
    client_key,
)

log = logging.getLogger("vitron_rt.serve")

# Past the deadline the handler still waits this long for the worker's own timeout
# event (it checks between decode steps), so the usual answer is the worker's.
DEADLINE_GRACE_S = 0.5
# A body over the limit is still read and dropped up to this many bytes more, so the
# client, which is usually still sending, can read the 413 instead of a reset connection.
DRAIN_BYTES = 16 * 2**20
# Threads that parse JSON and decode media: a few, so a burst of large images cannot
# hold many decoded copies at once.
DECODE_THREADS = 2
CLIENT_CLOSED = 499  # nginx's status for "the client went away first", for the metrics only


class _ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class ServerState:
    """Everything the handlers share: the config, the worker that owns the engine, the
    artifact store, the media gate, the metrics."""

    def __init__(self, session: Session, config: ServeConfig):
        self.config = config
        self.session = session
        self.model_id = config.model_name or Path(session.bundle.root).name
        self.created = int(time.time())
        self.store = ArtifactStore(config.artifact_dir, config.max_artifacts, config.max_artifact_bytes)
        self.gate = MediaGate(config.media_root, self.store.uploads)
        self.worker = Worker(session, self.store, config.queue_depth, config.max_per_client)
        self.metrics = Metrics(
            queue_depth=lambda: self.worker.pending,
            queue_capacity=config.queue_depth,
            running=lambda: self.worker.running,
            artifacts=self.store.usage,
        )
        self.worker.metrics = self.metrics
        self.limiter = anyio.CapacityLimiter(DECODE_THREADS)
        self.has_vision = VISION_ENCODER in session.manifest.components


def create_app(session: Session, config: ServeConfig) -> Starlette:
    """The server over an open session. The app's lifespan starts the worker thread and,
    at shutdown, stops it and removes the artifacts; the session stays the caller's."""
    state = ServerState(session, config)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        state.worker.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(state.worker.close)
            state.store.close()

    def route(path: str, handler: Callable[[Request, ServerState], Awaitable[Response]], methods: list[str]) -> Route:
        return Route(path, _endpoint(path, handler, state), methods=methods)

    routes = [
        route("/health", _health, ["GET"]),
        route("/v1/models", _models, ["GET"]),
        route("/v1/models/{model:path}", _model, ["GET"]),
        route("/metrics", _metrics, ["GET"]),
        route("/v1/chat/completions", _chat, ["POST"]),
        *(route(f"/v1/{verb}", partial(_task, verb=verb), ["POST"]) for verb in ("segment", "generate", "edit")),
        route("/v1/artifacts/{job}/{name}", _artifact, ["GET"]),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        status = exc.status_code
        state.metrics.requests.inc("unmatched", str(status))
        message = "no such endpoint" if status == 404 else str(exc.detail)
        return _error_response(ApiError(status, message))

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error_response(ApiError(500, "internal server error"))

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )
    app.state.vitron = state
    return app


def _endpoint(name: str, handler: Callable[[Request, ServerState], Awaitable[Response]], state: ServerState):
    """The handler with its errors as JSON replies, and its count and latency recorded
    (a stream records its latency when it ends)."""

    async def endpoint(request: Request) -> Response:
        start = time.monotonic()
        status = 500
        response: Response
        try:
            response = await handler(request, state)
            status = response.status_code
        except ApiError as e:
            status = e.status
            response = _error_response(e)
        except (_ClientGone, ClientDisconnect):
            status = CLIENT_CLOSED
            response = Response(status_code=CLIENT_CLOSED)  # nobody reads it
        except Exception:
            log.exception("unhandled error on %s", name)
            response = _error_response(ApiError(500, "internal server error"))
        state.metrics.requests.inc(name, str(status))
        if not isinstance(response, EventStream):
            state.metrics.latency.observe(time.monotonic() - start, name)
        return response

    return endpoint


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


# --------------------------------------------------------------------------- small endpoints


async def _health(request: Request, state: ServerState) -> Response:
    w = state.worker
    return JSONResponse({"status": "ok", "model": state.model_id, "queue_depth": w.pending,
                         "queue_capacity": state.config.queue_depth, "running": w.running})


def _model_card(state: ServerState) -> dict[str, Any]:
    return {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "vitron-rt"}


async def _models(request: Request, state: ServerState) -> Response:
    return JSONResponse({"object": "list", "data": [_model_card(state)]})


async def _model(request: Request, state: ServerState) -> Response:
    if request.path_params["model"] != state.model_id:
        raise ApiError(404, f"the model {request.path_params['model']!r} does not exist", code="model_not_found")
    return JSONResponse(_model_card(state))


async def _metrics(request: Request, state: ServerState) -> Response:
    return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def _artifact(request: Request, state: ServerState) -> Response:
    found = state.store.lookup(request.path_params["job"], request.path_params["name"])
    if found is None or not found.path.is_file():
        raise ApiError(404, "no such artifact (artifacts of old requests are evicted)", code="artifact_not_found")
    media_type = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
    return FileResponse(found.path, media_type=media_type)


# --------------------------------------------------------------------------- bodies


async def read_json(request: Request, state: ServerState) -> Any:
    """The body as JSON: 413 past `max_body_bytes` (checked on the declared length and
    on the bytes as they come), 400 for an empty or malformed body."""
    limit = state.config.max_body_bytes
    declared = request.headers.get("content-length")
    too_large = False
    if declared is not None:
        try:
            too_large = int(declared) > limit
        except ValueError:
            raise bad_request("the Content-Length header is not a number") from None
    body = bytearray()
    received = 0
    async for piece in request.stream():
        received += len(piece)
        if received > limit:
            too_large = True
        if too_large:
            body = bytearray()
            if received > limit + DRAIN_BYTES:
                break
            continue
        body += piece
    if too_large:
        raise ApiError(413, f"the request body is larger than the server's limit of {limit} bytes",
                       code="body_too_large")
    if not body:
        raise bad_request("the request body is empty; send a JSON object")
    try:
        return await anyio.to_thread.run_sync(json.loads, bytes(body), limiter=state.limiter)
    except json.JSONDecodeError as e:
        where = f"line {e.lineno}, column {e.colno}"
        raise bad_request(f"malformed JSON: {e.msg} ({where})", code="malformed_json") from None
    except (UnicodeDecodeError, RecursionError, ValueError):
        raise bad_request("malformed JSON: not UTF-8 JSON text", code="malformed_json") from None


# --------------------------------------------------------------------------- running a request


def _check_capabilities(turn: Turn, state: ServerState, task_verb: str | None) -> None:
    """Refuse before queueing what this bundle cannot do."""
    if turn.media is not None and not state.has_vision:
        raise bad_request(f"{turn.media.param}: this model takes no images or videos (no vision encoder)",
                          turn.media.param, "unsupported_media")
    if turn.region is not None and turn.media is None:
        raise bad_request("a region points into an image: send an image or a video with it", "region")
    if task_verb is None:
        return
    module = resolve_task(task_verb, turn.media is not None and turn.media.kind == "video")
    signal = state.session.manifest.signal
    if signal is None or module not in signal.projectors:
        raise bad_request(f"this model cannot run {module}: the bundle has no signal projector for it",
                          code="unsupported_task")
    if get_pipeline(module) is None:
        raise bad_request(f"this server has no back end for {module}", code="unsupported_task")
    needs = MEDIA_NEEDED.get(module)
    if needs is not None and (turn.media is None or turn.media.kind != needs):
        raise bad_request(f"{module} works on an {needs}", "image" if needs == "image" else "video")


def _read_media(state: ServerState, turn: Turn) -> RunRequest:
    """In a decode thread: the request with its media read (image decoded, video checked)."""
    run = RunRequest(prompt=turn.prompt, history=turn.history, sampling=turn.sampling, task=turn.task,
                     region=turn.region, stream=turn.stream)
    ref = turn.media
    if ref is None:
        return run
    if ref.kind == "image":
        run.image = state.gate.image(ref.url, ref.param)
    else:
        run.video, scratch = state.gate.video(ref.url, ref.param)
        if scratch:
            run.scratch.append(run.video)
    return run


async def _start(request: Request, state: ServerState, turn: Turn, endpoint: str, arrived: float) -> Job:
    """Admit the request (or refuse it), read its media, queue it."""
    peer = request.client.host if request.client else None
    job = state.worker.admit(
        client_key(request.headers.get("authorization"), peer),
        endpoint,
        asyncio.get_running_loop(),
        arrived,
        state.config.request_timeout_s,
    )
    try:
        run = await anyio.to_thread.run_sync(_read_media, state, turn, limiter=state.limiter)
    except BaseException:
        state.worker.release(job)
        raise
    state.worker.submit(job, run)
    return job


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone (the body has been read, so only that is left)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _wait(request: Request, state: ServerState, job: Job, *, skip_deltas: bool) -> Event:
    """The job's next event (its outcome, when `skip_deltas`), while watching for the
    client's disconnect (cancel, `_ClientGone`) and the deadline (cancel, 504)."""
    gone = asyncio.ensure_future(_disconnected(request.receive))
    try:
        while True:
            get = asyncio.ensure_future(job.events.get())
            done, _ = await asyncio.wait(
                {get, gone}, timeout=max(0.0, job.remaining()) + DEADLINE_GRACE_S, return_when=asyncio.FIRST_COMPLETED
            )
            if get in done:
                event = get.result()
                if skip_deltas and isinstance(event, Delta):
                    continue
                return event
            get.cancel()
            if gone in done:
                state.worker.cancel(job, "disconnect")
                raise _ClientGone()
            state.worker.cancel(job, "timeout")
            return Stopped("timeout")
    finally:
        gone.cancel()


def _outcome(event: Event, state: ServerState) -> Completed:
    """The finished request, or its failure as an `ApiError`."""
    if isinstance(event, Done):
        return event.completed
    if isinstance(event, Failed):
        raise event.error
    if isinstance(event, Stopped):
        raise _stopped_error(event.reason, state)
    raise ApiError(500, f"unexpected worker event {type(event).__name__}")


def _stopped_error(reason: str, state: ServerState) -> ApiError:
    if reason == "timeout":
        return ApiError(504, f"the request did not finish within {state.config.request_timeout_s:g} s",
                        code="timeout")
    if reason == "shutdown":
        return ApiError(503, "the server is shutting down", code="shutting_down")
    return ApiError(500, f"the request was cancelled ({reason})", code="cancelled")


async def _chat(request: Request, state: ServerState) -> Response:
    arrived = time.monotonic()
    turn = parse_chat(await read_json(request, state), state.config, state.model_id)
    _check_capabilities(turn, state, None)
    job = await _start(request, state, turn, "/v1/chat/completions", arrived)
    base_url = str(request.base_url)
    if turn.stream:
        # The first event decides the status: an error before any text is a real 4xx/5xx.
        first = await _wait(request, state, job, skip_deltas=False)
        if not isinstance(first, Delta):
            _outcome(first, state)  # raises for a failure
        return EventStream(state, job, first, turn.include_usage, base_url, arrived)
    completed = _outcome(await _wait(request, state, job, skip_deltas=True), state)
    return JSONResponse(
        chat_completion(job.id, job.created, state.model_id, completed.result, completed.artifacts, base_url)
    )


async def _task(request: Request, state: ServerState, verb: str) -> Response:
    arrived = time.monotonic()
    turn = parse_task(await read_json(request, state), verb, state.config, state.model_id)
    _check_capabilities(turn, state, verb)
    job = await _start(request, state, turn, f"/v1/{verb}", arrived)
    completed = _outcome(await _wait(request, state, job, skip_deltas=True), state)
    return JSONResponse(
        task_result(job.id, job.created, state.model_id, completed.result, completed.artifacts, str(request.base_url))
    )


# --------------------------------------------------------------------------- streaming


class EventStream(Response):
    """A chat answer as server-sent events, fed by the job's events: a role chunk, a
    chunk per text delta (deltas that queued up meanwhile go out as one), a final chunk
    with finish_reason, usage and the `vitron` field, then `data: [DONE]`. The client
    going away (seen on the receive channel, or as a failed send) cancels the job."""

    media_type = "text/event-stream"

    def __init__(self, state: ServerState, job: Job, first: Event, include_usage: bool, base_url: str,
                 arrived: float):
        # Not Response.__init__: it would render an empty body and send Content-Length: 0.
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._state = state
        self._job = job
        self._first = first
        self._include_usage = include_usage
        self._base_url = base_url
        self._arrived = arrived

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            await _disconnected(receive)
            gone.set()

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await self._pump(send, gone)
            if not gone.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the server's send failed: the client has gone
            gone.set()
        finally:
            watcher.cancel()
            if gone.is_set():
                self._state.worker.cancel(self._job, "disconnect")
            self._state.metrics.latency.observe(time.monotonic() - self._arrived, "/v1/chat/completions")

    async def _pump(self, send: Send, gone: asyncio.Event) -> None:
        job, model = self._job, self._state.model_id

        async def emit(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        await emit(sse(chunk(job.id, job.created, model, {"role": "assistant", "content": ""})))
        event: Event | None = self._first
        while event is not None and not gone.is_set():
            if isinstance(event, Delta):
                text, event = self._gather(event.text)
                await emit(sse(chunk(job.id, job.created, model, {"content": text})))
                if event is None:
                    event = await self._next(gone)
                continue
            if isinstance(event, Done):
                await emit(self._final(event.completed))
                await emit(DONE_LINE)
            elif isinstance(event, Failed):
                await emit(sse_error(event.error))
            elif isinstance(event, Stopped) and event.reason != "disconnect":
                await emit(sse_error(_stopped_error(event.reason, self._state)))
            return

    def _gather(self, text: str) -> tuple[str, Event | None]:
        """`text` and every delta already queued after it, and the first other event."""
        parts = [text]
        while True:
            try:
                event = self._job.events.get_nowait()
            except asyncio.QueueEmpty:
                return "".join(parts), None
            if not isinstance(event, Delta):
                return "".join(parts), event
            parts.append(event.text)

    async def _next(self, gone: asyncio.Event) -> Event | None:
        """The next event; None when the client has gone; Stopped("timeout") past the deadline."""
        job = self._job
        get = asyncio.ensure_future(job.events.get())
        left = asyncio.ensure_future(gone.wait())
        done, _ = await asyncio.wait(
            {get, left}, timeout=max(0.0, job.remaining()) + DEADLINE_GRACE_S, return_when=asyncio.FIRST_COMPLETED
        )
        left.cancel()
        if get in done:
            return get.result()
        get.cancel()
        if gone.is_set():
            return None
        self._state.worker.cancel(job, "timeout")
        return Stopped("timeout")

    def _final(self, completed: Completed) -> bytes:
        job, model, result = self._job, self._state.model_id, completed.result
        extra: dict[str, Any] = {}
        field = vitron_field(result, completed.artifacts, self._base_url)
        if field is not None:
            extra["vitron"] = field
        finish = FINISH_REASONS.get(result.finish_reason, "stop")
        if not self._include_usage:  # the finish chunk carries the counts (OpenAI's field, set early)
            extra["usage"] = usage_dict(result.usage)
        data = sse(chunk(job.id, job.created, model, {}, finish, **extra))
        if self._include_usage:  # OpenAI's usage chunk: no choices, after the finish chunk
            usage_chunk = chunk(job.id, job.created, model, {}, None, usage=usage_dict(result.usage))
            usage_chunk["choices"] = []
            data += sse(usage_chunk)
        return data
