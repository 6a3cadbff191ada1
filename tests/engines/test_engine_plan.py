"""Profiles -> shapes, buffer plans, KV-cache plans and the shared activation block,
computed from manifests with known numbers (plain Python: no TensorRT, no GPU)."""

from __future__ import annotations

import pytest
from _engine_manifests import DECODE, LLM, llm_decoder, vae_decoder

from vitron_rt.bundle import BundleError
from vitron_rt.engines.plan import (
    BufferPlan,
    KvBinding,
    KvCachePlan,
    ShapeRange,
    input_ranges,
    max_dims,
    profile_index,
    shared_activation_bytes,
    unsized_outputs,
)
from vitron_rt.engines.trt_build import profile_table


def test_llm_prefill_and_decode_profiles_become_input_shapes():
    entry = llm_decoder()
    table = dict(profile_table(entry))
    assert list(table) == ["prefill", "decode"]
    pre, dec = table["prefill"], table["decode"]
    assert list(pre) == ["inputs_embeds", "attention_mask", "position_ids", *LLM.past_names()]
    assert pre["inputs_embeds"] == ShapeRange((1, 1, 64), (1, 128, 64), (4, 512, 64))
    assert pre["attention_mask"] == ShapeRange((1, 1), (1, 128), (4, 512))
    assert pre["past_key_values.1.value"] == ShapeRange((1, 2, 0, 16), (1, 2, 0, 16), (4, 2, 511, 16))
    assert dec["inputs_embeds"] == ShapeRange((1, 1, 64), (1, 1, 64), (4, 1, 64))
    assert dec["position_ids"] == ShapeRange((1, 1), (1, 1), (4, 1))
    assert dec["attention_mask"] == ShapeRange((1, 2), (1, 257), (4, 512))
    assert dec["past_key_values.0.key"] == ShapeRange((1, 2, 1, 16), (1, 2, 256, 16), (4, 2, 511, 16))
    assert input_ranges(entry, DECODE) == dec


def test_static_inputs_need_no_range():
    entry = vae_decoder()
    assert profile_table(entry) == [("default", {"latents": ShapeRange((1, 4, 1, 1), (1, 4, 16, 16), (4, 4, 32, 32))})]


def test_polygraphy_profiles_carry_the_same_shapes():
    pytest.importorskip("polygraphy")
    from vitron_rt.engines.trt_build import polygraphy_profiles

    prefill, decode = polygraphy_profiles(llm_decoder())
    assert tuple(decode["attention_mask"].opt) == (1, 257)
    assert tuple(prefill["past_key_values.0.key"].min) == (1, 2, 0, 16)
    assert set(prefill.keys()) == set(LLM.past_names()) | {"inputs_embeds", "attention_mask", "position_ids"}


def test_a_decode_step_gets_the_decode_profile():
    entry = llm_decoder()
    step = {"batch": 1, "sequence": 1, "past_sequence": 40, "total_sequence": 41}
    assert profile_index(entry, step) == 1  # inside prefill too, but decode is tighter
    assert profile_index(entry, {"batch": 1, "sequence": 7, "past_sequence": 0, "total_sequence": 7}) == 0
    assert profile_index(entry, {"batch": 1, "sequence": 1, "past_sequence": 0, "total_sequence": 1}) == 0
    with pytest.raises(BundleError, match=r"no optimization profile covers batch=5.*prefill: batch 1\.\.4"):
        profile_index(entry, {"batch": 5, "sequence": 1, "past_sequence": 1, "total_sequence": 2}, "llm_decoder")


def test_buffer_plan_of_the_llm_at_the_profiles_maxima():
    plan = BufferPlan.for_component("llm_decoder", llm_decoder())
    assert max_dims(llm_decoder()) == {"batch": 4, "sequence": 512, "past_sequence": 511, "total_sequence": 512}
    sizes = {t.name: t.nbytes for t in plan.tensors}
    assert sizes["inputs_embeds"] == 4 * 512 * 64 * 4 == 524_288
    assert sizes["attention_mask"] == sizes["position_ids"] == 4 * 512 * 8 == 16_384
    assert sizes["past_key_values.0.key"] == 4 * 2 * 511 * 16 * 4 == 261_632
    assert sizes["logits"] == 4 * 512 * 263 * 4 == 2_154_496
    assert sizes["present.1.value"] == 4 * 2 * 512 * 16 * 4 == 262_144
    assert plan["logits"].max_shape == (4, 512, 263) and not plan["logits"].is_input
    assert plan.input_bytes == 1_603_584 and plan.output_bytes == 3_727_360
    assert plan.total_bytes == 5_330_944  # every size here is already a multiple of 256
    offsets = [t.offset for t in plan.tensors]
    assert offsets[:4] == [0, 524_288, 540_672, 557_056] and all(o % 256 == 0 for o in offsets)


def test_buffer_plan_pads_each_tensor_to_256_bytes():
    plan = BufferPlan.for_component("llm_decoder", llm_decoder(profiles=(DECODE,)))
    assert plan["logits"].nbytes == 4 * 1 * 263 * 4 == 4208
    assert plan["hidden_states"].offset - plan["logits"].offset == 4352  # 4208 rounded up to 256
    with pytest.raises(KeyError, match="no tensor 'nope'"):
        plan["nope"]


def test_output_dims_no_profile_names_come_from_the_engine():
    assert unsized_outputs(vae_decoder()) == ["images"] and unsized_outputs(llm_decoder()) == []
    with pytest.raises(BundleError, match="output 'images' dim 'image_height' is in no profile; the engine must give"):
        BufferPlan.for_component("vae_decoder", vae_decoder())
    plan = BufferPlan.for_component("vae_decoder", vae_decoder(), output_shapes={"images": (4, 3, 64, 64)})
    assert plan["latents"].nbytes == 4 * 4 * 32 * 32 * 4 == 65_536
    assert plan["images"].nbytes == 4 * 3 * 64 * 64 * 4 == 196_608
    assert plan.total_bytes == 262_144


def test_kv_cache_plan_from_the_manifest():
    plan = KvCachePlan.from_manifest(LLM, llm_decoder())
    assert plan.buffer_shape == (4, 2, 512, 16)  # batch and context from the profiles' maxima
    assert plan.buffer_bytes == 262_144 and plan.num_buffers == 8 and plan.total_bytes == 2_097_152
    small = KvCachePlan.from_manifest(LLM, llm_decoder(), batch=1, max_context=64)
    assert small.buffer_bytes == 1 * 2 * 64 * 16 * 4 == 8192 and small.total_bytes == 65_536
    with pytest.raises(BundleError, match="context 1000 outside 1..512"):
        KvCachePlan.from_manifest(LLM, llm_decoder(), max_context=1000)
    with pytest.raises(BundleError, match="batch 5 outside the engine's 1..4"):
        KvCachePlan.from_manifest(LLM, llm_decoder(), batch=5)


def test_kv_ping_pong_bindings():
    plan = KvCachePlan.from_manifest(LLM, llm_decoder(), batch=1, max_context=64)
    step = plan.step(past_len=3, step_len=2, side=0)
    assert step[0] == KvBinding("past_key_values.0.key", 0, (1, 2, 3, 16))
    assert step[3] == KvBinding("past_key_values.1.value", 3, (1, 2, 3, 16))
    assert step[4] == KvBinding("present.0.key", 4, (1, 2, 5, 16))
    nxt = plan.step(past_len=5, step_len=1, side=1)
    # The next step reads exactly where the last one wrote, at the grown length.
    assert [(b.buffer, b.shape) for b in nxt[:4]] == [(b.buffer, b.shape) for b in step[4:]]
    assert [b.buffer for b in nxt[4:]] == [0, 1, 2, 3]
    with pytest.raises(BundleError, match="KV cache full: 60 \\+ 5 positions > max context 64"):
        plan.step(60, 5, 0)


def test_shared_activation_block_is_the_largest_requirement_aligned():
    assert shared_activation_bytes({"vision_encoder": 1000, "unet": 5000, "vae_decoder": 300}) == 5120
    assert shared_activation_bytes({"a": 4096}) == 4096
    assert shared_activation_bytes({}) == 0
