"""Media in a request, as the server accepts it: `data:` URLs, or files inside one
allow-listed folder.

    "data:image/png;base64,iVBOR..."        decoded here (bad base64, a type that is not an
                                            image, bytes that do not decode: 400)
    "file:///srv/media/dog.jpg", "dog.jpg"  only with a media root: resolved (symlinks
                                            followed) and refused unless the real path lies
                                            inside the root's real path; `..` is refused
    "https://..."                           refused: the server fetches nothing

Images are decoded to arrays before the request is queued, so a bad one never takes a
slot. A video sent as a data URL is written to the server's scratch folder (the video
reader needs a file) and checked for a readable stream; the caller deletes it.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from vitron_rt.runtime.errors import MediaError
from vitron_rt.runtime.media import VideoReader, decode_image, load_image
from vitron_rt.serve.errors import ApiError, bad_request

# data:[<type>][;param=value]*[;base64],<payload>
_DATA_URL = re.compile(r"^data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*?)(?P<b64>;base64)?,(?P<payload>.*)$", re.DOTALL)
_WHITESPACE = re.compile(rb"\s+")
# What the video reader takes, by the data URL's media type: the file suffix to write.
VIDEO_TYPES: dict[str, str] = {
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
    "video/x-matroska": ".mkv",
    "video/x-msvideo": ".avi",
    "video/avi": ".avi",
    "video/mpeg": ".mpg",
}
# A data URL without a type, or with this one, is taken as what the field says it is.
_UNTYPED = ("", "application/octet-stream")


@dataclass(frozen=True)
class DataUrl:
    media_type: str  # lower case, "" when the URL gives none
    data: bytes


def parse_data_url(url: str, param: str) -> DataUrl:
    """A base64 `data:` URL -> its media type and bytes; 400 for anything else."""
    m = _DATA_URL.match(url)
    if m is None:
        raise bad_request(f"{param}: not a data URL (expected data:<type>;base64,<data>)", param, "bad_data_url")
    if m.group("b64") is None:
        raise bad_request(f"{param}: the data URL is not base64-encoded (add ;base64)", param, "bad_data_url")
    payload = _WHITESPACE.sub(b"", m.group("payload").encode("ascii", errors="replace"))
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{param}: invalid base64 in the data URL", param, "bad_base64") from None
    if not data:
        raise bad_request(f"{param}: the data URL holds no bytes", param, "bad_base64")
    return DataUrl(m.group("type").strip().lower(), data)


class MediaGate:
    """Turns the media references of a request into what the session reads: an image
    array, or a video file path. `root`: the allow-listed folder (None: no file paths);
    `scratch`: where videos sent inline are written."""

    def __init__(self, root: Path | None, scratch: Path):
        self.root = None if root is None else Path(os.path.realpath(root))
        self.scratch = scratch

    # -- images

    def image(self, url: str, param: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB from a data URL or an allowed file."""
        if url.startswith("data:"):
            parsed = parse_data_url(url, param)
            if parsed.media_type not in _UNTYPED and not parsed.media_type.startswith("image/"):
                raise bad_request(
                    f"{param}: unsupported media type {parsed.media_type!r} for an image", param, "unsupported_media"
                )
            return _media_call(lambda data: decode_image(data, param), parsed.data, param)
        return _media_call(load_image, self.path(url, param), param)

    # -- videos

    def video(self, url: str, param: str) -> tuple[Path, bool]:
        """A readable video file from a data URL (written to scratch) or an allowed file.
        Returns the path and whether it is a scratch file the caller must delete."""
        if url.startswith("data:"):
            parsed = parse_data_url(url, param)
            suffix = VIDEO_TYPES.get(parsed.media_type, ".mp4" if parsed.media_type in _UNTYPED else None)
            if suffix is None:
                raise bad_request(
                    f"{param}: unsupported media type {parsed.media_type!r} for a video; "
                    f"supported: {', '.join(VIDEO_TYPES)}",
                    param,
                    "unsupported_media",
                )
            self.scratch.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="upload-", suffix=suffix, dir=self.scratch)
            path = Path(name)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(parsed.data)
                _media_call(_probe_video, path, param)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            return path, True
        path = self.path(url, param)
        _media_call(_probe_video, path, param)
        return path, False

    # -- files

    def path(self, url: str, param: str) -> Path:
        """The real path of an allowed file named by a `file://` URL or a path (relative
        ones are taken from the root). Everything else is a 400 that names no server path."""
        parsed = urlparse(url)
        if parsed.scheme in ("http", "https", "ftp", "s3", "gs"):
            raise bad_request(
                f"{param}: remote URLs are not fetched; send the media as a data: URL", param, "unsupported_media"
            )
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise bad_request(f"{param}: a file URL must name a local file", param, "unsupported_media")
            raw = unquote(parsed.path)
        elif parsed.scheme and len(parsed.scheme) > 1:  # "C:" is a drive letter, not a scheme
            raise bad_request(f"{param}: unsupported URL scheme {parsed.scheme!r}", param, "unsupported_media")
        else:
            raw = url
        if self.root is None:
            raise bad_request(
                f"{param}: file paths are not accepted (the server has no media root); send a data: URL",
                param,
                "path_not_allowed",
            )
        if "\x00" in raw or not raw:
            raise bad_request(f"{param}: not a valid path", param, "path_not_allowed")
        given = Path(raw)
        if ".." in given.parts:
            raise bad_request(f"{param}: '..' is not allowed in a media path", param, "path_not_allowed")
        real = Path(os.path.realpath(given if given.is_absolute() else self.root / given))
        # Containment is decided before existence, so nothing outside the root can be probed.
        if not real.is_relative_to(self.root):
            raise bad_request(f"{param}: the path is outside the server's media folder", param, "path_not_allowed")
        if not real.is_file():
            raise bad_request(f"{param}: no such file in the server's media folder", param, "path_not_allowed")
        return real


def _probe_video(path: Path) -> None:
    """Open the video and read its header (`MediaError` when it is not a readable video)."""
    with VideoReader(path):
        pass


def _media_call(fn: Callable[[Any], Any], arg: Any, param: str) -> Any:
    """`fn(arg)`, its `MediaError` as a 400 that names the request field, not a server path."""
    try:
        return fn(arg)
    except MediaError as e:
        text = str(e)
        for prefix in (str(arg) if isinstance(arg, Path) else None, param):
            if prefix and text.startswith(prefix):  # "path: message" -> "param: message"
                text = text[len(prefix) :].lstrip(": ")
        raise ApiError(400, f"{param}: {text}", param=param, code="unsupported_media") from None
