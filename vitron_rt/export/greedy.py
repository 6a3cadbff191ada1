"""Greedy-token parity of an exported LLM: N tokens decoded through ONNX Runtime
(embed_tokens + llm_decoder with explicit KV) must equal the PyTorch reference's exactly.

This is a check, not the serving loop: it grows the KV cache by concatenation, which is
simple and obviously right. The runtime's generator has its own pre-allocated cache.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vitron_rt.bundle import LlmInfo, Tolerance
from vitron_rt.engines.ort import OrtRunner
from vitron_rt.export.validate import ValidationRow, compare
from vitron_rt.models.llm import EmbedTokens, LlmDecoder, greedy_generate

GREEDY_TOKENS = 32
EXACT = Tolerance(atol=0.0, rtol=0.0, reason="greedy tokens must match exactly in fp32")


def onnx_greedy(
    embed_path: Path,
    decoder_path: Path,
    llm: LlmInfo,
    prompt: list[int],
    max_new_tokens: int,
    runner: Callable = OrtRunner,
) -> list[int]:
    """Greedy decoding through the two ONNX files; no stop token (always N tokens)."""
    tokens: list[int] = []
    with runner(embed_path) as embed, runner(decoder_path) as decoder:
        past = {
            n: np.zeros((1, llm.num_kv_heads, 0, llm.head_dim), np.float32) for n in llm.past_names()
        }  # (1, H_kv, 0, hd)
        ids = list(prompt)
        pos = 0
        for _ in range(max_new_tokens):
            step = np.asarray([ids], np.int64)  # (1, T)
            embeds = embed.infer({llm.input_ids: step})[llm.inputs_embeds]  # (1, T, D)
            t = step.shape[1]
            feeds = {
                llm.inputs_embeds: embeds,
                llm.attention_mask: np.ones((1, pos + t), np.int64),
                llm.position_ids: np.arange(pos, pos + t, dtype=np.int64)[None],
                **past,
            }
            out = decoder.infer(feeds)
            nxt = int(np.argmax(out[llm.logits][0, -1]))
            tokens.append(nxt)
            past = dict(zip(llm.past_names(), (out[n] for n in llm.present_names())))
            pos += t
            ids = [nxt]
    return tokens


def greedy_parity(
    embed_module: EmbedTokens,
    decoder_module: LlmDecoder,
    embed_path: Path,
    decoder_path: Path,
    llm: LlmInfo,
    prompt: list[int],
    max_new_tokens: int = GREEDY_TOKENS,
    runner: Callable = OrtRunner,
) -> ValidationRow:
    """One `check` table row: the ONNX greedy tokens against PyTorch's."""
    with torch.no_grad():
        ref = greedy_generate(decoder_module, embed_module, prompt, max_new_tokens, eos_token_id=None)
    got = onnx_greedy(embed_path, decoder_path, llm, prompt, max_new_tokens, runner)
    result = compare(np.asarray(ref, np.int64), np.asarray(got, np.int64), EXACT)
    return ValidationRow(llm.component, "main", "greedy tokens", f"{max_new_tokens} tokens", EXACT, result)
