"""SegImageEncoder / SegMaskDecoder: shapes, prompt flags, parity with SamModel, loading, sizes."""

from __future__ import annotations

import json

import pytest
import torch

from vitron_rt.models.config import preset
from vitron_rt.models.segmentation import SegImageEncoder, SegMaskDecoder, build_sam, load_sam
from vitron_rt.models.weights import CheckpointError

TINY = preset("tiny").seg


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return build_sam(TINY)


@pytest.fixture(scope="module")
def encoder(sam):
    return SegImageEncoder(sam)


@pytest.fixture(scope="module")
def decoder(sam):
    return SegMaskDecoder(sam)


def _run(module, inputs):
    with torch.no_grad():
        return module(**inputs)


def test_halves_share_one_sam(sam, encoder, decoder):
    assert encoder.sam is sam and decoder.sam is sam


def test_encoder_shape(encoder):
    inputs = encoder.dummy_inputs(batch=3)
    assert inputs["pixel_values"].shape == (3, 3, TINY.image_size, TINY.image_size)
    emb = _run(encoder, inputs)
    assert emb.shape == (3, TINY.prompt_dim, TINY.embedding_size, TINY.embedding_size)
    assert (encoder.image_size, encoder.embedding_size) == (TINY.image_size, TINY.embedding_size)
    assert emb.abs().max() > 0.1  # random weights that do something (not SAM's 1e-10 init)


@pytest.mark.parametrize("batch, k", [(1, 0), (2, 2), (3, 5)])
def test_decoder_shapes(decoder, batch, k):
    inputs = decoder.dummy_inputs(batch=batch, num_signal_tokens=k)
    assert inputs["signal_embeddings"].shape == (batch, k, TINY.prompt_dim)
    masks, iou = _run(decoder, inputs)
    assert masks.shape == (batch, 1, TINY.mask_size, TINY.mask_size)
    assert iou.shape == (batch, 1)
    assert torch.isfinite(masks).all() and torch.isfinite(iou).all()


def test_dummy_inputs_reject_unknown_dims(encoder, decoder):
    with pytest.raises(TypeError, match="unknown dims"):
        encoder.dummy_inputs(image_size=32)
    with pytest.raises(TypeError, match="unknown dims"):
        decoder.dummy_inputs(num_points=3)


def test_signal_width_is_checked(decoder):
    inputs = decoder.dummy_inputs(batch=1)
    inputs["signal_embeddings"] = torch.zeros(1, 2, TINY.prompt_dim + 1)
    with pytest.raises(ValueError, match="signal_embeddings"):
        _run(decoder, inputs)


def test_box_ignored_without_has_box(decoder):
    a = decoder.dummy_inputs(batch=2)
    a["has_box"] = torch.zeros(2)
    b = dict(a, boxes=torch.tensor([[0.0, 0.0, 63.0, 63.0], [10.0, 20.0, 12.0, 22.0]]))
    for x, y in zip(_run(decoder, a), _run(decoder, b)):
        assert torch.equal(x, y)
    # ... while with has_box the box does steer the mask.
    a["has_box"] = b["has_box"] = torch.ones(2)
    assert not torch.equal(_run(decoder, a)[0], _run(decoder, b)[0])


def test_mask_input_ignored_without_has_mask_input(decoder):
    a = decoder.dummy_inputs(batch=2)
    a["has_mask_input"] = torch.zeros(2)
    b = dict(a, mask_input=torch.full_like(a["mask_input"], float("nan")))  # not even NaN leaks in
    for x, y in zip(_run(decoder, a), _run(decoder, b)):
        assert torch.equal(x, y)


def test_mask_input_used_with_has_mask_input(decoder):
    inputs = decoder.dummy_inputs(batch=2)
    without = _run(decoder, dict(inputs, has_mask_input=torch.zeros(2)))
    with_mask = _run(decoder, dict(inputs, has_mask_input=torch.ones(2)))
    other_mask = _run(decoder, dict(inputs, has_mask_input=torch.ones(2), mask_input=-inputs["mask_input"]))
    scale = without[0].abs().max()  # tiny random SAM's logits are ~1e-4: compare relatively
    assert (with_mask[0] - without[0]).abs().max() > 1e-3 * scale
    assert (with_mask[0] - other_mask[0]).abs().max() > 1e-3 * scale


def test_signal_tokens_steer_the_mask(decoder):
    inputs = decoder.dummy_inputs(batch=1, num_signal_tokens=2)
    with_signal = _run(decoder, inputs)[0]
    no_signal = _run(decoder, dict(inputs, signal_embeddings=inputs["signal_embeddings"][:, :0]))[0]
    assert (with_signal - no_signal).abs().max() > 1e-3 * no_signal.abs().max()


def test_flags_are_per_sample(decoder):
    """Mixed flags in one batch give each sample what it would get alone."""
    inputs = decoder.dummy_inputs(batch=3)
    inputs["has_box"] = torch.tensor([1.0, 0.0, 1.0])
    inputs["has_mask_input"] = torch.tensor([0.0, 1.0, 1.0])
    masks, iou = _run(decoder, inputs)
    for i in range(3):
        mi, ii = _run(decoder, {k: v[i : i + 1] for k, v in inputs.items()})
        # Batched vs single-sample fp32 differs by summation order only: ~1e-7 of the
        # outputs' scale (the tiny preset's mask logits are O(0.1-1), see SegConfig).
        torch.testing.assert_close(masks[i : i + 1], mi, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(iou[i : i + 1], ii, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_mask", [False, True])
def test_split_equals_sam_forward(sam, encoder, decoder, use_mask):
    """Encoder + decoder with a box and no signal tokens is SamModel's own single-mask forward."""
    pixels = encoder.dummy_inputs(batch=2)["pixel_values"]
    inputs = decoder.dummy_inputs(batch=2, num_signal_tokens=0)
    inputs["has_mask_input"] = torch.full((2,), float(use_mask))
    with torch.no_grad():
        inputs["image_embeddings"] = encoder(pixels)
        masks, iou = decoder(**inputs)
        ref = sam(
            pixel_values=pixels,
            input_boxes=inputs["boxes"][:, None, :],  # (B, 1 box, 4)
            input_masks=inputs["mask_input"] if use_mask else None,
            multimask_output=False,
        )
    torch.testing.assert_close(masks, ref.pred_masks[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(iou, ref.iou_scores[:, 0], rtol=0, atol=0)


def test_load_round_trip(sam, encoder, decoder, tmp_path):
    sam.save_pretrained(tmp_path)
    loaded = load_sam(tmp_path)
    tied = loaded.prompt_encoder.shared_embedding.positional_embedding
    assert tied is loaded.shared_image_embedding.positional_embedding
    inputs = decoder.dummy_inputs(batch=2)
    pixels = encoder.dummy_inputs(batch=2)
    torch.testing.assert_close(_run(SegImageEncoder(loaded), pixels), _run(encoder, pixels), rtol=0, atol=0)
    for got, want in zip(_run(SegMaskDecoder(loaded), inputs), _run(decoder, inputs)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_load_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a transformers SAM folder"):
        load_sam(tmp_path / "nowhere")


def test_load_other_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(CheckpointError, match="expected 'sam'"):
        load_sam(tmp_path)


def test_load_incomplete_weights(sam, tmp_path):
    from safetensors.torch import load_file, save_file

    sam.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    sd = load_file(str(weights))
    del sd["mask_decoder.iou_token.weight"]
    save_file(sd, str(weights), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="iou_token"):
        load_sam(tmp_path)


def test_vitron_7b_is_sam_vit_b():
    """SAM ViT-B as transformers builds it: 93,735,728 parameters. segment-anything counts
    93,735,472: its 2x128 Fourier matrix is a buffer there, a parameter here."""
    with torch.device("meta"):
        sam = build_sam(preset("vitron-7b").seg)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(sam) == 93_735_728
    assert count(sam.vision_encoder) == 89_670_912
    assert count(sam.mask_decoder) == 4_058_340
    assert count(sam.prompt_encoder) == 6_476


def _onnx_max_err(module, export_inputs, axes, outputs, other_inputs, tmp_path):
    """Export with dynamo (one unbounded Dim per named axis, opset 18, as vitron_rt.export
    does), then the max abs error of ONNX Runtime vs torch, relative to the largest |output|,
    on shapes other than the traced ones."""
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
        want = want if isinstance(want, tuple) else (want,)
        got = session.run(outputs, {k: v.numpy() for k, v in inputs.items()})
        for g, w in zip(got, want):
            assert g.shape == tuple(w.shape)
            err = max(err, float(abs(torch.from_numpy(g) - w).max() / w.abs().max()))
    return err


@pytest.mark.slow
def test_encoder_exports_with_dynamic_batch(encoder, tmp_path):
    err = _onnx_max_err(
        encoder, encoder.dummy_inputs(batch=2), {"pixel_values": {0: "batch"}}, ["image_embeddings"],
        [encoder.dummy_inputs(batch=1), encoder.dummy_inputs(batch=3)], tmp_path,
    )
    assert err < 1e-5


@pytest.mark.slow
def test_decoder_exports_with_dynamic_batch_and_signal_tokens(decoder, tmp_path):
    axes = {k: {0: "batch"} for k in decoder.dummy_inputs()}
    axes["signal_embeddings"] = {0: "batch", 1: "num_signal_tokens"}
    others = [
        decoder.dummy_inputs(batch=1, num_signal_tokens=0),
        decoder.dummy_inputs(batch=3, num_signal_tokens=5),
    ]
    others[1]["has_box"][1] = 0
    err = _onnx_max_err(
        decoder, decoder.dummy_inputs(batch=2, num_signal_tokens=2), axes, ["low_res_masks", "iou_scores"],
        others, tmp_path,
    )
    assert err < 1e-5  # relative to the largest |output|: tiny random SAM's logits are ~1e-4
