"""The quick PyTorch probe: it scores replies, masks and generations of a model on held-out
samples, and an untouched storage plan ("fp32" everywhere) agrees with the model exactly."""

import numpy as np
import pytest

from vitron_rt.models.config import preset
from vitron_rt.models.model import VitronModel
from vitron_rt.shapes.vocab import shapes_tokenizer
from vitron_rt.train import probe
from vitron_rt.train.trainer import Trainer

CFG = preset("mini")


@pytest.fixture(scope="module")
def trainer():
    tok = shapes_tokenizer(CFG.llm.vocab_size, CFG.signal.num_tokens, CFG.video_frames)
    return Trainer(VitronModel.from_config(CFG), tok, world_seed=probe.HELD_OUT_WORLD)


def test_a_probe_scores_every_kind_of_output(trainer, monkeypatch):
    monkeypatch.setattr(probe, "BATCH", 1)  # a generation alone is a batch without images
    samples = probe.held_out(trainer, ("qa_colour", "seg_image", "gen_image"), 1)
    out = probe.run(trainer, samples)
    assert out.tasks == ["qa_colour", "seg_image", "gen_image"]
    assert len(out.ious) == len(out.masks) == 1 and out.masks[0].shape == (128, 128)
    assert len(out.images) == len(out.gen_ok) == 1 and out.images[0].dtype == np.uint8
    s = probe.scores(out)
    assert {"qa_exact", "seg_miou", "miou/seg_image", "gen_correct", "exact/gen_image"} <= set(s)
    assert 0.0 <= s["seg_miou"] <= 1.0
    exact = probe.stored_model(trainer.model, {"": "fp32"})
    same = probe.run(Trainer(exact, trainer.tokenizer, world_seed=probe.HELD_OUT_WORLD), samples)
    agree = probe.agreement(out, same)
    assert agree["token_agreement"] == 1.0 and agree["mask_iou_between"] == 1.0
    assert agree["image_mean_abs_diff"] == 0.0


def test_plans_parse():
    assert probe._parse_plan("") == {}
    assert probe._parse_plan("unet.=int4g32, llm_decoder.=int8") == {"unet.": "int4g32", "llm_decoder.": "int8"}
