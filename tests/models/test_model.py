"""The assembled model: the tiny preset builds every component with seeded weights and
runs a forward pass of each; the vitron-7b preset has the released dimensions, checked on
the meta device (shapes and parameter counts, no memory)."""

import pytest
import torch

from vitron_rt.models.config import SIGNAL_MODULES, preset
from vitron_rt.models.model import COMPONENT_NAMES, VitronModel


@pytest.fixture(scope="module")
def tiny():
    return VitronModel.from_config(preset("tiny"))


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_component_names_cover_design_table():
    assert {"vision_encoder", "mm_projector", "region_encoder", "embed_tokens", "llm_decoder"} <= set(COMPONENT_NAMES)
    assert {"seg_image_encoder", "seg_mask_decoder", "unet", "vae_encoder", "vae_decoder"} <= set(COMPONENT_NAMES)
    assert {f"signal_projector.{m}" for m in SIGNAL_MODULES} <= set(COMPONENT_NAMES)


@pytest.mark.parametrize("name", COMPONENT_NAMES)
def test_tiny_component_forward(tiny, name):
    module = tiny.component(name)
    inputs = module.dummy_inputs(batch=2)  # ordered as forward's parameters
    with torch.no_grad():
        out = module(*inputs.values())
    outs = out if isinstance(out, tuple) else (out,)
    assert outs, name
    for t in outs:
        assert torch.is_tensor(t) and t.shape[0] == 2, (name, t.shape)
        if t.is_floating_point():
            assert torch.isfinite(t).all(), name


def test_tiny_weights_are_seeded():
    a = VitronModel.from_config(preset("tiny")).state_dict()
    b = VitronModel.from_config(preset("tiny")).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_shares_weights_like_the_real_system(tiny):
    assert tiny.embed_tokens.embedding.weight is tiny.llm_decoder.input_embeddings().weight
    assert tiny.seg_image_encoder.sam is tiny.seg_mask_decoder.sam
    assert tiny.vae_encoder.vae is tiny.vae_decoder.vae


def test_unknown_component_is_a_clear_error(tiny):
    with pytest.raises(KeyError, match="unknown component 'nope'"):
        tiny.component("nope")


def test_vitron_7b_on_meta_has_released_dimensions():
    cfg = preset("vitron-7b")
    model = VitronModel.from_config(cfg, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    # Vicuna-7B: 6,738,415,616 parameters with its 32,000-row vocabulary; we add
    # <image>, <region> and K signal tokens, each one row of the embedding and of the head.
    added = cfg.llm.vocab_size - 32000
    assert n_params(model.llm_decoder) == 6_738_415_616 + added * 4096 * 2
    # CLIP ViT-L/14 at 224 px, vision tower only.
    assert n_params(model.vision_encoder) == 303_179_776
    # mlp2x_gelu: Linear(1024, 4096) + Linear(4096, 4096).
    assert n_params(model.mm_projector) == 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    assert cfg.vision.num_patches == 256 and cfg.llm.hidden_size == 4096 and cfg.llm.num_layers == 32
