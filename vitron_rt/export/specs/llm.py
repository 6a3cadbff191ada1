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

import torch

from collections.abc import Iterable

from vitron_rt.bundle import DimRange, Profile, Tolerance
from vitron_rt.export.errors import SpecError
from vitron_rt.export.llm_gqa import OrtGqaDecoder
from vitron_rt.export.llm_quant import QUANT_MODES, QuantizedGqaDecoder
from vitron_rt.export.spec import IO, ExportSpec, register_spec

# A deep fp32 decoder accumulates summation-order differences layer by layer: on
# SmolLM2-135M (30 layers), with its own KV cache as the past, ORT vs PyTorch measured
# max abs err 2.9e-4 on deep-layer keys/values (magnitudes ~10-50) and 1.9e-4 on logits
# (magnitudes ~20), i.e. ~1e-5 of scale. Greedy decoding must still pick the same token:
# the logits also carry an exact argmax check, and export runs a 32-token greedy parity.
DECODER_TOLERANCE = Tolerance(
    atol=1e-3, rtol=1e-3, reason="30-layer fp32 decoder: measured 2.9e-4 max abs err on SmolLM2 KV (scale ~10-50)"
)
LOGITS_TOLERANCE = Tolerance(
    atol=1e-3, rtol=1e-3, argmax=True, reason="as the decoder's outputs, plus greedy tokens must match exactly"
)
# The decoder over one shared KV buffer per layer (export/llm_gqa.py), and its weight-
# quantised copies (export/llm_quant.py), written only when asked: `export --quant int4`.
ORT_GQA = OrtGqaDecoder()
QUANT_VARIANTS: dict[str, QuantizedGqaDecoder] = {
    mode: QuantizedGqaDecoder(scheme, base=ORT_GQA) for mode, scheme in QUANT_MODES.items()
}


@register_spec("embed_tokens")
class EmbedTokensSpec(ExportSpec):
    """input_ids -> inputs_embeds: a Gather, kept apart from the decoder so the runtime
    can splice image and region embeddings in between. Its table is written as external
    data at any size, so the runtime can memory-map it and read only the rows it looks up
    (runtime/embedding.py) instead of holding the whole table in an engine."""

    external_weights = True

    inputs = (IO("input_ids", {0: "batch", 1: "sequence"}, dtype="int64"),)
    outputs = (IO("inputs_embeds", {0: "batch", 1: "sequence"}),)
    export_shapes = {"batch": 2, "sequence": 7}
    validate_shapes = ({"batch": 1, "sequence": 1}, {"batch": 3, "sequence": 33})
    profiles = {"batch": (1, 1, 4), "sequence": (1, 128, 4096)}

    def sample_inputs(self, module, shape):
        return module.dummy_inputs(batch=shape["batch"], seq=shape["sequence"], seed=shape["sequence"])

    def attributes(self, module):
        """The table's row count, which the runtime checks the data file against before
        mapping it (runtime/embedding.py)."""
        return {"table_rows": int(module.embedding.num_embeddings)}


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
    default_tolerance = DECODER_TOLERANCE
    # ONNX Runtime serves the decoder over one shared KV buffer per layer (no copy of the
    # past per step); its own graph and check, see export/llm_gqa.py.
    variants = (ORT_GQA,)
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

    def with_quant(self, modes: Iterable[str]) -> "LlmDecoderSpec":
        """This spec with the quantised decoder variants of `modes` ("int4", "int8") added
        after the ort-gqa variant they are made from (each at most once)."""
        modes = list(dict.fromkeys(modes))
        unknown = [m for m in modes if m not in QUANT_VARIANTS]
        if unknown:
            raise SpecError(f"unknown quantisation {unknown[0]!r}; known: {', '.join(QUANT_VARIANTS)}")
        bound = type(self)(self.name)
        bound.inputs, bound.outputs = self.inputs, self.outputs
        bound.variants = (*self.variants, *(QUANT_VARIANTS[m] for m in modes if QUANT_VARIANTS[m] not in self.variants))
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
        """Token embeddings of random ids, and a past that is the model's own KV cache for a
        random prefix (random-noise KV would put attention far outside what a real cache
        holds and measure the wrong thing)."""
        b, t, p = shape["batch"], shape["sequence"], shape["past_sequence"]
        if shape["total_sequence"] != p + t:
            raise ValueError(f"total_sequence must be past_sequence + sequence, got {shape}")
        g = torch.Generator().manual_seed(t * 31 + p)
        ids = torch.randint(0, module.vocab_size, (b, p + t), generator=g)  # (B, P+T)
        embeds = module.input_embeddings()(ids)  # (B, P+T, D)
        positions = torch.arange(p + t).expand(b, p + t)  # (B, P+T)
        mask = torch.ones(b, p + t, dtype=torch.int64)
        past = module.empty_past(batch=b)
        if p:
            with torch.no_grad():
                out = module(embeds[:, :p], mask[:, :p], positions[:, :p].contiguous(), *past)
            past = list(out[2:])  # (B, H_kv, P, hd) each
        feeds = {
            "inputs_embeds": embeds[:, p:].detach().contiguous(),  # (B, T, D)
            "attention_mask": mask,  # (B, P+T)
            "position_ids": positions[:, p:].contiguous(),  # (B, T)
        }
        feeds.update(zip(module.kv_names("past"), (k.detach().contiguous() for k in past)))
        return feeds

    def forward(self, module, inputs):
        return module(*inputs.values())

    def attributes(self, module):
        return {"prefill_decode": "one graph; dynamic sequence and past_sequence"}
