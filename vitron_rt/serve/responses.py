"""Replies in OpenAI's shapes, plus the `vitron` field for hybrid messages.

    chat.completion        {id, object, created, model, choices: [{index, message:
                            {role, content}, finish_reason}], usage, vitron?}
    chat.completion.chunk  {id, object, created, model, choices: [{index, delta,
                            finish_reason}]}, sent as `data: {...}` lines, then `data: [DONE]`
    vitron.task            the task endpoints' reply: {id, object, created, model, task,
                            text, vitron, usage, timings_ms, notes}

`vitron`, present when the model emitted a hybrid message or a task forced one:
{"message": {module, instructions, region}, "artifacts": [{kind, name, url, bytes}],
"notes": [...]}.
"""

from __future__ import annotations

import json
from typing import Any

from vitron_rt.runtime.generate import Usage
from vitron_rt.runtime.session import RunResult
from vitron_rt.serve.artifacts import Artifact
from vitron_rt.serve.errors import ApiError

# The runtime's reasons -> OpenAI's: the context filling up is a length stop too.
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "context": "length"}
DONE_LINE = b"data: [DONE]\n\n"


def usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def vitron_field(result: RunResult, artifacts: list[Artifact], base_url: str) -> dict[str, Any] | None:
    """The hybrid message and its artifacts' URLs; None when there is no message."""
    if result.message is None and not artifacts:
        return None
    return {
        "message": None if result.message is None else result.message.to_dict(),
        "artifacts": [a.to_dict(base_url) for a in artifacts],
        "notes": list(result.notes),
    }


def chat_completion(job_id: str, created: int, model: str, result: RunResult, artifacts: list[Artifact],
                    base_url: str) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "id": f"chatcmpl-{job_id}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": FINISH_REASONS.get(result.finish_reason, "stop"),
            }
        ],
        "usage": usage_dict(result.usage),
    }
    extra = vitron_field(result, artifacts, base_url)
    if extra is not None:
        reply["vitron"] = extra
    return reply


def chunk(job_id: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None = None,
          **extra: Any) -> dict[str, Any]:
    """One chat.completion.chunk; `extra` adds top-level fields (usage, vitron)."""
    body: dict[str, Any] = {
        "id": f"chatcmpl-{job_id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    body.update(extra)
    return body


def task_result(job_id: str, created: int, model: str, result: RunResult, artifacts: list[Artifact],
                base_url: str) -> dict[str, Any]:
    return {
        "id": f"task-{job_id}",
        "object": "vitron.task",
        "created": created,
        "model": model,
        "task": None if result.message is None else result.message.module,
        "text": result.text,
        "finish_reason": FINISH_REASONS.get(result.finish_reason, "stop"),
        "vitron": vitron_field(result, artifacts, base_url)
        or {"message": None, "artifacts": [], "notes": list(result.notes)},
        "usage": usage_dict(result.usage),
        "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()},
        "notes": list(result.notes),
    }


def sse(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying a JSON object."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def sse_error(error: ApiError) -> bytes:
    """An error after the stream has started (its status line was 200 already)."""
    return sse(error.body())
