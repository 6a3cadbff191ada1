"""Stage `perception`: each cell is labelled with the shape that covers most of it, in the
vision tower's patch order, a video contributes one frame, and the loss weighs shapes
over background."""

import math

import numpy as np
import pytest
import torch

from vitron_rt.models.config import preset
from vitron_rt.shapes import ShapesWorld
from vitron_rt.shapes.palette import COLOURS, KINDS
from vitron_rt.shapes.tasks import TaskGenerator
from vitron_rt.shapes.vocab import shapes_tokenizer
from vitron_rt.train.data import MIN_CELL_COVER, DataSpec, cell_owners, perception_batch
from vitron_rt.train.perception import BACKGROUND_WEIGHT, PatchHead, cell_accuracy, patch_loss

CFG = preset("mini")


def test_cell_owners_by_cover_in_patch_order():
    # 2 x 2 patches of 4 x 4 cells of 2 x 2 pixels on a 16 x 16 image.
    masks = np.zeros((2, 16, 16), bool)
    masks[0, 0:2, 0:2] = True  # shape 0 fills cell (0, 0): patch 0, cell 0
    masks[1, 0:2, 14:16] = True  # shape 1 fills cell (0, 7): patch 1, cell 3
    masks[0, 14:16, 14] = True  # half of cell (7, 7): patch 3, cell 15 (>= MIN_CELL_COVER)
    masks[1, 14, 15] = True  # a quarter of it: shape 0 covers more
    masks[1, 8, 0] = True  # a quarter of cell (4, 0): below MIN_CELL_COVER, background
    assert 0.25 < MIN_CELL_COVER <= 0.5
    owner = cell_owners(masks, grid=2, cells=4)
    assert owner.shape == (4, 16) and owner.dtype == np.int64
    expected = np.full((4, 16), 2)
    expected[0, 0], expected[1, 3], expected[3, 15] = 0, 1, 0
    np.testing.assert_array_equal(owner, expected)
    assert (cell_owners(np.zeros((0, 16, 16), bool), 2, 4) == 0).all()  # no shapes: all background
    with pytest.raises(ValueError, match="equal cells"):
        cell_owners(masks[:, :15, :15], 2, 4)


def test_the_batch_labels_the_shapes_colour_and_kind():
    tok = shapes_tokenizer(CFG.llm.vocab_size, CFG.signal.num_tokens, CFG.video_frames)
    spec = DataSpec.build(CFG, tok)
    gen = TaskGenerator(ShapesWorld(seed=0), num_signal_tokens=CFG.signal.num_tokens)
    samples = [gen.sample("caption_image", 3), gen.sample("caption_video", 4), gen.sample("gen_image", 0)]
    batch = perception_batch(samples, spec, np.random.default_rng(0), cells=2)
    assert batch.pixel_values.shape == (2, 3, 128, 128)  # text-to-image has no input image
    assert batch.colour.shape == batch.kind.shape == (2, spec.num_patches, 4)
    assert batch.seg_pixel_values.shape == (2, 3, 128, 128)
    assert batch.seg_colour.shape == batch.seg_kind.shape == (2, spec.seg_grid**2, 1)
    # SAM's 8-pixel positions are the vision tower's cells: the same labels, laid out row-major.
    side = 16
    grid_cells = batch.colour[0].reshape(8, 8, 2, 2).permute(0, 2, 1, 3).reshape(side * side)
    assert torch.equal(grid_cells, batch.seg_colour[0, :, 0])
    image = samples[0]
    owner = cell_owners(image.shape_masks, 8, 2)
    for i, shape in enumerate(image.scene.shapes):
        assert (owner == i).any()  # every shape owns cells
        assert (batch.colour[0][torch.from_numpy(owner == i)] == list(COLOURS).index(shape.colour)).all()
        assert (batch.kind[0][torch.from_numpy(owner == i)] == KINDS.index(shape.kind)).all()
    background = torch.from_numpy(owner == len(image.scene.shapes))
    assert (batch.colour[0][background] == len(COLOURS)).all() and (batch.kind[0][background] == len(KINDS)).all()
    with pytest.raises(ValueError, match="image or a video"):
        perception_batch(samples[2:], spec, np.random.default_rng(0), cells=2)


def test_the_loss_weighs_background_less_and_accuracy_skips_it():
    torch.manual_seed(0)
    head = PatchHead(8, cells=1)
    features = torch.randn(1, 2, 8)
    bg_c, bg_k = len(COLOURS), len(KINDS)
    colour = torch.tensor([[[0], [bg_c]]])
    kind = torch.tensor([[[0], [bg_k]]])
    with torch.no_grad():
        head.colour.weight.zero_()
        head.kind.weight.zero_()
        head.colour.bias.zero_()
        head.kind.bias.zero_()
        head.colour.bias[bg_c] = 5.0  # sure of background everywhere
        head.kind.bias[bg_k] = 5.0
    loss = patch_loss(head, features, colour, kind)
    # Logits 5 for background, 0 elsewhere: a shape cell costs log(e^5 + n), a background
    # cell log(e^5 + n) - 5, weighted 1 : BACKGROUND_WEIGHT.
    expected = 0.0
    for n in (bg_c, bg_k):
        lse = math.log(math.exp(5.0) + n)
        expected += 0.5 * (lse + BACKGROUND_WEIGHT * (lse - 5.0)) / (1.0 + BACKGROUND_WEIGHT)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert cell_accuracy(head, features, colour, kind) == {"colour": 0.0, "kind": 0.0}
