"""The HTTP server: an OpenAI-compatible face over `vitron_rt.runtime`.

    config.py        ServeConfig: every bound (queue depth, timeout, body size, artifacts)
    protocol.py      requests checked field by field (OpenAI chat, task endpoints)
    media_inputs.py  data: URLs and allow-listed file paths -> images / video files
    worker.py        the one thread that owns the session, the bounded queue, cancellation
    artifacts.py     the server-owned folder of masks, images and videos, bounded
    metrics.py       Prometheus text format
    responses.py     chat.completion, chat.completion.chunk, vitron.task
    app.py           the starlette app; server.py runs it on uvicorn (`serve`, `BackgroundServer`)

Nothing here is imported by the runtime; starlette and uvicorn come with the `serve` extra.
"""
