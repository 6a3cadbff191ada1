"""The mini preset: every component builds and runs at the sizes ShapesWorld needs, the
widths line up between components, and its sizes stay what the training plan was timed on."""

import pytest
import torch

from vitron_rt.models.config import PRESETS, SIGNAL_MODULES, preset
from vitron_rt.models.model import COMPONENT_NAMES, VitronModel

CFG = preset("mini")


@pytest.fixture(scope="module")
def mini():
    return VitronModel.from_config(CFG)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_mini_is_a_preset_beside_the_others():
    assert {"tiny", "mini", "vitron-7b"} <= set(PRESETS)
    assert CFG.name == "mini"


def test_widths_line_up():
    v, s = CFG.vision, CFG.signal
    assert v.image_size == 128 and v.num_patches == 64
    assert CFG.projector.in_dim == v.hidden_size == CFG.region.feature_dim
    assert CFG.projector.out_dim == CFG.llm.hidden_size == s.in_dim == CFG.region.out_dim
    assert CFG.region.grid == v.grid and CFG.region.image_size == v.image_size
    assert s.segmentation_dim == CFG.seg.prompt_dim
    assert s.diffusion_dim == CFG.unet.cross_attention_dim and CFG.unet.context_length == s.num_tokens
    assert CFG.unet.sample_size * CFG.vae.downsample == CFG.vae.sample_size == 64
    assert CFG.unet.in_channels == CFG.vae.latent_channels
    # A video prompt (every frame's patches, the system prompt, question and reply) fits.
    assert CFG.video_frames * v.num_patches + 120 <= CFG.llm.max_position_embeddings


@pytest.mark.parametrize("name", COMPONENT_NAMES)
def test_every_component_runs(mini, name):
    module = mini.component(name)
    inputs = module.dummy_inputs(batch=2)
    with torch.no_grad():
        out = module(*inputs.values())
    outs = out if isinstance(out, tuple) else (out,)
    for t in outs:
        assert t.shape[0] == 2 and (not t.is_floating_point() or torch.isfinite(t).all()), name


def test_parameter_counts(mini):
    # What the training budget was measured on (see vitron_rt.train.budget); a change of
    # size is a change of plan.
    counts = {name: n_params(mini.component(name)) for name in ("vision_encoder", "llm_decoder", "unet")}
    assert counts["vision_encoder"] == pytest.approx(0.90e6, rel=0.05)
    assert counts["llm_decoder"] == pytest.approx(3.10e6, rel=0.05)
    assert counts["unet"] == pytest.approx(4.28e6, rel=0.05)
    sam = mini.seg_image_encoder.sam
    assert n_params(sam) == pytest.approx(0.73e6, rel=0.05)
    assert 10e6 < n_params(mini) < 14e6
    widths = {m: mini.signal_projectors.projectors[m].out.out_features for m in SIGNAL_MODULES}
    assert widths["segment_image"] == 64 and widths["generate_image"] == 128
