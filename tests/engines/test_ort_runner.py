"""The ONNX Runtime runner: parity with a plain InferenceSession, options that take effect,
the optimized-model cache, IOBinding into the caller's buffers, and a KV-cache decode
loop over pre-allocated buffers."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
from _bundles import bundle_copy_fixture, tiny_fixture  # noqa: F401  (fixtures)

from vitron_rt.engines import (
    EngineError,
    GraphOptimization,
    InputError,
    MissingDependencyError,
    OrtOptions,
    OrtRunner,
    Provider,
    make_runner,
)
from vitron_rt.engines.ort_fusion import FUSION_VERSION
from vitron_rt.engines.plan import KvCachePlan

RNG = np.random.default_rng(0)


def decoder_feeds(llm, batch=1, past=3, step=2):
    d, h, hd = llm.hidden_size, llm.num_kv_heads, llm.head_dim
    feeds = {
        llm.inputs_embeds: RNG.standard_normal((batch, step, d), dtype=np.float32),
        llm.attention_mask: np.ones((batch, past + step), np.int64),
        llm.position_ids: np.tile(np.arange(past, past + step, dtype=np.int64), (batch, 1)),
    }
    for name in llm.past_names():
        feeds[name] = RNG.standard_normal((batch, h, past, hd), dtype=np.float32)
    return feeds


def plain(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


@pytest.mark.parametrize("level", [GraphOptimization.DISABLED, GraphOptimization.ALL])
def test_equals_plain_onnxruntime(tiny, level):
    llm = tiny.manifest.llm
    feeds = decoder_feeds(llm, batch=2)
    want = plain(tiny.component_path(llm.component), feeds)
    with OrtRunner(
        tiny.component_path(llm.component), entry=tiny.component(llm.component), options=OrtOptions(optimization=level)
    ) as r:
        got = r.infer(feeds)
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)


def test_threads_and_optimization_level_take_effect(bundle_copy):
    options = OrtOptions(intra_op_threads=1, inter_op_threads=1, optimization=GraphOptimization.BASIC)
    with make_runner(bundle_copy, "llm_decoder", options=options) as r:
        so = r.session.get_session_options()
        assert (so.intra_op_num_threads, so.inter_op_num_threads) == (1, 1)
        assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        assert ".basic." in r.model_path.name
    with make_runner(bundle_copy, "llm_decoder", options=OrtOptions(optimization=GraphOptimization.DISABLED)) as r:
        assert r.model_path == bundle_copy.component_path("llm_decoder")  # nothing to cache
        assert r.session.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def test_optimized_model_is_cached_reused_and_rebuilt_for_a_new_sha(bundle_copy):
    import onnx

    cache = bundle_copy.engines_dir / "ort"
    with make_runner(bundle_copy, "llm_decoder") as r:
        first, hit = r.model_path, r.cache_hit
    assert hit is False and first.parent == cache
    # The portable level, with the kernel-fusion version (see ort.py, ort_fusion.py).
    assert f".extended+fuse{FUSION_VERSION}.ort{ort.__version__}.cpu.onnx" in first.name
    fused = onnx.load(str(first))
    original = onnx.load(str(bundle_copy.component_path("llm_decoder")))
    assert len(fused.graph.node) < len(original.graph.node)  # ORT's fusions really ran
    mtime = first.stat().st_mtime_ns

    with make_runner(bundle_copy, "llm_decoder") as r:
        assert (r.model_path, r.cache_hit) == (first, True)
    assert first.stat().st_mtime_ns == mtime

    entry = bundle_copy.component("llm_decoder")
    changed = dataclasses.replace(entry, file=dataclasses.replace(entry.file, sha256="f" * 64))
    runner = OrtRunner(bundle_copy.component_path("llm_decoder"), entry=changed, name="llm_decoder", cache_dir=cache)
    with runner:
        assert runner.cache_hit is False and runner.model_path != first and "ffffffffffffffff" in runner.model_path.name


def test_damaged_cache_file_is_rebuilt(bundle_copy):
    with make_runner(bundle_copy, "mm_projector") as r:
        path = r.model_path
    path.write_bytes(b"not an onnx model")
    x = RNG.standard_normal((1, 4, 32), dtype=np.float32)
    with make_runner(bundle_copy, "mm_projector") as r:
        assert r.model_path == path and r.infer({"image_features": x})["image_embeds"].shape == (1, 4, 64)
    assert path.stat().st_size > 1000


def test_iobinding_writes_into_the_callers_buffers(tiny):
    llm = tiny.manifest.llm
    feeds = decoder_feeds(llm, batch=1, past=4, step=3)
    with make_runner(tiny, llm.component, options=OrtOptions(cache_optimized=False)) as r:
        want = r.infer(feeds)
        outputs = {name: np.full_like(a, np.nan) for name, a in want.items()}
        r.bind(feeds, outputs)
        got = r.run_bound()
        assert r.timing.calls == 2
    for name, buf in outputs.items():
        assert got[name] is buf  # the caller's array, filled in place
        np.testing.assert_allclose(buf, want[name], rtol=1e-6, atol=1e-6)


def test_iobinding_refuses_bad_output_buffers(tiny):
    llm = tiny.manifest.llm
    feeds = decoder_feeds(llm, past=2, step=1)
    with make_runner(tiny, llm.component, options=OrtOptions(cache_optimized=False)) as r:
        want = r.infer(feeds)
        outs = {n: np.empty_like(a) for n, a in want.items()}
        with pytest.raises(InputError, match="no buffer bound for output 'logits'"):
            r.bind(feeds, {n: a for n, a in outs.items() if n != "logits"})
        wrong = dict(outs, logits=np.empty((1, 2, llm.vocab_size), np.float32))
        with pytest.raises(InputError, match=r"output 'logits' buffer axis 1 is 2, this run gives 1"):
            r.bind(feeds, wrong)
        strided = dict(outs, hidden_states=np.empty((1, 1, 2 * llm.hidden_size), np.float32)[..., ::2])
        with pytest.raises(InputError, match="must be C-contiguous"):
            r.bind(feeds, strided)
        with pytest.raises(EngineError, match=r"run_bound\(\) before bind\(\)"):
            r.run_bound()


def test_decode_loop_over_preallocated_kv_buffers_matches_plain_decoding(tiny):
    """Prefill + decode through IOBinding with the ping-pong KV buffers of `KvCachePlan`:
    every tensor is a view of a buffer allocated before the loop, and the greedy tokens
    equal a plain loop that grows the cache by concatenation."""
    llm = tiny.manifest.llm
    plan = KvCachePlan.from_manifest(llm, tiny.component(llm.component), batch=1, max_context=32)
    prompt, steps = [5, 17, 42, 7], 8
    no_cache = OrtOptions(cache_optimized=False)  # the shared bundle stays read-only
    with (
        make_runner(tiny, llm.embed_component, options=no_cache) as embed,
        make_runner(tiny, llm.component, options=no_cache) as dec,
    ):

        def embeds(ids):
            return embed.infer({llm.input_ids: np.asarray([ids], np.int64)})[llm.inputs_embeds]

        # Reference: the cache grows by concatenation, as export's greedy check does it.
        past = {n: np.zeros((1, llm.num_kv_heads, 0, llm.head_dim), np.float32) for n in llm.past_names()}
        ids, pos, want = list(prompt), 0, []
        for _ in range(steps):
            t = len(ids)
            out = dec.infer(
                {
                    llm.inputs_embeds: embeds(ids),
                    llm.attention_mask: np.ones((1, pos + t), np.int64),
                    llm.position_ids: np.arange(pos, pos + t, dtype=np.int64)[None],
                    **past,
                }
            )
            want.append(int(out[llm.logits][0, -1].argmax()))
            past = dict(zip(llm.past_names(), (out[n] for n in llm.present_names())))
            pos, ids = pos + t, [want[-1]]

        # Pre-allocated: KV ping-pong buffers, mask, positions, logits and hidden states.
        kv = [np.zeros(int(np.prod(plan.buffer_shape)), np.float32) for _ in range(plan.num_buffers)]
        mask = np.ones(plan.max_context, np.int64)
        positions = np.arange(plan.max_context, dtype=np.int64)
        logits = np.empty(plan.max_context * llm.vocab_size, np.float32)
        hidden = np.empty(plan.max_context * llm.hidden_size, np.float32)

        def view(flat, shape):
            return flat[: int(np.prod(shape))].reshape(shape)

        ids, pos, side, got = list(prompt), 0, 0, []
        for _ in range(steps):
            t = len(ids)
            step = plan.step(pos, t, side)
            kv_views = {b.name: view(kv[b.buffer], b.shape) for b in step}
            inputs = {
                llm.inputs_embeds: embeds(ids),
                llm.attention_mask: view(mask, (1, pos + t)),
                llm.position_ids: positions[pos : pos + t].reshape(1, t),
                **{n: kv_views[n] for n in plan.past_names},
            }
            outputs = {
                llm.logits: view(logits, (1, t, llm.vocab_size)),
                llm.hidden_states: view(hidden, (1, t, llm.hidden_size)),
                **{n: kv_views[n] for n in plan.present_names},
            }
            dec.bind(inputs, outputs)
            out = dec.run_bound()
            assert all(np.shares_memory(out[n], kv[b.buffer]) for b in step for n in [b.name] if n in out)
            got.append(int(out[llm.logits][0, -1].argmax()))
            pos, ids, side = pos + t, [got[-1]], 1 - side
    assert got == want


def test_gpu_provider_without_onnxruntime_gpu_is_one_line(tiny):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    runner = make_runner(tiny, "mm_projector", options=OrtOptions(providers=(Provider.CUDA,)))
    with pytest.raises(MissingDependencyError) as info:
        runner.activate()
    msg = str(info.value)
    assert "CUDAExecutionProvider is not available" in msg and "pip install onnxruntime-gpu" in msg and "\n" not in msg
    assert not runner.is_active


def test_tensorrt_ep_options_pass_through(tmp_path):
    from vitron_rt.engines import TensorrtEpOptions

    opts = TensorrtEpOptions(trt_fp16_enable=True, extra={"trt_max_workspace_size": 1 << 30})
    assert opts.provider_options(tmp_path) == {
        "trt_engine_cache_enable": True,
        "trt_fp16_enable": True,
        "trt_engine_cache_path": str(tmp_path / "trt-ep"),
        "trt_max_workspace_size": 1 << 30,
    }
