"""The decoder's "ort-gqa" variant (export/llm_gqa.py): built from tiny seeded decoders
(GQA, MHA, untied head, linear and llama3 RoPE scaling) it matches PyTorch at the
decoder's tolerances and greedy tokens exactly; a wrong graph fails the check; the KV
buffers really are written in place; the exported bundle lists it in the manifest."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch

from vitron_rt.bundle import LlmInfo, Manifest, load_bundle
from vitron_rt.export import llm_gqa
from vitron_rt.export import specs as _specs  # noqa: F401  (registers the component specs)
from vitron_rt.export.llm_gqa import GqaStepper, OrtGqaDecoder
from vitron_rt.export.spec import get_spec
from vitron_rt.export.validate import ToleranceError
from vitron_rt.models.config import preset
from vitron_rt.models.llm import LlmDecoder

TINY = preset("tiny").llm
CONFIGS = {
    "gqa-tied": {},
    "mha": {"num_kv_heads": TINY.num_heads},
    "untied": {"tie_word_embeddings": False},
    "rope-linear": {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    "rope-llama3": {
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        }
    },
}


def _decoder(**changes) -> LlmDecoder:
    torch.manual_seed(0)
    return LlmDecoder.from_config(dataclasses.replace(TINY, **changes)).eval()


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_variant_matches_pytorch(config, tmp_path):
    dec = _decoder(**CONFIGS[config])
    spec = get_spec("llm_decoder").bind(dec)
    path = tmp_path / "llm_decoder.ort-gqa.onnx"
    variant = OrtGqaDecoder()
    variant.build_from(dec, path)
    rows = variant.validate(dec, spec, path)
    assert [r.output for r in rows] == ["logits", "hidden_states", "logits", "hidden_states", "greedy tokens"]
    assert all(r.passed for r in rows)
    graph = onnx.load(str(path))
    ops = {n.op_type for n in graph.graph.node}
    assert "GroupQueryAttention" in ops and "Concat" not in ops
    assert [i.name for i in graph.graph.input][:2] == ["inputs_embeds", "attention_mask"]


def test_wrong_rope_fails_the_check(tmp_path, monkeypatch):
    """A graph that rotates the wrong way is caught by values, not only by tokens."""
    dec = _decoder()
    real = llm_gqa.rope_tables
    monkeypatch.setattr(llm_gqa, "rope_tables", lambda m, n: (real(m, n)[0], -real(m, n)[1]))
    path = tmp_path / "bad.onnx"
    OrtGqaDecoder().build_from(dec, path)
    with pytest.raises(ToleranceError, match="logits"):
        OrtGqaDecoder().validate(dec, get_spec("llm_decoder").bind(dec), path)
    rows = OrtGqaDecoder().validate(dec, get_spec("llm_decoder").bind(dec), path, strict=False)
    assert not all(r.passed for r in rows)


def test_buffers_are_written_in_place(tmp_path):
    """past and present are one OrtValue per layer: after two steps its first P+1 rows are
    the PyTorch cache, the rows after them untouched."""
    dec = _decoder()
    path = tmp_path / "gqa.onnx"
    OrtGqaDecoder().build_from(dec, path)
    stepper = GqaStepper(path, dec, buffer_length=16)
    before = [v.data_ptr() for v in stepper.kv]
    embed = dec.input_embeddings()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        stepper.step(embed(ids).numpy())
        stepper.step(embed(torch.tensor([[9]])).numpy())
        want = dec(
            embed(torch.tensor([[5, 6, 7, 8, 9]])), torch.ones(1, 5, dtype=torch.int64), torch.arange(5)[None],
            *dec.empty_past(1),
        )[2:]
    outputs = stepper.binding.get_outputs()[2:]
    assert [v.data_ptr() for v in outputs] == before
    for got, ref in zip(stepper.kv, want):
        buf = got.numpy()  # (1, Hkv, 16, hd)
        np.testing.assert_allclose(buf[:, :, :5], ref.numpy(), atol=1e-5)


def test_buffer_length_caps_at_the_context():
    dec = _decoder()
    assert OrtGqaDecoder().buffer_length_for(dec) == TINY.max_position_embeddings
    assert OrtGqaDecoder(64).buffer_length_for(dec) == 64
    assert OrtGqaDecoder(10**6).buffer_length_for(dec) == TINY.max_position_embeddings


def test_tiny_bundle_lists_the_variant(tiny_bundle, tiny_export):
    bundle = load_bundle(tiny_bundle)
    entry = bundle.component("llm_decoder").variant("ort-gqa")
    assert entry.reason.startswith("ONNX Runtime contrib ops")
    assert bundle.component_path("llm_decoder", "ort-gqa").is_file()
    assert bundle.manifest.llm.kv_buffer_length == bundle.manifest.llm.max_position_embeddings
    rows = [r for r in tiny_export[1] if r.file == "ort-gqa"]
    assert {r.output for r in rows} == {"logits", "hidden_states", "greedy tokens"} and all(r.passed for r in rows)


def test_old_manifests_load_without_a_buffer_length(tiny_bundle):
    data = json.loads((tiny_bundle / "manifest.json").read_text())
    data["llm"].pop("kv_buffer_length")
    llm = Manifest.from_dict(data).llm
    assert isinstance(llm, LlmInfo) and llm.kv_buffer_length is None
