"""Kernel fusion in the ONNX Runtime runner (engines/ort_fusion.py): the exported attention
subgraphs of every encoder become com.microsoft.MultiHeadAttention, the fused graph gives
the unfused graph's numbers, the cache key and report say it was fused, and a graph with
nothing to fuse is run as it is."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from _bundles import bundle_copy_fixture, tiny_fixture  # noqa: F401  (fixtures)

from vitron_rt.engines import OrtOptions, OrtRunner, make_runner
from vitron_rt.engines import ort_fusion
from vitron_rt.engines.ort_fusion import FUSION_VERSION, FusionReport

# Components whose graphs hold attention, and how each reaches it: CLIP's split into heads,
# SAM's (B·H,N,hd) rows with a relative-position score bias, SAM's two-way decoder,
# diffusers' self- and cross-attention.
ATTENTION_COMPONENTS = ("vision_encoder", "seg_image_encoder", "seg_mask_decoder", "unet")


def feeds_for(bundle, name, rng):
    """Random feeds at each named dim's profile `opt` size, batch 1."""
    entry = bundle.component(name)
    opt = {d: r.opt for p in entry.profiles for d, r in p.dims.items()}
    opt["batch"] = 1
    feeds = {}
    for t in entry.inputs:
        shape = [d if isinstance(d, int) else opt[d] for d in t.shape]
        feeds[t.name] = rng.standard_normal(shape).astype(t.dtype)
    return feeds


def softmax_counts(nodes) -> tuple[int, int]:
    """(attention, other) softmaxes among `nodes`: attention's probabilities reach a MatMul
    (the UNet's layout map, a softmax over the grid, reaches none)."""
    matmul_inputs = {i for n in nodes if n.op_type == "MatMul" for i in n.input}
    soft = [n for n in nodes if n.op_type == "Softmax"]
    attention = sum(n.output[0] in matmul_inputs for n in soft)
    return attention, len(soft) - attention


def graph_nodes(path):
    return list(onnx.load(str(path), load_external_data=False).graph.node)


@pytest.mark.parametrize("name", ATTENTION_COMPONENTS)
def test_every_attention_is_fused_and_the_numbers_hold(tiny, name):
    path, entry = tiny.component_path(name), tiny.component(name)
    feeds = feeds_for(tiny, name, np.random.default_rng(0))
    with OrtRunner(path, entry=entry, options=OrtOptions(fuse=False)) as plain:
        want = plain.infer(feeds)
        assert plain.fusion is None
    with OrtRunner(path, entry=entry) as fused:
        got = fused.infer(feeds)
        report = fused.fusion
        kernels = onnx.load(str(fused.model_path), load_external_data=False).graph.node
    attention, other = softmax_counts(graph_nodes(path))
    assert report is not None and report.written and not report.skipped_attention
    assert report.fused["MultiHeadAttention"] == attention
    assert sum(n.op_type == "MultiHeadAttention" for n in kernels) == attention
    assert softmax_counts(kernels) == (0, other)
    assert other == (1 if name == "unet" else 0)  # the tiny UNet's layout map
    if name in ("vision_encoder", "unet"):  # q, k, v (and a context's k, v) from one input
        assert report.fused["packed projections"] >= 1
    for out in want:
        np.testing.assert_allclose(got[out], want[out], rtol=1e-4, atol=1e-5)


def test_a_graph_with_nothing_to_fuse_runs_as_it_is(tiny):
    """The decoder's causal mask broadcasts over heads, which the pass leaves alone, and it
    has no GELU: nothing is written and no weight is read."""
    path = tiny.component_path("llm_decoder")
    with OrtRunner(path, entry=tiny.component("llm_decoder")) as r:
        assert r.fusion is not None and not r.fusion.written and not r.fusion.fused
        assert r.model_path == path


def test_the_cache_holds_the_fused_graph_and_its_report(bundle_copy):
    with make_runner(bundle_copy, "vision_encoder") as r:
        first, report = r.model_path, r.fusion
        assert r.cache_hit is False
    assert f".extended+fuse{FUSION_VERSION}." in first.name
    assert any(n.domain == "com.microsoft" for n in onnx.load(str(first)).graph.node)
    with make_runner(bundle_copy, "vision_encoder") as r:
        assert (r.model_path, r.cache_hit) == (first, True)
        assert r.fusion == report  # read back from the JSON beside the cached graph
    # No temporary fused graph is left in the cache folder.
    assert sorted(p.name for p in first.parent.iterdir() if p.name.startswith(".")) == []


def test_fusion_off_or_without_onnx_keeps_the_plain_key(bundle_copy, monkeypatch, caplog):
    with make_runner(bundle_copy, "vision_encoder", options=OrtOptions(fuse=False)) as r:
        assert r.fusion is None and "+fuse" not in r.model_path.name
    monkeypatch.setattr(ort_fusion, "onnx_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="vitron_rt.engines.ort"):
        with make_runner(bundle_copy, "vision_encoder") as r:
            assert r.fusion is None and "+fuse" not in r.model_path.name
    assert "onnx package is not installed" in caplog.text


def test_report_round_trips_through_json():
    report = FusionReport({"MultiHeadAttention": 3, "BiasGelu": 2}, {"scores used elsewhere": 1}, True)
    assert FusionReport.from_json(report.to_json()) == report
    assert report.summary() == "BiasGelu 2, MultiHeadAttention 3; 1 attention subgraphs left unfused"
