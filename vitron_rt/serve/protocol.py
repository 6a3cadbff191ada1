"""Requests as the API takes them, checked field by field before anything is queued.

`POST /v1/chat/completions` (OpenAI's shape; fields not listed are ignored):

    model        the served model's id (GET /v1/models)
    messages     [{role: system | developer | user | assistant, content: text or parts}]
                 parts: {"type": "text", "text"}, {"type": "image_url", "image_url": {"url"}},
                 {"type": "video_url", "video_url": {"url"}}; url: a data: URL or, with a
                 media root, a path / file:// URL. One image or video, in the last message,
                 which is the user's.
    stream, stream_options.include_usage, max_tokens | max_completion_tokens, temperature
    (0: greedy), top_p, stop (text or list), seed, n (1 only)
    top_k, repetition_penalty                 accepted extensions, as vLLM's
    vitron: {task: auto | understand | segment | generate | edit | <module>, region: [x1, y1, x2, y2]}

`POST /v1/segment | /v1/generate | /v1/edit` take {prompt, image | video, region, model,
max_tokens, temperature, top_p, seed, stop}; greedy unless a temperature is given.

Everything wrong is a 400 naming the field (`param`), so a client can fix its request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vitron_rt.runtime.errors import VitronInputError
from vitron_rt.runtime.region import validate_region
from vitron_rt.runtime.sampling import SamplingParams
from vitron_rt.runtime.tasks import resolve_task
from vitron_rt.serve.config import ServeConfig
from vitron_rt.serve.errors import ApiError, bad_request

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP = 8
# OpenAI sampling fields this server cannot honour: refused when set to anything but
# their neutral value, rather than silently ignored.
_UNSUPPORTED_NEUTRAL: dict[str, Any] = {
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "logprobs": False,
    "top_logprobs": 0,
    "logit_bias": {},
}


@dataclass(frozen=True)
class MediaRef:
    """An image or video the request points at, not yet read."""

    kind: str  # image | video
    url: str
    param: str  # where it was in the request, for errors


@dataclass(frozen=True)
class Turn:
    """A checked request: the user turn, its history, media, task and sampling."""

    prompt: str
    history: list[dict[str, str]]
    media: MediaRef | None
    region: tuple[float, ...] | None
    task: str
    sampling: SamplingParams
    stream: bool = False
    include_usage: bool = False


# --------------------------------------------------------------------------- field readers


def _opt(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """body[key] when present and not null, checked to be of `kind` (bool is not a number)."""
    value = body.get(key)
    if value is None:
        return None
    numeric = kind in (int, float, (int, float))
    if (numeric and isinstance(value, bool)) or not isinstance(value, kind):
        raise bad_request(f"{key} must be {what}, got {_json_type(value)}", key)
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)


def _number(body: Mapping[str, Any], key: str) -> float | None:
    value = _opt(body, key, (int, float), "a number")
    if value is not None and not math.isfinite(value):
        raise bad_request(f"{key} must be a finite number", key)
    return value


def _integer(body: Mapping[str, Any], key: str) -> int | None:
    value = _opt(body, key, (int, float), "a whole number")
    if value is not None and (not float(value).is_integer()):
        raise bad_request(f"{key} must be a whole number, got {value!r}", key)
    return None if value is None else int(value)


def check_model(body: Mapping[str, Any], model_id: str, required: bool) -> None:
    model = body.get("model")
    if model is None:
        if required:
            raise bad_request("model is required (GET /v1/models lists it)", "model")
        return
    if not isinstance(model, str):
        raise bad_request(f"model must be a string, got {_json_type(model)}", "model")
    if model != model_id:
        raise ApiError(404, f"the model {model!r} does not exist; this server serves {model_id!r}",
                       param="model", code="model_not_found")


def sampling(body: Mapping[str, Any], config: ServeConfig, *, greedy_default: bool, default_max: int) -> SamplingParams:
    """SamplingParams from OpenAI's fields. OpenAI has no top-k, so it is off unless the
    `top_k` extension sets it; temperature 0 is greedy."""
    for key, neutral in _UNSUPPORTED_NEUTRAL.items():
        if body.get(key) not in (None, neutral):
            raise bad_request(f"{key} is not supported by this server", key, "unsupported_parameter")
    n = _integer(body, "n")
    if n not in (None, 1):
        raise bad_request("n must be 1: the server generates one choice per request", "n", "unsupported_parameter")
    for key in ("max_completion_tokens", "max_tokens"):
        max_tokens = _integer(body, key)
        if max_tokens is not None:
            if not 1 <= max_tokens <= config.max_tokens_limit:
                raise bad_request(f"{key} must be 1..{config.max_tokens_limit}, got {max_tokens}", key)
            break
    else:
        max_tokens = default_max
    temperature = _number(body, "temperature")
    if temperature is not None and not 0 <= temperature <= 2:
        raise bad_request(f"temperature must be 0..2, got {temperature}", "temperature")
    top_p = _number(body, "top_p")
    top_k = _integer(body, "top_k")
    penalty = _number(body, "repetition_penalty")
    seed = _integer(body, "seed")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= MAX_STOP:
        stops = tuple(stop)
    else:
        raise bad_request(f"stop must be a string or an array of at most {MAX_STOP} strings", "stop")
    if any(not s for s in stops):
        raise bad_request("stop strings must not be empty", "stop")
    greedy = temperature == 0 if temperature is not None else greedy_default
    kwargs: dict[str, Any] = dict(greedy=greedy, max_new_tokens=max_tokens, stop=stops, seed=seed, top_k=top_k or 0)
    if temperature is not None and temperature > 0:
        kwargs["temperature"] = float(temperature)
    if top_p is not None:
        kwargs["top_p"] = float(top_p)
    if penalty is not None:
        kwargs["repetition_penalty"] = float(penalty)
    try:
        return SamplingParams(**kwargs)
    except VitronInputError as e:
        raise bad_request(str(e), code="invalid_sampling") from None


def _region(value: Any, param: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        raise bad_request(f"{param} must be an array of four numbers x1, y1, x2, y2 in [0, 1]", param)
    try:
        return tuple(validate_region(value))
    except VitronInputError as e:
        raise bad_request(f"{param}: {e}", param) from None


def _task(value: Any, param: str, video: bool) -> str:
    if value is None:
        return "auto"
    if not isinstance(value, str):
        raise bad_request(f"{param} must be a string", param)
    try:
        resolve_task(value, video)
    except VitronInputError as e:
        raise bad_request(f"{param}: {e}", param) from None
    return value


# --------------------------------------------------------------------------- chat


def _content(content: Any, param: str, allow_media: bool) -> tuple[str, list[MediaRef]]:
    """A message's content -> its text (parts joined by newlines) and its media."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise bad_request(f"{param} must be a string or an array of content parts", param)
    texts: list[str] = []
    media: list[MediaRef] = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad_request(f"{where} must be an object with a type", where)
        kind = part["type"]
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad_request(f"{where}.text must be a string", f"{where}.text")
            texts.append(part["text"])
        elif kind in ("image_url", "video_url"):
            ref = part.get(kind)
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str) or not url:
                raise bad_request(f"{where}.{kind}.url must be a non-empty string", f"{where}.{kind}")
            if not allow_media:
                raise bad_request(
                    f"{where}: media is accepted in the last user message only (one image or video per request)",
                    where,
                    "unsupported_media",
                )
            media.append(MediaRef(kind.removesuffix("_url"), url, f"{where}.{kind}.url"))
        else:
            raise bad_request(
                f"{where}: unsupported content part type {kind!r} (text, image_url and video_url are)",
                where,
                "unsupported_media",
            )
    return "\n".join(texts), media


def parse_chat(body: Any, config: ServeConfig, model_id: str) -> Turn:
    """A /v1/chat/completions body -> a `Turn`, or a 400 naming the field at fault."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    check_model(body, model_id, required=True)
    if body.get("tools") or body.get("functions"):
        raise bad_request("tools and functions are not supported by this server", "tools", "unsupported_parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty array", "messages")
    history: list[dict[str, str]] = []
    media: list[MediaRef] = []
    last = len(messages) - 1
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"{where} must be an object", where)
        role = ROLES.get(m.get("role")) if isinstance(m.get("role"), str) else None
        if role is None:
            raise bad_request(
                f"{where}.role must be system, developer, user or assistant, got {m.get('role')!r}", f"{where}.role"
            )
        if m.get("tool_calls"):
            raise bad_request(f"{where}: tool calls are not supported", where, "unsupported_parameter")
        text, refs = _content(m.get("content"), f"{where}.content", allow_media=(i == last and role == "user"))
        media += refs
        if i == last:
            if role != "user":
                raise bad_request("the last message must be the user's", where)
            prompt = text
        else:
            history.append({"role": role, "content": text})
    if len(media) > 1:
        raise bad_request(
            f"one image or video per request, got {len(media)}", media[1].param, "unsupported_media"
        )
    stream = _opt(body, "stream", bool, "a boolean") or False
    options = _opt(body, "stream_options", dict, "an object") or {}
    include_usage = bool(options.get("include_usage")) if stream else False
    ext = _opt(body, "vitron", dict, "an object") or {}
    ref = media[0] if media else None
    return Turn(
        prompt=prompt,
        history=history,
        media=ref,
        region=_region(ext.get("region"), "vitron.region"),
        task=_task(ext.get("task"), "vitron.task", video=ref is not None and ref.kind == "video"),
        sampling=sampling(body, config, greedy_default=False, default_max=config.default_max_tokens),
        stream=stream,
        include_usage=include_usage,
    )


# --------------------------------------------------------------------------- task endpoints

# Endpoint verb -> whether the request must carry an image or video.
TASK_MEDIA_REQUIRED = {"segment": True, "edit": True, "generate": False}
TASK_DEFAULT_MAX_TOKENS = 64


def parse_task(body: Any, verb: str, config: ServeConfig, model_id: str) -> Turn:
    """A /v1/<verb> body -> a `Turn` that forces the verb's back end."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    check_model(body, model_id, required=False)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad_request("prompt must be a non-empty string: the instruction for the back end", "prompt")
    refs = []
    for kind in ("image", "video"):
        url = body.get(kind)
        if url is None:
            continue
        if isinstance(url, dict):  # {"url": ...}, as in image_url parts
            url = url.get("url")
        if not isinstance(url, str) or not url:
            raise bad_request(f"{kind} must be a data: URL or a path", kind)
        refs.append(MediaRef(kind, url, kind))
    if len(refs) > 1:
        raise bad_request("give an image or a video, not both", "video")
    if TASK_MEDIA_REQUIRED[verb] and not refs:
        raise bad_request(f"/v1/{verb} needs an image or a video", "image")
    ref = refs[0] if refs else None
    return Turn(
        prompt=prompt,
        history=[],
        media=ref,
        region=_region(body.get("region"), "region"),
        task=verb,
        sampling=sampling(body, config, greedy_default=True, default_max=min(TASK_DEFAULT_MAX_TOKENS,
                                                                            config.max_tokens_limit)),
    )
