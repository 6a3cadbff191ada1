"""UNet / VaeEncoder / VaeDecoder: shapes, parity with diffusers, loading, SD-1.x sizes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from vitron_rt.models.config import PREDICTION_TYPES, UNetConfig, preset
from vitron_rt.models.diffusion import (
    Layout,
    UNet,
    VaeDecoder,
    VaeEncoder,
    build_vae,
    load_unet,
    load_vae,
    unet_config_from_diffusers,
)
from vitron_rt.models.weights import CheckpointError

TINY = preset("tiny")
PLAIN = dataclasses.replace(TINY.unet, layout_channels=0)  # a diffusers UNet as it is, as SD's


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet(TINY.unet)


@pytest.fixture(scope="module")
def plain_unet():
    torch.manual_seed(0)
    return UNet(PLAIN)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return build_vae(TINY.vae)


def _run(module, inputs):
    with torch.no_grad():
        return module(**inputs)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ── UNet ──


@pytest.mark.parametrize("batch, dims", [(1, {}), (3, {"height": 12, "width": 16, "seq_len": 5})])
def test_unet_shapes(unet, batch, dims):
    inputs = unet.dummy_inputs(batch=batch, **dims)
    h, w = dims.get("height", TINY.unet.sample_size), dims.get("width", TINY.unet.sample_size)
    assert inputs["timestep"].shape == (batch,) and inputs["timestep"].dtype == torch.float32
    assert inputs["encoder_hidden_states"].shape == (
        batch,
        dims.get("seq_len", TINY.unet.context_length),
        TINY.unet.cross_attention_dim,
    )
    assert _run(unet, inputs).shape == (batch, TINY.unet.out_channels, h, w)


def test_unet_equals_diffusers(plain_unet):
    inputs = plain_unet.dummy_inputs(batch=2)
    with torch.no_grad():
        ref = plain_unet.unet(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"]).sample
    torch.testing.assert_close(_run(plain_unet, inputs), ref, rtol=0, atol=0)


def test_a_layout_unet_is_diffusers_on_the_latents_and_their_layout(unet):
    inputs = unet.dummy_inputs(batch=2)
    x, c = inputs["sample"], inputs["encoder_hidden_states"]
    with torch.no_grad():
        layout = unet.layout(c, *x.shape[-2:])
        ref = unet.unet(torch.cat([x, layout], 1), inputs["timestep"], c).sample
    assert layout.shape == (2, TINY.unet.layout_channels, *x.shape[-2:])
    assert unet.unet.config.in_channels == TINY.unet.in_channels + TINY.unet.layout_channels
    torch.testing.assert_close(_run(unet, inputs), ref, rtol=0, atol=0)


def test_the_layout_puts_each_tokens_what_where_it_points():
    torch.manual_seed(0)
    layout = Layout(width=4, side=4, channels=3)
    with torch.no_grad():
        layout.where.weight.zero_()
        layout.where.weight[5, 0] = 50.0  # input feature 0 -> grid cell 5 = (row 1, col 1)
        layout.where.weight[14, 1] = 50.0  # feature 1 -> cell 14 = (3, 2)
        layout.what.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 0]]))
        layout.what.bias.zero_()
        tokens = torch.tensor([[[1.0, 0, 0, 0], [0, 1.0, 0, 0]]])  # (1, 2, 4): two tokens
        out = layout(tokens, 4, 4)[0]  # (3, 4, 4)
        scale = 16 / Layout.SPREAD
        assert out[0, 1, 1] == pytest.approx(scale, rel=1e-4) and out[1, 3, 2] == pytest.approx(scale, rel=1e-4)
        assert out[0].sum() == pytest.approx(scale, rel=1e-4) and out[1].sum() == pytest.approx(scale, rel=1e-4)
        assert out[2].abs().max() == 0
        bigger = layout(tokens, 8, 8)[0]  # resampled: the peak stays in the same quarter of the grid
        assert divmod(int(bigger[0].argmax()), 8)[0] in (2, 3) and divmod(int(bigger[0].argmax()), 8)[1] in (2, 3)


def test_a_fresh_layout_spreads_every_token_evenly():
    layout = Layout(width=8, side=4, channels=2)
    where = layout.where(torch.randn(1, 3, 8)).softmax(-1)
    torch.testing.assert_close(where, torch.full_like(where, 1 / 16))


def test_a_kernel_layout_draws_each_tokens_silhouette_around_its_place():
    torch.manual_seed(0)
    layout = Layout(width=4, side=8, channels=2, kernel=3)
    tokens = torch.randn(2, 3, 4)
    plain = Layout(width=4, side=8, channels=2)
    plain.load_state_dict({k: v for k, v in layout.state_dict().items() if not k.startswith("form.")})
    torch.testing.assert_close(layout(tokens, 8, 8), plain(tokens, 8, 8))  # fresh: the centre cell alone
    with torch.no_grad():
        layout.where.weight.zero_()
        layout.where.weight[2 * 8 + 5, 0] = 60.0  # feature 0 -> cell (2, 5)
        layout.what.weight.zero_()
        layout.what.bias.copy_(torch.tensor([1.0, 0.0]))
        layout.form.weight.zero_()
        silhouette = torch.tensor([[0.0, 1, 0], [1, 1, 1], [0, 1, 0]])  # a plus, centred
        layout.form.bias.copy_(silhouette.flatten())
        out = layout(torch.tensor([[[1.0, 0, 0, 0]]]), 8, 8)[0, 0]  # (8, 8)
    scale = 64 / Layout.SPREAD
    torch.testing.assert_close(out[1:4, 4:7], silhouette * scale, atol=1e-4, rtol=0)
    assert out.sum() == pytest.approx(5 * scale, rel=1e-4)
    # The sweep is nn.Conv2d's cross-correlation, each map with its own kernel, zero-padded.
    maps, kernels = torch.rand(3, 1, 8, 8), torch.randn(3, 9)
    conv = torch.nn.functional.conv2d
    ref = torch.cat([conv(m[None], k.reshape(1, 1, 3, 3), padding=1) for m, k in zip(maps, kernels)])
    torch.testing.assert_close(layout._swept(maps, kernels), ref)


def test_a_kernel_layout_unet_exports_and_matches_pytorch(tmp_path):
    import vitron_rt.export.specs  # noqa: F401  (registers)
    from vitron_rt.export.onnx_export import export_component
    from vitron_rt.export.spec import get_spec
    from vitron_rt.export.validate import validate_component

    torch.manual_seed(0)
    unet = UNet(dataclasses.replace(TINY.unet, layout_kernel=3))
    with torch.no_grad():
        torch.nn.init.normal_(unet.layout.where.weight)
        torch.nn.init.normal_(unet.layout.form.weight)  # a kernel of each token's own
    spec = get_spec("unet")
    rows = validate_component(unet, spec, export_component(unet, spec, tmp_path))
    assert rows and all(r.passed for r in rows), [r for r in rows if not r.passed]
    assert len({r.case for r in rows}) >= 2


def test_unet_config_checks_layout_and_prediction_type():
    assert PREDICTION_TYPES == ("epsilon", "v_prediction", "sample")
    with pytest.raises(ValueError, match="prediction_type 'x0'"):
        UNetConfig(prediction_type="x0")
    with pytest.raises(ValueError, match="layout_channels"):
        UNetConfig(layout_channels=-1)
    for bad in (-1, 4):
        with pytest.raises(ValueError, match="layout_kernel"):
            UNetConfig(layout_channels=4, layout_kernel=bad)
    assert "layout_channels" not in UNetConfig().to_diffusers()
    assert "layout_kernel" not in UNetConfig(layout_channels=4, layout_kernel=5).to_diffusers()
    assert UNetConfig(in_channels=4, layout_channels=6).to_diffusers()["in_channels"] == 10


def test_runtime_and_models_name_the_same_prediction_types():
    from vitron_rt.runtime.pipelines import scheduler

    assert scheduler.PREDICTION_TYPES == PREDICTION_TYPES


def test_unet_from_diffusers_wraps_without_copy(plain_unet):
    wrapped = UNet.from_diffusers(plain_unet.unet, context_length=PLAIN.context_length)
    assert wrapped.unet is plain_unet.unet
    assert wrapped.config == PLAIN  # the config round-trips through diffusers' own
    assert unet_config_from_diffusers(plain_unet.unet).context_length == 77  # CLIP's, by default


def test_unet_dummy_inputs_reject_unknown_dims(unet):
    with pytest.raises(TypeError, match="unknown dims"):
        unet.dummy_inputs(frames=4)


# ── VAE ──


def test_vae_encoder_is_scaled_posterior_mean(vae):
    enc = VaeEncoder(vae)
    inputs = enc.dummy_inputs(batch=2)
    images = inputs["images"]
    assert images.min() >= -1 and images.max() <= 1
    latents = _run(enc, inputs)
    f = TINY.vae.downsample
    side = TINY.vae.sample_size // f
    assert latents.shape == (2, TINY.vae.latent_channels, side, side)
    with torch.no_grad():
        ref = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(latents, ref, rtol=0, atol=0)
    torch.testing.assert_close(_run(enc, inputs), latents, rtol=0, atol=0)  # deterministic


def test_vae_decoder_unscales(vae):
    dec = VaeDecoder(vae)
    inputs = dec.dummy_inputs(batch=2, height=6, width=10)
    images = _run(dec, inputs)
    f = TINY.vae.downsample
    assert images.shape == (2, 3, 6 * f, 10 * f)
    with torch.no_grad():
        ref = vae.decode(inputs["latents"] / vae.config.scaling_factor).sample
    torch.testing.assert_close(images, ref, rtol=0, atol=0)


def test_vae_halves_share_one_vae(vae):
    assert VaeEncoder(vae).vae is vae and VaeDecoder(vae).vae is vae


def test_vae_encoder_other_sizes_and_bad_sizes(vae):
    enc = VaeEncoder(vae)
    f = TINY.vae.downsample
    latents = _run(enc, enc.dummy_inputs(batch=3, height=12 * f, width=20 * f))
    assert latents.shape == (3, TINY.vae.latent_channels, 12, 20)
    with pytest.raises(ValueError, match="multiples"):
        enc.dummy_inputs(height=12 * f + 1)
    with pytest.raises(TypeError, match="unknown dims"):
        enc.dummy_inputs(depth=2)


# ── loading ──


@pytest.mark.parametrize("layout", ["model", "pipeline"])
def test_load_unet_round_trip(plain_unet, tmp_path, layout):
    folder = tmp_path if layout == "model" else tmp_path / "unet"
    plain_unet.unet.save_pretrained(folder)
    loaded = load_unet(tmp_path, context_length=PLAIN.context_length)
    assert isinstance(loaded, UNet) and loaded.config == PLAIN
    inputs = plain_unet.dummy_inputs(batch=2)
    torch.testing.assert_close(_run(loaded, inputs), _run(plain_unet, inputs), rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["model", "pipeline"])
def test_load_vae_round_trip(vae, tmp_path, layout):
    folder = tmp_path if layout == "model" else tmp_path / "vae"
    vae.save_pretrained(folder)
    loaded = load_vae(tmp_path)
    for half in (VaeEncoder, VaeDecoder):
        inputs = half(vae).dummy_inputs(batch=1)
        torch.testing.assert_close(_run(half(loaded), inputs), _run(half(vae), inputs), rtol=0, atol=0)


def test_load_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a diffusers UNet2DConditionModel folder"):
        load_unet(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="not a diffusers AutoencoderKL folder"):
        load_vae(tmp_path)


def test_load_wrong_class(vae, tmp_path):
    vae.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="expected 'UNet2DConditionModel'"):
        load_unet(tmp_path)


def test_load_without_weights(vae, tmp_path):
    vae.save_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="cannot load AutoencoderKL"):
        load_vae(tmp_path)


def test_load_incomplete_weights(vae, tmp_path):
    from safetensors.torch import load_file, save_file

    vae.save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(weights))
    del sd["decoder.conv_out.weight"]
    save_file(sd, str(weights), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="decoder.conv_out.weight"):
        load_vae(tmp_path)


def test_unreadable_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable config"):
        load_vae(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(CheckpointError, match="cannot load AutoencoderKL"):
        load_vae(tmp_path)


# ── vitron-7b sizes (meta device: shapes only, no memory) ──


def test_vitron_7b_is_stable_diffusion_1x():
    cfg = preset("vitron-7b")
    with torch.device("meta"):
        unet = UNet(cfg.unet)
        vae = build_vae(cfg.vae)
    assert _count(unet) == 859_520_964  # SD-1.x UNet
    assert _count(vae) == 83_653_863  # SD VAE (kl-f8)
    assert _count(vae.encoder) + _count(vae.quant_conv) == 34_163_664
    assert _count(vae.decoder) + _count(vae.post_quant_conv) == 49_490_199


def _onnx_max_err(module, export_inputs, axes, outputs, other_inputs, tmp_path):
    """Export with dynamo (one unbounded Dim per named axis, opset 18, as vitron_rt.export
    does), then the max abs error of ONNX Runtime vs torch on shapes other than the traced."""
    import onnxruntime as ort

    dims = {}
    shapes = {k: {a: dims.setdefault(n, torch.export.Dim(n)) for a, n in axes[k].items()} for k in axes}
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        module, (), kwargs=export_inputs, dynamic_shapes=shapes, input_names=list(export_inputs),
        output_names=outputs, opset_version=18, dynamo=True, verbose=False,
    ).save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    err = 0.0
    for inputs in other_inputs:
        want = _run(module, inputs)
        (got,) = session.run(outputs, {k: v.numpy() for k, v in inputs.items()})
        assert got.shape == tuple(want.shape)
        err = max(err, float(abs(torch.from_numpy(got) - want).max()))
    return err


@pytest.mark.slow
def test_unet_exports_with_dynamic_batch_and_size(unet, tmp_path):
    axes = {"sample": {0: "batch", 2: "height", 3: "width"}, "timestep": {0: "batch"},
            "encoder_hidden_states": {0: "batch", 1: "seq_len"}}
    others = [
        unet.dummy_inputs(batch=1, height=8, width=12, seq_len=3),
        unet.dummy_inputs(batch=3, height=16, width=6),
    ]
    err = _onnx_max_err(unet, unet.dummy_inputs(batch=2), axes, ["noise_pred"], others, tmp_path)
    assert err < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("half", [VaeEncoder, VaeDecoder])
def test_vae_exports_with_dynamic_batch_and_size(vae, half, tmp_path):
    module = half(vae)
    name, output = ("images", "latents") if half is VaeEncoder else ("latents", "images")
    f = TINY.vae.downsample if half is VaeEncoder else 1
    others = [
        module.dummy_inputs(batch=1, height=6 * f, width=10 * f),
        module.dummy_inputs(batch=3, height=4 * f, width=2 * f),
    ]
    axes = {name: {0: "batch", 2: "height", 3: "width"}}
    err = _onnx_max_err(module, module.dummy_inputs(batch=2), axes, [output], others, tmp_path)
    assert err < 1e-4
