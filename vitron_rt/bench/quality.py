"""What a quantised decoder costs in quality, measured through the bundle's own files on
ONNX Runtime (the runtime's `Session`, fp32 and quantised side by side).

    greedy agreement   CHAT_PROMPTS (20 fixed chat prompts), NEW_TOKENS greedy tokens each
                       from the fp32 decoder and from the quantised one; per prompt:
                         prefix    tokens equal before the first difference, over the fp32
                                   reply's length (1.0: the same reply; an EOS counts as a
                                   token, so stopping early is a difference)
                         top-1     the quantised decoder fed the prompt + fp32's reply in one
                                   prefill: the fraction of reply positions where its argmax
                                   is fp32's token (no divergence cascade: one early flip
                                   does not decide the rest)
                       summarised as the mean prefix fraction, the fraction of prompts
                       whose replies are identical, and the mean top-1 agreement
    perplexity         exp(mean NLL) of PASSAGE's tokens 1..T-1, each given the ones before,
                       from one prefill of the whole passage (fp32 and quantised), plus the
                       two decoders' top-1 agreement on it

`measure(bundle)` runs both for every quantised decoder variant the bundle has and
returns one JSON-ready dict (the bench's quality section).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitron_rt.engines import OrtOptions
from vitron_rt.runtime.sampling import SamplingParams
from vitron_rt.runtime.session import SHARED_KV_VARIANT, Session

NEW_TOKENS = 64
# Fixed chat prompts: questions, instructions, short tasks of the kinds a small chat model
# is asked (facts, explanations, lists, rewriting, arithmetic, code, advice).
CHAT_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Explain in a few sentences why the sky is blue during a clear, sunny day.",
    "Give me three tips for getting better sleep.",
    "What is the difference between a virus and a bacterium?",
    "Write a haiku about the ocean.",
    "How do I make a cup of green tea?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "What are the main causes of climate change?",
    "Translate 'Good morning, how are you?' into Spanish.",
    "Write a Python function that returns the factorial of a number.",
    "What is 17 multiplied by 23?",
    "Describe a cat to someone who has never seen one.",
    "Why do leaves change colour in autumn?",
    "List five fruits that are high in vitamin C.",
    "What should I pack for a weekend hiking trip?",
    "Explain what a black hole is to a ten-year-old.",
    "Rewrite this sentence to be more formal: 'Hey, can you send me the report soon?'",
    "What is photosynthesis?",
    "Give me a short motivational quote and explain what it means.",
    "How does a computer store information?",
)

# The perplexity text: the closing paragraph of Charles Darwin's "On the Origin of
# Species" (1859, public domain), 265 SmolLM2 tokens.
PASSAGE = (
    "It is interesting to contemplate an entangled bank, clothed with many plants of many kinds, "
    "with birds singing on the bushes, with various insects flitting about, and with worms crawling "
    "through the damp earth, and to reflect that these elaborately constructed forms, so different "
    "from each other, and dependent on each other in so complex a manner, have all been produced by "
    "laws acting around us. These laws, taken in the highest sense, being Growth with Reproduction; "
    "Inheritance which is almost implied by reproduction; Variability from the indirect and direct "
    "action of the external conditions of life, and from use and disuse; a Ratio of Increase so high "
    "as to lead to a Struggle for Life, and as a consequence to Natural Selection, entailing "
    "Divergence of Character and the Extinction of less-improved forms. Thus, from the war of nature, "
    "from famine and death, the most exalted object which we are capable of conceiving, namely, the "
    "production of the higher animals, directly follows. There is grandeur in this view of life, with "
    "its several powers, having been originally breathed into a few forms or into one; and that, "
    "whilst this planet has gone cycling on according to the fixed law of gravity, from so simple a "
    "beginning endless forms most beautiful and most wonderful have been, and are being, evolved."
)


@dataclass(frozen=True)
class PromptAgreement:
    """One prompt's fp32 and quantised greedy replies, compared (see the module docstring)."""

    prompt: str
    fp32_tokens: int  # length of the fp32 reply (NEW_TOKENS, or fewer after an EOS)
    prefix: int  # tokens equal before the first difference
    identical: bool
    top1: float  # teacher-forced argmax agreement on the fp32 reply

    @property
    def prefix_fraction(self) -> float:
        return 1.0 if self.identical else self.prefix / max(self.fp32_tokens, 1)


@dataclass(frozen=True)
class Agreement:
    """Greedy agreement of a quantised decoder with fp32 over a set of prompts."""

    quant: str
    new_tokens: int
    prompts: tuple[PromptAgreement, ...]

    @property
    def mean_prefix_fraction(self) -> float:
        return float(np.mean([p.prefix_fraction for p in self.prompts]))

    @property
    def identical_fraction(self) -> float:
        return float(np.mean([p.identical for p in self.prompts]))

    @property
    def mean_top1(self) -> float:
        return float(np.mean([p.top1 for p in self.prompts]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "quant": self.quant,
            "prompts": len(self.prompts),
            "new_tokens": self.new_tokens,
            "mean_prefix_fraction": round(self.mean_prefix_fraction, 4),
            "identical_fraction": round(self.identical_fraction, 4),
            "mean_top1_agreement": round(self.mean_top1, 4),
            "per_prompt": [{**asdict(p), "top1": round(p.top1, 4)} for p in self.prompts],
        }


@dataclass(frozen=True)
class Perplexity:
    """Perplexity of PASSAGE (or another text) under one decoder."""

    quant: str
    tokens: int  # tokens scored (the text's length less one)
    perplexity: float


def _options(threads: int) -> OrtOptions:
    # cache_optimized off: a measurement leaves the bundle as it found it.
    return OrtOptions(intra_op_threads=threads, cache_optimized=False)


def open_session(bundle: str | os.PathLike, quant: str, threads: int = 2) -> Session:
    """A session over `bundle` running the decoder of precision `quant` ("fp32" is the
    ort-gqa variant when the bundle has one, as in serving)."""
    return Session(bundle, options=_options(threads), verify=False, quant=quant)


def _reply(session: Session, ids: list[int], new_tokens: int) -> list[int]:
    params = SamplingParams(greedy=True, max_new_tokens=new_tokens)
    return list(session.generator.generate(ids, params).token_ids)


def sequence_logits(session: Session, ids: Sequence[int]) -> np.ndarray:
    """(T, V) logits of every position of `ids`, from one prefill of the session's decoder
    over an empty cache (its shared KV buffers sized to T)."""
    llm, decoder = session.manifest.llm, session.generator.decoder
    embeds = session.generator.embedder.embed(list(ids))  # (1, T, D)
    t = embeds.shape[1]
    feeds = {llm.inputs_embeds: embeds, llm.attention_mask: np.ones((1, t), np.int64)}  # (1, T)
    if session.decoder_variant is None:
        feeds[llm.position_ids] = np.arange(t, dtype=np.int64)[None]  # (1, T)
        shape = (1, llm.num_kv_heads, 0, llm.head_dim)  # standard graph: an empty past
    else:
        shape = (1, llm.num_kv_heads, t, llm.head_dim)  # shared buffer: room for T positions
    for name in llm.past_names():
        feeds[name] = np.zeros(shape, np.float32)
    return decoder.infer(feeds)[llm.logits][0]  # (T, V)


def _log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log p(target) per row of (N, V) logits, in float64."""
    x = logits.astype(np.float64)
    top = x.max(-1, keepdims=True)
    lse = np.log(np.exp(x - top).sum(-1)) + top[:, 0]
    return x[np.arange(len(targets)), targets] - lse


def perplexity_of(logits: np.ndarray, ids: Sequence[int]) -> float:
    """exp(mean NLL) of ids[1:] under (T, V) `logits` (row i predicts ids[i+1])."""
    targets = np.asarray(ids[1:], np.int64)
    return float(math.exp(-_log_softmax_at(logits[:-1], targets).mean()))


def greedy_agreement(
    fp32: Session, quant: Session, prompts: Sequence[str] = CHAT_PROMPTS, new_tokens: int = NEW_TOKENS
) -> Agreement:
    """Greedy replies of both sessions to each chat prompt, compared (module docstring)."""
    rows = []
    for prompt in prompts:
        ids = fp32.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
        a, b = _reply(fp32, ids, new_tokens), _reply(quant, ids, new_tokens)
        prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        logits = sequence_logits(quant, ids + a[:-1])  # position len(ids)-1+j predicts a[j]
        top1 = float(np.mean(logits[len(ids) - 1 :].argmax(-1) == np.asarray(a)))
        rows.append(PromptAgreement(prompt, len(a), prefix, a == b, top1))
    return Agreement(quant.quant, new_tokens, tuple(rows))


def quant_kinds(bundle: str | os.PathLike) -> dict[str, str]:
    """precision -> variant kind of the bundle's quantised decoders over the shared KV buffer."""
    from vitron_rt.bundle import load_bundle

    b = load_bundle(bundle, verify=False)
    if b.manifest.llm is None:
        return {}
    entry = b.component(b.manifest.llm.component)
    return {
        v.precision: v.kind
        for v in entry.variants
        if v.precision != "fp32" and v.attributes.get("base") == SHARED_KV_VARIANT
    }


def measure(
    bundle: str | os.PathLike,
    threads: int = 2,
    quants: Sequence[str] | None = None,
    prompts: Sequence[str] = CHAT_PROMPTS,
    new_tokens: int = NEW_TOKENS,
    text: str = PASSAGE,
) -> dict[str, Any]:
    """Greedy agreement and perplexity of each quantised decoder in `bundle` (or of
    `quants`) against its fp32 decoder; a JSON-ready dict."""
    from vitron_rt.bundle import load_bundle

    root = Path(bundle)
    kinds = quant_kinds(root)
    quants = list(kinds) if quants is None else list(quants)
    b = load_bundle(root, verify=False)
    out: dict[str, Any] = {
        "definitions": {
            "mean_prefix_fraction": "per prompt, greedy tokens equal to fp32's before the first difference "
            "over the fp32 reply's length (1 when identical); averaged",
            "identical_fraction": "prompts whose quantised reply equals the fp32 reply token for token",
            "mean_top1_agreement": "per prompt, the quantised decoder fed prompt + fp32 reply: fraction of reply "
            "positions whose argmax is fp32's token; averaged",
            "perplexity": "exp(mean NLL) of the passage's tokens given the ones before, one prefill",
        },
        "prompts": len(prompts),
        "new_tokens": new_tokens,
        "threads": threads,
        "decoders": {},
    }
    t0 = time.perf_counter()
    with open_session(root, "fp32", threads) as fp32:
        ids = fp32.tokenizer.encode(text, add_special_tokens=False)[: fp32.generator.limit]  # a short context: its head
        ref_logits = sequence_logits(fp32, ids)  # (T, V)
        out["passage"] = {"tokens": len(ids), "fp32_perplexity": round(perplexity_of(ref_logits, ids), 4)}
        out["fp32_variant"] = fp32.decoder_variant
        for q in quants:
            with open_session(root, q, threads) as qs:
                logits = sequence_logits(qs, ids)
                agreement = greedy_agreement(fp32, qs, prompts, new_tokens)
                entry = b.component(b.manifest.llm.component).variant(qs.decoder_variant)
                files = [entry.file, *entry.external_data]
                out["decoders"][q] = {
                    "variant": qs.decoder_variant,
                    "bytes_on_disk": sum(f.size for f in files),
                    "scheme": entry.attributes.get("quantization", {}),
                    "perplexity": round(perplexity_of(logits, ids), 4),
                    "passage_top1_agreement": round(float(np.mean(logits.argmax(-1) == ref_logits.argmax(-1))), 4),
                    **agreement.to_dict(),
                }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out
