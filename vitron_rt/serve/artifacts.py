"""The files requests produce (masks, images, videos), kept in one server-owned folder
and served at URLs, with a bound on how many and how large.

    <root>/<job id>/mask.png        served as /v1/artifacts/<job id>/mask.png
    <root>/.uploads/upload-*.mp4    videos sent inline, deleted when their request ends

Job ids are random (96 bits), so a URL is not guessable from another. Beyond
`max_files` or `max_bytes` the oldest requests' folders are deleted whole (a mask
without its overlay is worse than neither); the request just published is never
evicted, so a client always gets the URLs it was given at least once. Lookups only
answer for files the store published: nothing else under the root, and no path a
client spells, is ever served.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitron_rt.runtime.tasks import TaskOutput

log = logging.getLogger("vitron_rt.serve")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
UPLOADS = ".uploads"


@dataclass(frozen=True)
class Artifact:
    """One published file: its request, name, kind (mask | image | video) and size."""

    job_id: str
    name: str
    kind: str
    path: Path
    size: int

    @property
    def url_path(self) -> str:
        return f"/v1/artifacts/{self.job_id}/{self.name}"

    def to_dict(self, base_url: str) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "url": base_url.rstrip("/") + self.url_path, "bytes": self.size}


class ArtifactStore:
    """Request folders under `root` (a new temporary folder when None, removed by
    `close()`), bounded by file count and total bytes. Thread-safe: the worker publishes,
    the event loop looks up."""

    def __init__(self, root: Path | None, max_files: int, max_bytes: int):
        self.owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="vitron-serve-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._jobs: OrderedDict[str, dict[str, Artifact]] = OrderedDict()  # oldest first
        self._files = 0
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def uploads(self) -> Path:
        return self.root / UPLOADS

    def folder(self, job_id: str) -> Path:
        """Where a request's pipeline writes (created by the session when it runs)."""
        if not _NAME.match(job_id):
            raise ValueError(f"bad job id {job_id!r}")
        return self.root / job_id

    def publish(self, job_id: str, outputs: Iterable[TaskOutput]) -> list[Artifact]:
        """Register a finished request's outputs and evict old requests beyond the bounds."""
        folder = self.folder(job_id).resolve()
        published: dict[str, Artifact] = {}
        for out in outputs:
            path = Path(out.path).resolve()
            if path.parent != folder or not _NAME.match(path.name) or not path.is_file():
                log.error("job %s: output %s is not a file in its folder; not served", job_id, path)
                continue
            published[path.name] = Artifact(job_id, path.name, out.kind, path, path.stat().st_size)
        evicted: list[str] = []
        with self._lock:
            if published:
                self._jobs[job_id] = published
                self._files += len(published)
                self._bytes += sum(a.size for a in published.values())
            while (self._files > self.max_files or self._bytes > self.max_bytes) and len(self._jobs) > 1:
                old, files = self._jobs.popitem(last=False)
                if old == job_id:  # never the one just published: put it back at the end
                    self._jobs[old] = files
                    continue
                self._files -= len(files)
                self._bytes -= sum(a.size for a in files.values())
                evicted.append(old)
        for old in evicted:
            shutil.rmtree(self.root / old, ignore_errors=True)
        if not published:
            self.discard(job_id)
        return list(published.values())

    def discard(self, job_id: str) -> None:
        """Delete a request's folder (failed or cancelled: nothing of it is served)."""
        with self._lock:
            files = self._jobs.pop(job_id, None)
            if files:
                self._files -= len(files)
                self._bytes -= sum(a.size for a in files.values())
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def lookup(self, job_id: str, name: str) -> Artifact | None:
        with self._lock:
            return self._jobs.get(job_id, {}).get(name)

    def usage(self) -> tuple[int, int]:
        """(files, bytes) currently kept."""
        with self._lock:
            return self._files, self._bytes

    def close(self) -> None:
        """Remove the folder if the store made it; otherwise the files this run published."""
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)
            return
        with self._lock:
            jobs = list(self._jobs)
            self._jobs.clear()
            self._files = self._bytes = 0
        for job_id in jobs:
            shutil.rmtree(self.root / job_id, ignore_errors=True)
        shutil.rmtree(self.uploads, ignore_errors=True)
