"""Running the app: `serve()` for `vitron-rt serve` (blocks until interrupted), and
`BackgroundServer` for embedding it in a process that does other things (a notebook, a
test) on a thread of its own.

    with open_session("B", ServeConfig()) as session, BackgroundServer(session, ServeConfig(port=0)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="-")
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from vitron_rt.runtime.session import Session
from vitron_rt.serve.config import ServeConfig

log = logging.getLogger("vitron_rt.serve")


def open_session(bundle: str | os.PathLike, config: ServeConfig) -> Session:
    """The session the server runs on: the LLM active, and with `config.preload` every
    other component too (engines stay resident; the first request pays no activation)."""
    # OpenCV reads its decoded-size guard once, at the first decode: set it before any.
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(config.max_image_pixels))
    session = Session(bundle, engine=config.engine, threads=config.threads)
    try:
        if config.preload:
            llm = session.manifest.llm
            for name in session.manifest.components:
                # The standard decoder graph is not run when the shared-KV variant is.
                if name == llm.component and session.generator.shared_kv:
                    continue
                session.runner(name)
    except BaseException:
        session.close()
        raise
    return session


def _uvicorn_config(app, config: ServeConfig):
    import uvicorn

    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        access_log=config.log_level == "debug",
        limit_concurrency=config.max_connections,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )


def _make_server(app, config: ServeConfig, on_ready: Callable[[str, int], None]):
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, telling `on_ready` the address it bound (port 0: the one
        the system picked)."""

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started and self.servers:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                on_ready(host, port)

    return Server(_uvicorn_config(app, config))


def serve(bundle: str | os.PathLike, config: ServeConfig, announce: Callable[[str], None] | None = None) -> None:
    """Load the bundle and serve it until interrupted. `announce` gets one line with the
    address once the socket is bound (stdout by default)."""
    from vitron_rt.serve.app import create_app

    say = announce or (lambda line: print(line, flush=True))
    if not config.loopback:
        log.warning("serving on %s: reachable from other machines; the API has no authentication", config.host)
    session = open_session(bundle, config)
    try:
        app = create_app(session, config)
        name = config.model_name or Path(session.bundle.root).name

        def ready(host: str, port: int) -> None:
            shown = f"[{host}]" if ":" in host else host
            say(f"vitron-rt serve: {name} on http://{shown}:{port} (queue depth {config.queue_depth}, "
                f"timeout {config.request_timeout_s:g} s)")

        _make_server(app, config, ready).run()
    finally:
        session.close()


class BackgroundServer:
    """The app on uvicorn in a daemon thread. `__enter__` returns once the socket is bound
    (`url` then says where); `__exit__` stops the server and waits for its thread. The
    session stays the caller's."""

    def __init__(self, session: Session, config: ServeConfig, start_timeout_s: float = 60.0):
        from vitron_rt.serve.app import create_app

        self.config = config
        self.app = create_app(session, config)
        self.url = ""
        self._ready = threading.Event()
        self._server = _make_server(self.app, config, self._on_ready)
        self._thread = threading.Thread(target=self._run, name="vitron-serve-http", daemon=True)
        self._error: BaseException | None = None
        self._start_timeout_s = start_timeout_s

    def _on_ready(self, host: str, port: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        self._ready.set()

    def _run(self) -> None:
        try:
            self._server.run()
        except BaseException as e:  # SystemExit from a failed startup included
            self._error = e
        finally:
            self._ready.set()

    def __enter__(self) -> "BackgroundServer":
        self._thread.start()
        if not self._ready.wait(self._start_timeout_s) or not self.url:
            self._server.should_exit = True
            raise RuntimeError(f"the server did not start ({self._error!r})")
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(30)
        if self._thread.is_alive():
            print("vitron-rt serve: the server thread did not stop within 30 s", file=sys.stderr)
