"""Stage `perception`: each cell is labelled with the colour, kind and place of the shape
that covers most of it, in the encoders' patch order, a video contributes one frame, and
the loss weighs shapes over background. The projector's word objective reuses the labels:
every image row of an LLM batch (a video's sampled frames) is labelled alike, and each
shape patch is asked for its words, shared by the cells that show them."""

import math

import numpy as np
import pytest
import torch

from vitron_rt.models.config import preset
from vitron_rt.shapes import ShapesWorld
from vitron_rt.shapes.palette import COLOURS, KINDS, PLACES
from vitron_rt.shapes.tasks import TaskGenerator
from vitron_rt.shapes.vocab import shapes_tokenizer
from vitron_rt.runtime.media import sample_frame_indices
from vitron_rt.train.data import MIN_CELL_COVER, DataSpec, cell_owners, collate, perception_batch
from vitron_rt.train.perception import (
    BACKGROUND_WEIGHT,
    FIELDS,
    PatchHead,
    cell_accuracy,
    patch_loss,
    word_ids,
    word_targets,
    words_loss,
)

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


def test_the_batch_labels_the_shapes_colour_kind_and_place():
    tok = shapes_tokenizer(CFG.llm.vocab_size, CFG.signal.num_tokens, CFG.video_frames)
    spec = DataSpec.build(CFG, tok)
    gen = TaskGenerator(ShapesWorld(seed=0), num_signal_tokens=CFG.signal.num_tokens)
    samples = [gen.sample("caption_image", 3), gen.sample("caption_video", 4), gen.sample("gen_image", 0)]
    batch = perception_batch(samples, spec, np.random.default_rng(0), cells=2)
    assert batch.pixel_values.shape == batch.seg_pixel_values.shape == (2, 3, 128, 128)  # no input for text-to-image
    assert set(batch.labels) == {"colour", "kind", "place"} and set(batch.seg_labels) == {"colour", "kind"}
    assert all(v.shape == (2, spec.num_patches, 4) for v in batch.labels.values())
    assert all(v.shape == (2, spec.seg_grid**2, 1) for v in batch.seg_labels.values())
    image = samples[0]
    owner = torch.from_numpy(cell_owners(image.shape_masks, 8, 2))
    for i, shape in enumerate(image.scene.shapes):
        assert (owner == i).any()  # every shape owns cells
        assert (batch.labels["colour"][0][owner == i] == list(COLOURS).index(shape.colour)).all()
        assert (batch.labels["kind"][0][owner == i] == KINDS.index(shape.kind)).all()
        assert (batch.labels["place"][0][owner == i] == PLACES.index(image.scene.place(i))).all()
    background = owner == len(image.scene.shapes)
    for name, classes in FIELDS.items():
        assert (batch.labels[name][0][background] == classes).all()
    # SAM's 8-pixel positions are the vision tower's cells: the same labels, laid out row-major.
    cells = batch.labels["colour"][0].reshape(8, 8, 2, 2).permute(0, 2, 1, 3).reshape(16 * 16)
    assert torch.equal(cells, batch.seg_labels["colour"][0, :, 0])
    with pytest.raises(ValueError, match="image or a video"):
        perception_batch(samples[2:], spec, np.random.default_rng(0), cells=2)
    # A stage that trains one encoder gets its half alone, the same tensors.
    seg_only = perception_batch(samples, spec, np.random.default_rng(0), cells=2, encoders=("seg",))
    assert seg_only.pixel_values is None and seg_only.labels is None
    assert torch.equal(seg_only.seg_pixel_values, batch.seg_pixel_values)
    assert all(torch.equal(seg_only.seg_labels[k], batch.seg_labels[k]) for k in batch.seg_labels)
    vision_only = perception_batch(samples, spec, np.random.default_rng(0), cells=2, encoders=("vision",))
    assert vision_only.seg_pixel_values is None and torch.equal(vision_only.pixel_values, batch.pixel_values)
    with pytest.raises(ValueError, match="encoders"):
        perception_batch(samples, spec, np.random.default_rng(0), cells=2, encoders=("clip",))


def test_the_loss_weighs_background_less_and_accuracy_skips_it():
    head = PatchHead(8, cells=1, fields=("colour", "kind"))
    features = torch.randn(1, 2, 8, generator=torch.Generator().manual_seed(0))
    # One shape cell, one background cell.
    labels = {name: torch.tensor([[[0], [FIELDS[name]]]]) for name in ("colour", "kind")}
    with torch.no_grad():
        for name, linear in head.heads.items():
            linear.weight.zero_()
            linear.bias.zero_()
            linear.bias[FIELDS[name]] = 5.0  # sure of background everywhere
    loss = patch_loss(head, features, labels)
    # Logits 5 for background, 0 elsewhere: a shape cell costs log(e^5 + n), a background
    # cell log(e^5 + n) - 5, weighted 1 : BACKGROUND_WEIGHT; the fields averaged.
    expected = 0.0
    for name in ("colour", "kind"):
        lse = math.log(math.exp(5.0) + FIELDS[name])
        expected += 0.5 * (lse + BACKGROUND_WEIGHT * (lse - 5.0)) / (1.0 + BACKGROUND_WEIGHT)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert cell_accuracy(head, features, labels) == {"colour": 0.0, "kind": 0.0}


def test_init_positions_writes_a_row_major_2d_sincos_table():
    from vitron_rt.models.vision import VisionEncoder
    from vitron_rt.train.perception import init_positions, sincos_positions

    table = sincos_positions(3, 8)  # 2 frequencies (1, 1/100) per quarter
    assert table.shape == (9, 8)
    r, c = 2, 1  # patch 2 * 3 + 1
    expected = [math.sin(r), math.sin(r / 100), math.cos(r), math.cos(r / 100)]
    expected += [math.sin(c), math.sin(c / 100), math.cos(c), math.cos(c / 100)]
    np.testing.assert_allclose(table[7].numpy(), expected, rtol=1e-6, atol=1e-7)
    assert len({tuple(row) for row in table.tolist()}) == 9  # every position its own row
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_positions(3, 6)

    tower = VisionEncoder(CFG.vision)
    init_positions(tower)
    weight = tower.clip.embeddings.position_embedding.weight
    grid = CFG.vision.grid
    assert torch.equal(weight[0], torch.zeros(CFG.vision.hidden_size))  # the class token's
    assert torch.equal(weight[1:], sincos_positions(grid, CFG.vision.hidden_size))
    assert weight.requires_grad  # trained on from here


def test_an_llm_batch_labels_every_image_row_for_the_word_objective():
    tok = shapes_tokenizer(CFG.llm.vocab_size, CFG.signal.num_tokens, CFG.video_frames)
    spec = DataSpec.build(CFG, tok)
    gen = TaskGenerator(ShapesWorld(seed=0), num_signal_tokens=CFG.signal.num_tokens)
    image, video, text = gen.sample("qa_colour", 2), gen.sample("caption_video", 4), gen.sample("gen_image", 0)
    batch = collate([image, video, text], tok, spec, np.random.default_rng(0), backends=False, words=2)
    rows = 1 + CFG.video_frames
    assert batch.pixel_values.shape[0] == rows
    assert all(v.shape == (rows, spec.num_patches, 4) for v in batch.patch_labels.values())
    # The image's rows are the perception batch's labels of the same image.
    alone = perception_batch([image], spec, np.random.default_rng(0), cells=2, encoders=("vision",))
    assert all(torch.equal(batch.patch_labels[k][:1], alone.labels[k]) for k in alone.labels)
    # A video's rows: the sampled frames, each labelled from where its shapes are then.
    times = sample_frame_indices(len(video.video), CFG.video_frames)
    for row, t in enumerate(times, start=1):
        owner = torch.from_numpy(cell_owners(video.shape_masks[t], 8, 2))
        place = [PLACES.index(video.scene.at(int(t)).place(i)) for i in range(len(video.scene))]
        expected = torch.tensor([*place, len(PLACES)])[owner]
        assert torch.equal(batch.patch_labels["place"][row], expected)
    assert collate([image], tok, spec, np.random.default_rng(0), backends=False).patch_labels is None
    no_images = collate([text], tok, spec, np.random.default_rng(0), backends=False, words=2)
    assert all(v.shape == (0, spec.num_patches, 4) for v in no_images.patch_labels.values())


def test_the_word_objective_asks_each_shape_patch_for_its_words():
    tok = shapes_tokenizer(CFG.llm.vocab_size, CFG.signal.num_tokens, CFG.video_frames)
    words = word_ids(tok)
    assert [len(words[f]) for f in ("colour", "kind", "place")] == [len(COLOURS), len(KINDS), len(PLACES)]
    assert tok.tokenizer.decode(words["place"][PLACES.index("top left")]).strip() == "top left"
    red, top_left = words["colour"][0], words["place"][0]
    # Patch 0: all four cells a red circle at the top left; patch 1: half of them; patch 2: background.
    bg = {f: FIELDS[f] for f in FIELDS}
    labels = {f: torch.tensor([[[0, 0, 0, 0], [0, 0, bg[f], bg[f]], [bg[f]] * 4]]) for f in FIELDS}
    target = word_targets(labels, words, tok.vocab_size)  # (1, 3, V)
    assert target[0, 0, red[0]] == 1.0 and target[0, 1, red[0]] == 0.5
    assert target[0, 0, top_left].sum() == pytest.approx(1.0)  # a word's tokens share its weight
    assert target[0, 0].sum() == pytest.approx(3.0) and target[0, 2].sum() == 0.0
    # Cross entropy against the normalised target over the shape patches; the vocabulary
    # matrix gets no gradient, the patches do.
    dim = 8
    norm = torch.nn.Identity()
    matrix = torch.randn(tok.vocab_size, dim, generator=torch.Generator().manual_seed(0), requires_grad=True)
    embeds = torch.randn(1, 3, dim, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss = words_loss(embeds, norm, matrix, target)
    with torch.no_grad():
        logp = torch.log_softmax(embeds[0, :2] @ matrix.T, dim=-1)  # (2, V)
        p = target[0, :2] / target[0, :2].sum(-1, keepdim=True)
        expected = float(-(p * logp).sum(-1).mean())
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert matrix.grad is None and embeds.grad[0, :2].abs().sum() > 0 and (embeds.grad[0, 2] == 0).all()
    assert words_loss(embeds, norm, matrix, torch.zeros_like(target)) is None  # no shape: no loss


def test_the_region_tokens_are_asked_for_the_words_of_the_shape_they_point_at():
    from vitron_rt.models.model import VitronModel
    from vitron_rt.train.stages import STAGES
    from vitron_rt.train.trainer import Trainer

    tok = shapes_tokenizer(CFG.llm.vocab_size, CFG.signal.num_tokens, CFG.video_frames)
    spec = DataSpec.build(CFG, tok)
    gen = TaskGenerator(ShapesWorld(seed=0), num_signal_tokens=CFG.signal.num_tokens)
    samples = [gen.sample("region_colour", 0), gen.sample("qa_colour", 1), gen.sample("seg_image_region", 2)]
    batch = collate(samples, tok, spec, np.random.default_rng(0), backends=False, words=2)
    for f, classes in (("colour", COLOURS), ("kind", KINDS)):
        expected = [list(classes).index(getattr(s.scene.shapes[s.shape], f)) for s in (samples[0], samples[2])]
        assert batch.region_labels[f].flatten().tolist() == expected
    expected = [PLACES.index(s.scene.place(s.shape)) for s in (samples[0], samples[2])]
    assert batch.region_labels["place"].flatten().tolist() == expected
    # The loss trains the region encoder (and the LM loss leaves it free to read the token).
    trainer = Trainer(VitronModel.from_config(CFG), tok)
    stage = STAGES["instruction"].replace(
        mix={"region_colour": 1.0, "region_kind": 1.0}, loss_weights={"region_words": 1.0}, batch_size=4, lr=3e-3
    )
    before = {k: v.clone() for k, v in trainer.model.region_encoder.state_dict().items()}
    log = trainer.run(stage, 6, fixed_batch=True)
    series = log.series("region_words")
    assert series[-1] < series[0] - 0.2
    after = trainer.model.region_encoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
