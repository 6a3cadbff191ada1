"""A session over one bundle, and conversations that keep their KV cache across turns.

    session = Session("bundle/", engine="ort", threads=2)       # loads and activates the LLM once
    result = session.run("Segment the dog", image="dog.jpg", task="segment", out_dir="out/")
    chat = session.conversation()
    chat.run("What is in the picture?", image="dog.jpg")        # pre-fills system + question + image
    chat.run("And its colour?")                                  # pre-fills only the new turn

One request, stage by stage (each timed in `RunResult.timings_ms`):

    media ─► preprocess ─► vision_encoder ─► projector (─► region_encoder)       prefill.MediaEncoder
    chat template ─► ids ─► embed + splice ─► prefill ─► decode (streamed)       generate.Generator
    text ─► hybrid message (messages.parse, or the forced task)
         ─► signal hidden states (emitted, or appended: one look-ahead step) ─► signal_projector
         ─► the pipeline registered for the module (tasks.register_pipeline) ─► outputs

Conversations: the cache holds the rendered history's positions. A new turn renders the
whole history with the chat template; when the rendering starts with the text the cache
covers, only the rest is pre-filled. Some templates re-render earlier turns (or the model
wrote its reply differently from how the template writes it back, e.g. without the space
after "ASSISTANT:"); then the cache is cut back to the last turn boundary the rendering
still agrees with, at worst to nothing, and the reason is given in `RunResult.debug`.
Image and region embeddings of earlier turns are kept, so a re-prefill does not run the
encoders again.

Not thread-safe: one session serves one request at a time (the runners' sessions and the
conversation caches are not shared-state safe).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitron_rt.bundle import BundleError, load_bundle
from vitron_rt.engines import ENGINES, EngineError, OrtOptions, Runner, make_runner
from vitron_rt.runtime.embedding import MappedTable
from vitron_rt.runtime.errors import MediaError, MessageError, RegionError, VitronInputError
from vitron_rt.runtime.generate import GenerationResult, Generator, Usage
from vitron_rt.runtime.kv_cache import KvCache
from vitron_rt.runtime.messages import HybridMessage, back_end_region, parse, signal_token_ids
from vitron_rt.runtime.prefill import (
    EncodedImage,
    EncodedRegion,
    MediaEncoder,
    VideoClip,
    signal_hidden,
    splice,
    timed,
    with_image_tokens,
    with_region_token,
)
from vitron_rt.runtime.sampling import SamplingParams
from vitron_rt.runtime.tasks import MEDIA_NEEDED, TaskOutput, TaskRequest, get_pipeline, resolve_task
from vitron_rt.runtime.tokenizer import Tokenizer

if TYPE_CHECKING:  # the pipelines package loads on a session's first back end
    from vitron_rt.runtime.pipelines import DiffusionOptions, SegmentOptions

# The decoder variant with a shared past/present KV buffer (export/llm_gqa.py).
SHARED_KV_VARIANT = "ort-gqa"
# Decoder weight precisions a session can be asked for (`quant=`): fp32 is the exported
# model; the others are quantised variants written by `export --quant` (export/llm_quant.py).
QUANT_CHOICES = ("fp32", "int4", "int8")
# Stands in for a reply when the template is asked where it writes one.
_REPLY_SENTINEL = "\x00vitron-rt-reply\x00"


@dataclass
class RunResult:
    """One request's answer. `to_dict()` is `vitron-rt run --json`'s object."""

    text: str  # the streamed reply (special tokens skipped)
    message: HybridMessage | None  # the back-end call, signal attached when a projector ran
    outputs: list[TaskOutput]
    usage: Usage
    timings_ms: dict[str, float]  # per stage; prefill and decode always present
    finish_reason: str
    notes: list[str] = field(default_factory=list)  # what did not happen, and why
    # How the prompt was pre-filled (positions reused / computed, re-prefill reason),
    # encoder cache hits, where the signal states came from.
    debug: dict[str, Any] = field(default_factory=dict)
    conditioning: np.ndarray | None = None  # (1, K, C) the signal projector's output
    token_ids: list[int] = field(default_factory=list)  # the generated ids, EOS (if any) included

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "token_ids": list(self.token_ids),
            "message": None if self.message is None else self.message.to_dict(),
            "outputs": [o.to_dict() for o in self.outputs],
            "usage": self.usage.to_dict(),
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "finish_reason": self.finish_reason,
            "notes": list(self.notes),
        }


# ONNX Runtime's session config key for busy-waiting intra-op worker threads.
SPINNING_KEY = "session.intra_op.allow_spinning"


class Session:
    """One bundle, its tokenizer and its runners. The LLM's runners are activated here;
    the others on first use; all stay resident until `close()`.

    `engine`: "ort" (ONNX Runtime, CPU by default) or "trt". `threads`: ONNX Runtime's
    intra-op threads per runner (None: one per core). `context_limit`: cap the context
    below the model's (bounds the KV cache). `options`: the engine's options object
    (`OrtOptions` / `TrtOptions`), overriding `threads`. `verify`: hash every bundle file
    on load (sizes are always checked). `io_binding=False` runs the decoder through plain
    `infer` instead of the bound KV cache (the baseline it is measured against).
    `shared_kv`: on ONNX Runtime with IOBinding, run the decoder's "ort-gqa" variant when
    the bundle has one (one in-place KV buffer per layer, no copy of the past per step);
    False keeps the standard graph and `OrtKvCache`.
    `quant`: run the decoder's weight-quantised variant of that precision ("int4",
    "int8"), which `export --quant` wrote beside the fp32 files; its tokens differ from
    fp32's (the bench's quality section measures by how much), so it runs only when asked,
    and a bundle without it, or a setting it cannot run under (TensorRT, no IOBinding,
    `shared_kv=False`), is an error rather than a silent fp32 run. None or "fp32": the
    fp32 decoder (the default). `decoder_variant` says which file the generator runs.
    `diffusion` (`pipelines.DiffusionOptions`: steps, guidance, an edit's strength, seed)
    and `segmentation` (`pipelines.SegmentOptions`) set the back ends' options for every
    request (None: their defaults); a request's sampling seed, when it sets one, seeds the
    UNet's noise in place of `diffusion.seed`.
    """

    def __init__(
        self,
        bundle_path: str | os.PathLike,
        engine: str = "ort",
        threads: int | None = None,
        *,
        context_limit: int | None = None,
        options: Any = None,
        verify: bool = True,
        io_binding: bool = True,
        shared_kv: bool = True,
        quant: str | None = None,
        diffusion: DiffusionOptions | None = None,
        segmentation: SegmentOptions | None = None,
    ):
        if engine not in ENGINES:
            raise EngineError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
        quant = quant or "fp32"
        if quant not in QUANT_CHOICES:
            raise ValueError(f"unknown quant {quant!r}; known: {', '.join(QUANT_CHOICES)}")
        if threads is not None and (not isinstance(threads, int) or threads < 0):
            raise ValueError(f"threads must be a whole number >= 0, got {threads!r}")
        self.diffusion, self.segmentation = _back_end_options(diffusion, segmentation)
        self.bundle = load_bundle(bundle_path, verify=verify)
        manifest = self.bundle.manifest
        if manifest.llm is None or manifest.tokenizer is None:
            raise BundleError(f"{self.bundle.root}: the bundle has no LLM and tokenizer; it cannot answer prompts")
        self.manifest = manifest
        self.engine = engine
        if options is None and engine == "ort":
            options = OrtOptions(intra_op_threads=threads or 0)
        self.options = options
        self.tokenizer = Tokenizer.from_bundle(self.bundle)
        info = manifest.tokenizer
        self.image_token, self.region_token = info.image_token, info.region_token
        self.image_id = self.tokenizer.token_id(info.image_token)
        self.region_id = self.tokenizer.token_id(info.region_token)
        self.signal_ids: tuple[int, ...] = signal_token_ids(info) if info.signal_tokens else ()
        self._runners: dict[str, Runner] = {}
        self._variant_runners: list[Runner] = []  # e.g. the decoder's ort-gqa file
        self.runners = _RunnerView(self)
        llm = manifest.llm
        self.quant = quant
        # The decoder file the generator runs: a variant kind, or None for the standard graph.
        self.decoder_variant: str | None = None
        if quant != "fp32":
            self.decoder_variant = _quant_variant(self.bundle, llm, quant, engine, io_binding, shared_kv)
        elif (
            shared_kv
            and io_binding
            and engine == "ort"
            and llm.kv_buffer_length is not None
            and any(v.kind == SHARED_KV_VARIANT for v in self.bundle.component(llm.component).variants)
        ):
            self.decoder_variant = SHARED_KV_VARIANT
        shared = self.decoder_variant is not None
        try:
            if shared:  # the generator's own runner; `runner(llm.component)` stays the standard graph
                decoder = make_runner(self.bundle, llm.component, engine, self.options, variant=self.decoder_variant)
                self._variant_runners.append(decoder)
                decoder.activate()
            else:
                decoder = self.runner(llm.component)
            # The embedding table mapped from its file when the bundle allows (no engine
            # holds it; bit-equal rows), else the embed_tokens runner.
            self.embedding_table = MappedTable.from_bundle(self.bundle, llm)
            self.generator = Generator(
                llm,
                self.tokenizer,
                self.embedding_table or self.runner(llm.embed_component),
                decoder,
                context_limit=context_limit,
                io_binding=io_binding,
                shared_kv=shared,
            )
        except BaseException:
            self.close()
            raise
        self.media = MediaEncoder(manifest, self.runner)

    # -- runners

    def runner(self, component: str) -> Runner:
        """The component's active runner, activated on first use and kept (`BundleError`
        for a component the bundle lacks)."""
        runner = self._runners.get(component)
        if runner is None:
            runner = make_runner(self.bundle, component, self.engine, self._options_for(component))
            runner.activate()
            self._runners[component] = runner
        return runner

    def _options_for(self, component: str) -> Any:
        """The engine options of one component's runner. On ONNX Runtime, every component
        but the LLM's runs without intra-op spinning unless the options say otherwise: the
        task pipelines run them beside threads of their own (a video's decode, pixel
        stages, encode), and a worker thread that spins after each op takes a core those
        threads need (measured on the tiny bundle's 64-frame 720p segment_video: 59-75 fps
        spinning, 81-117 without). The LLM's runners keep spinning: its decode loop waits
        on them alone, and not spinning costs ~35 % of decode speed (SmolLM2 int4)."""
        options = self.options
        llm = self.manifest.llm
        if not isinstance(options, OrtOptions) or component in (llm.component, llm.embed_component):
            return options  # not ONNX Runtime, or the LLM's
        if SPINNING_KEY in options.config:
            return options  # the caller chose
        return dataclasses.replace(options, config={**options.config, SPINNING_KEY: "0"})

    def loaded_files(self) -> dict[Path, int]:
        """Bytes of each bundle file the session serves from now: every active runner's
        ONNX file with its external data, and the mapped embedding table."""
        sizes: dict[Path, int] = {}
        for entry in self.manifest.components.values():
            for main, extra in [(entry.file, entry.external_data), *((v.file, v.external_data) for v in entry.variants)]:
                sizes[self.bundle.path(main).resolve()] = main.size + sum(f.size for f in extra)
        out: dict[Path, int] = {}
        for runner in [*self._runners.values(), *self._variant_runners]:
            path = Path(runner.path).resolve()
            out[path] = sizes.get(path, path.stat().st_size)
        if self.embedding_table is not None:
            out[self.embedding_table.path.resolve()] = self.embedding_table.path.stat().st_size
        return out

    def close(self) -> None:
        """Deactivate every runner (the session cannot be used afterwards)."""
        for runner in [*self._runners.values(), *self._variant_runners]:
            runner.deactivate()
        self._runners.clear()
        self._variant_runners.clear()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests

    def conversation(self, system: str | None = None) -> "Conversation":
        """A new conversation, with an optional system message."""
        return Conversation(self, system=system)

    def run(
        self,
        prompt: str,
        image: str | os.PathLike | np.ndarray | None = None,
        video: str | os.PathLike | None = None,
        region: Sequence[float] | str | np.ndarray | None = None,
        task: str = "auto",
        sampling: SamplingParams | None = None,
        out_dir: str | os.PathLike | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> RunResult:
        """One request in a fresh conversation (see `Conversation.run`)."""
        return self.conversation().run(
            prompt,
            image=image,
            video=video,
            region=region,
            task=task,
            sampling=sampling,
            out_dir=out_dir,
            on_text=on_text,
        )


def _back_end_options(
    diffusion: DiffusionOptions | None, segmentation: SegmentOptions | None
) -> tuple[DiffusionOptions | None, SegmentOptions | None]:
    """The session's back-end options, checked for their types (the pipelines package
    loads here, on the first session that sets one)."""
    if diffusion is None and segmentation is None:
        return None, None
    from vitron_rt.runtime.pipelines import DiffusionOptions, SegmentOptions

    given = (("diffusion", diffusion, DiffusionOptions), ("segmentation", segmentation, SegmentOptions))
    for name, value, kind in given:
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"{name} must be a {kind.__name__} or None, got {type(value).__name__}")
    return diffusion, segmentation


def _quant_variant(bundle: Any, llm: Any, quant: str, engine: str, io_binding: bool, shared_kv: bool) -> str:
    """The kind of the decoder variant with `quant` weights over the shared KV buffer, or a
    `BundleError` / `EngineError` saying why this session cannot run one."""
    entry = bundle.component(llm.component)
    found = [
        v.kind
        for v in entry.variants
        if v.precision == quant and (v.kind == SHARED_KV_VARIANT or v.attributes.get("base") == SHARED_KV_VARIANT)
    ]
    if not found:
        have = ", ".join(f"{v.kind} ({v.precision})" for v in entry.variants) or "none"
        raise BundleError(
            f"{bundle.root}: the bundle has no {quant} decoder (variants: {have}); "
            f"export it with `vitron-rt export ... --quant {quant}`"
        )
    if engine != "ort" or not io_binding or not shared_kv:
        raise EngineError(
            f"the {quant} decoder ({found[0]}) runs on ONNX Runtime over its shared KV buffer only "
            "(engine ort, io_binding and shared_kv on)"
        )
    if llm.kv_buffer_length is None:
        raise BundleError(f"{bundle.root}: the manifest gives no llm.kv_buffer_length for the {quant} decoder")
    return found[0]


class _RunnerView(Mapping[str, Runner]):
    """The session's runners as a mapping (what the task pipelines take): indexing
    activates a component on first use; iteration covers the active ones."""

    def __init__(self, session: Session):
        self._session = session

    def __getitem__(self, component: str) -> Runner:
        return self._session.runner(component)

    def __contains__(self, component: object) -> bool:
        return isinstance(component, str) and component in self._session.manifest.components

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._session._runners))

    def __len__(self) -> int:
        return len(self._session._runners)


@dataclass(frozen=True)
class _Mark:
    """A turn boundary the cache can be cut back to: the rendered text up to it, the
    positions cached for that text, the ids counted so far, and the ids of that text not
    yet in the cache (a reply's last token, chosen but never fed)."""

    text_end: int
    positions: int
    n_ids: int
    pending: tuple[int, ...] = ()


@dataclass
class _Turn:
    """A generation and the prompt it answered, as the conversation recorded them."""

    result: GenerationResult
    user_text: str
    prefill_ms: float  # embedding + splice + the prefill step + the first token
    debug: dict[str, Any]


class Conversation:
    """A chat over one session: the message history, the KV cache covering it, and the
    image and region embeddings its placeholders stand for."""

    def __init__(self, session: Session, system: str | None = None):
        self.session = session
        self.messages: list[dict[str, str]] = []
        if system is not None:
            self.messages.append({"role": "system", "content": system})
        self._cache: KvCache | None = None
        self._text = ""  # the rendered history the cache (plus pending ids) covers
        self._ids: list[int] = []  # those ids, for the repetition penalty
        self._marks: list[_Mark] = [_Mark(0, 0, 0)]
        # Embeddings per placeholder occurrence in `_text`, in order: (text offset, rows).
        self._images: list[tuple[int, np.ndarray]] = []
        self._regions: list[tuple[int, np.ndarray]] = []

    @property
    def _placeholder_tokens(self) -> tuple[str, str]:
        return self.session.image_token, self.session.region_token

    @property
    def cache(self) -> KvCache:
        if self._cache is None:
            self._cache = self.session.generator.new_cache()
        return self._cache

    def reset(self) -> None:
        """Forget the history (the system message stays) and the cache."""
        self.messages = [m for m in self.messages if m["role"] == "system"]
        if self._cache is not None:
            self._cache.reset()
        self._text, self._ids, self._marks = "", [], [_Mark(0, 0, 0)]
        self._images, self._regions = [], []

    # -- one request

    def run(
        self,
        prompt: str,
        image: str | os.PathLike | np.ndarray | None = None,
        video: str | os.PathLike | None = None,
        region: Sequence[float] | str | np.ndarray | None = None,
        task: str = "auto",
        sampling: SamplingParams | None = None,
        out_dir: str | os.PathLike | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> RunResult:
        """Answer one user turn and, when the answer (or `task`) calls a back end, run it.

        `image`: a path or an (H, W, 3) uint8 RGB array; `video`: a path (not both).
        `region`: a normalised box (x1, y1, x2, y2), its text, or a sketch mask (H, W[, C]).
        `task`: "auto" (the model's message decides), a verb (understand, segment,
        generate, edit: image or video module by the input), or a module name; forcing a
        module runs its back end even when the model emits no message: the instruction
        is then the user's prompt and the signal tokens are appended. `out_dir`: where
        the pipeline writes (checked first; a new temporary folder when None and a
        pipeline runs). `on_text`: called with each text delta as it is generated.

        Bad input raises a `VitronInputError` (one line) before any output is written.
        """
        start = time.perf_counter()
        if not isinstance(prompt, str):
            raise MessageError(f"the prompt must be text, got {type(prompt).__name__}")
        if image is not None and video is not None:
            raise VitronInputError("give an image or a video, not both")
        req = _Request(
            prompt=prompt, sampling=sampling or SamplingParams(), forced=resolve_task(task, video is not None)
        )
        if req.forced not in (None, "understand") and not _strip_placeholders(prompt, self._placeholder_tokens):
            raise MessageError(f"task {req.forced} needs an instruction: the prompt has only placeholders")
        created = False
        if out_dir is not None:
            req.out_dir, created = _prepare_out_dir(out_dir)
        try:
            self._front_end(req, image, video, region)
            result = self._llm(req, on_text)
            module, message = self._message(req, result)
            conditioning, outputs = None, []
            if message is not None and module not in (None, "understand"):
                conditioning, message = self._signal(req, module, message, result)
                if conditioning is not None:
                    outputs = self._dispatch(req, module, message, conditioning)
        except BaseException:
            if created:
                _remove_if_empty(req.out_dir)
            raise
        req.timings["total"] = (time.perf_counter() - start) * 1e3
        return RunResult(
            text=result.text,
            message=message,
            outputs=outputs,
            usage=result.usage,
            timings_ms=req.timings,
            finish_reason=result.finish_reason,
            notes=req.notes,
            debug=req.debug,
            conditioning=conditioning,
            token_ids=list(result.token_ids),
        )

    def _front_end(
        self,
        req: "_Request",
        image: str | os.PathLike | np.ndarray | None,
        video: str | os.PathLike | None,
        region: Sequence[float] | str | np.ndarray | None,
    ) -> None:
        """Read the media and run the encoders (cached by content)."""
        media = self.session.media
        hits, misses = media.hits, media.misses
        if image is not None:
            req.pixels = media.read_image(image)
            req.image_path = None if isinstance(image, np.ndarray) else Path(image)
            req.encoded = media.encode_images([req.pixels], req.timings)
        elif video is not None:
            req.clip = media.read_video(video)
            req.video = Path(video)
            req.encoded = media.encode_images(list(req.clip.frames), req.timings)
        if region is not None:
            if not req.encoded:
                raise RegionError("a region points into an image: give an image or a video with it")
            if isinstance(region, np.ndarray) and region.ndim >= 2:
                req.sketch = region
            req.region = media.encode_region(req.encoded[0], region, req.timings)  # a video's: on its first frame
        req.debug["encoder_cache"] = {"hits": media.hits - hits, "misses": media.misses - misses}

    def _llm(self, req: "_Request", on_text: Callable[[str], None] | None) -> GenerationResult:
        """The user turn with its placeholders, through prefill and decode."""
        s = self.session
        user_text = req.prompt
        if req.encoded:
            user_text = with_image_tokens(user_text, len(req.encoded), s.image_token)
        if req.region is not None:
            user_text = with_region_token(user_text, s.region_token)
        images = [e.embeds for e in req.encoded]
        regions = [] if req.region is None else [req.region.embed]
        turn = self._turn(user_text, images, regions, req.sampling, on_text)
        req.timings["prefill"] = turn.prefill_ms
        req.timings["decode"] = turn.result.timings_ms["decode"]
        req.debug.update(turn.debug)
        return turn.result

    def _message(self, req: "_Request", result: GenerationResult) -> tuple[str | None, HybridMessage | None]:
        """The module to call and its message: the model's, or the forced task's (whose
        instruction is the user's prompt when the model wrote no message)."""
        parsed = parse(result.text)
        if parsed.error is not None:
            req.notes.append(parsed.error)
        message, forced = parsed.message, req.forced
        if forced is None:
            return (None if message is None else message.module), message
        if forced == "understand":
            return forced, None
        if message is not None:
            return forced, dataclasses.replace(message, module=forced)
        instruction = _strip_placeholders(req.prompt, self._placeholder_tokens)
        box = None if req.region is None else req.region.region.box
        return forced, HybridMessage(module=forced, instructions=(instruction,), region=box, text=parsed.text)

    # -- the LLM turn

    def _turn(
        self,
        user_text: str,
        images: list[np.ndarray],
        regions: list[np.ndarray],
        sampling: SamplingParams,
        on_text: Callable[[str], None] | None,
    ) -> _Turn:
        s = self.session
        tok, gen = s.tokenizer, s.generator
        messages = [*self.messages, {"role": "user", "content": user_text}]
        new_text = tok.render_chat(messages, add_generation_prompt=True)
        mark, reprefill, reason = self._reuse_point(new_text)
        suffix = new_text[mark.text_end :]
        first = mark.text_end == 0
        ids = [*mark.pending, *tok.encode(suffix, add_special_tokens=first and not tok.has_chat_template)]

        # Placeholders in the suffix: earlier turns' (a re-prefill) first, then this turn's.
        suffix_images = [rows for off, rows in self._images if off >= mark.text_end] + images
        suffix_regions = [rows for off, rows in self._regions if off >= mark.text_end] + regions
        t0 = time.perf_counter()
        token_embeds = gen.embedder.embed(ids)  # (1, T, D)
        embeds = splice(token_embeds, ids, {s.image_id: suffix_images, s.region_id: suffix_regions})  # (1, T', D)
        splice_ms = (time.perf_counter() - t0) * 1e3

        cache = self.cache
        gen.check_fits(mark.positions, embeds.shape[1])  # before anything changes
        if cache.length > mark.positions:
            cache.truncate(mark.positions)
        generation = gen.stream(
            ids,
            sampling,
            embeds=embeds,
            cache=cache,
            seen_ids=self._ids[: mark.n_ids],
            record_hidden=s.signal_ids,
        )
        try:
            for delta in generation:
                if on_text is not None:
                    on_text(delta)
        except BaseException:
            self._forget()  # the cache is mid-turn: the next turn starts over
            raise
        result = generation.result

        # ---- record the turn: history, text covered, marks, placeholder embeddings
        prompt_positions = mark.positions + embeds.shape[1]
        n_ids = mark.n_ids + len(ids)
        marks = [m for m in self._marks if m.text_end <= mark.text_end]
        marks.append(_Mark(len(new_text), prompt_positions, n_ids))
        tokens = result.token_ids
        ended_eos = tokens[-1] in gen.eos_ids
        reply_ids = tokens[:-1] if ended_eos else tokens  # a final EOS is the template's to write
        pending = () if ended_eos else (tokens[-1],)
        reply_text = tok.decode(reply_ids, skip_special_tokens=False)
        content = self._reply_content(messages, new_text, reply_text, result)
        marks.append(_Mark(len(new_text) + len(reply_text), cache.length, n_ids + len(reply_ids), pending))
        self._images = _placeholders(
            new_text, s.image_token, [r for o, r in self._images if o < mark.text_end] + suffix_images
        )
        self._regions = _placeholders(
            new_text, s.region_token, [r for o, r in self._regions if o < mark.text_end] + suffix_regions
        )
        self._marks = marks
        self._text = new_text + reply_text
        self._ids = [*self._ids[: mark.n_ids], *ids, *reply_ids]
        self.messages = [*messages, {"role": "assistant", "content": content}]
        debug = {
            "decoder": {"variant": s.decoder_variant, "quant": s.quant},
            "prefill_positions": embeds.shape[1],
            "reused_positions": mark.positions,
            "reprefill": reprefill,
            "reprefill_reason": reason,
        }
        return _Turn(
            result=result, user_text=user_text, prefill_ms=splice_ms + result.timings_ms["prefill"], debug=debug
        )

    def _reuse_point(self, new_text: str) -> tuple[_Mark, str | None, str | None]:
        """The last mark whose text the new rendering still starts with; how much was
        given up ("reply": the last reply is pre-filled again; "full": everything) and why."""
        common = _common_prefix(self._text, new_text)
        mark = next(m for m in reversed(self._marks) if m.text_end <= common)  # marks grow; the first is 0
        last = self._marks[-1]
        if mark is last:
            return mark, None, None
        at = repr(self._text[common : common + 24])
        kind = "full" if mark.text_end == 0 else "reply"
        why = (
            f"the chat template renders the history differently from what the cache holds, from character "
            f"{common} ({at}); pre-filling again from position {mark.positions}"
        )
        return mark, kind, why

    def _reply_content(self, messages: list[dict], new_text: str, reply_text: str, result: GenerationResult) -> str:
        """The assistant message to keep: the reply as the template will write it back.

        The template may put text between its generation prompt and the reply (Vicuna:
        "ASSISTANT:" then " " then the reply); a reply that starts with that text is
        stored without it, so the next rendering reproduces what the model saw. A reply
        cut by a stop string is stored as shown."""
        s = self.session
        if result.finish_reason == "stop":
            return result.text.strip()
        # A placeholder the model wrote has no embeddings to stand for: keep it out.
        reply = reply_text.replace(s.image_token, "").replace(s.region_token, "")
        try:
            probe = s.tokenizer.render_chat(
                [*messages, {"role": "assistant", "content": _REPLY_SENTINEL}], add_generation_prompt=False
            )
        except MessageError:  # a template with rules of its own; the next turn re-prefills
            return reply.strip()
        at = probe.find(_REPLY_SENTINEL)
        if at >= 0 and probe[:at].startswith(new_text):
            gap = probe[len(new_text) : at]
            if reply.startswith(gap):
                return reply[len(gap) :]
        return reply.strip()

    def _forget(self) -> None:
        """Drop the cache state after an interrupted turn (the history is kept)."""
        if self._cache is not None:
            self._cache.reset()
        self._text, self._ids, self._marks = "", [], [_Mark(0, 0, 0)]

    # -- signal and back end

    def _signal(
        self, req: "_Request", module: str, message: HybridMessage, result: GenerationResult
    ) -> tuple[np.ndarray | None, HybridMessage]:
        """The signal embeddings' projection for `module`, and the message with the signal
        hidden states attached; None when the bundle cannot condition that back end."""
        s = self.session
        signal = s.manifest.signal
        projector = None if signal is None else signal.projectors.get(module)
        if projector is None or not s.signal_ids:
            req.notes.append(f"this bundle has no signal projector for {module}; no back end ran")
            return None, message
        with timed(req.timings, "signal_prefill"):
            sig = signal_hidden(s.generator, self.cache, result, s.signal_ids)  # (K, D)
        req.debug["signal_source"] = sig.source
        runner = s.runner(projector)
        with timed(req.timings, "signal_projector"):
            out = runner.infer({runner.input_specs[0].name: sig.hidden[None]})  # (1, K, D)
        conditioning = out[runner.output_specs[0].name]  # (1, K, C)
        return conditioning, message.with_signal(sig.hidden)

    def _dispatch(
        self, req: "_Request", module: str, message: HybridMessage, conditioning: np.ndarray
    ) -> list[TaskOutput]:
        """Run the pipeline registered for `module`. None registered, or the request lacks
        the media the back end works on: a note, no outputs."""
        pipeline = get_pipeline(module)
        if pipeline is None:
            req.notes.append(f"no pipeline is registered for {module}; no outputs")
            return []
        needs = MEDIA_NEEDED.get(module)
        have = "video" if req.clip is not None else "image" if req.pixels is not None else None
        if needs is not None and needs != have:
            req.notes.append(f"{module} works on an {needs}, and the request has {have or 'no media'}; no outputs")
            return []
        out_dir, created = req.out_dir, req.out_dir is None
        if out_dir is None:
            out_dir = Path(tempfile.mkdtemp(prefix="vitron-rt-"))
            req.notes.append(f"outputs written to a new temporary folder {out_dir} (no out_dir given)")
        user_box = None if req.region is None else req.region.region.box
        request = TaskRequest(
            module=module,
            message=message,
            conditioning=conditioning,
            out_dir=out_dir,
            bundle=self.session.bundle,
            runners=self.session.runners,
            image=req.pixels,
            image_path=req.image_path,
            video=req.video,
            frames=None if req.clip is None else req.clip.frames,
            frame_indices=None if req.clip is None else req.clip.indices,
            region=back_end_region(message, user_box),
            sketch=req.sketch,
            seed=req.sampling.seed,
            diffusion=self.session.diffusion,
            segmentation=self.session.segmentation,
        )
        try:
            outputs = list(pipeline(request))
        except BaseException:
            if created:
                _remove_if_empty(out_dir)
            raise
        finally:
            for stage, ms in request.timings_ms.items():  # a stage name the front end used gets the module's prefix
                req.timings[stage if stage not in req.timings else f"{module}.{stage}"] = ms
            req.notes.extend(request.notes)
        if request.info:
            req.debug["pipeline"] = dict(request.info)
        return outputs


@dataclass
class _Request:
    """One request as it runs: its inputs as the front end read them, and the stage
    timings, notes and debug facts it collects."""

    prompt: str
    sampling: SamplingParams
    forced: str | None  # the module a task forces; None: the model decides
    out_dir: Path | None = None
    pixels: np.ndarray | None = None  # (H, W, 3) uint8 RGB
    image_path: Path | None = None
    video: Path | None = None
    clip: VideoClip | None = None
    encoded: list[EncodedImage] = field(default_factory=list)  # the image, or one per frame
    region: EncodedRegion | None = None
    sketch: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    debug: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _placeholders(text: str, token: str, rows: list[np.ndarray]) -> list[tuple[int, np.ndarray]]:
    """Pair each occurrence of `token` in `text` with its embeddings, in order."""
    offsets = [m.start() for m in re.finditer(re.escape(token), text)]
    if len(offsets) != len(rows):
        raise MessageError(f"the conversation has {len(offsets)} {token} placeholder(s) for {len(rows)} input(s)")
    return list(zip(offsets, rows))


def _strip_placeholders(text: str, tokens: Sequence[str]) -> str:
    for t in tokens:
        text = text.replace(t, " ")
    return " ".join(text.split())


def _prepare_out_dir(out_dir: str | os.PathLike) -> tuple[Path, bool]:
    """Create the output folder if needed and prove it writable, before any work is done.
    Returns the folder and whether it was created here."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise MediaError(f"{path}: the output folder is a file")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".vitron-rt-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        if created:
            _remove_if_empty(path)
        raise MediaError(f"{path}: the output folder is not writable ({e.strerror or e})") from None
    return path, created


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass
