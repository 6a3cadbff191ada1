"""The LLM's speed on a bundle: time to first token, decode rate, the cost of context, and
the physical floor every decode figure is set against.

Definitions, shared with `vitron-rt run --json` (runtime/generate.py):

  ttft_ms        from the call to the first generated token (embedding, prefill, choice)
  decode_ms      from the first generated token to the last
  decode tok/s   (completion_tokens - 1) / decode_ms: the tokens made after the first
  e2e tok/s      completion_tokens / (ttft_ms + decode_ms)

The floor: a decode step reads every matrix weight once, so the step can take no less than
weight bytes / read bandwidth, with the bandwidth measured in the same run
(stats.read_bandwidth). "% of floor" is floor time / step time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitron_rt.bench.stats import Timing
from vitron_rt.runtime.sampling import SamplingParams

# The issue's LLM workload: a 47-token chat prompt (SmolLM2's template with its default
# system message) that has a long answer, and 64 greedy tokens.
PROMPT = "Explain in detail how a steam engine works, step by step, for a student."
NEW_TOKENS = 64
CONTEXTS = (100, 500, 1000, 2000)
CONTEXT_STEPS = 8
# Ops whose weight input a decode step reads in full.
_MATRIX_OPS = {"MatMul": (1,), "Gemm": (1,), "MatMulNBits": (1, 2, 3)}


@dataclass
class GenerationSample:
    """One greedy generation, timed as the module docstring defines."""

    tokens: list[int]
    ttft_ms: float
    decode_ms: float

    @property
    def decode_tok_s(self) -> float:
        n = len(self.tokens) - 1
        return n / (self.decode_ms / 1e3) if self.decode_ms > 0 and n > 0 else 0.0

    @property
    def e2e_tok_s(self) -> float:
        total = self.ttft_ms + self.decode_ms
        return len(self.tokens) / (total / 1e3) if total > 0 else 0.0


@dataclass
class GenerationStats:
    """Repeated generations of one engine on the same prompt."""

    name: str
    samples: list[GenerationSample] = field(default_factory=list)

    @property
    def tokens(self) -> list[int]:
        return self.samples[-1].tokens if self.samples else []

    def to_dict(self) -> dict[str, Any]:
        ttft = Timing([s.ttft_ms for s in self.samples])
        step = Timing([s.decode_ms / max(1, len(s.tokens) - 1) for s in self.samples])
        decode = [s.decode_tok_s for s in self.samples]
        e2e = [s.e2e_tok_s for s in self.samples]
        return {
            "name": self.name,
            "completion_tokens": len(self.tokens),
            "ttft": ttft.to_dict(),
            "decode_step": step.to_dict(),
            "decode_tok_s": round(float(np.median(decode)), 2) if decode else None,
            "e2e_tok_s": round(float(np.median(e2e)), 2) if e2e else None,
            "repeats": len(self.samples),
        }


def prompt_ids(tokenizer: Any, prompt: str = PROMPT) -> list[int]:
    """The chat prompt's ids with the bundle's template (raw text when it has none)."""
    if tokenizer.has_chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    return tokenizer.encode(prompt)


def run_generation(generator: Any, ids: list[int], new_tokens: int = NEW_TOKENS) -> GenerationSample:
    """One greedy generation through vitron-rt's generator (its own clock)."""
    result = generator.generate(ids, SamplingParams(greedy=True, max_new_tokens=new_tokens))
    return GenerationSample(list(result.token_ids), result.timings_ms["prefill"], result.timings_ms["decode"])


def repeat_generation(name: str, fn, repeats: int) -> GenerationStats:
    """`fn() -> GenerationSample`, once to warm up, then `repeats` times."""
    fn()
    stats = GenerationStats(name)
    for _ in range(repeats):
        stats.samples.append(fn())
    return stats


def decode_vs_context(
    generator: Any, contexts: tuple[int, ...] = CONTEXTS, steps: int = CONTEXT_STEPS, seed: int = 0
) -> dict[int, Timing]:
    """Per-step decode time after `ctx` cached positions, for each ctx that fits: one
    prefill of seeded random ids, then `steps` single-token steps, each timed."""
    vocab = generator.llm.vocab_size
    rng = np.random.default_rng(seed)
    fits = [c for c in contexts if c + steps + 1 <= generator.limit]
    if not fits:
        return {}
    ids = rng.integers(0, vocab, size=max(fits)).tolist()
    cache = generator.new_cache()
    out: dict[int, Timing] = {}
    for ctx in fits:
        cache.reset()
        cache.forward(generator.embedder.embed(ids[:ctx]))
        timing = Timing()
        token = int(ids[0])
        for _ in range(steps):
            t0 = time.perf_counter()
            step = cache.forward(generator.embedder.embed_one(token))
            token = int(np.argmax(step.logits))  # (V,)
            timing.samples_ms.append((time.perf_counter() - t0) * 1e3)
        out[ctx] = timing
    return out


def matrix_weight_bytes(onnx_path: str | Path) -> int:
    """Bytes of the weights a decode step reads in full: the initializers that feed a
    MatMul / Gemm / MatMulNBits weight input (scales and zero points included). Norm
    weights and RoPE tables are left out (small, or read a row at a time)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    sizes: dict[str, int] = {}
    for init in model.graph.initializer:
        sizes[init.name] = _initializer_bytes(init)
    counted: set[str] = set()
    for node in model.graph.node:
        for idx in _MATRIX_OPS.get(node.op_type, ()):
            if idx < len(node.input) and node.input[idx] in sizes:
                counted.add(node.input[idx])
    return sum(sizes[n] for n in counted)


def _initializer_bytes(init: Any) -> int:
    from onnx import helper

    for entry in init.external_data:
        if entry.key == "length":
            return int(entry.value)
    if init.raw_data:
        return len(init.raw_data)
    n = int(np.prod(init.dims)) if init.dims else 1
    return n * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize


def floor_ms(weight_bytes: int, read_gb_s: float) -> float:
    """The decode step's floor: every matrix weight read once at the measured rate."""
    return weight_bytes / (read_gb_s * 1e9) * 1e3
