"""Training batches: the ids and labels are the runtime's prompt and the reply, the images
land on their placeholder positions, the signal positions are the signal tokens, and each
module gets the back-end targets (and codes) it needs."""

import dataclasses

import numpy as np
import pytest
import torch

from vitron_rt.models.config import preset
from vitron_rt.models.model import VitronModel
from vitron_rt.shapes import ShapesWorld
from vitron_rt.shapes.chat import render_follow_up, render_prompt, user_content
from vitron_rt.shapes.tasks import TASKS, TaskGenerator
from vitron_rt.shapes.world import ShapeSpec
from vitron_rt.train import forward as fw
from vitron_rt.train.conditioning import EMPTY, CodeEncoder, code_array, scene_code
from vitron_rt.train.data import IGNORE, backend_batch, collate, encode_sample
from vitron_rt.train.stages import STAGES
from vitron_rt.train.trainer import Trainer

CFG = preset("mini")
GEN = TaskGenerator(ShapesWorld(seed=0), num_signal_tokens=CFG.signal.num_tokens)
ALL = [GEN.sample(task, 0) for task in sorted(TASKS)]


def test_ids_are_the_runtimes_prompt_then_the_reply(tok, spec):
    for s in ALL:
        enc = encode_sample(s, tok, spec)
        prompt = render_prompt(user_content(s, spec.video_frames))
        prompt_ids = tok.tokenizer.encode(prompt, add_special_tokens=False).ids
        widened = [t for t in prompt_ids for _ in range(spec.num_patches if t == spec.image_id else 1)]
        assert enc.ids[: enc.prompt_len] == widened
        images = {"image": 1, "video": spec.video_frames, "none": 0}[s.media]
        assert enc.ids.count(spec.image_id) == images * spec.num_patches
        assert enc.ids.count(spec.region_id) == (s.region is not None)
        labelled = [t for t in enc.labels if t != IGNORE]
        assert labelled == enc.ids[enc.prompt_len :] and labelled[-1] == spec.eos_id
        assert tok.tokenizer.decode(labelled[:-1], skip_special_tokens=False) == " " + s.answer
        assert all(t == IGNORE for t in enc.labels[: enc.prompt_len])


def test_the_batch_holds_every_input_and_target(tok, spec):
    batch = collate(ALL, tok, spec, np.random.default_rng(0))
    n_images = sum({"image": 1, "video": spec.video_frames, "none": 0}[s.media] for s in ALL)
    assert batch.pixel_values.shape == (n_images, 3, 128, 128)
    assert batch.region_boxes.shape == (sum(s.region is not None for s in ALL), 4)
    assert batch.region_masks.shape[1:] == (spec.grid, spec.grid) and batch.region_masks.flatten(1).sum(1).min() > 0
    for i, s in enumerate(ALL):
        pos = batch.signal_positions[i]
        if s.module == "understand":
            assert (pos == -1).all()
        else:
            assert batch.input_ids[i, pos].tolist() == list(spec.signal_ids)
            assert (batch.labels[i, pos] == batch.input_ids[i, pos]).all()  # the LLM loss covers them
    seg = {}
    for q, owner in enumerate(batch.seg_owner.tolist()):
        seg.setdefault(ALL[owner].task, []).append(q)
    diff = {ALL[o].task: p for p, o in enumerate(batch.diff_owner.tolist())}
    assert set(seg) == {"seg_image", "seg_image_region", "seg_video", "edit_recolour", "edit_remove", "edit_video"}
    assert set(diff) == {"gen_image", "edit_recolour", "edit_remove", "edit_video"}
    for task in ("seg_video", "edit_video"):
        first, later = seg[task]
        assert batch.seg_has_prompt_mask[first] == 0 and batch.seg_has_prompt_mask[later] == 1
    # Edits find their shape through the segment_image projector, as the runtime does.
    assert {batch.seg_projector[q] for t in ("edit_recolour", "edit_video") for q in seg[t]} == {"segment_image"}
    assert batch.seg_projector[seg["seg_video"][0]] == "segment_video"
    (q,) = seg["seg_image_region"]
    assert batch.seg_has_box[q] == 1
    assert batch.seg_boxes[q].tolist() == pytest.approx([v * 128 for v in ALL[batch.seg_owner[q]].region])
    (q,) = seg["seg_image"]
    s = ALL[batch.seg_owner[q]]
    assert torch.equal(batch.seg_targets[q], torch.from_numpy(s.mask.astype(np.float32)))
    shape = s.scene.shapes[s.shape]
    assert batch.seg_codes[q].tolist() == code_array((ShapeSpec(shape.colour, shape.kind),), 4).tolist()
    assert batch.diff_images.shape[1:] == (3, 64, 64) and batch.diff_images.abs().max() <= 1.0
    assert (batch.diff_weights[diff["gen_image"]] == 1).all()
    assert batch.diff_weights[diff["edit_recolour"]].max() == 5.0  # 1 + EDIT_WEIGHT on the shape
    edit = ALL[batch.diff_owner[diff["edit_recolour"]]]
    assert batch.diff_codes[diff["edit_recolour"]].tolist() == code_array(scene_code(edit.target_scene), 4).tolist()


def test_a_language_batch_leaves_the_back_end_items_out(tok, spec):
    full = collate(ALL, tok, spec, np.random.default_rng(0))
    lean = collate(ALL, tok, spec, np.random.default_rng(0), backends=False)
    for name in ("input_ids", "labels", "attention_mask", "pixel_values", "region_boxes", "signal_positions"):
        assert torch.equal(getattr(full, name), getattr(lean, name)), name
    assert len(full.seg_owner) and len(full.diff_owner)
    assert lean.seg_owner.shape == (0,) and lean.seg_pixels.shape[0] == 0 and lean.seg_projector == ()
    assert lean.diff_owner.shape == (0,) and lean.diff_images.shape[0] == 0 and lean.diff_codes.shape[0] == 0


def test_codes():
    scene = ShapesWorld(seed=0).scene(3)
    code = scene_code(scene)
    assert len(code) == len(scene) and all(c.place is not None for c in code)
    arr = code_array([ShapeSpec("red", "circle"), ShapeSpec(kind="star", place="top")], 4)
    assert arr[0].tolist() == [0, 0, 9] and arr[1].tolist() == [7, 4, 1] and (arr[2:] == EMPTY).all()
    enc = CodeEncoder(4, 8)
    out = enc(torch.from_numpy(arr)[None])
    assert out.shape == (1, 4, 8) and torch.equal(out[0, 2], out[0, 3]) and not torch.equal(out[0, 0], out[0, 1])
    with pytest.raises(ValueError, match="does not fit"):
        code_array([ShapeSpec()] * 5, 4)


def test_the_front_end_lands_on_the_placeholders(tok, spec):
    model = VitronModel.from_config(CFG)
    picked = [GEN.sample(t, 0) for t in ("region_what", "seg_video", "gen_image")]
    batch = collate(picked, tok, spec, np.random.default_rng(0))
    with torch.no_grad():
        features, embeds = fw.front_end(model, batch.pixel_values)
        x = fw.sequence_embeds(model, batch, spec, features, embeds)
        where = (batch.input_ids[0] == spec.image_id).nonzero()[:, 0]
        assert torch.equal(x[0, where], embeds[0])
        video = (batch.input_ids[1] == spec.image_id).nonzero()[:, 0]
        assert torch.equal(x[1, video], embeds[1:5].reshape(-1, embeds.shape[-1]))  # 4 frames, in order
        r = (batch.input_ids[0] == spec.region_id).nonzero()[0, 0]
        region = model.region_encoder(features[:1], batch.region_boxes, batch.region_masks)
        assert torch.allclose(x[0, r], region[0])
        text = batch.input_ids[2] != spec.pad_id
        assert torch.equal(x[2, text], model.embed_tokens(batch.input_ids[2:3])[0, text])


def test_backend_batches_prompt_with_codes_boxes_and_tracks(tok, spec):
    samples = [GEN.sample(t, i) for t in ("seg_image", "seg_video", "gen_image", "edit_recolour") for i in range(4)]
    b = backend_batch(samples, spec, np.random.default_rng(0), box_probability=0.5)
    assert b.seg_pixels.shape[0] == 4 + 8 + 4 == b.seg_codes.shape[0]
    assert 0 < b.seg_has_box.sum() < b.seg_pixels.shape[0]
    assert b.seg_has_prompt_mask.sum() == 4  # the later frame of each video
    assert b.diff_images.shape[0] == 8 and b.vae_images.shape[0] == 8 + 12


def test_vae_crops_are_grid_aligned_windows_of_the_whole_images(spec):
    samples = [GEN.sample(t, i) for t in ("gen_image", "edit_recolour") for i in range(3)]
    whole = backend_batch(samples, spec, np.random.default_rng(0))
    side, stride = 48, spec.vae_size // spec.latent_size
    cropped = backend_batch(samples, spec, np.random.default_rng(0), vae_crop=side)
    assert cropped.vae_images.shape == (len(whole.vae_images), 3, side, side)
    assert torch.equal(cropped.diff_images, whole.diff_images)  # only the VAE's images are cut
    offsets = set()
    for im, crop in zip(whole.vae_images, cropped.vae_images):
        found = [
            (y, x)
            for y in range(0, spec.vae_size - side + 1)
            for x in range(0, spec.vae_size - side + 1)
            if torch.equal(im[:, y : y + side, x : x + side], crop)
        ]
        assert found and any(y % stride == 0 and x % stride == 0 for y, x in found)
        offsets.add(found[0])
    assert len(offsets) > 1  # drawn, not one fixed window
    for bad in (side + 1, spec.vae_size + stride):
        with pytest.raises(ValueError, match="multiple of"):
            backend_batch(samples, spec, np.random.default_rng(0), vae_crop=bad)
    with pytest.raises(ValueError, match="vae_crop"):
        STAGES["autoencoder"].replace(vae_crop=-1)


def test_stage_batches_are_reproducible_disjoint_and_bucketed(tok):
    trainer = Trainer(VitronModel.from_config(CFG), tok)
    stage = STAGES["instruction"].replace(batch_size=4)
    a, b = trainer.samples(stage, 7), trainer.samples(stage, 7)
    assert [(s.task, s.prompt, s.scene) for s in a] == [(s.task, s.prompt, s.scene) for s in b]
    other = trainer.samples(STAGES["pixel"].replace(batch_size=4), 7)
    assert not {(s.prompt, s.scene) for s in a} & {(s.prompt, s.scene) for s in other}
    for step in range(12):
        media = {s.media == "video" for s in trainer.samples(stage, step)}
        assert len(media) == 1  # all-video or video-free
    with pytest.raises(ValueError, match="tokenizer has"):
        Trainer(VitronModel.from_config(preset("tiny")), tok)


def test_follow_up_turns_are_labelled_answers_after_unlabelled_questions(tok, spec):
    s = GEN.with_follow_ups(GEN.sample("qa_colour", 0), 3, 0)
    single = encode_sample(dataclasses.replace(s, turns=(), turn_shapes=()), tok, spec)
    enc = encode_sample(s, tok, spec)
    assert enc.prompt_len == single.prompt_len and enc.ids[: len(single.ids)] == single.ids
    assert enc.labels[: len(single.labels)] == single.labels
    at = len(single.ids)
    for question, answer in s.turns:
        q = tok.tokenizer.encode(render_follow_up(question), add_special_tokens=False).ids
        assert enc.ids[at : at + len(q)] == q and set(enc.labels[at : at + len(q)]) == {IGNORE}
        at += len(q)
        end = enc.ids.index(spec.eos_id, at) + 1
        assert enc.labels[at:end] == enc.ids[at:end]
        assert tok.tokenizer.decode(enc.ids[at : end - 1], skip_special_tokens=False) == " " + answer
        at = end
    assert at == len(enc.ids)
    batch = collate([s], tok, spec, np.random.default_rng(0))
    assert (batch.labels != IGNORE).sum() == sum(t != IGNORE for t in enc.labels)


def test_a_stage_with_follow_ups_adds_them_to_image_understanding_only(tok):
    trainer = Trainer(VitronModel.from_config(CFG), tok)
    plain = STAGES["instruction"].replace(batch_size=16, follow_ups=0)
    multi = plain.replace(follow_ups=2)
    for step in range(3):
        for a, b in zip(trainer.samples(plain, step), trainer.samples(multi, step)):
            assert dataclasses.replace(b, turns=(), turn_shapes=()) == a
            asks = a.module == "understand" and a.media == "image" and a.region is None
            assert len(b.turns) == (2 if asks else 0) and len(b.turn_shapes) == len(b.turns)
    with pytest.raises(ValueError, match="follow_ups"):
        plain.replace(follow_ups=-1)
