"""Multimodal prefill: images, video frames and regions as prompt embeddings, and the
signal tokens' hidden states after generation.

    image (H,W,3) ─► preprocess_image (manifest ImagePreprocess, CLIP crop) ─► vision_encoder ─► (1,N,Dv)
                                                                                ├─► mm_projector ─► (N,D) at one <image>
    region (box or sketch) ─► GridRegion on the encoder's grid ─────────────────┴─► region_encoder ─► (D,) at <region>
    video ─► video_frames frames, uniformly ─► the image path per frame ─► N_frames <image> slots

    token ids (T,)  ─► embed_tokens ─► (1,T,D) ─► splice: each placeholder's one row
                                                  replaced by its rows (T grows by N-1 per image)

Encoder outputs are cached by the sha256 of what produced them (an image's pixels, a
frame's pixels, the image key plus the region), so a conversation that mentions the same
image again, or re-prefills its history, does not run the encoders again.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from vitron_rt.bundle import Manifest
from vitron_rt.engines import Runner
from vitron_rt.runtime.errors import MediaError, MessageError, RegionError, VitronInputError
from vitron_rt.runtime.generate import Generator, GenerationResult
from vitron_rt.runtime.kv_cache import KvCache
from vitron_rt.runtime.media import VideoReader, load_image, preprocess_images, sample_frame_indices
from vitron_rt.runtime.messages import find_signal_tokens
from vitron_rt.runtime.region import GridRegion, parse_region, region_from_box, region_from_sketch

VISION_ENCODER = "vision_encoder"
MM_PROJECTOR = "mm_projector"
REGION_ENCODER = "region_encoder"

# Encoded images (and regions) kept per session; a real Vitron image is 256 x 4096 floats
# (4 MiB) of embeddings plus its features, so this bounds the cache to ~0.5 GiB.
CACHE_ENTRIES = 64


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Add the wall time of the block to `timings[stage]`, in ms."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - start) * 1e3


def content_key(*parts: Any) -> str:
    """sha256 over arrays (dtype, shape and bytes) and plain values, in order."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            a = np.ascontiguousarray(p)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(memoryview(a).cast("B"))
        else:
            h.update(repr(p).encode())
        h.update(b"\x00")
    return h.hexdigest()


@dataclass(frozen=True)
class EncodedImage:
    """One image (or video frame) through the front end."""

    key: str  # sha256 of the pixels
    features: np.ndarray  # (N, Dv) vision_encoder patch features: the region encoder's input
    embeds: np.ndarray  # (N, D) mm_projector output: spliced at one <image>


@dataclass(frozen=True)
class EncodedRegion:
    """A region through the region encoder."""

    key: str  # sha256 of the image key and the region
    region: GridRegion  # the box and its (G, G) grid mask
    embed: np.ndarray  # (D,) spliced at <region>


@dataclass(frozen=True)
class VideoClip:
    """The frames of a video the LLM sees: `video_frames` of them, sampled uniformly."""

    path: str
    indices: np.ndarray  # (N,) frame indices in the video
    frames: np.ndarray  # (N, H, W, 3) uint8 RGB
    fps: float
    frame_count: int


class MediaEncoder:
    """The front-end encoders of one bundle with their content cache. `runner(name)`
    returns the component's active runner (the session keeps them resident)."""

    def __init__(self, manifest: Manifest, runner: Callable[[str], Runner], cache_entries: int = CACHE_ENTRIES):
        self.manifest = manifest
        self._runner = runner
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_entries = cache_entries
        self.hits = 0
        self.misses = 0

    # -- cache

    def clear(self) -> None:
        """Forget every cached encoding (a benchmark that must time the encoders each time)."""
        self._cache.clear()

    def _get(self, key: str) -> Any:
        value = self._cache.get(key)
        if value is not None:
            self._cache.move_to_end(key)
            self.hits += 1
        else:
            self.misses += 1
        return value

    def _put(self, key: str, value: Any) -> None:
        self._cache[key] = value
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)

    # -- inputs

    def _need(self, component: str, what: str) -> None:
        if component not in self.manifest.components:
            raise VitronInputError(f"this bundle has no {component}; it cannot take {what}")

    def read_image(self, image: str | os.PathLike | np.ndarray) -> np.ndarray:
        """A path or an (H, W, 3) uint8 RGB array -> the array (`MediaError` if unreadable)."""
        self._need(VISION_ENCODER, "an image")
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
                raise MediaError(f"an image must be an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape}")
            return image
        return load_image(image)

    def read_video(self, path: str | os.PathLike) -> VideoClip:
        """The `video_frames` frames of a video, sampled uniformly (`MediaError` if unreadable)."""
        self._need(VISION_ENCODER, "a video")
        n = self.manifest.video_frames
        if not n:
            raise VitronInputError("this bundle does not say how many frames to sample from a video (video_frames)")
        with VideoReader(path) as reader:
            total = reader.frame_count
            indices = sample_frame_indices(total, n)
            frames = reader.read_frames(indices)  # (N, H, W, 3)
            fps = reader.fps
        return VideoClip(path=str(path), indices=indices, frames=frames, fps=fps, frame_count=total)

    # -- encoders

    def encode_images(self, images: Sequence[np.ndarray], timings: dict[str, float]) -> list[EncodedImage]:
        """Each (H, W, 3) image (or frame) -> its features and embeddings; the ones not in
        the cache go through the encoders as one batch."""
        keys = [content_key(img) for img in images]
        out: dict[str, EncodedImage] = {}
        todo: dict[str, np.ndarray] = {}  # key -> image, each distinct image once (a short video repeats frames)
        for key, img in zip(keys, images):
            if key in out or key in todo:
                continue
            hit = self._get(key)
            if hit is not None:
                out[key] = hit
            else:
                todo[key] = img
        if todo:
            pp = self.manifest.preprocess.get(VISION_ENCODER)
            if pp is None:
                raise VitronInputError(f"this bundle has no image preprocessing for {VISION_ENCODER}")
            with timed(timings, "preprocess"):
                pixels = preprocess_images(list(todo.values()), pp)  # (B, 3, S, S)
            vis = self._runner(VISION_ENCODER)
            proj = self._runner(MM_PROJECTOR)
            with timed(timings, "vision_encoder"):
                feats = _only_output(vis, vis.infer({_only_input(vis): pixels}))  # (B, N, Dv)
            with timed(timings, "projector"):
                embeds = _only_output(proj, proj.infer({_only_input(proj): feats}))  # (B, N, D)
            for b, key in enumerate(todo):
                enc = EncodedImage(key=key, features=feats[b], embeds=embeds[b])
                self._put(key, enc)
                out[key] = enc
        return [out[k] for k in keys]

    def encode_region(
        self, image: EncodedImage, region: Sequence[float] | str | np.ndarray, timings: dict[str, float]
    ) -> EncodedRegion:
        """A box (x1, y1, x2, y2 normalised, or its text) or a sketch mask (an (H, W[, C])
        image in the picture's pixel frame) on `image` -> one region token."""
        self._need(REGION_ENCODER, "a region")
        entry = self.manifest.components[REGION_ENCODER]
        grid, size = entry.attributes.get("grid"), entry.attributes.get("image_size")
        if not isinstance(grid, int):
            raise VitronInputError(f"{REGION_ENCODER} in this bundle does not say its grid size")
        grid_region = to_grid_region(region, grid, size)
        key = content_key("region", image.key, np.asarray(grid_region.box, np.float64), grid_region.mask)
        hit = self._get(key)
        if hit is not None:
            return hit
        enc = self._runner(REGION_ENCODER)
        names = [t.name for t in enc.input_specs]
        feeds = dict(
            zip(
                names,
                (
                    image.features[None],  # (1, N, Dv)
                    np.asarray([grid_region.box], dtype=np.float32),  # (1, 4)
                    grid_region.mask[None],  # (1, G, G)
                ),
            )
        )
        with timed(timings, "region_encoder"):
            embed = _only_output(enc, enc.infer(feeds))[0]  # (D,)
        out = EncodedRegion(key=key, region=grid_region, embed=embed)
        self._put(key, out)
        return out


def to_grid_region(region: Sequence[float] | str | np.ndarray, grid: int, image_size: int | None) -> GridRegion:
    """A box, its text "(x1, y1, x2, y2)", or a sketch mask -> the region on the grid.
    A 1-D array or sequence of four numbers is a box; a 2-D or 3-D array is a sketch."""
    if isinstance(region, str):
        return region_from_box(parse_region(region), grid, image_size)
    arr = np.asarray(region)
    if arr.ndim >= 2:
        return region_from_sketch(arr, grid)
    if arr.ndim != 1 or arr.shape[0] != 4:
        raise RegionError(f"a region is a box x1, y1, x2, y2 or a sketch mask image, got shape {arr.shape}")
    return region_from_box(tuple(float(v) for v in arr), grid, image_size)


# --------------------------------------------------------------------------- prompts and splicing


def with_image_tokens(prompt: str, n: int, image_token: str) -> str:
    """The user text with `n` image placeholders: as written when it has them; "<image>"
    x n and a newline prepended when it has none; a single one widened to `n` (a video's
    frames). Any other count is a `MessageError`."""
    count = prompt.count(image_token)
    if count == n:
        return prompt
    if count == 0:
        return image_token * n + "\n" + prompt
    if count == 1:
        return prompt.replace(image_token, image_token * n)
    raise MessageError(f"the prompt has {count} {image_token} placeholders for {n} image(s) / frame(s)")


def with_region_token(prompt: str, region_token: str) -> str:
    """The user text with one region placeholder, appended when it has none."""
    count = prompt.count(region_token)
    if count == 1:
        return prompt
    if count == 0:
        return f"{prompt} {region_token}"
    raise MessageError(f"the prompt has {count} {region_token} placeholders; one region is given")


def splice(token_embeds: np.ndarray, ids: Sequence[int], slots: Mapping[int, Sequence[np.ndarray]]) -> np.ndarray:
    """Replace each placeholder token's embedding by its slot's rows.

    `token_embeds`: (1, T, D) of `ids` (T,). `slots`: placeholder id -> one (n_i, D) or
    (D,) array per occurrence, in order. Returns (1, T + sum(n_i - 1), D); a count
    mismatch is a `MessageError` naming the placeholder."""
    ids_arr = np.asarray(ids, dtype=np.int64).reshape(-1)  # (T,)
    if token_embeds.shape[:2] != (1, ids_arr.shape[0]):
        raise ValueError(f"embeddings {token_embeds.shape} do not match {ids_arr.shape[0]} ids")
    where: list[tuple[int, np.ndarray]] = []
    for tid, rows in slots.items():
        at = np.flatnonzero(ids_arr == tid)
        if at.shape[0] != len(rows):
            raise MessageError(
                f"the prompt has {at.shape[0]} placeholder(s) for token id {tid} but {len(rows)} input(s) were given"
            )
        where += [
            (int(i), np.asarray(r, dtype=np.float32).reshape(-1, token_embeds.shape[2])) for i, r in zip(at, rows)
        ]
    if not where:
        return token_embeds
    where.sort(key=lambda x: x[0])
    pieces, prev = [], 0
    for i, rows in where:
        pieces += [token_embeds[0, prev:i], rows]
        prev = i + 1
    pieces.append(token_embeds[0, prev:])
    return np.concatenate(pieces, axis=0)[None]  # (1, T', D)


# --------------------------------------------------------------------------- signal tokens


@dataclass(frozen=True)
class SignalHidden:
    """The signal tokens' last-layer hidden states and how they were obtained."""

    hidden: np.ndarray  # (K, D)
    source: str  # "emitted": the model wrote them; "appended": the runtime added them


def signal_hidden(
    generator: Generator,
    cache: KvCache,
    result: GenerationResult,
    signal_ids: Sequence[int],
) -> SignalHidden:
    """Hidden states at <sig_0>..<sig_{K-1}> after a generation (DESIGN.md, hybrid messages).

    A token's state is the decoder's output at the position where it is the input. When
    the model emitted all K, their states were recorded as they were fed back (the
    generator's `record_hidden`); the last generated token was never fed, so if it is a
    signal token one look-ahead step feeds it. When any is missing, the K tokens are
    appended after the message (a final EOS dropped, the last unfed token fed first) in
    one look-ahead prefill step. Look-ahead steps leave the cache unchanged.
    """
    ids = result.token_ids
    found = find_signal_tokens(ids, signal_ids)
    if found.complete:
        rows = []
        for pos in found.indices().tolist():
            if pos in result.hidden:
                rows.append(result.hidden[pos])
            else:  # the last generated token: chosen, never fed
                rows.append(generator.hidden_after(cache, [ids[pos]])[0])
        return SignalHidden(hidden=np.stack(rows), source="emitted")
    tail = [t for t in result.pending_ids if t not in generator.eos_ids]
    hidden = generator.hidden_after(cache, [*tail, *signal_ids])  # (len(tail) + K, D)
    return SignalHidden(hidden=np.ascontiguousarray(hidden[len(tail) :]), source="appended")


def _only_input(runner: Runner) -> str:
    return runner.input_specs[0].name


def _only_output(runner: Runner, out: dict[str, np.ndarray]) -> np.ndarray:
    return out[runner.output_specs[0].name]
