"""Grounding: the targets point at the asked shape's patches from the position that
predicts the answer, and the head's attention is the decoder's own."""

import numpy as np
import pytest
import torch

from vitron_rt.models.config import preset
from vitron_rt.models.model import VitronModel
from vitron_rt.shapes import ShapesWorld
from vitron_rt.shapes.palette import COLOURS, KINDS, PLACES
from vitron_rt.shapes.tasks import TaskGenerator
from vitron_rt.train.data import IGNORE, collate
from vitron_rt.train.grounding import capture_attention_input, capture_layer_output, grounding_loss, head_attention
from vitron_rt.train.stages import STAGES
from vitron_rt.train.trainer import Trainer

CFG = preset("mini")
GEN = TaskGenerator(ShapesWorld(seed=0), num_signal_tokens=CFG.signal.num_tokens)


def test_targets_weigh_the_asked_shapes_patches_from_the_answers_query(tok, spec):
    samples = [GEN.with_follow_ups(GEN.sample(task, i), 3, i) for task in ("qa_colour", "qa_place") for i in range(6)]
    samples += [GEN.sample("video_direction", 0), GEN.sample("gen_image", 0), GEN.sample("seg_video", 0)]
    samples += [GEN.sample("region_what", 0), GEN.sample("seg_image_region", 0)]
    samples += [GEN.sample("seg_image", 0), GEN.sample("edit_recolour", 0)]
    batch = collate(samples, tok, spec, np.random.default_rng(0), backends=False, ground=True)
    answers = [
        (i, shape)
        for i, s in enumerate(samples)
        if s.module == "understand" and s.media == "image"
        for shape in (s.shape, *s.turn_shapes)
        if shape is not None
    ]
    signals = [(i, samples[i].shape) for i in range(len(samples) - 3, len(samples)) for _ in spec.signal_ids]
    roles = batch.ground_roles
    assert sorted(batch.ground_rows[roles == 0].tolist()) == sorted(i for i, _ in answers + signals)
    grid = int(spec.num_patches**0.5)
    by_row: dict[int, list[int]] = {}
    for g in range(len(batch.ground_rows)):
        by_row.setdefault(int(batch.ground_rows[g]), []).append(g)
    for i, items in by_row.items():
        sample = samples[i]
        shapes = [sample.shape, *sample.turn_shapes] if sample.module == "understand" else [sample.shape] * 4
        answer_items = [g for g in items if roles[g] == 0]
        assert len(answer_items) == sum(x is not None for x in shapes)
        for g, shape in zip(answer_items, [x for x in shapes if x is not None]):
            q, target = int(batch.ground_queries[g]), batch.ground_targets[g]
            if sample.module == "understand":  # a question: the query predicts the first answer token
                assert batch.labels[i, q] == IGNORE and batch.labels[i, q + 1] != IGNORE
            else:  # a back-end call: the query is a signal token
                assert int(batch.input_ids[i, q]) in spec.signal_ids
            assert torch.isclose(target.sum(), torch.tensor(1.0))
            where = (batch.input_ids[i] == spec.image_id).nonzero()[:, 0]
            assert target[where].sum() > 0.999 and (target[:q] > 0).sum() == (target > 0).sum()
            mask = sample.shape_masks[shape]  # (H, W)
            h = mask.shape[0] // grid
            cover = mask.reshape(grid, h, grid, h).mean(axis=(1, 3)).reshape(-1)
            np.testing.assert_allclose(target[where].numpy(), cover / cover.sum(), rtol=1e-5)
            fields = {f: int(batch.ground_fields[f][0, g, 0]) for f in ("colour", "kind", "place")}
            drawn = sample.scene.shapes[shape]
            place = sample.scene.place(shape)
            labels = (list(COLOURS).index(drawn.colour), KINDS.index(drawn.kind), PLACES.index(place))
            assert tuple(fields.values()) == labels
        # A question (or request) that names its shape in words is also grounded from the
        # words' last token, with the same target as its answer; a region names it by the box.
        refs = [g for g in items if roles[g] == 1]
        if sample.region is not None:
            assert not refs
        else:
            assert len(refs) >= 1
        for g in refs:
            q = int(batch.ground_queries[g])
            word = tok.tokenizer.decode([int(batch.input_ids[i, q])]).strip()
            matches = [a for a in answer_items if torch.equal(batch.ground_targets[a], batch.ground_targets[g])]
            # Its answer (or the reply's signal tokens) follows.
            limit = 12 if sample.module == "understand" else 40
            assert any(0 < int(batch.ground_queries[a]) - q < limit for a in matches)
            assert word in {"shape", "left", "right", "top", "bottom", "center", *KINDS}
        # Role 2: each grounded answer or signal token reads one position: those words, or
        # the <region> token.
        reads = [g for g in items if roles[g] == 2]
        sources = {int(batch.ground_queries[g]) for g in refs}
        if sample.region is not None:
            sources = {int((batch.input_ids[i] == spec.region_id).nonzero()[0, 0])}
        assert {int(batch.ground_queries[g]) for g in reads} <= {int(batch.ground_queries[a]) for a in answer_items}
        assert len(reads) >= (4 if sample.module != "understand" else 1)
        for g in reads:
            target, q = batch.ground_targets[g], int(batch.ground_queries[g])
            (at,) = target.nonzero()[:, 0].tolist()
            assert target[at] == 1.0 and at < q and at in sources
            # The nearest words before the query: a follow-up reads its own question.
            assert at == max(p for p in sources if p < q)
            (same,) = [a for a in answer_items if int(batch.ground_queries[a]) == q][:1]
            assert all(batch.ground_fields[f][0, g] == batch.ground_fields[f][0, same] for f in batch.ground_fields)
    plain = collate(samples, tok, spec, np.random.default_rng(0), backends=False)
    assert plain.ground_rows is None and torch.equal(plain.input_ids, batch.input_ids)


def test_an_existence_question_is_grounded_on_yes_only(tok, spec):
    # "Is there a red circle?": a "yes" names one shape, found from the words' last token
    # (role 1) and read by the answer (role 2); a "no" names none of the scene's.
    samples = [GEN.sample("qa_exist", i) for i in range(12)]
    yes = [i for i, s in enumerate(samples) if s.answer == "yes"]
    assert 0 < len(yes) < len(samples)
    batch = collate(samples, tok, spec, np.random.default_rng(0), backends=False, ground=True)
    rows, roles = batch.ground_rows, batch.ground_roles
    assert set(rows.tolist()) == set(yes)
    for i in yes:
        (words,) = [int(batch.ground_queries[g]) for g in range(len(rows)) if rows[g] == i and roles[g] == 1]
        assert tok.tokenizer.decode([int(batch.input_ids[i, words])]).strip() == samples[i].scene.shapes[
            samples[i].shape
        ].kind
        (read,) = [g for g in range(len(rows)) if rows[g] == i and roles[g] == 2]
        assert batch.ground_targets[read, words] == 1.0
        assert batch.labels[i, int(batch.ground_queries[read]) + 1] != IGNORE  # the answer's query


def test_head_attention_is_the_decoders_own():
    torch.manual_seed(0)
    hf = VitronModel.from_config(CFG).llm_decoder.model
    hf.config._attn_implementation = "eager"  # the only one that returns its probabilities
    b, t = 3, 40
    x = torch.randn(b, t, CFG.llm.hidden_size)
    mask = torch.ones(b, t, dtype=torch.int64)
    mask[1, 30:] = 0
    with capture_attention_input(hf, 2) as seen, capture_layer_output(hf, 1) as after:
        out = hf.model(
            inputs_embeds=x,
            attention_mask=mask,
            position_ids=torch.arange(t).expand(b, t),
            use_cache=False,
            output_attentions=True,
            output_hidden_states=True,
        )
    torch.testing.assert_close(after["hidden"], out.hidden_states[2])  # [0] is the input embeddings
    rows, queries = torch.tensor([0, 1, 2, 1]), torch.tensor([10, 29, 39, 5])
    for head in (0, 3, 7):  # heads of both key-value groups
        probs = head_attention(hf.model.layers[2].self_attn, seen, head, rows, queries, mask)
        torch.testing.assert_close(probs, out.attentions[2][rows, head, queries], rtol=1e-5, atol=1e-6)
        assert (probs[torch.arange(4)[:, None], torch.arange(t)[None]] > 0).sum(1).tolist() == [11, 30, 40, 6]
    target = torch.zeros(1, t)
    target[0, :4] = 0.25
    probs = torch.full((1, t), 1.0 / t)
    assert torch.isclose(grounding_loss(probs, target), torch.log(torch.tensor(float(t))))


def test_the_ground_loss_trains_its_head(tok):
    trainer = Trainer(VitronModel.from_config(CFG), tok)
    stage = STAGES["instruction"].replace(
        mix={"qa_colour": 1.0, "qa_kind": 1.0}, loss_weights={"lm": 1.0, "ground": 1.0}, batch_size=4, lr=3e-3
    )
    log = trainer.run(stage, 6, fixed_batch=True)
    ground = log.series("ground")
    assert ground[-1] < ground[0] - 0.2
    # The words objective on the grounded positions' states (after their heads' layers),
    # without the attention loss: the states learn the shape's words.
    words = stage.replace(loss_weights={"lm": 1.0, "ground_words": 1.0}, ground_roles=(1, 2))
    log = trainer.run(words, 6, fixed_batch=True)
    series = log.series("ground_words")
    assert series[-1] < series[0] - 0.5 and all("ground" not in row for row in log.losses)
    with pytest.raises(ValueError, match="ground_roles"):
        stage.replace(ground_roles=(0, 3))
    with pytest.raises(ValueError, match="layers and heads"):
        stage.replace(ground_layer=-1)
