"""The TensorRT path's own logic, run on stand-ins for TensorRT, Polygraphy and cuda-python
(tests/engines/_fake_gpu.py): build keys and reuse, the runner's buffers, profile choice,
pointer arithmetic, shared activation memory, bind + infer_async, the device KV cache, and
`build` / `check --engine trt`. What the stand-ins cannot show (that TensorRT's real calls
behave as documented) is covered by test_trt_gpu.py on a GPU machine."""

from __future__ import annotations

import json
import sys
import types

import _fake_gpu
import numpy as np
import pytest
from _bundles import bundle_copy_fixture  # noqa: F401  (fixtures)

import vitron_rt.engines.cuda as cu
from vitron_rt import cli
from vitron_rt.engines import OrtOptions, StaleEngineError, make_runner
from vitron_rt.engines.keys import sidecar_path
from vitron_rt.engines.plan import shared_activation_bytes
from vitron_rt.engines.trt import DeviceKvCache, SharedActivationMemory, TrtOptions
from vitron_rt.engines.trt_build import BuildOptions, Precision, build_engines

RNG = np.random.default_rng(0)
NO_CACHE = OrtOptions(cache_optimized=False)


@pytest.fixture
def fake(monkeypatch):
    rt = _fake_gpu.FakeCudart()
    builds: list[dict] = []
    monkeypatch.setattr(_fake_gpu, "FAKE_CUDART", rt)
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_gpu.make_trt())
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    monkeypatch.setitem(sys.modules, "polygraphy.backend.trt", _fake_gpu.make_polygraphy(builds))
    monkeypatch.setattr(cu, "_CUDART", None)
    yield types.SimpleNamespace(rt=rt, builds=builds)
    assert rt.blocks == {}, f"{len(rt.blocks)} device / pinned allocations were never freed"


def ort(bundle, name, feeds):
    with make_runner(bundle, name, "ort", NO_CACHE) as r:
        return r.infer(feeds)


def assert_close(got, want):
    assert list(got) == list(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


def decoder_feeds(llm, past, step, batch=1):
    return {
        llm.inputs_embeds: RNG.standard_normal((batch, step, llm.hidden_size), dtype=np.float32),
        llm.attention_mask: np.ones((batch, past + step), np.int64),
        llm.position_ids: np.tile(np.arange(past, past + step, dtype=np.int64), (batch, 1)),
        **{
            n: RNG.standard_normal((batch, llm.num_kv_heads, past, llm.head_dim), dtype=np.float32)
            for n in llm.past_names()
        },
    }


def test_build_is_keyed_reused_and_rebuilt_when_an_ingredient_changes(fake, bundle_copy, monkeypatch):
    first = build_engines(bundle_copy, components=["mm_projector", "llm_decoder"])
    assert [b.reused for b in first] == [False, False]
    assert first[1].path.name.startswith("llm_decoder.") and ".fp32." in first[1].path.name
    assert first[1].path.name.endswith(".trt10.3.0.sm89.plan")
    llm_build = fake.builds[1]
    assert llm_build["fp16"] is False and llm_build["int8"] is False
    prefill, decode = llm_build["profiles"]
    assert decode["attention_mask"] == {"min": [1, 2], "opt": [1, 257], "max": [4, 512]}
    assert prefill["past_key_values.0.key"]["min"] == [1, 2, 0, 16]
    assert fake.builds[0]["load_timing_cache"] is None  # no cache yet ...
    assert fake.builds[1]["load_timing_cache"].endswith("engines/timing.cache")  # ... then shared
    meta = json.loads(sidecar_path(first[1].path).read_text())
    assert [p["name"] for p in meta["profiles"]] == ["prefill", "decode"]

    again = build_engines(bundle_copy, components=["mm_projector", "llm_decoder"])
    assert [b.reused for b in again] == [True, True] and len(fake.builds) == 2

    fp16 = build_engines(bundle_copy, BuildOptions(precision=Precision.FP16), components=["mm_projector"])[0]
    assert not fp16.reused and ".fp16." in fp16.path.name and fake.builds[-1]["fp16"] is True
    assert first[0].path in fp16.stale  # the fp32 plan of the component is listed, and kept
    monkeypatch.setattr(fake.rt, "capability", (9, 0))  # another GPU: a plan of its own
    other_gpu = build_engines(bundle_copy, components=["mm_projector"])[0]
    assert not other_gpu.reused and other_gpu.path.name.endswith(".sm90.plan")


def test_trt_runner_equals_onnxruntime_and_switches_profiles(fake, bundle_copy):
    build_engines(bundle_copy, components=["mm_projector", "vae_decoder", "llm_decoder"])
    x = {"image_features": RNG.standard_normal((2, 16, 32), dtype=np.float32)}
    with make_runner(bundle_copy, "mm_projector", "trt") as r:
        assert_close(r.infer(x), ort(bundle_copy, "mm_projector", x))
    latents = {"latents": RNG.standard_normal((1, 4, 8, 12), dtype=np.float32)}
    with make_runner(bundle_copy, "vae_decoder", "trt") as r:
        # image_height is in no profile: its max comes from the engine (height 32 -> 64).
        assert r.buffers["images"].max_shape == (4, 3, 64, 64)
        assert_close(r.infer(latents), ort(bundle_copy, "vae_decoder", latents))
    llm = bundle_copy.manifest.llm
    with make_runner(bundle_copy, llm.component, "trt") as r:
        for past, step, profile in [(0, 5, 0), (5, 1, 1), (6, 1, 1), (0, 3, 0)]:
            feeds = decoder_feeds(llm, past, step)
            assert_close(r.infer(feeds), ort(bundle_copy, llm.component, feeds))
            assert r.context.profile == profile
        assert r.timing.calls == 4


def test_missing_or_stale_plan_is_refused_and_can_be_built_on_demand(fake, bundle_copy):
    runner = make_runner(bundle_copy, "mm_projector", "trt")
    with pytest.raises(
        StaleEngineError, match=r"mm_projector: .*: no such engine; run `vitron-rt build B --engine trt`"
    ):
        runner.activate()
    assert not runner.is_active
    with make_runner(bundle_copy, "mm_projector", "trt", TrtOptions(build_missing=True)) as r:
        plan = r.path
        assert plan.suffix == ".plan" and len(fake.builds) == 1
    side = sidecar_path(plan)
    meta = json.loads(side.read_text())
    meta["key"]["onnx_sha256"] = "0" * 64
    side.write_text(json.dumps(meta))
    with pytest.raises(StaleEngineError, match="built for onnx_sha256 '0000"):
        make_runner(bundle_copy, "mm_projector", "trt").activate()


def test_runners_share_one_activation_block(fake, bundle_copy):
    names = ["mm_projector", "unet", "signal_projector.segment_image"]
    build_engines(bundle_copy, components=names)
    memory = SharedActivationMemory()
    runners = [make_runner(bundle_copy, n, "trt", memory=memory) for n in names]
    for r in runners:
        r.activate()
    try:
        sizes = [r._engine.device_memory_size_v2 for r in runners]
        assert memory.nbytes == shared_activation_bytes(dict(zip(names, sizes))) == -(-max(sizes) // 256) * 256
        blocks = {r.context.device_memory for r in runners}
        assert len(blocks) == 1 and blocks.pop()[1] == memory.nbytes  # every context on one block
        x = {"image_features": RNG.standard_normal((1, 4, 32), dtype=np.float32)}
        assert_close(runners[0].infer(x), ort(bundle_copy, "mm_projector", x))
    finally:
        for r in runners:
            r.deactivate()
    assert memory.nbytes == 0


def test_engines_chain_on_the_device_through_bind_and_infer_async(fake, bundle_copy):
    build_engines(bundle_copy, components=["mm_projector", "signal_projector.segment_image"])
    x = RNG.standard_normal((1, 6, 32), dtype=np.float32)
    mid = ort(bundle_copy, "mm_projector", {"image_features": x})["image_embeds"]
    want = ort(bundle_copy, "signal_projector.segment_image", {"signal_hidden": mid})["signal_embeds"]
    with cu.Stream() as stream:
        a = make_runner(bundle_copy, "mm_projector", "trt", stream=stream)
        b = make_runner(bundle_copy, "signal_projector.segment_image", "trt", stream=stream)
        with a, b:
            host, dev = cu.PinnedBuffer(x.nbytes), cu.DeviceBuffer(x.nbytes)
            try:
                host.view(x.dtype, x.shape)[...] = x
                cu.copy_async(dev.ptr, host.ptr, x.nbytes, stream)
                a.bind({"image_features": cu.DeviceArray(dev.ptr, x.shape, x.dtype)})
                a.infer_async(stream)
                b.bind({"signal_hidden": a.output_array("image_embeds")})
                b.infer_async(stream)
                out = b.output_array("signal_embeds")
                back = cu.PinnedBuffer(out.nbytes)
                cu.copy_async(back.ptr, out.ptr, out.nbytes, stream)
                stream.synchronize()
                got = back.view(out.dtype, out.shape).copy()
                back.free()
                assert a.enqueue_timing.calls == b.enqueue_timing.calls == 1
                # infer() afterwards runs on the runner's own buffers again.
                assert_close(a.infer({"image_features": x}), {"image_embeds": mid})
            finally:
                host.free()
                dev.free()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_decode_loop_with_the_device_kv_cache_matches_onnxruntime(fake, bundle_copy):
    llm = bundle_copy.manifest.llm
    build_engines(bundle_copy, components=[llm.component])
    prompt, steps = [5, 17, 42, 7], 6
    embed = make_runner(bundle_copy, llm.embed_component, "ort", NO_CACHE)
    with embed, make_runner(bundle_copy, llm.component, "ort", NO_CACHE) as dec:
        past = {n: np.zeros((1, llm.num_kv_heads, 0, llm.head_dim), np.float32) for n in llm.past_names()}
        ids, pos, want = list(prompt), 0, []
        for _ in range(steps):
            t = len(ids)
            e = embed.infer({llm.input_ids: np.asarray([ids], np.int64)})[llm.inputs_embeds]
            o = dec.infer(
                {
                    llm.inputs_embeds: e,
                    llm.attention_mask: np.ones((1, pos + t), np.int64),
                    llm.position_ids: np.arange(pos, pos + t, dtype=np.int64)[None],
                    **past,
                }
            )
            want.append(int(o[llm.logits][0, -1].argmax()))
            past = dict(zip(llm.past_names(), (o[n] for n in llm.present_names())))
            pos, ids = pos + t, [want[-1]]

        kv = DeviceKvCache.for_llm(llm, bundle_copy.component(llm.component), batch=1, max_context=16)
        ctx = kv.plan.max_context
        consts, dev_consts = cu.PinnedBuffer(2 * ctx * 8), cu.DeviceBuffer(2 * ctx * 8)
        emb_host, emb_dev = cu.PinnedBuffer(ctx * llm.hidden_size * 4), cu.DeviceBuffer(ctx * llm.hidden_size * 4)
        logits_host = cu.PinnedBuffer(llm.vocab_size * 4)
        got: list[int] = []
        try:
            consts.view(np.int64, (ctx,))[...] = 1  # attention mask
            consts.view(np.int64, (ctx,), ctx * 8)[...] = np.arange(ctx)  # position ids
            with cu.Stream() as s, make_runner(bundle_copy, llm.component, "trt", stream=s) as trt_dec:
                cu.copy_async(dev_consts.ptr, consts.ptr, 2 * ctx * 8, s)
                ids, pos, side = list(prompt), 0, 0
                for _ in range(steps):
                    t = len(ids)
                    e = embed.infer({llm.input_ids: np.asarray([ids], np.int64)})[llm.inputs_embeds]
                    emb_host.view(np.float32, e.shape)[...] = e
                    cu.copy_async(emb_dev.ptr, emb_host.ptr, e.nbytes, s)
                    past_arrays, present_arrays = kv.step_arrays(pos, t, side)
                    trt_dec.bind(
                        {
                            llm.inputs_embeds: cu.DeviceArray(emb_dev.ptr, e.shape, np.dtype(np.float32)),
                            llm.attention_mask: cu.DeviceArray(dev_consts.ptr, (1, pos + t), np.dtype(np.int64)),
                            llm.position_ids: cu.DeviceArray(
                                dev_consts.ptr + (ctx + pos) * 8, (1, t), np.dtype(np.int64)
                            ),
                            **past_arrays,
                        },
                        present_arrays,
                    )
                    trt_dec.infer_async(s)
                    logits = trt_dec.output_array(llm.logits)  # (1, t, V): the last row only
                    cu.copy_async(logits_host.ptr, logits.ptr + (t - 1) * llm.vocab_size * 4, llm.vocab_size * 4, s)
                    s.synchronize()
                    got.append(int(logits_host.view(np.float32, (llm.vocab_size,)).argmax()))
                    pos, ids, side = pos + t, [got[-1]], 1 - side
                with pytest.raises(Exception, match="KV cache full"):
                    kv.step_arrays(ctx, 1, side)
        finally:
            for buf in (consts, dev_consts, emb_host, emb_dev, logits_host):
                buf.free()
            kv.free()
    assert got == want


def test_bind_refuses_a_wrong_output_array(fake, bundle_copy):
    build_engines(bundle_copy, components=["mm_projector"])
    with make_runner(bundle_copy, "mm_projector", "trt") as r:
        dev = cu.DeviceBuffer(4 * 16 * 64 * 4)
        try:
            arr = cu.DeviceArray(dev.ptr, (1, 4, 32), np.dtype(np.float32))
            with pytest.raises(
                Exception,
                match=r"output 'image_embeds' array is float32\[1, 4, 32\], this run writes float32\[1, 4, 64\]",
            ):
                r.bind({"image_features": arr}, {"image_embeds": arr})
            with pytest.raises(Exception, match="input 'image_features' is float16, expected float32"):
                r.bind({"image_features": cu.DeviceArray(dev.ptr, (1, 4, 32), np.dtype(np.float16))})
            with pytest.raises(Exception, match="is a DeviceArray; infer\\(\\) takes host numpy arrays"):
                r.infer({"image_features": arr})
        finally:
            dev.free()


def test_cli_build_and_check_with_trt(fake, bundle_copy, capsys):
    assert cli.main(["build", str(bundle_copy.root), "--engine", "trt"]) == 0
    out = capsys.readouterr()
    n = len(bundle_copy.manifest.components)
    assert f"{n} TensorRT engines in" in out.out and out.err.count(" built in ") == n
    assert cli.main(["check", str(bundle_copy.root), "--engine", "trt"]) == 0
    out = capsys.readouterr().out
    assert "llm_decoder" in out and "greedy tokens" in out and out.rstrip().endswith("checks passed")


def test_gpu_check_rows_on_the_stand_ins(fake, bundle_copy):
    from vitron_rt.bench import gpu_check

    row = gpu_check.cuda_roundtrip()
    assert row.status == "ok" and "identical" in row.detail
    x = {"image_features": RNG.standard_normal((1, 4, 32), dtype=np.float32)}
    row = gpu_check._trt_row(bundle_copy, "mm_projector", x, ort(bundle_copy, "mm_projector", x))
    assert row.status == "ok", row.detail
    assert "built in" in row.detail and "shared activation block" in row.detail
