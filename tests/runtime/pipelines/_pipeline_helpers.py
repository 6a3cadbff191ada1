"""Helpers of the pipeline tests: seeded signal embeddings, a runner that fails on a
chosen call, a folder listing that shows hidden (staging) files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vitron_rt.engines import EngineError

CLIP_FRAMES = 12  # frames of the Big Buck Bunny clip


def signal(width: int = 32, seed: int = 0, tokens: int = 2) -> np.ndarray:
    """Seeded stand-in for projected signal embeddings, (1, K, C) float32."""
    return np.random.default_rng(seed).standard_normal((1, tokens, width)).astype(np.float32)


class FailingRunner:
    """A runner that behaves as `inner` until its `fail_at`-th infer (1-based), which
    raises an EngineError: a failure in the middle of a pipeline."""

    def __init__(self, inner, fail_at: int):
        self._inner = inner
        self.fail_at = fail_at
        self.calls = 0

    def infer(self, feeds):
        self.calls += 1
        if self.calls == self.fail_at:
            raise EngineError(f"{self._inner.name}: injected failure at call {self.calls}")
        return self._inner.infer(feeds)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def with_failure(runners, component: str, fail_at: int) -> dict:
    """A mapping of every runner in `runners` (activating those a pipeline needs) with
    `component` replaced by a FailingRunner."""
    names = ("seg_image_encoder", "seg_mask_decoder", "unet", "vae_encoder", "vae_decoder")
    out = {n: runners[n] for n in names}
    out[component] = FailingRunner(runners[component], fail_at)
    return out


def visible_and_hidden(folder: Path) -> list[str]:
    """Every entry of `folder`, staging and temporary files included."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


class RecordingRunner:
    """A runner that keeps a copy of every feed and output it saw (for short runs only)."""

    def __init__(self, inner):
        self._inner = inner
        self.calls: list[tuple[dict, dict]] = []

    def infer(self, feeds):
        out = self._inner.infer(feeds)
        self.calls.append(({k: v.copy() for k, v in feeds.items()}, {k: v.copy() for k, v in out.items()}))
        return out

    def __getattr__(self, name):
        return getattr(self._inner, name)
