"""A bundle's back-end runners, by component name, created and activated on first use.

Pipelines take any `Mapping[str, Runner]` of active runners; this is the one that
serves a bundle, so pipelines that share a component (segment_image and edit_image both
use the SAM halves) share its session:

    with RunnerSet(bundle, engine="ort", options=OrtOptions(intra_op_threads=2)) as runners:
        seg = SegmentImagePipeline(bundle.manifest, runners)
        seg.run(message, signal, "photo.jpg", "out/")
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

from vitron_rt.bundle import Bundle
from vitron_rt.engines import Runner, make_runner


class RunnerSet(Mapping[str, Runner]):
    """Active runners of one bundle on one engine. `runners[name]` makes and activates the
    component's runner the first time (a component the bundle lacks is a `BundleError`
    naming the ones it has); iteration and `len` cover the runners activated so far.
    Construction does no I/O. `close()` (or leaving the `with` block) deactivates them all.

    Safe to index from several threads; each runner itself serves one caller at a time.
    """

    def __init__(self, bundle: Bundle, engine: str = "ort", options: Any = None, **runner_kwargs: Any):
        self.bundle = bundle
        self.engine = engine
        self.options = options
        self.runner_kwargs = runner_kwargs
        self._runners: dict[str, Runner] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> Runner:
        with self._lock:
            runner = self._runners.get(name)
            if runner is None:
                runner = make_runner(self.bundle, name, self.engine, self.options, **self.runner_kwargs)
                runner.activate()
                self._runners[name] = runner
            return runner

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.bundle.manifest.components

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._runners))

    def __len__(self) -> int:
        return len(self._runners)

    def close(self) -> None:
        with self._lock:
            runners, self._runners = self._runners, {}
        for runner in runners.values():
            runner.deactivate()

    def __enter__(self) -> "RunnerSet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
