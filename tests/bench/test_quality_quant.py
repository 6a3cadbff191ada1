"""bench/quality.py: greedy agreement and perplexity of a quantised decoder against fp32,
through the bundle's own files, on a tiny LLaMA exported with int4 (the SmolLM2 numbers
are measured by `vitron-rt bench`, not here)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vitron_rt.bench import quality
from vitron_rt.bench.quality import PromptAgreement, greedy_agreement, open_session, perplexity_of, sequence_logits


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, llama_folder):
    from vitron_rt.export.pipeline import export_bundle
    from vitron_rt.models.source import from_checkpoints

    tmp = tmp_path_factory.mktemp("quality")
    folder = llama_folder(tmp / "llama")
    path, _ = export_bundle(from_checkpoints(llm=str(folder)), tmp / "b", quant=("int4",))
    return path


def test_measure_reports_agreement_and_perplexity(bundle):
    out = quality.measure(bundle, threads=1, prompts=quality.CHAT_PROMPTS[:3], new_tokens=8)
    json.dumps(out)  # the bench writes it as JSON
    assert out["fp32_variant"] == "ort-gqa" and set(out["decoders"]) == {"int4"}
    d = out["decoders"]["int4"]
    assert d["variant"] == "ort-gqa-int4" and d["prompts"] == 3 and len(d["per_prompt"]) == 3
    for key in ("mean_prefix_fraction", "identical_fraction", "mean_top1_agreement", "passage_top1_agreement"):
        assert 0.0 <= d[key] <= 1.0, key
    assert d["scheme"]["bits"] == 4 and d["bytes_on_disk"] == (bundle / "llm_decoder.ort-gqa-int4.onnx").stat().st_size
    assert out["passage"]["tokens"] == 512  # the passage cut to the tiny model's context
    assert math.isfinite(out["passage"]["fp32_perplexity"]) and d["perplexity"] > 1.0
    assert set(out["definitions"]) >= {"mean_prefix_fraction", "identical_fraction", "mean_top1_agreement"}


def test_fp32_against_itself_agrees_fully(bundle):
    with open_session(bundle, "fp32", 1) as a, open_session(bundle, "fp32", 1) as b:
        agreement = greedy_agreement(a, b, quality.CHAT_PROMPTS[:2], new_tokens=6)
    assert agreement.identical_fraction == 1.0 and agreement.mean_prefix_fraction == 1.0
    assert agreement.mean_top1 == 1.0


def test_sequence_logits_are_the_decode_paths(bundle):
    """One prefill's rows equal what the runtime's shared-buffer cache gives step by step."""
    with open_session(bundle, "int4", 1) as s:
        gen = s.generator
        ids = s.tokenizer.apply_chat_template([{"role": "user", "content": "logits"}])
        cache = gen.new_cache()
        steps = [cache.forward(gen.embedder.embed(ids)).logits.copy()]
        for t in (40, 41):
            steps.append(cache.forward(gen.embedder.embed_one(t)).logits.copy())
        whole = sequence_logits(s, ids + [40, 41])  # (T, V)
    np.testing.assert_allclose(whole[-3:], np.stack(steps), atol=2e-4)


def test_definitions_by_hand():
    assert PromptAgreement("p", 10, 3, False, 0.5).prefix_fraction == 0.3
    assert PromptAgreement("p", 10, 10, True, 1.0).prefix_fraction == 1.0
    assert PromptAgreement("p", 10, 10, False, 1.0).prefix_fraction == 1.0 - 0.0  # stopped at an EOS fp32 lacks
    v = 7
    assert perplexity_of(np.zeros((5, v), np.float32), [1, 2, 3, 4, 5]) == pytest.approx(v)
