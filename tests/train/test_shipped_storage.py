"""The shipped weights' storage schemes: each round-trips within half a quantisation step,
vectors stay exact, shared weights are stored once, and the file is about a byte a weight."""

import pytest
import torch
from torch import nn

from vitron_rt.models.shipped import (
    ShippedFiles,
    ShippedWeightsError,
    dequantize,
    pack_state,
    quantize,
    read_record,
    read_weights,
    scheme_of,
    unpack_state,
    write_shipped,
)


@pytest.mark.parametrize("shape", [(8, 16), (5, 33), (4, 3, 3, 3), (7, 1)])
def test_int8_per_row_within_half_a_step(shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    stored = quantize("w", w, "int8")
    assert stored["w"].dtype == torch.int8 and stored["w::scale"].shape == (shape[0],)
    back = dequantize("w", stored, "int8", shape)
    step = w.reshape(shape[0], -1).abs().amax(1) / 127
    assert ((back - w).reshape(shape[0], -1).abs() <= step[:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("shape", [(8, 64), (5, 33), (4, 3, 3, 3)])
def test_int4_groups_within_half_a_step(shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    stored = quantize("w", w, "int4g32")
    o, i = shape[0], w[0].numel()
    assert stored["w"].dtype == torch.uint8 and stored["w"].shape == (o, (i + 31) // 32 * 16)
    back = dequantize("w", stored, "int4g32", shape)
    rows = torch.nn.functional.pad(w.reshape(o, -1), (0, (-i) % 32)).reshape(o, -1, 32)
    step = (rows.abs().amax(2) / 7).half().float()  # (O, G): the stored fp16 scale
    err = torch.nn.functional.pad((back - w).reshape(o, -1), (0, (-i) % 32)).reshape(o, -1, 32).abs()
    assert (err <= step[..., None] / 2 + 1e-3 * step[..., None]).all()


def test_vectors_are_exact_and_unknown_schemes_fail():
    v = torch.randn(10)
    assert torch.equal(dequantize("v", quantize("v", v, "int8"), "fp32", (10,)), v)
    with pytest.raises(ValueError, match="unknown storage scheme"):
        quantize("w", torch.randn(2, 2), "int3")


def test_the_plan_picks_the_longest_prefix():
    plan = {"unet.": "int4g32", "unet.unet.conv_out": "fp32"}
    w = torch.zeros(4, 4)
    assert scheme_of("unet.unet.conv_in.weight", w, plan) == "int4g32"
    assert scheme_of("unet.unet.conv_out.weight", w, plan) == "fp32"
    assert scheme_of("llm_decoder.x.weight", w, plan) == "int8"
    assert scheme_of("unet.unet.conv_in.bias", torch.zeros(4), plan) == "fp32"


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 16)
        self.head = nn.Linear(16, 40, bias=False)
        self.head.weight = self.emb.weight  # tied, as the LLM's embedding and head
        self.norm = nn.LayerNorm(16)


def test_shared_weights_are_stored_once_and_files_check(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    tensors, table = pack_state(model)
    assert set(table) == {"emb.weight", "norm.weight", "norm.bias"}
    back = unpack_state(tensors, table)
    assert torch.equal(back["norm.weight"], model.norm.weight.detach())
    files = ShippedFiles(tmp_path, "m")
    record = write_shipped(model, "{}", files, config={"a": 1}, tokenizer_info={})
    assert read_record(files)["weights"]["sha256"] == record["weights"]["sha256"]
    assert read_weights(files).keys() == back.keys()
    files.tokenizer.write_text("{ }")
    with pytest.raises(ShippedWeightsError, match="does not match"):
        read_record(files)
