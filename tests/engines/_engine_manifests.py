"""Hand-written manifest entries with known numbers, so the plan and key tests do not
depend on the exporter's current choices."""

from __future__ import annotations

from vitron_rt.bundle import ComponentEntry, DimRange, FileRef, LlmInfo, Profile, TensorSpec

LLM = LlmInfo(
    vocab_size=263,
    hidden_size=64,
    max_position_embeddings=512,
    num_layers=2,
    num_kv_heads=2,
    head_dim=16,
)

PREFILL = Profile(
    "prefill",
    {
        "batch": DimRange(1, 1, 4),
        "sequence": DimRange(1, 128, 512),
        "past_sequence": DimRange(0, 0, 511),
        "total_sequence": DimRange(1, 128, 512),
    },
)
DECODE = Profile(
    "decode",
    {
        "batch": DimRange(1, 1, 4),
        "sequence": DimRange(1, 1, 1),
        "past_sequence": DimRange(1, 256, 511),
        "total_sequence": DimRange(2, 257, 512),
    },
)


def _entry(inputs, outputs, profiles, sha="ab" * 32, external=()) -> ComponentEntry:
    return ComponentEntry(
        file=FileRef("c.onnx", sha, 1000),
        external_data=tuple(external),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        opset=18,
        exporter="dynamo",
        exporter_reason="",
        profiles=tuple(profiles),
    )


def llm_decoder(profiles=(PREFILL, DECODE), sha="ab" * 32, external=()) -> ComponentEntry:
    kv_in = [TensorSpec(n, "float32", ("batch", 2, "past_sequence", 16)) for n in LLM.past_names()]
    kv_out = [TensorSpec(n, "float32", ("batch", 2, "total_sequence", 16)) for n in LLM.present_names()]
    return _entry(
        [
            TensorSpec("inputs_embeds", "float32", ("batch", "sequence", 64)),
            TensorSpec("attention_mask", "int64", ("batch", "total_sequence")),
            TensorSpec("position_ids", "int64", ("batch", "sequence")),
            *kv_in,
        ],
        [
            TensorSpec("logits", "float32", ("batch", "sequence", 263)),
            TensorSpec("hidden_states", "float32", ("batch", "sequence", 64)),
            *kv_out,
        ],
        profiles,
        sha,
        external,
    )


def vae_decoder() -> ComponentEntry:
    """An output dim (`image_height`) that no profile names: the graph computes it."""
    return _entry(
        [TensorSpec("latents", "float32", ("batch", 4, "height", "width"))],
        [TensorSpec("images", "float32", ("batch", 3, "image_height", "image_width"))],
        [Profile("default", {"batch": DimRange(1, 1, 4), "height": DimRange(1, 16, 32), "width": DimRange(1, 16, 32)})],
    )
