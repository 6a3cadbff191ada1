"""SharedBufferKvCache over the decoder's "ort-gqa" variant: chosen automatically on
ONNX Runtime, one KV buffer per layer bound as past and present (written in place, never
reallocated), the same logits as the standard graph, and the standard cache kept for
bundles without the variant. Greedy parity with both caches is in test_generate.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vitron_rt.engines import EngineError, OrtOptions
from vitron_rt.runtime.kv_cache import OrtKvCache, SharedBufferKvCache, make_kv_cache
from vitron_rt.runtime.session import Session

TEST_OPTIONS = OrtOptions(intra_op_threads=1, cache_optimized=False)


@pytest.fixture(scope="module")
def tiny(tiny_bundle):
    with Session(tiny_bundle, options=TEST_OPTIONS, verify=False) as s:
        yield s


def test_session_picks_the_shared_buffer_cache(tiny, tiny_bundle):
    assert tiny.generator.shared_kv
    assert type(tiny.generator.new_cache()) is SharedBufferKvCache
    assert tiny.generator.decoder.path.name == "llm_decoder.ort-gqa.onnx"
    # The component's own runner stays the standard graph.
    assert tiny.runner("llm_decoder").path.name == "llm_decoder.onnx"
    with Session(tiny_bundle, options=TEST_OPTIONS, verify=False, shared_kv=False) as plain:
        assert type(plain.generator.new_cache()) is OrtKvCache
    with Session(tiny_bundle, options=TEST_OPTIONS, verify=False, io_binding=False) as host:
        assert not host.generator.shared_kv


def test_buffers_are_bound_once_and_written_in_place(tiny):
    gen, llm = tiny.generator, tiny.manifest.llm
    cache = gen.new_cache()
    assert isinstance(cache, SharedBufferKvCache)
    ids = tiny.tokenizer.apply_chat_template([{"role": "user", "content": "in place"}])
    cache.forward(gen.embedder.embed(ids))
    ptrs = [v.data_ptr() for v in cache._buffers]
    for t in (70, 71, 72):
        cache.forward(gen.embedder.embed_one(t))
    assert [v.data_ptr() for v in cache._buffers] == ptrs
    assert [v.data_ptr() for v in cache._binding.get_outputs()[2:]] == ptrs
    # Sized to the need in GROW steps, not to the whole context.
    assert cache._buffers[0].shape() == [1, llm.num_kv_heads, cache.GROW, llm.head_dim] and cache.GROW < cache.limit
    # The buffer's first P rows are the standard graph's cache for the same tokens.
    std = OrtKvCache(tiny.runner("llm_decoder"), llm, 512)
    std.forward(gen.embedder.embed(ids + [70, 71, 72]))
    n = cache.length
    for shared, ref in zip(cache._buffers, std._past):
        np.testing.assert_allclose(shared.numpy()[:, :, :n], ref.numpy(), atol=1e-5)


def test_same_logits_as_the_standard_graph(tiny):
    gen, llm = tiny.generator, tiny.manifest.llm
    ids = tiny.tokenizer.apply_chat_template([{"role": "user", "content": "logits"}])
    shared, std = gen.new_cache(), OrtKvCache(tiny.runner("llm_decoder"), llm, 512)
    a, b = shared.forward(gen.embedder.embed(ids)), std.forward(gen.embedder.embed(ids))
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-4)
    np.testing.assert_allclose(a.hidden, b.hidden, atol=1e-5)
    for t in (5, 6):
        a, b = shared.forward(gen.embedder.embed_one(t)), std.forward(gen.embedder.embed_one(t))
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-4)


def test_limit_is_capped_at_the_buffer_length(tiny):
    llm = dataclasses.replace(tiny.manifest.llm, kv_buffer_length=40)
    cache = make_kv_cache(tiny.generator.decoder, llm, 512, shared_buffer=True)
    cache.forward(tiny.generator.embedder.embed([5, 6, 7]))
    assert cache.limit == 40 and cache._buffers[0].shape()[2] == 40  # GROW capped at the limit
    with pytest.raises(EngineError, match="kv_buffer_length"):
        make_kv_cache(tiny.generator.decoder, dataclasses.replace(llm, kv_buffer_length=None), 512, shared_buffer=True)


def test_buffers_grow_on_demand_keeping_the_cached_rows(tiny):
    """A step that needs more room than the buffers have moves them to twice the size
    (or the need, in GROW steps), with the cached rows carried over: the logits equal a
    cache that had the room from the start."""
    gen, llm = tiny.generator, tiny.manifest.llm
    small = gen.new_cache()
    small.GROW = 8  # instance override: grow after a few tokens
    roomy = gen.new_cache()
    ids = tiny.tokenizer.apply_chat_template([{"role": "user", "content": "grow"}])
    a, b = small.forward(gen.embedder.embed(ids)), roomy.forward(gen.embedder.embed(ids))
    caps = {small.capacity}
    for t in range(40, 60):
        a, b = small.forward(gen.embedder.embed_one(t)), roomy.forward(gen.embedder.embed_one(t))
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
        caps.add(small.capacity)
    assert len(caps) > 1 and max(caps) >= small.length and roomy.capacity == roomy.GROW


def test_bundle_without_the_variant_keeps_the_standard_cache(tiny_bundle, tmp_path):
    """An older bundle (no variant, no kv_buffer_length) still loads and runs OrtKvCache."""
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old, ignore=shutil.ignore_patterns("engines", "*.ort-gqa.onnx"))
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["llm"].pop("kv_buffer_length")
    manifest["components"]["llm_decoder"]["variants"] = []
    (old / "manifest.json").write_text(json.dumps(manifest))
    with Session(old, options=TEST_OPTIONS, verify=False) as s:
        assert not s.generator.shared_kv
        assert type(s.generator.new_cache()) is OrtKvCache
