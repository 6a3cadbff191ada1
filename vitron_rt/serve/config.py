"""What an operator sets when starting the server, in one frozen object.

Every bound the issue asks for lives here, with the reason for its default: the server
runs on one edge device whose LLM is one stream, so the defaults favour refusing early
(503 with Retry-After) over queueing long, and bounded memory over convenience.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from pathlib import Path

MiB = 2**20


@dataclass(frozen=True)
class ServeConfig:
    """How `vitron-rt serve` listens, admits and bounds requests."""

    host: str = "127.0.0.1"  # loopback: a device on a shared network is not opened by accident
    port: int = 8000  # 0: an ephemeral port (the bound address is printed and kept on the server)
    model_name: str | None = None  # the id of /v1/models; None: the bundle folder's name
    engine: str = "ort"
    threads: int | None = None  # ONNX Runtime intra-op threads per runner; None: one per core
    # Requests waiting behind the one that runs. The LLM is one stream: a long queue only
    # turns a fast 503 into a slow timeout, so the default is short.
    queue_depth: int = 8
    # Requests one client (its bearer token, else its address) may have queued or running;
    # beyond it: 429. None: no per-client limit (the queue bound still holds).
    max_per_client: int | None = None
    # From arrival to the last byte, queue wait included; past it the request is cancelled
    # between decode steps and answered 504 (or an error event on a stream).
    request_timeout_s: float = 300.0
    # A request body (JSON with base64 media). 20 MiB holds a 12 MP JPEG or a short clip.
    max_body_bytes: int = 20 * MiB
    # Decoded image size. A PNG of 20 MiB can inflate to gigabytes; OpenCV refuses more.
    max_image_pixels: int = 50_000_000
    # Allow-listed folder for file-path media (`file://` URLs or paths); None: refused.
    media_root: Path | None = None
    # Where artifacts are written and served from; None: a fresh temporary folder that is
    # removed at shutdown. Oldest requests' artifacts are evicted beyond either bound.
    artifact_dir: Path | None = None
    max_artifacts: int = 256  # files
    max_artifact_bytes: int = 512 * MiB
    default_max_tokens: int = 256  # when a request gives no max_tokens
    max_tokens_limit: int = 4096  # the most a request may ask for (the context bounds it too)
    # Open connections (keep-alive ones included) before uvicorn answers 503 itself, in
    # plain text: each may hold a body of up to `max_body_bytes`, so this times that bounds
    # the memory of bodies in flight (2 GB at the defaults). Above the 64 clients the
    # issue names, with room for monitoring.
    max_connections: int = 100
    # Activate every component's runner at start-up, so no request pays for it and the
    # resident memory is known before the first request.
    preload: bool = True
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port!r}")
        minimum = {"queue_depth": 0, "max_body_bytes": 1, "max_image_pixels": 1, "max_artifacts": 1,
                   "max_artifact_bytes": 1, "default_max_tokens": 1, "max_tokens_limit": 1, "max_connections": 1}
        for name, lo in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"{name} must be a whole number >= {lo}, got {value!r}")
        if self.max_per_client is not None and (not isinstance(self.max_per_client, int) or self.max_per_client < 1):
            raise ValueError(f"max_per_client must be a whole number >= 1, got {self.max_per_client!r}")
        timeout = self.request_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
                or timeout <= 0:
            raise ValueError(f"request_timeout_s must be a positive number of seconds, got {timeout!r}")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("default_max_tokens must not exceed max_tokens_limit")
        if self.media_root is not None:
            root = Path(self.media_root)
            if not root.is_dir():
                raise ValueError(f"{root}: the media root is not a folder")
            object.__setattr__(self, "media_root", root.resolve())
        if self.artifact_dir is not None:
            object.__setattr__(self, "artifact_dir", Path(self.artifact_dir))

    @property
    def loopback(self) -> bool:
        """Whether `host` only accepts connections from this machine."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
