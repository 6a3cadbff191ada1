"""Vitron / LLaVA checkpoints: a tiny checkpoint with the released key names round-trips
through load_vitron; strictness (missing / unexpected / mis-shaped keys name the key); the
tower from a separate CLIP or LanguageBind folder; LoRA merging, inline and in the released
adapter-over-base layout; tokenizer rows added for the signal tokens."""

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from vitron_rt.models.config import preset
from vitron_rt.models.llm import LlmDecoder
from vitron_rt.models.projector import MMProjector
from vitron_rt.models.region import RegionEncoder
from vitron_rt.models.tokenizer import tiny_tokenizer
from vitron_rt.models.vision import VisionEncoder
from vitron_rt.models.vitron_checkpoint import (
    VitronParts,
    is_vitron_folder,
    load_vitron,
    save_vitron,
    vitron_state_dict,
)
from vitron_rt.models.weights import CheckpointError

CFG = preset("tiny")
K = CFG.signal.num_tokens

# Names as the released LlavaLlamaForCausalLM state dict spells them (SkyworkAI/Vitron:
# vitron/model/llava_arch.py, region_extractor/layer.py, multimodal_projector/builder.py,
# multimodal_encoder/languagebind/__init__.py).
RELEASED_KEYS = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.1.mlp.down_proj.weight",
    "model.norm.weight",
    "model.mm_projector.0.weight",
    "model.mm_projector.0.bias",
    "model.mm_projector.2.weight",
    "model.mm_projector.2.bias",
    "model.region_extractor.region_linear.layers.0.weight",
    "model.region_extractor.region_linear.layers.1.bias",
    "model.region_extractor.region_linear.layers.2.weight",
    "model.region_extractor.loc_encoder.loc_encoder.0.weight",
    "model.region_extractor.loc_encoder.loc_encoder.2.bias",
    "model.image_tower.image_tower.embeddings.class_embedding",
    "model.image_tower.image_tower.embeddings.patch_embedding.weight",
    "model.image_tower.image_tower.embeddings.position_embedding.weight",
    "model.image_tower.image_tower.pre_layrnorm.weight",
    "model.image_tower.image_tower.encoder.layers.0.self_attn.q_proj.weight",
    "model.image_tower.image_tower.encoder.layers.1.mlp.fc2.bias",
    "model.image_tower.image_tower.post_layernorm.bias",
]


def tiny_parts(num_signal_tokens=K, seed=0) -> VitronParts:
    torch.manual_seed(seed)
    return VitronParts(
        llm=LlmDecoder.from_config(CFG.llm),
        vision_encoder=VisionEncoder(CFG.vision).eval(),
        mm_projector=MMProjector(CFG.projector).eval(),
        region_encoder=RegionEncoder(CFG.region).eval(),
        tokenizer=tiny_tokenizer(num_signal_tokens),
        llm_config=CFG.llm,
        vision_config=CFG.vision,
        projector_config=CFG.projector,
        region_config=CFG.region,
        num_signal_tokens=num_signal_tokens,
    )


@pytest.fixture(scope="module")
def parts():
    return tiny_parts()


@pytest.fixture(scope="module")
def saved(parts, tmp_path_factory):
    return save_vitron(parts, tmp_path_factory.mktemp("vitron") / "tiny-vitron")


def copy_of(folder, tmp_path, name="ckpt"):
    return shutil.copytree(folder, tmp_path / name)


def edit_weights(folder, edit):
    path = folder / "model.safetensors"
    sd = load_file(str(path))
    edit(sd)
    save_file(sd, str(path))


def edit_config(folder, edit):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))


def run(module, inputs):
    with torch.no_grad():
        out = module(*inputs.values())
    return out if isinstance(out, tuple) else (out,)


def assert_same_outputs(a, b, component):
    inputs = getattr(a, component).dummy_inputs(batch=2)
    for x, y in zip(run(getattr(a, component), inputs), run(getattr(b, component), inputs)):
        assert torch.equal(x, y), component


COMPONENTS = ("vision_encoder", "mm_projector", "region_encoder", "llm")


# -- layout and round trip ------------------------------------------------------------------


def test_saved_checkpoint_uses_the_released_key_names(parts, saved):
    keys = set(load_file(str(saved / "model.safetensors")))
    assert set(RELEASED_KEYS) <= keys
    expected = {k for k in parts.llm.model.state_dict() if k != "lm_head.weight"}  # tied head: once
    expected |= {"model.mm_projector." + k for k in parts.mm_projector.state_dict()}
    expected |= {"model.region_extractor." + k for k in parts.region_encoder.state_dict()}
    expected |= {"model.image_tower.image_tower." + k for k in parts.vision_encoder.clip.state_dict()}
    assert keys == expected
    cfg = json.loads((saved / "config.json").read_text())
    assert cfg["mm_projector_type"] == "mlp2x_gelu" and cfg["mm_vision_select_layer"] == -2
    assert cfg["mm_hidden_size"] == 32 and cfg["hidden_size"] == 64


def test_round_trip_outputs_equal(parts, saved):
    loaded = load_vitron(saved, num_signal_tokens=K)
    for component in COMPONENTS:
        assert_same_outputs(parts, loaded, component)
    assert loaded.llm_config == CFG.llm
    assert loaded.vision_config == CFG.vision
    assert loaded.projector_config == CFG.projector
    assert loaded.region_config == CFG.region
    assert loaded.report.added_token_rows == 0 and loaded.report.lora_modules == 0
    tok, ref = loaded.tokenizer, parts.tokenizer
    text = "USER: <image> what is <region>? <sig_0><sig_1>"
    assert tok.tokenizer.encode(text).ids == ref.tokenizer.encode(text).ids
    assert tok.chat_template == ref.chat_template and tok.special_tokens == ref.special_tokens
    assert loaded.vitron_config(CFG).signal.num_tokens == K


def test_is_vitron_folder(saved, tmp_path):
    assert is_vitron_folder(saved)
    plain = tmp_path / "plain-llama"
    tiny_parts().llm.model.save_pretrained(plain)
    assert not is_vitron_folder(plain)
    assert not is_vitron_folder(tmp_path / "missing")
    # No mm_* fields in config.json, but mm_projector weights: still Vitron.
    stripped = copy_of(saved, tmp_path)
    edit_config(stripped, lambda c: [c.pop(k) for k in [k for k in c if k.startswith("mm_")]])
    assert is_vitron_folder(stripped)


def test_llava_tower_names_load(parts, saved, tmp_path):
    folder = copy_of(saved, tmp_path)

    def rename(sd):
        for k in [k for k in sd if k.startswith("model.image_tower.image_tower.")]:
            sd["model.vision_tower.vision_tower.vision_model." + k.split("image_tower.image_tower.")[1]] = sd.pop(k)

    edit_weights(folder, rename)
    assert_same_outputs(parts, load_vitron(folder, K), "vision_encoder")


# -- strictness -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, kind",
    [
        ("model.region_extractor.loc_encoder.loc_encoder.2.bias", None, "missing"),
        ("model.image_tower.image_tower.encoder.layers.1.mlp.fc1.weight", None, "missing"),
        ("model.layers.1.self_attn.o_proj.weight", None, "missing"),
        ("model.mm_projector.4.weight", torch.zeros(64, 64), "unexpected"),
        ("model.layers.0.self_attn.gate.weight", torch.zeros(2), "unexpected"),
        ("model.mm_projector.0.weight", torch.zeros(64, 31), "mis-shaped"),
        ("model.region_extractor.region_linear.layers.1.weight", torch.zeros(3, 3), "mis-shaped"),
    ],
)
def test_key_mismatch_raises_naming_the_key(saved, tmp_path, key, value, kind):
    folder = copy_of(saved, tmp_path)

    def apply(sd):
        if value is None:
            del sd[key]
        else:
            assert kind == "unexpected" or key in sd
            sd[key] = value

    edit_weights(folder, apply)
    with pytest.raises(CheckpointError, match=rf"{kind} 1: {re.escape(key)}"):
        load_vitron(folder, K)


def test_video_tower_and_inv_freq_are_skipped_and_reported(parts, saved, tmp_path):
    folder = copy_of(saved, tmp_path)

    def add(sd):
        sd["model.video_tower.video_tower.encoder.layers.0.temporal_attn.q_proj.weight"] = torch.zeros(2, 2)
        sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(4)

    edit_weights(folder, add)
    loaded = load_vitron(folder, K)
    assert_same_outputs(parts, loaded, "llm")
    skipped = [k for keys in loaded.report.skipped.values() for k in keys]
    assert sorted(skipped) == [
        "model.layers.0.self_attn.rotary_emb.inv_freq",
        "model.video_tower.video_tower.encoder.layers.0.temporal_attn.q_proj.weight",
    ]


def test_not_a_vitron_checkpoint(tmp_path):
    plain = tmp_path / "plain"
    tiny_parts().llm.model.save_pretrained(plain)
    with pytest.raises(CheckpointError, match="not a Vitron / LLaVA checkpoint"):
        load_vitron(plain, K)
    with pytest.raises(CheckpointError, match="not a folder"):
        load_vitron(tmp_path / "nope", K)


# -- the vision tower from its own folder ---------------------------------------------------


def strip_tower(folder):
    edit_weights(folder, lambda sd: [sd.pop(k) for k in [k for k in sd if k.startswith("model.image_tower.")]])


def test_vision_from_a_separate_clip_folder(parts, saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    strip_tower(folder)
    with pytest.raises(CheckpointError, match="no vision tower weights in the checkpoint.*pass vision_path"):
        load_vitron(folder, K)
    clip_dir = tmp_path / "clip-vision"
    parts.vision_encoder.clip.save_pretrained(clip_dir)
    (clip_dir / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    loaded = load_vitron(folder, K, vision_path=clip_dir)
    assert_same_outputs(parts, loaded, "vision_encoder")
    assert loaded.vision_config.image_mean == (0.5, 0.5, 0.5) and loaded.report.vision == str(clip_dir)
    # The tower the config names, found beside the checkpoint (as LLaVA loads it).
    edit_config(folder, lambda c: c.update(mm_image_tower="clip-vision"))
    assert_same_outputs(parts, load_vitron(folder, K), "vision_encoder")


def test_vision_from_a_languagebind_style_folder(parts, saved, tmp_path):
    """A full CLIP folder (text half skipped) whose encoder is PEFT-wrapped with a LoRA, as
    LanguageBind's modeling_image.py builds it; the tower LoRA merges with its own alpha / r."""
    folder = copy_of(saved, tmp_path)
    strip_tower(folder)
    lb = tmp_path / "LanguageBind_Image"
    lb.mkdir()
    vision_cfg = parts.vision_config.to_hf().to_dict()
    vision_cfg.update(lora_r=2, lora_alpha=4, add_time_attn=False)
    (lb / "config.json").write_text(json.dumps({"model_type": "LanguageBindImage", "vision_config": vision_cfg}))
    torch.manual_seed(3)
    sd = {"text_model.embeddings.token_embedding.weight": torch.zeros(10, 4), "logit_scale": torch.zeros(())}
    want = {}
    for k, v in parts.vision_encoder.clip.state_dict().items():
        if k.startswith("encoder.layers.0.self_attn.q_proj.weight"):
            base = torch.randn_like(v)
            a, b = torch.randn(2, v.shape[1]), torch.randn(v.shape[0], 2)
            stem = "vision_model.encoder.base_model.model.layers.0.self_attn.q_proj"
            sd[f"{stem}.base_layer.weight"] = base
            sd[f"{stem}.lora_A.default.weight"] = a
            sd[f"{stem}.lora_B.default.weight"] = b
            want[k] = base + b @ a * (4 / 2)
        else:
            name = k.replace("encoder.layers.", "encoder.base_model.model.layers.")
            sd["vision_model." + name] = v
            want[k] = v
    save_file(sd, str(lb / "model.safetensors"))
    loaded = load_vitron(folder, K, vision_path=lb)
    got = loaded.vision_encoder.clip.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-6)


def test_released_style_config_json(parts, saved, tmp_path):
    """config.json as LLaVA 1.5 / Vitron write it (transformers 4.31: no rope_theta, no
    vision_config; the tower is a LanguageBind path), tower given by vision_path."""
    folder = copy_of(saved, tmp_path)
    strip_tower(folder)
    llm = CFG.llm
    released = {
        "_name_or_path": "Vitron-base",
        "architectures": ["LlavaLlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "freeze_mm_mlp_adapter": False,
        "hidden_act": "silu",
        "hidden_size": llm.hidden_size,
        "image_aspect_ratio": "pad",
        "initializer_range": 0.02,
        "intermediate_size": llm.intermediate_size,
        "max_position_embeddings": llm.max_position_embeddings,
        "mm_hidden_size": CFG.vision.hidden_size,
        "mm_image_tower": "LanguageBind/LanguageBind_Image",
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_video_tower": "LanguageBind/LanguageBind_Video_merge",
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "model_type": "llava",
        "num_attention_heads": llm.num_heads,
        "num_hidden_layers": llm.num_layers,
        "num_key_value_heads": llm.num_kv_heads,
        "pad_token_id": 0,
        "pretraining_tp": 1,
        "rms_norm_eps": llm.rms_norm_eps,
        "rope_scaling": None,
        "tie_word_embeddings": True,
        "tokenizer_model_max_length": 3072,
        "tokenizer_padding_side": "right",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.31.0",
        "tune_mm_mlp_adapter": True,
        "use_cache": True,
        "use_mm_proj": True,
        "vocab_size": llm.vocab_size,
    }
    (folder / "config.json").write_text(json.dumps(released))
    clip_dir = tmp_path / "clip"
    parts.vision_encoder.clip.save_pretrained(clip_dir)
    loaded = load_vitron(folder, K, vision_path=clip_dir)
    assert loaded.llm_config == CFG.llm
    # The released extractor's frame is 224 px whatever the tower (no region_image_size here).
    assert loaded.region_config.image_size == 224 and loaded.region_config.grid == CFG.region.grid
    for component in ("vision_encoder", "mm_projector", "llm"):
        assert_same_outputs(parts, loaded, component)


# -- LoRA -----------------------------------------------------------------------------------

LORA_TARGETS = ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj")


def lora_pairs(parts, r=4, seed=7):
    """Random A (r, in), B (out, r) for a few LLM linears, and the weights merging must give."""
    torch.manual_seed(seed)
    sd = parts.llm.model.state_dict()
    pairs, merged = {}, {}
    for m in LORA_TARGETS:
        w = sd[f"{m}.weight"]
        a, b = torch.randn(r, w.shape[1]), torch.randn(w.shape[0], r)
        pairs[m] = (a, b)
        merged[f"{m}.weight"] = w + b @ a * (8.0 / r)  # lora_alpha 8
    return pairs, merged


def assert_llm_weights(loaded, parts, merged):
    got = loaded.llm.model.state_dict()
    for k, v in parts.llm.model.state_dict().items():
        torch.testing.assert_close(got[k], merged.get(k, v), rtol=1e-6, atol=1e-6)


def test_inline_lora_keys_merge(parts, saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    pairs, merged = lora_pairs(parts)

    def add(sd):
        for m, (a, b) in pairs.items():
            sd[f"{m}.base_layer.weight"] = sd.pop(f"{m}.weight")
            sd[f"{m}.lora_A.weight"], sd[f"{m}.lora_B.weight"] = a, b

    edit_weights(folder, add)
    with pytest.raises(CheckpointError, match="LoRA weights .* but no adapter_config.json"):
        load_vitron(folder, K)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "peft_type": "LORA"}))
    loaded = load_vitron(folder, K)
    assert loaded.report.lora_modules == 2 and loaded.report.lora_scale == 2.0
    assert_llm_weights(loaded, parts, merged)


def test_released_adapter_over_base_layout(parts, saved, tmp_path):
    """Vitron-lora (adapter_config.json, adapter_model.bin, non_lora_trainables.bin,
    config.json) over Vitron-base, keys as PEFT and LLaVA's trainer save them."""
    base = copy_of(saved, tmp_path, "Vitron-base")
    trained = tiny_parts(seed=1)  # the fine-tuned projector / region extractor
    edit_weights(base, lambda sd: sd.update({k: torch.zeros_like(v) for k, v in sd.items() if "mm_projector" in k}))
    lora = tmp_path / "Vitron-lora"
    lora.mkdir()
    shutil.copy(saved / "config.json", lora / "config.json")
    (lora / "adapter_config.json").write_text(
        json.dumps({"r": 4, "lora_alpha": 8, "base_model_name_or_path": "Vitron-base", "task_type": "CAUSAL_LM"})
    )
    pairs, merged = lora_pairs(parts)
    adapter = {}
    for m, (a, b) in pairs.items():
        adapter[f"base_model.model.{m}.lora_A.weight"] = a
        adapter[f"base_model.model.{m}.lora_B.weight"] = b
    torch.save(adapter, lora / "adapter_model.bin")
    non_lora = {f"base_model.model.model.mm_projector.{k}": v for k, v in trained.mm_projector.state_dict().items()}
    non_lora.update(
        {f"base_model.model.model.region_extractor.{k}": v for k, v in trained.region_encoder.state_dict().items()}
    )
    torch.save(non_lora, lora / "non_lora_trainables.bin")

    assert is_vitron_folder(lora)
    loaded = load_vitron(lora, K)  # base found from adapter_config, beside the adapter folder
    assert loaded.report.base == str(base) and loaded.report.lora_modules == 2
    assert_llm_weights(loaded, parts, merged)
    assert_same_outputs(trained, loaded, "mm_projector")
    assert_same_outputs(trained, loaded, "region_encoder")
    assert_same_outputs(parts, loaded, "vision_encoder")

    (lora / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "base_model_name_or_path": "x/y"}))
    with pytest.raises(CheckpointError, match="pass base_path="):
        load_vitron(lora, K)
    assert load_vitron(lora, K, base_path=base).report.lora_modules == 2


def test_lora_shape_mismatch_and_dora_are_refused(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    m = LORA_TARGETS[0]
    bad = {f"{m}.lora_A.weight": torch.zeros(4, 3), f"{m}.lora_B.weight": torch.zeros(64, 4)}  # A's in != 64
    edit_weights(folder, lambda sd: sd.update(bad))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    with pytest.raises(CheckpointError, match=rf"LoRA shapes for {m.replace('.', '[.]')} do not fit"):
        load_vitron(folder, K)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "use_dora": True}))
    with pytest.raises(CheckpointError, match="DoRA"):
        load_vitron(folder, K)


# -- tokenizer ------------------------------------------------------------------------------


def test_rows_are_added_for_new_signal_tokens(parts, saved):
    loaded = load_vitron(saved, num_signal_tokens=K + 3)
    assert loaded.report.added_token_rows == 3
    assert loaded.llm_config.vocab_size == CFG.llm.vocab_size + 3 == loaded.tokenizer.vocab_size
    table = loaded.llm.input_embeddings().weight
    old = parts.llm.input_embeddings().weight
    assert torch.equal(table[: old.shape[0]], old)
    mean = old.mean(dim=0)
    for i in range(3):
        torch.testing.assert_close(table[old.shape[0] + i], mean)
    assert loaded.tokenizer.token_id(f"<sig_{K + 2}>") == CFG.llm.vocab_size + 2


def test_state_dict_helper_matches_saved_file(parts, saved):
    assert set(vitron_state_dict(parts)) == set(load_file(str(saved / "model.safetensors")))


def test_checkpoint_lora_on_the_tower_merges_over_the_tower_folder(parts, saved, tmp_path):
    """LoRA pairs the checkpoint holds for the tower are not dropped when the tower's base
    weights come from vision_path: they merge on top, with the checkpoint's alpha / r."""
    folder = copy_of(saved, tmp_path)
    strip_tower(folder)
    clip_dir = tmp_path / "clip"
    parts.vision_encoder.clip.save_pretrained(clip_dir)
    stem = "encoder.layers.1.mlp.fc1"
    w = parts.vision_encoder.clip.state_dict()[f"{stem}.weight"]
    torch.manual_seed(11)
    a, b = torch.randn(4, w.shape[1]), torch.randn(w.shape[0], 4)
    prefix = "model.image_tower.image_tower."
    edit_weights(folder, lambda sd: sd.update({f"{prefix}{stem}.lora_A.weight": a, f"{prefix}{stem}.lora_B.weight": b}))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    loaded = load_vitron(folder, K, vision_path=clip_dir)
    assert loaded.report.lora_modules == 1
    torch.testing.assert_close(loaded.vision_encoder.clip.state_dict()[f"{stem}.weight"], w + b @ a * 2.0)
