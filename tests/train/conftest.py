"""Fixtures of the training tests: the mini preset's ShapesWorld tokenizer and data spec."""

import pytest

from vitron_rt.models.config import preset
from vitron_rt.shapes.vocab import shapes_tokenizer
from vitron_rt.train.data import DataSpec


@pytest.fixture(scope="module")
def tok():
    cfg = preset("mini")
    return shapes_tokenizer(cfg.llm.vocab_size, cfg.signal.num_tokens, cfg.video_frames)


@pytest.fixture(scope="module")
def spec(tok):
    return DataSpec.build(preset("mini"), tok)
