"""Front-end encoders (vision tower, mm_projector, region encoder) and the signal projectors,
on the tiny preset: shapes, hand-checked values, the released region math, dummy inputs on
other shapes, and an ONNX export (dynamic batch) compared with ONNX Runtime."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from vitron_rt.models.config import SIGNAL_MODULES, ProjectorConfig, preset
from vitron_rt.models.projector import MMProjector, released_key_map
from vitron_rt.models.region import RegionEncoder, box_to_mask, mask_pool
from vitron_rt.models.signal import SignalProjectors
from vitron_rt.models.vision import VisionEncoder, kept_layers

CFG = preset("tiny")


def seeded(build, seed=0):
    torch.manual_seed(seed)
    return build().eval()


@pytest.fixture(scope="module")
def vision():
    return seeded(lambda: VisionEncoder(CFG.vision))


@pytest.fixture(scope="module")
def region():
    return seeded(lambda: RegionEncoder(CFG.region))


@pytest.fixture(scope="module")
def signal():
    return seeded(lambda: SignalProjectors(CFG.signal))


# -- vision ---------------------------------------------------------------------------------


def test_vision_features_are_the_penultimate_layer_without_cls(vision):
    x = vision.dummy_inputs(batch=2)["pixel_values"]
    with torch.no_grad():
        got = vision(x)
        clip = vision.clip
        h = clip.pre_layrnorm(clip.embeddings(x))  # (B, 1+N, Dv)
        h = clip.encoder.layers[0](h, None)  # 2 layers, select_layer -2: one layer's output
    assert got.shape == (2, CFG.vision.num_patches, CFG.vision.hidden_size)
    torch.testing.assert_close(got, h[:, 1:], rtol=0, atol=1e-6)


def test_vision_select_layer_range():
    assert kept_layers(24, -2) == 23 and kept_layers(24, -1) == 24 and kept_layers(24, 0) == 0
    with pytest.raises(ValueError, match="select_layer -4 is out of range for 2 layers"):
        VisionEncoder(dataclasses.replace(CFG.vision, select_layer=-4))


def test_vision_dummy_inputs_other_batch(vision):
    inputs = vision.dummy_inputs(batch=3, seed=5)
    assert inputs["pixel_values"].shape == (3, 3, 32, 32)
    with torch.no_grad():
        assert vision(**inputs).shape == (3, 16, 32)


def test_vision_wraps_an_existing_clip(vision):
    wrapped = VisionEncoder.from_clip(vision.clip, select_layer=-2)
    assert wrapped.clip is vision.clip
    assert dataclasses.replace(wrapped.cfg, image_mean=CFG.vision.image_mean) == CFG.vision
    with pytest.raises(TypeError, match="CLIPVisionModel"):
        VisionEncoder(CFG.vision, clip=torch.nn.Linear(2, 2))


# -- projector ------------------------------------------------------------------------------


def test_projector_mlp2x_gelu_keys_and_value():
    proj = seeded(lambda: MMProjector(CFG.projector))
    assert list(proj.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    x = proj.dummy_inputs(batch=2, tokens=7)["features"]
    assert x.shape == (2, 7, 32)
    sd = proj.state_dict()
    want = F.linear(F.gelu(F.linear(x, sd["0.weight"], sd["0.bias"])), sd["2.weight"], sd["2.bias"])
    with torch.no_grad():
        torch.testing.assert_close(proj(x), want)


def test_projector_other_kinds():
    linear = MMProjector(ProjectorConfig(in_dim=8, out_dim=16, kind="linear"))
    assert list(linear.state_dict()) == ["0.weight", "0.bias"]
    assert released_key_map("linear") == {"weight": "0.weight", "bias": "0.bias"}
    deep = MMProjector(ProjectorConfig(in_dim=8, out_dim=16, kind="mlp3x_gelu"))
    assert [k for k in deep.state_dict() if k.endswith("weight")] == ["0.weight", "2.weight", "4.weight"]
    ident = MMProjector(ProjectorConfig(in_dim=8, out_dim=8, kind="identity"))
    x = ident.dummy_inputs(batch=1, tokens=3)["features"]
    assert torch.equal(ident(x), x)
    with pytest.raises(ValueError, match="unknown projector kind 'qformer'"):
        MMProjector(ProjectorConfig(kind="qformer"))


# -- region: box_to_mask --------------------------------------------------------------------


def test_box_to_mask_rows_are_y_columns_are_x():
    # x in [0, 0.5): columns 0-1; y in [0.75, 1]: row 3.
    box = torch.tensor([[0.0, 0.75, 0.5, 1.0]])
    want = torch.zeros(1, 4, 4)
    want[0, 3, 0:2] = 1
    assert torch.equal(box_to_mask(box, 4), want)
    assert torch.equal(box_to_mask(box, 4, transpose=True), want.transpose(1, 2))


def test_box_to_mask_released_frame_rounding():
    # 224-px frame, 16 cells of 14 px; cell i samples pixels 14i+6 and 14i+7.
    box = torch.tensor([[0.0, 0.0, 20 / 224, 1.0]])  # x pixels 0..19: cells 0 (6,7) only
    mask = box_to_mask(box, 16, image_size=224)
    assert mask[0, 0].tolist() == [1.0] + [0.0] * 15
    box = torch.tensor([[0.0, 0.0, 21 / 224 + 1e-4, 1.0]])  # pixels 0..20 reach 20 = 14+6: cell 1
    assert box_to_mask(box, 16, image_size=224)[0, 0, :3].tolist() == [1.0, 1.0, 0.0]


def test_box_to_mask_empty_and_clipped():
    boxes = torch.tensor([[0.6, 0.2, 0.4, 0.9], [-1.0, -1.0, 2.0, 2.0]])
    mask = box_to_mask(boxes, 4)
    assert mask[0].sum() == 0  # x2 < x1
    assert mask[1].sum() == 16  # clipped to the whole image


def released_box_mask(pixel_box, image_size, grid):
    """The released rasterisation, transcribed: draw `mask[int(x1):int(x2), int(y1):int(y2)]`
    at image_size, resize bilinearly to the grid, binarise."""
    mask = torch.zeros(image_size, image_size)
    x1, y1, x2, y2 = pixel_box
    mask[int(x1) : int(x2), int(y1) : int(y2)] = 1
    small = F.interpolate(mask[None, None], size=(grid, grid), mode="bilinear", align_corners=False)
    return (small[0, 0] > 0).float()


coords = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(
    x=st.tuples(coords, coords),
    y=st.tuples(coords, coords),
    frame=st.sampled_from([(224, 16), (32, 4), (336, 24), (224, 24), (100, 7)]),
)
def test_box_to_mask_matches_the_released_rasterisation(x, y, frame):
    size, grid = frame
    box = torch.tensor([[min(x), min(y), max(x), max(y)]])
    pixels = (box[0] * size).tolist()
    want = released_box_mask(pixels, size, grid)
    assert torch.equal(box_to_mask(box, grid, image_size=size, transpose=True)[0], want)
    assert torch.equal(box_to_mask(box, grid, image_size=size)[0], want.T)


# -- region: pooling and the encoder --------------------------------------------------------


def test_mask_pool_hand_checked():
    feats = torch.arange(16.0)[None, :, None].repeat(2, 1, 3)  # patch n has value n, (2, 16, 3)
    masks = torch.zeros(2, 4, 4)
    masks[0, 0, 1] = masks[0, 1, 1] = 1  # patches 1 and 5 (row-major)
    masks[1, 3, 3] = 0.3  # soft masks are binarised: patch 15 alone
    pooled = mask_pool(feats, masks)
    assert pooled.tolist() == [[3.0, 3.0, 3.0], [15.0, 15.0, 15.0]]


def test_region_empty_mask_pools_to_zero(region):
    inputs = region.dummy_inputs(batch=2)
    inputs["masks"] = torch.zeros_like(inputs["masks"])
    with torch.no_grad():
        out = region(**inputs)
        loc_only = region.loc_encoder(inputs["boxes"] * CFG.region.image_size) + region.region_linear(
            torch.zeros(2, CFG.region.feature_dim)
        )
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, loc_only)


def test_region_keys_are_the_released_ones(region):
    assert list(region.state_dict()) == [
        "region_linear.layers.0.weight",
        "region_linear.layers.0.bias",
        "region_linear.layers.1.weight",
        "region_linear.layers.1.bias",
        "region_linear.layers.2.weight",
        "region_linear.layers.2.bias",
        "loc_encoder.loc_encoder.0.weight",
        "loc_encoder.loc_encoder.0.bias",
        "loc_encoder.loc_encoder.2.weight",
        "loc_encoder.loc_encoder.2.bias",
    ]
    shapes = {k: tuple(v.shape) for k, v in region.state_dict().items()}
    assert shapes["region_linear.layers.0.weight"] == (64, 32)  # Dv -> D
    assert shapes["loc_encoder.loc_encoder.0.weight"] == (32, 4)  # 4 -> D/2


def released_region(region, feats, pixel_boxes):
    """The released RegionExtractor.forward, transcribed for one box per image (pixels of the
    224-style frame, transposed mask, sum + 1e-8 normaliser, ReLU MLP, location MLP)."""
    sd = {k: v for k, v in region.state_dict().items()}
    b, n, c = feats.shape
    g = int(n**0.5)
    size = region.cfg.image_size
    masks = torch.stack([released_box_mask(box, size, g) for box in pixel_boxes.tolist()])  # (B, G, G)
    x = feats.reshape(b, g, g, c).permute(0, 3, 1, 2)  # (B, C, G, G)
    pooled = torch.einsum("bchw,bhw->bc", x, masks / (masks.sum(dim=(1, 2), keepdim=True) + 1e-8))
    h = pooled
    for i in range(3):
        h = F.linear(h, sd[f"region_linear.layers.{i}.weight"], sd[f"region_linear.layers.{i}.bias"])
        h = F.relu(h) if i < 2 else h
    loc = F.linear(pixel_boxes, sd["loc_encoder.loc_encoder.0.weight"], sd["loc_encoder.loc_encoder.0.bias"])
    loc = F.linear(F.relu(loc), sd["loc_encoder.loc_encoder.2.weight"], sd["loc_encoder.loc_encoder.2.bias"])
    return h + loc


def test_region_encoder_reproduces_the_released_extractor(region):
    inputs = region.dummy_inputs(batch=3, seed=1)
    feats, boxes = inputs["features"], inputs["boxes"]
    masks = region.box_mask(boxes, transpose=True)  # the released (transposed) masks
    with torch.no_grad():
        got = region(feats, boxes, masks)
        want = released_region(region, feats, boxes * CFG.region.image_size)
    assert got.shape == (3, CFG.region.out_dim)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_region_dummy_inputs_other_shapes(region):
    inputs = region.dummy_inputs(batch=3, grid=6, seed=2)
    assert inputs["features"].shape == (3, 36, 32) and inputs["masks"].shape == (3, 6, 6)
    assert (inputs["masks"].flatten(1).sum(1) > 0).all()
    with torch.no_grad():
        assert region(**inputs).shape == (3, 64)


# -- signal projectors ----------------------------------------------------------------------


def test_signal_projectors_shapes(signal):
    assert set(signal.projectors) == set(SIGNAL_MODULES)
    for module, proj in signal.projectors.items():
        inputs = proj.dummy_inputs(batch=2, tokens=5)
        with torch.no_grad():
            out = proj(**inputs)
        assert out.shape == (2, 5, CFG.signal.out_dim(module)), module
    with pytest.raises(KeyError, match="no signal projector for module 'understand'"):
        signal.project("understand", torch.zeros(1, 2, 64))


def test_signal_projectors_share_the_invariant_mlp(signal):
    projectors = list(signal.projectors.values())
    assert all(p.invariant is signal.invariant for p in projectors)
    assert projectors[0].specific is not projectors[1].specific
    x = projectors[0].dummy_inputs(batch=1)["signal_hidden"]
    with torch.no_grad():
        before = [p(x) for p in projectors]
        signal.invariant[0].bias.add_(1.0)  # one edit reaches every module
        after = [p(x) for p in projectors]
        signal.invariant[0].bias.sub_(1.0)
    assert all(not torch.allclose(a, b) for a, b in zip(before, after))


def test_signal_projector_value(signal):
    proj = signal.projectors["segment_image"]
    x = proj.dummy_inputs(batch=2)["signal_hidden"]
    with torch.no_grad():
        want = proj.out(torch.cat([signal.invariant(x), proj.specific(x)], dim=-1))
        torch.testing.assert_close(proj(x), want)


# -- ONNX export ----------------------------------------------------------------------------


def export_and_compare(module, tmp_path, batches=(1, 3)):
    """Export with a dynamic batch at batch 2, then run ONNX Runtime at other batches."""
    import onnx
    import onnxruntime as ort

    inputs = module.dummy_inputs(batch=2)
    names = list(inputs)
    batch = torch.export.Dim("batch", min=1, max=64)
    path = tmp_path / "m.onnx"
    with torch.no_grad():
        torch.onnx.export(
            module,
            tuple(inputs.values()),
            str(path),
            dynamo=True,
            input_names=names,
            output_names=["out"],
            dynamic_shapes={n: {0: batch} for n in names},
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in batches:
        feeds = module.dummy_inputs(batch=b, seed=b)
        with torch.no_grad():
            want = module(**feeds).numpy()
        (got,) = session.run(None, {k: v.numpy() for k, v in feeds.items()})
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    return onnx.load(str(path))


def test_vision_onnx_export_dynamic_batch_prunes_unused_layers(vision, tmp_path):
    graph = export_and_compare(vision, tmp_path)
    layer_norms = sum(n.op_type == "LayerNormalization" for n in graph.graph.node)
    # pre_layrnorm + 2 per kept layer; the last layer and post_layernorm are dead code.
    kept = kept_layers(CFG.vision.num_layers, CFG.vision.select_layer)
    assert kept < CFG.vision.num_layers
    assert layer_norms == 1 + 2 * kept


def test_region_and_signal_onnx_export_dynamic_batch(region, signal, tmp_path):
    export_and_compare(region, tmp_path)
    export_and_compare(signal.projectors["generate_image"], tmp_path)
