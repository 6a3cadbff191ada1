"""TensorRT engines and the native runner on a real GPU (`-m gpu`; skipped without
TensorRT, Polygraphy, cuda-python and a CUDA device)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vitron_rt.bundle import load_bundle
from vitron_rt.engines import MissingDependencyError, OrtOptions, StaleEngineError, make_runner

pytestmark = pytest.mark.gpu

COMPONENTS = ("mm_projector", "signal_projector.segment_image", "embed_tokens", "llm_decoder", "vae_decoder")
RNG = np.random.default_rng(0)
NO_CACHE = OrtOptions(cache_optimized=False)


@pytest.fixture(scope="module")
def built(request, tmp_path_factory):
    """The tiny bundle's copy with fp32 engines for COMPONENTS. The GPU stack is checked
    first, so a machine without it skips before paying for the bundle export."""
    from vitron_rt.engines import deps

    try:
        deps.require_trt_stack()
        deps.require_polygraphy()
    except MissingDependencyError as e:
        pytest.skip(str(e))
    from vitron_rt.engines.trt_build import build_engines

    tiny_bundle = request.getfixturevalue("tiny_bundle")

    dst = tmp_path_factory.mktemp("trt") / "bundle"
    shutil.copytree(tiny_bundle, dst, ignore=shutil.ignore_patterns("engines"))
    bundle = load_bundle(dst, verify=False)
    return bundle, {e.component: e for e in build_engines(bundle, components=COMPONENTS)}


def ort_out(bundle, name, feeds):
    with make_runner(bundle, name, "ort", NO_CACHE) as r:
        return r.infer(feeds)


def test_build_writes_keyed_plans_and_reuses_them(built):
    from vitron_rt.engines.deps import compute_capability
    from vitron_rt.engines.keys import TIMING_CACHE_NAME, sidecar_path
    from vitron_rt.engines.trt_build import TrtEngineBuilder

    bundle, engines = built
    major, minor = compute_capability()
    for e in engines.values():
        assert not e.reused and e.path.is_file() and sidecar_path(e.path).is_file()
        assert f".sm{major}{minor}.plan" in e.path.name and ".fp32." in e.path.name
    assert (bundle.engines_dir / TIMING_CACHE_NAME).is_file()
    again = TrtEngineBuilder(bundle, "mm_projector")()
    assert again.reused and again.path == engines["mm_projector"].path


def test_trt_runner_matches_onnxruntime(built):
    bundle, _ = built
    llm = bundle.manifest.llm
    cases = {
        "mm_projector": {"image_features": RNG.standard_normal((2, 16, 32), dtype=np.float32)},
        "vae_decoder": {"latents": RNG.standard_normal((1, 4, 8, 12), dtype=np.float32)},
        "llm_decoder": {
            llm.inputs_embeds: RNG.standard_normal((1, 1, llm.hidden_size), dtype=np.float32),
            llm.attention_mask: np.ones((1, 6), np.int64),
            llm.position_ids: np.array([[5]], np.int64),
            **{
                n: RNG.standard_normal((1, llm.num_kv_heads, 5, llm.head_dim), dtype=np.float32)
                for n in llm.past_names()
            },
        },
    }
    for name, feeds in cases.items():
        want = ort_out(bundle, name, feeds)
        with make_runner(bundle, name, "trt") as r:
            got = r.infer(feeds)
            assert r.timing.calls == 1
        for out, ref in want.items():
            np.testing.assert_allclose(got[out], ref, rtol=1e-3, atol=1e-4, err_msg=f"{name}.{out}")


def test_a_stale_plan_is_refused_not_loaded(built):
    from vitron_rt.engines.keys import sidecar_path

    bundle, engines = built
    side = sidecar_path(engines["mm_projector"].path)
    original = side.read_text()
    meta = json.loads(original)
    meta["key"]["tensorrt"] = "9.0.0"
    side.write_text(json.dumps(meta))
    try:
        with pytest.raises(StaleEngineError, match="built for tensorrt '9.0.0'.*vitron-rt build"):
            make_runner(bundle, "mm_projector", "trt").activate()
    finally:
        side.write_text(original)


def test_engines_chained_on_device_with_shared_activation_memory(built):
    """mm_projector's output feeds the signal projector on the device, queued on one stream,
    both contexts on one activation block."""
    from vitron_rt.engines import cuda as cu
    from vitron_rt.engines.plan import shared_activation_bytes
    from vitron_rt.engines.trt import SharedActivationMemory

    bundle, _ = built
    x = RNG.standard_normal((1, 8, 32), dtype=np.float32)
    want = ort_out(
        bundle,
        "signal_projector.segment_image",
        {"signal_hidden": ort_out(bundle, "mm_projector", {"image_features": x})["image_embeds"]},
    )
    memory = SharedActivationMemory()
    with cu.Stream() as stream:
        a = make_runner(bundle, "mm_projector", "trt", memory=memory, stream=stream)
        b = make_runner(bundle, "signal_projector.segment_image", "trt", memory=memory, stream=stream)
        with a, b:
            assert memory.nbytes == shared_activation_bytes(memory.sizes()) and len(memory.sizes()) == 2
            host, dev = cu.PinnedBuffer(x.nbytes), cu.DeviceBuffer(x.nbytes)
            out_name = "signal_embeds"
            try:
                host.view(x.dtype, x.shape)[...] = x
                cu.copy_async(dev.ptr, host.ptr, x.nbytes, stream)
                a.bind({"image_features": cu.DeviceArray(dev.ptr, x.shape, x.dtype)})
                a.infer_async(stream)
                b.bind({"signal_hidden": a.output_array("image_embeds")})
                b.infer_async(stream)
                out = b.output_array(out_name)
                result = cu.PinnedBuffer(out.nbytes)
                cu.copy_async(result.ptr, out.ptr, out.nbytes, stream)
                stream.synchronize()
                got = result.view(out.dtype, out.shape).copy()
                result.free()
            finally:
                host.free()
                dev.free()
    np.testing.assert_allclose(got, want[out_name], rtol=1e-3, atol=1e-4)
    assert memory.nbytes == 0  # freed with the last context


def test_decode_loop_with_the_kv_cache_on_the_device(built):
    """Greedy tokens through TensorRT with the ping-pong device KV cache equal ONNX Runtime's."""
    from vitron_rt.engines import cuda as cu
    from vitron_rt.engines.trt import DeviceKvCache

    bundle, _ = built
    llm = bundle.manifest.llm
    prompt, steps = [5, 17, 42, 7], 6

    def greedy_ort() -> list[int]:
        with (
            make_runner(bundle, llm.embed_component, "ort", NO_CACHE) as emb,
            make_runner(bundle, llm.component, "ort", NO_CACHE) as dec,
        ):
            past = {n: np.zeros((1, llm.num_kv_heads, 0, llm.head_dim), np.float32) for n in llm.past_names()}
            ids, pos, toks = list(prompt), 0, []
            for _ in range(steps):
                t = len(ids)
                e = emb.infer({llm.input_ids: np.asarray([ids], np.int64)})[llm.inputs_embeds]
                o = dec.infer(
                    {
                        llm.inputs_embeds: e,
                        llm.attention_mask: np.ones((1, pos + t), np.int64),
                        llm.position_ids: np.arange(pos, pos + t, dtype=np.int64)[None],
                        **past,
                    }
                )
                toks.append(int(o[llm.logits][0, -1].argmax()))
                past = dict(zip(llm.past_names(), (o[n] for n in llm.present_names())))
                pos, ids = pos + t, [toks[-1]]
            return toks

    entry = bundle.component(llm.component)
    kv = DeviceKvCache.for_llm(llm, entry, batch=1, max_context=32)
    ctx = kv.plan.max_context
    consts = cu.PinnedBuffer(2 * ctx * 8)
    consts.view(np.int64, (ctx,))[...] = 1
    consts.view(np.int64, (ctx,), ctx * 8)[...] = np.arange(ctx)
    dev_consts = cu.DeviceBuffer(2 * ctx * 8)
    emb_host = cu.PinnedBuffer(ctx * llm.hidden_size * 4)
    emb_dev = cu.DeviceBuffer(ctx * llm.hidden_size * 4)
    logits_host = cu.PinnedBuffer(llm.vocab_size * 4)
    got: list[int] = []
    try:
        with (
            cu.Stream() as s,
            make_runner(bundle, llm.embed_component, "ort", NO_CACHE) as emb,
            make_runner(bundle, llm.component, "trt", stream=s) as dec,
        ):
            cu.copy_async(dev_consts.ptr, consts.ptr, 2 * ctx * 8, s)
            ids, pos, side = list(prompt), 0, 0
            for _ in range(steps):
                t = len(ids)
                e = emb.infer({llm.input_ids: np.asarray([ids], np.int64)})[llm.inputs_embeds]
                s.synchronize()  # the pinned staging buffer is reused each step
                emb_host.view(np.float32, e.shape)[...] = e
                cu.copy_async(emb_dev.ptr, emb_host.ptr, e.nbytes, s)
                past, present = kv.step_arrays(pos, t, side)
                dec.bind(
                    {
                        llm.inputs_embeds: cu.DeviceArray(emb_dev.ptr, e.shape, np.dtype(np.float32)),
                        llm.attention_mask: cu.DeviceArray(dev_consts.ptr, (1, pos + t), np.dtype(np.int64)),
                        llm.position_ids: cu.DeviceArray(dev_consts.ptr + (ctx + pos) * 8, (1, t), np.dtype(np.int64)),
                        **past,
                    },
                    present,
                )
                dec.infer_async(s)
                logits = dec.output_array(llm.logits)  # (1, t, V): copy the last row only
                last = logits.ptr + (t - 1) * llm.vocab_size * 4
                cu.copy_async(logits_host.ptr, last, llm.vocab_size * 4, s)
                s.synchronize()
                got.append(int(logits_host.view(np.float32, (llm.vocab_size,)).argmax()))
                pos, ids, side = pos + t, [got[-1]], 1 - side
    finally:
        for buf in (consts, dev_consts, emb_host, emb_dev, logits_host):
            buf.free()
        kv.free()
    assert got == greedy_ort()
