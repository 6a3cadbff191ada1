"""SmolLM2-135M-Instruct, a real LLaMA-architecture chat model shipped as GGUF, exports and
checks: every decoder output on fresh shapes, and 32 greedy tokens through ONNX Runtime
identical to PyTorch's in fp32."""

from vitron_rt.bundle import load_bundle
from vitron_rt.export.pipeline import check_bundle


def test_smollm2_export_validates(smollm2_export):
    path, rows = smollm2_export
    assert rows and all(r.passed for r in rows)
    (greedy,) = [r for r in rows if r.output == "greedy tokens" and r.file == "main"]
    assert greedy.case == "32 tokens" and greedy.max_abs_err == 0
    # The ort-gqa variant (shared KV buffers) decodes the same way as PyTorch too.
    (gqa,) = [r for r in rows if r.output == "greedy tokens" and r.file == "ort-gqa"]
    assert gqa.passed and gqa.max_abs_err == 0
    manifest = load_bundle(path).manifest
    llm = manifest.llm
    # 30 layers, GQA 9/3 heads of 64, tied head; vocabulary grown by Vitron's special tokens.
    assert (llm.num_layers, llm.num_kv_heads, llm.head_dim, llm.hidden_size) == (30, 3, 64, 576)
    assert llm.vocab_size == 49152 + 2 + manifest.signal.num_tokens
    assert manifest.tokenizer.chat_template is not None  # the model's own template
    assert manifest.source.checkpoint.endswith(".gguf")


def test_smollm2_check(smollm2_bundle):
    rows = check_bundle(load_bundle(smollm2_bundle))
    assert all(r.passed for r in rows)
    assert any(r.output == "greedy tokens" and r.passed for r in rows)
