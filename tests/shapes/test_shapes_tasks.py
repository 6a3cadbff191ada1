"""Instruction samples: every reply parses with the runtime's own parser and names the
right module, instruction and region; the answers are true of the scene (checked against
the scene and the pixels, not against the template that wrote them); the targets are
there; prompts vary; samples are reproducible."""

import dataclasses
import re
from collections import Counter

import numpy as np
import pytest

from vitron_rt.models.tokenizer import IMAGE_TOKEN, REGION_TOKEN, signal_tokens
from vitron_rt.runtime.messages import parse
from vitron_rt.shapes import ShapesWorld, render
from vitron_rt.shapes.judge import ShapeJudge
from vitron_rt.shapes.render import mask_box
from vitron_rt.shapes.palette import COLOURS, DIRECTIONS, KINDS, PLACES, place_of
from vitron_rt.shapes.replies import format_region, hybrid_reply, round_box
from vitron_rt.shapes.tasks import INSTRUCTION_MIX, MIXES, TASKS, TaskGenerator
from vitron_rt.shapes.templates import place_phrase

K = 4
GEN = TaskGenerator(ShapesWorld(seed=0), num_signal_tokens=K)
N = 12  # samples per task in the per-task checks


def samples(task: str, n: int = N):
    return [GEN.sample(task, i) for i in range(n)]


def _name(label: str) -> tuple[str, str]:
    """"the red circle" -> ("red", "circle")."""
    m = re.fullmatch(r"(?:the|an?) (\w+) (\w+)", label)
    assert m, label
    return m.group(1), m.group(2)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_reply_parses_and_names_the_right_call(task):
    for s in samples(task):
        assert s.module == TASKS[task].module and s.task == task
        parsed = parse(s.answer)
        assert parsed.ok, (s.answer, parsed.error)
        assert IMAGE_TOKEN not in s.prompt  # the runtime adds the image placeholders
        assert s.prompt.count(REGION_TOKEN) <= 1
        if s.module == "understand":
            assert parsed.message is None and parsed.text == s.answer == s.label
            assert "<sig_" not in s.answer
            continue
        msg = parsed.message
        assert msg.module == s.module
        assert msg.instructions == (s.label,)
        assert parsed.text and s.answer.endswith("".join(signal_tokens(K)))
        assert msg.region is None  # a user's box reaches SAM from the request, not the reply


@pytest.mark.parametrize("task", sorted(TASKS))
def test_samples_are_reproducible_and_vary(task):
    a, b = GEN.sample(task, 3), GEN.sample(task, 3)
    fields = lambda s: (s.prompt, s.answer, s.scene, s.target_scene, s.region)  # noqa: E731
    assert fields(a) == fields(b)
    many = samples(task, 40)
    assert len({s.scene or s.target_scene for s in many}) == 40
    assert len({s.prompt for s in many}) >= 4  # phrasings and references vary
    other = TaskGenerator(ShapesWorld(seed=1), num_signal_tokens=K).sample(task, 3)
    assert (other.scene or other.target_scene) != (a.scene or a.target_scene)


def test_the_same_image_gets_different_questions_and_answers():
    # The model has to read the question: one answer per image would not do.
    pairs = Counter()
    for task in ("qa_colour", "qa_kind", "qa_place", "qa_count", "qa_exist"):
        for s in samples(task, 60):
            pairs[(s.task, s.answer)] += 1
    for task, values in (("qa_colour", COLOURS), ("qa_kind", KINDS), ("qa_place", PLACES)):
        assert {a for (t, a) in pairs if t == task} == set(values)
    assert {a for (t, a) in pairs if t == "qa_exist"} == {"yes", "no"}
    assert {a for (t, a) in pairs if t == "qa_count"} >= {"0", "1", "2", "3"}


def test_understanding_answers_are_true_of_the_scene():
    for s in samples("qa_count", 40):
        n = int(s.answer)
        words = re.findall(r"[a-z]+", s.prompt.lower())
        colour = next((c for c in COLOURS if c in words), None)
        kind = next((k for k in KINDS if f"{k}s" in words), None)
        assert n == s.scene.count(colour=colour, kind=kind)
    for s in samples("qa_exist", 40):
        colour, kind = _name(re.search(r"an? \w+ \w+", s.prompt).group(0))
        assert (s.answer == "yes") == (s.scene.count(colour=colour, kind=kind) == 1)
        # A "yes" is about the shape it names (grounded in training), a "no" about none.
        named = None if s.answer == "no" else s.scene.shapes[s.shape]
        assert (s.shape is None) == (s.answer == "no") and (named is None or named.name == f"{colour} {kind}")
    for task, field in (("qa_colour", "colour"), ("qa_kind", "kind")):
        for s in samples(task, 30):
            assert getattr(s.scene.shapes[s.shape], field) == s.answer
            # The reference does not give the answer away (the multiple-choice template
            # lists every kind, so not one of them in particular).
            ref = s.prompt.split(", a square")[0] if "circle, a square" in s.prompt else s.prompt
            assert s.answer not in ref
    for s in samples("qa_place", 30):
        assert s.answer == s.scene.place(s.shape)
        ys, xs = np.nonzero(render(s.scene).full_masks[s.shape])  # the pixels' centre is in that place too
        assert place_of(xs.mean() + 0.5, ys.mean() + 0.5, 128, 128) == s.answer
    for s in samples("caption_image", 20):
        assert s.answer.startswith(f"{len(s.scene)} shape")
        for i, sh in enumerate(s.scene.shapes):
            assert s.answer.count(f" {sh.name} {place_phrase(s.scene.place(i))}") == 1


def test_region_questions_point_at_their_shape():
    for task in ("region_what", "region_colour", "region_kind"):
        for s in samples(task, 20):
            # The user's box is the shape's box, each side off by at most 2 px, then rounded.
            assert np.abs(np.array(s.region) - np.array(mask_box(s.mask))).max() <= 2 / 128 + 0.005
            shape = s.scene.shapes[s.shape]
            assert s.answer in (f"a {shape.name}", f"an {shape.name}", shape.colour, shape.kind)


def test_video_answers_follow_the_motion():
    for s in samples("video_which_moves", 30):
        direction = next(d for d in DIRECTIONS if d in s.prompt.split() or f"{d}?" in s.prompt)
        colour, kind = _name(s.answer)
        shape = s.scene.shapes[s.scene.index(colour, kind)]
        assert shape.motion == direction
        # The pixels agree: the shape's mask centre moves that way over the video.
        m0, m1 = s.masks[0], s.masks[-1]
        dx = np.nonzero(m1)[1].mean() - np.nonzero(m0)[1].mean()
        dy = np.nonzero(m1)[0].mean() - np.nonzero(m0)[0].mean()
        assert {"left": -dx, "right": dx, "up": -dy, "down": dy}[direction] > 15
    for s in samples("video_direction", 30):
        shape = s.scene.shapes[s.shape]
        assert s.answer == (shape.motion if shape.moves else "it does not move")


def test_segmentation_targets_are_the_named_shape():
    for task in ("seg_image", "seg_image_region"):
        for s in samples(task, 20):
            index = s.scene.index(*_name(s.label))
            assert index == s.shape
            assert np.array_equal(s.mask, render(s.scene).masks[index])
            assert (s.image[s.mask] == COLOURS[s.scene.shapes[index].colour]).all()
    assert all(s.region is not None for s in samples("seg_image_region", 10))
    for s in samples("seg_video", 10):
        index = s.scene.index(*_name(s.label))
        assert s.masks.shape == (16, 128, 128) and s.video.shape == (16, 128, 128, 3)
        assert all(s.masks[t].any() for t in range(16))
        colour = COLOURS[s.scene.shapes[index].colour]
        assert all((s.video[t][s.masks[t]] == colour).all() for t in range(16))


def test_generation_targets_show_what_the_prompt_asks_for():
    judge = ShapeJudge()
    for s in samples("gen_image", 40):
        assert s.media == "none" and s.image is None and s.target.shape == (128, 128, 3)
        assert 1 <= len(s.specs) <= 2
        for spec in s.specs:
            assert f"{spec.colour} {spec.kind}" in s.prompt
            if spec.place:
                assert spec.place in s.prompt
        assert judge.check_all(s.target, s.specs).exact
        assert min(sh.size for sh in s.target_scene.shapes) >= 14.0


def test_edit_targets_change_only_the_edited_shape():
    for s in samples("edit_recolour", 20):
        new = s.label.split()[-1]
        changed = (s.image != s.target).any(-1)
        assert changed.any() and not (changed & ~s.mask).any()
        assert (s.target[s.mask] == COLOURS[new]).all()
        assert new in s.prompt
    for s in samples("edit_remove", 20):
        changed = (s.image != s.target).any(-1)
        assert not (changed & ~s.mask).any() and len(s.target_scene) == len(s.scene) - 1
    for s in samples("edit_video", 6):
        new = s.label.split()[-1]
        assert s.target.shape == s.video.shape
        changed = (s.video != s.target).any(-1)  # (T, H, W)
        assert not (changed & ~s.masks).any()
        assert all((s.target[t][s.masks[t]] == COLOURS[new]).all() for t in range(16))


def test_mixes_cover_every_task_and_draw_by_weight():
    assert set(INSTRUCTION_MIX) == set(TASKS)
    assert all(TASKS[t].module != "understand" for t in MIXES["pixel"])
    drawn = Counter(GEN.mixed(INSTRUCTION_MIX, i).task for i in range(600))
    assert set(drawn) == set(TASKS)
    total = sum(INSTRUCTION_MIX.values())
    for task, w in INSTRUCTION_MIX.items():
        assert abs(drawn[task] / 600 - w / total) < 0.05


def test_reply_format():
    reply = hybrid_reply("Here.", "segment_image", "the red circle", 2, region=(0.1234, 0.5, 0.9, 1.2))
    assert reply == (
        "Here. <Module>segment_image</Module><Instruction>the red circle</Instruction>"
        "<Region>(0.12, 0.50, 0.90, 1.00)</Region><sig_0><sig_1>"
    )
    assert format_region((0, 0, 1, 1)) == "(0.00, 0.00, 1.00, 1.00)"
    with pytest.raises(ValueError, match="empty"):
        round_box((0.5, 0.5, 0.501, 0.9))
    with pytest.raises(KeyError, match="unknown task"):
        GEN.sample("juggle", 0)


def test_follow_ups_ask_other_true_questions_about_the_same_image():
    from vitron_rt.shapes.tasks import FOLLOW_UP_TASKS

    for task in ("caption_image", *FOLLOW_UP_TASKS):
        for i in range(8):
            s = GEN.sample(task, i)
            f = GEN.with_follow_ups(s, 3, i)
            assert f == GEN.with_follow_ups(s, 3, i)  # reproducible
            assert dataclasses.replace(f, turns=(), turn_shapes=()) == s  # the sample itself unchanged
            assert len(f.turns) == 3 and len(f.turn_shapes) == 3
            # A turn's shape is the one its question is about (None: a count, or an existence
            # question answered "no").
            for (question, answer), shape in zip(f.turns, f.turn_shapes):
                if shape is not None:
                    sh = s.scene.shapes[shape]
                    assert answer in (sh.colour, sh.kind, s.scene.place(shape), "yes")
            prompts = [s.prompt] + [q for q, _ in f.turns]
            assert len(set(prompts)) == len(prompts)
            colours = {sh.colour for sh in s.scene.shapes}
            kinds = {sh.kind for sh in s.scene.shapes}
            places = {s.scene.place(j) for j in range(len(s.scene))}
            for question, answer in f.turns:
                assert IMAGE_TOKEN not in question and REGION_TOKEN not in question
                # Every answer is one the scene allows (which shape each asks about is
                # the builders' own, checked above on their samples).
                assert answer in colours | kinds | places | {"yes", "no"} or 0 <= int(answer) <= len(s.scene)
    # Only image understanding without a region gets follow-ups.
    for task in ("region_what", "video_direction", "seg_image", "gen_image", "edit_recolour"):
        s = GEN.sample(task, 0)
        assert GEN.with_follow_ups(s, 3, 0) is s
    assert GEN.with_follow_ups(GEN.sample("qa_colour", 0), 0, 0).turns == ()
