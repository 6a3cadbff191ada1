"""Text generation over a bundle's `embed_tokens` + `llm_decoder`: prefill, then decode.

    prompt ids ─► embed_tokens ─► (splice image / region embeddings) ─► KvCache.forward (prefill, T = prompt)
                                                                           │ last logits row
           ┌───────────────────────────────────────────────────────────────┘
           ▼
    Sampler.next_token ─► StreamDecoder.step ─► StopChecker.push ─► yield text delta
           │                                                   (EOS, stop string, max_new_tokens, context full)
           └─► embed_tokens (1 token) ─► KvCache.forward (decode, T = 1) ─► ...

Tensor names come from the manifest's `LlmInfo`; nothing here knows a model.

Timings (`GenerationResult.timings_ms`):

- `prefill`: from the start of the prompt's embedding lookup to the first generated
  token chosen (embedding, the prefill decoder step, sampling), i.e. time to first token
  less the encoders, which have stages of their own.
- `decode`: from the first generated token to the last one chosen: the completion_tokens
  - 1 decode steps, so decode throughput is `(completion_tokens - 1) / decode` tokens/s.

Both count the generator's own time only: while a streaming consumer holds a delta
(printing it, sending it), the clock is stopped.

After a generation the cache holds the prompt and every generated token but the last
(which was chosen, never fed); `GenerationResult.pending_ids` is that last token, for a
conversation whose next turn continues from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Sequence
from collections.abc import Generator as GeneratorType
from dataclasses import dataclass, field

import numpy as np

from vitron_rt.bundle import LlmInfo
from vitron_rt.engines import OrtRunner, Runner
from vitron_rt.runtime.embedding import MappedTable
from vitron_rt.runtime.errors import ContextLengthError
from vitron_rt.runtime.kv_cache import KvCache, make_kv_cache
from vitron_rt.runtime.sampling import Sampler, SamplingParams, StopChecker
from vitron_rt.runtime.tokenizer import Tokenizer

# Why a generation ended.
FINISH_REASONS = ("eos", "stop", "length", "context")


@dataclass(frozen=True)
class Usage:
    """Token counts of one request, OpenAI's names. `prompt_tokens` counts every
    position the model attended to before generating (image patches included, earlier
    turns included); `completion_tokens` every generated token, a final EOS included."""

    prompt_tokens: int
    completion_tokens: int

    def to_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


@dataclass
class GenerationResult:
    """Everything one generation produced, once it has finished."""

    text: str  # what was streamed: special tokens skipped, a stop string and what follows cut
    token_ids: list[int]  # generated ids, EOS (if any) included
    finish_reason: str  # one of FINISH_REASONS
    usage: Usage
    timings_ms: dict[str, float]  # prefill, decode (see the module docstring)
    prefill_tokens: int  # positions this call pre-filled (less than prompt_tokens when a cache was reused)
    # generated index -> (D,) last-layer hidden state of that token, for the ids asked
    # for with `record_hidden` (a token's state exists once it has been fed back).
    hidden: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def pending_ids(self) -> list[int]:
        """The generated token that was chosen but not fed to the cache (none when the
        generation produced nothing)."""
        return self.token_ids[-1:]

    @property
    def decode_tokens_per_s(self) -> float:
        """(completion_tokens - 1) / decode time: the steady decode rate."""
        ms = self.timings_ms.get("decode", 0.0)
        return (self.usage.completion_tokens - 1) / (ms / 1e3) if ms > 0 else 0.0


class TokenEmbedder:
    """`embed_tokens` for the generator, from a memory-mapped table (`MappedTable`: a
    numpy row lookup, see runtime/embedding.py) when the bundle has one, else through the
    engine: whole prompts through `infer`, and single decode tokens through a binding over
    a (1,1) id buffer and a (1,1,D) output buffer made once (ONNX Runtime), so a decode
    step's embedding allocates nothing. The returned one-token array is that buffer:
    valid until the next `embed_one`."""

    def __init__(self, source: Runner | MappedTable, llm: LlmInfo):
        self.table = source if isinstance(source, MappedTable) else None
        self.runner = None if self.table is not None else source
        self.llm = llm
        self._id = np.zeros((1, 1), dtype=np.int64)  # (1, 1)
        self._out = np.empty((1, 1, llm.hidden_size), dtype=np.float32)  # (1, 1, D)
        self._bound = False

    def embed(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """(T,) ids -> (1, T, D) float32, a new array."""
        if self.table is not None:
            return self.table.lookup(ids)
        arr = np.asarray(ids, dtype=np.int64).reshape(1, -1)  # (1, T)
        return self.runner.infer({self.llm.input_ids: arr})[self.llm.inputs_embeds]

    def embed_one(self, token: int) -> np.ndarray:
        """One id -> (1, 1, D), the embedder's own buffer."""
        self._id[0, 0] = token
        if self.table is not None:
            return self.table.lookup(self._id[0], out=self._out)
        if isinstance(self.runner, OrtRunner):
            if not self._bound:
                self.runner.bind({self.llm.input_ids: self._id}, {self.llm.inputs_embeds: self._out})
                self._bound = True
            self.runner.run_bound()
            return self._out
        return self.runner.infer({self.llm.input_ids: self._id})[self.llm.inputs_embeds]


class Generation(Iterator[str]):
    """A generation in progress: iterate it for the text deltas as they are produced;
    `result` is available once it is exhausted (`drain()` runs it to the end)."""

    def __init__(self, steps: GeneratorType[str, None, GenerationResult]):
        self._steps = steps
        self._result: GenerationResult | None = None

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> str:
        try:
            return next(self._steps)
        except StopIteration as stop:
            self._result = stop.value
            raise StopIteration from None

    def drain(self) -> GenerationResult:
        """Run to the end, discarding the deltas; returns the result."""
        for _ in self:
            pass
        return self.result

    @property
    def result(self) -> GenerationResult:
        if self._result is None:
            raise RuntimeError("the generation has not finished; iterate it or call drain()")
        return self._result


class Generator:
    """Prefill + decode for one bundle's LLM, over its token embedding (a mapped table or
    an active runner) and an active decoder runner.

    `context_limit` caps the context below the model's `max_position_embeddings` (to
    bound the KV cache's memory); a prompt that does not fit raises `ContextLengthError`.
    """

    def __init__(
        self,
        llm: LlmInfo,
        tokenizer: Tokenizer,
        embed: Runner | MappedTable,
        decoder: Runner,
        *,
        context_limit: int | None = None,
        io_binding: bool = True,
        shared_kv: bool = False,
    ):
        """`shared_kv`: `decoder` runs the "ort-gqa" variant, whose cache is one shared
        buffer per layer (`SharedBufferKvCache`); the context is capped at its length."""
        self.llm = llm
        self.tokenizer = tokenizer
        self.embedder = TokenEmbedder(embed, llm)
        self.decoder = decoder
        limit = llm.max_position_embeddings
        if context_limit is not None:
            if context_limit < 1:
                raise ValueError(f"context_limit must be positive, got {context_limit}")
            limit = min(limit, int(context_limit))
        if shared_kv and llm.kv_buffer_length is not None:
            limit = min(limit, llm.kv_buffer_length)
        self.limit = limit
        self.io_binding = io_binding
        self.shared_kv = shared_kv
        eos = tokenizer.eos_token_id
        self.eos_ids: frozenset[int] = frozenset(() if eos is None else (eos,))

    def new_cache(self) -> KvCache:
        """An empty cache for one sequence, IOBinding-backed when the decoder is ONNX Runtime."""
        return make_kv_cache(
            self.decoder, self.llm, self.limit, io_binding=self.io_binding, shared_buffer=self.shared_kv
        )

    def check_fits(self, cached: int, new_positions: int) -> None:
        """`ContextLengthError` unless `new_positions` after `cached` ones fit the context
        (a prompt is never truncated)."""
        total = cached + new_positions
        if total > self.limit:
            raise ContextLengthError(
                f"the prompt needs {total} positions but the context holds {self.limit}; shorten it",
                tokens=total,
                limit=self.limit,
            )

    def stream(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams | None = None,
        *,
        embeds: np.ndarray | None = None,
        cache: KvCache | None = None,
        seen_ids: Sequence[int] = (),
        record_hidden: Collection[int] = (),
        sampler: Sampler | None = None,
    ) -> Generation:
        """Start generating after `prompt_ids` (the new positions: the whole prompt, or a
        conversation's new suffix when `cache` already holds the rest).

        `embeds`: the prompt's (1, T, D) embeddings when they are not just the ids'
        (image and region embeddings spliced in); by default the ids are embedded.
        `seen_ids`: earlier ids the repetition penalty also counts (previous turns).
        `record_hidden`: token ids whose last-layer hidden state is kept when they are
        fed back (the signal tokens). `sampler`: a custom token chooser (constrained
        decoding, tests); by default one is made from `params`.

        The context is checked before anything runs: `ContextLengthError` if the prompt
        does not fit.
        """
        params = params or SamplingParams()
        cache = cache if cache is not None else self.new_cache()
        ids = [int(i) for i in prompt_ids]
        n_new = embeds.shape[1] if embeds is not None else len(ids)
        if n_new < 1:
            raise ValueError("nothing to prefill: the prompt is empty")
        self.check_fits(cache.length, n_new)
        if sampler is None:
            sampler = Sampler(params, self.llm.vocab_size, [*seen_ids, *ids])
        return Generation(self._run(ids, embeds, cache, params, sampler, frozenset(record_hidden)))

    def generate(self, prompt_ids: Sequence[int], params: SamplingParams | None = None, **kwargs) -> GenerationResult:
        """`stream(...)` run to the end."""
        return self.stream(prompt_ids, params, **kwargs).drain()

    def _run(
        self,
        ids: list[int],
        embeds: np.ndarray | None,
        cache: KvCache,
        params: SamplingParams,
        sampler: Sampler,
        record: frozenset[int],
    ) -> GeneratorType[str, None, GenerationResult]:
        decoder = self.tokenizer.stream_decoder(skip_special_tokens=True)
        stopper = StopChecker(params.stop, self.eos_ids)
        clock = _Clock()
        tokens: list[int] = []
        hidden: dict[int, np.ndarray] = {}
        reason = "length"

        # ---- prefill: the prompt's positions in one step, then the first token
        if embeds is None:
            embeds = self.embedder.embed(ids)  # (1, T, D)
        n_prefill = embeds.shape[1]
        out = cache.forward(embeds)
        prompt_tokens = cache.length

        while True:
            token = sampler.next_token(out.logits)
            tokens.append(token)
            if len(tokens) == 1:
                clock.lap("prefill")
            delta = decoder.step(token)
            if stopper.is_eos(token):
                delta += decoder.flush()  # an incomplete character held before EOS shows as the full decode has it
            text = stopper.push(delta, token)
            if text:
                clock.pause()
                yield text
                clock.resume()
            if stopper.stopped:
                reason = stopper.reason or "stop"
                break
            if len(tokens) >= params.max_new_tokens:
                reason = "length"
                break
            if cache.free < 1:
                reason = "context"
                break
            # ---- decode: feed the chosen token back, one position
            out = cache.forward(self.embedder.embed_one(token))
            if token in record:
                hidden[len(tokens) - 1] = out.hidden[0].copy()  # (D,)

        if not stopper.stopped:
            tail = stopper.push(decoder.flush())
            tail += stopper.finish()
            if tail:
                clock.pause()
                yield tail
                clock.resume()
        clock.lap("decode")
        return GenerationResult(
            text=stopper.text,
            token_ids=tokens,
            finish_reason=reason,
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=len(tokens)),
            timings_ms=clock.laps,
            prefill_tokens=n_prefill,
            hidden=hidden,
        )

    def hidden_after(self, cache: KvCache, ids: Sequence[int]) -> np.ndarray:
        """Last-layer hidden states of `ids` fed after the cached positions, without
        keeping them in the cache (a look-ahead step): (T, D), a new array. Used to get
        the signal tokens' states when the model did not emit them."""
        embeds = self.embedder.embed(ids)  # (1, T, D)
        self.check_fits(cache.length, embeds.shape[1])
        return cache.forward(embeds, commit=False).hidden.copy()


class _Clock:
    """Named laps of the generator's own time: `lap(name)` records the time since the
    previous lap (or the start), not counting the spans between `pause` and `resume`."""

    def __init__(self, now: Callable[[], float] = time.perf_counter):
        self._now = now
        self._start = now()
        self._paused_at: float | None = None
        self._paused = 0.0
        self.laps: dict[str, float] = {}

    def pause(self) -> None:
        self._paused_at = self._now()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._paused += self._now() - self._paused_at
            self._paused_at = None

    def lap(self, name: str) -> None:
        now = self._now()
        self.laps[name] = (now - self._start - self._paused) * 1e3
        self._start, self._paused = now, 0.0
