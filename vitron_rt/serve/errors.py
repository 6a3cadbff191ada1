"""Errors the server answers with, in OpenAI's error shape.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "messages", "code": null}}

An `ApiError` is raised wherever a request is found wanting and turned into its JSON reply
by the app. Anything else that escapes a handler is a bug: it is logged with its
traceback under the request id and the client gets a 500 with that id only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# HTTP status -> OpenAI's error type for it.
_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "overloaded_error",
    504: "timeout_error",
}


class ApiError(Exception):
    """A reply other than 200: status, one-line message, the request field at fault
    (`param`), a machine-readable `code`, and extra headers (Retry-After)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(" ".join(str(message).split()))
        self.status = status
        self.message = str(self)
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)
