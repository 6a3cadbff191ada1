"""Specs of the LLM: the token embedding and the decoder with its KV cache.

Prefill and decode are ONE graph: `sequence` (new tokens) and `past_sequence` (cached
tokens) are both dynamic, so a prefill is a step with past_sequence = 0 (or the previous
turns' length) and a decode step has sequence = 1. One graph means one copy of the
weights on disk and in memory; TensorRT gets two optimisation profiles over it (prefill:
long sequence; decode: sequence 1, long past) instead of two engines' worth of weights.

    inputs_embeds (B,T,D) ─┐
    attention_mask (B,P+T) ├─► LlamaModel ─► final norm ─► hidden_states (B,T,D)
    position_ids (B,T)     │                      └─► lm_head ─► logits (B,T,V)
    past k/v ×L (B,Hkv,P,hd) ────────────────────────────► present k/v ×L (B,Hkv,P+T,hd)
"""

from __future__ import annotations

from vitron_rt.bundle import DimRange, Profile, Tolerance
from vitron_rt.export.spec import IO, ExportSpec, register_spec

# Greedy decoding must pick the same token as PyTorch: the argmax check is exact, the
# value check stays at the fp32 default.
LOGITS_TOLERANCE = Tolerance(atol=1e-4, rtol=1e-3, argmax=True, reason="greedy tokens must match exactly")


@register_spec("embed_tokens")
class EmbedTokensSpec(ExportSpec):
    """input_ids -> inputs_embeds: a Gather, kept apart from the decoder so the runtime
    can splice image and region embeddings in between."""

    inputs = (IO("input_ids", {0: "batch", 1: "sequence"}, dtype="int64"),)
    outputs = (IO("inputs_embeds", {0: "batch", 1: "sequence"}),)
    export_shapes = {"batch": 2, "sequence": 7}
    validate_shapes = ({"batch": 1, "sequence": 1}, {"batch": 3, "sequence": 33})
    profiles = {"batch": (1, 1, 4), "sequence": (1, 128, 4096)}

    def sample_inputs(self, module, shape):
        return module.dummy_inputs(batch=shape["batch"], seq=shape["sequence"], seed=shape["sequence"])


@register_spec("llm_decoder")
class LlmDecoderSpec(ExportSpec):
    """One step of the decoder over explicit KV tensors (see the module docstring).

    The KV inputs and outputs depend on the layer count, so `bind(module)` returns a spec
    with them appended; the class declares the per-model-independent part.
    """

    inputs = (
        IO("inputs_embeds", {0: "batch", 1: "sequence"}),
        IO("attention_mask", {0: "batch", 1: "total_sequence"}, dtype="int64"),
        IO("position_ids", {0: "batch", 1: "sequence"}, dtype="int64"),
    )
    outputs = (
        IO("logits", {0: "batch", 1: "sequence"}),
        IO("hidden_states", {0: "batch", 1: "sequence"}),
    )
    tolerances = {"logits": LOGITS_TOLERANCE}
    # Traced with a non-empty past; validated on an empty one (a first prefill), a single
    # decode token, another batch and a longer past.
    export_shapes = {"batch": 2, "sequence": 3, "total_sequence": 8, "past_sequence": 5}
    validate_shapes = (
        {"batch": 1, "sequence": 6, "total_sequence": 6, "past_sequence": 0},
        {"batch": 1, "sequence": 1, "total_sequence": 18, "past_sequence": 17},
        {"batch": 3, "sequence": 4, "total_sequence": 13, "past_sequence": 9},
    )

    def bind(self, module) -> "LlmDecoderSpec":
        bound = type(self)(self.name)
        kv_in = tuple(
            IO(n, {0: "batch", 2: "past_sequence"}) for n in module.kv_names("past")
        )  # (B, H_kv, P, hd)
        kv_out = tuple(
            IO(n, {0: "batch", 2: "total_sequence"}) for n in module.kv_names("present")
        )  # (B, H_kv, P+T, hd)
        bound.inputs = (*self.inputs, *kv_in)
        bound.outputs = (*self.outputs, *kv_out)
        bound.check_declaration()
        return bound

    def profiles_for(self, module):
        ctx = module.model.config.max_position_embeddings
        return (
            Profile(
                "prefill",
                {
                    "batch": DimRange(1, 1, 4),
                    "sequence": DimRange(1, 128, ctx),
                    "past_sequence": DimRange(0, 0, ctx - 1),
                    "total_sequence": DimRange(1, 128, ctx),
                },
            ),
            Profile(
                "decode",
                {
                    "batch": DimRange(1, 1, 4),
                    "sequence": DimRange(1, 1, 1),
                    "past_sequence": DimRange(1, 256, ctx - 1),
                    "total_sequence": DimRange(2, 257, ctx),
                },
            ),
        )

    def sample_inputs(self, module, shape):
        b, t, p = shape["batch"], shape["sequence"], shape["past_sequence"]
        if shape["total_sequence"] != p + t:
            raise ValueError(f"total_sequence must be past_sequence + sequence, got {shape}")
        return module.dummy_inputs(batch=b, seq=t, past=p, seed=t * 31 + p)

    def forward(self, module, inputs):
        return module(*inputs.values())

    def attributes(self, module):
        return {"prefill_decode": "one graph; dynamic sequence and past_sequence"}
