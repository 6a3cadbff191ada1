"""Training batches: ShapesWorld samples as the model's tensors, prepared as the runtime
prepares them at serving time.

    sample ─► chat text (vitron_rt.shapes.chat: the runtime's placeholder rules and template;
              for the back-end items, the targets' codes: vitron_rt.train.conditioning)
           ─► ids: prompt + " answer" + </s>; every <image> widened to N copies (N patches),
              where the runtime splices N rows in place of one placeholder
           ─► labels: the reply's ids, -100 on the prompt (the LLM loss covers the text AND
              the signal tokens <sig_k> the reply ends with)
           ─► follow-up turns (`Sample.turns`, training only): "USER: q ASSISTANT:" (-100)
              + " answer" + </s> (labelled), each after the last
    image / video frames (the runtime's frame sampling) ─► vision preprocess (the runtime's,
              from an ImagePreprocess built as export builds it) ─► pixel_values
    region ─► box + its grid mask (`box_to_mask`, the rasteriser the runtime mirrors)
    back-end targets:
      segment_* / edit_*  ─► SegItems: SAM-preprocessed frame, target mask, box prompt,
                             previous-frame mask prompt (video frames after the first)
      generate / edit_*   ─► DiffItems: the target image at the VAE's size in [-1, 1], and a
                             latent-grid weight that favours the edited shape

    perception (no text) ─► the image (a video: one frame) and, per cell of each patch,
                            the colour, kind and place of the shape that covers it (`cell_owners`)
    words (`collate(words=c)`) ─► the same per-cell labels for every image row of an LLM
                            batch (a video's sampled frames), for the projector's word objective
    ground (`collate(ground=True)`) ─► per question about one shape of an image (and per
                            signal token of an image segmentation or edit): the query position,
                            the shape's share of each patch, the position of the words (or the
                            <region>) naming it, and its colour, kind and place
                            (`vitron_rt.train.grounding`)
    region words (`collate(words=c)`) ─► the colour, kind and place of the shape each region
                            points at, for the word objective on the region encoder's tokens

Every random choice (which video frame, which prompt mask) comes from a numpy Generator
the caller seeds, so a batch is a pure function of (samples, seed).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from vitron_rt.bundle import ImagePreprocess
from vitron_rt.models.config import VitronConfig
from vitron_rt.models.region import box_to_mask
from vitron_rt.models.tokenizer import IMAGE_TOKEN, REGION_TOKEN, PreparedTokenizer, signal_tokens
from vitron_rt.runtime.media import ResizeMode, preprocess_images, sample_frame_indices
from vitron_rt.runtime.pipelines.postprocess import downsample_mask, to_vae_input
from vitron_rt.shapes.chat import render_follow_up, render_prompt, user_content
from vitron_rt.shapes.palette import COLOURS, KINDS, PLACES
from vitron_rt.shapes.render import jittered_box
from vitron_rt.shapes.tasks import Sample
from vitron_rt.shapes.templates import referring_expressions
from vitron_rt.shapes.world import ShapeSpec
from vitron_rt.train.conditioning import COLOUR_INDEX, KIND_INDEX, PLACE_INDEX, code_array, scene_code

IGNORE = -100  # label of positions the LLM loss skips (torch's cross_entropy ignore_index)
# The previous frame's mask becomes SAM's dense prompt as logits of this magnitude: confident
# (sigmoid(8) = 0.9997), like the decoder's own output on a frame it segmented well.
PROMPT_MASK_LOGIT = 8.0
# Weight of the denoising loss on latent cells of the edited shape, against 1 elsewhere:
# an edit changes a small part of the image, and only that part is composited back.
EDIT_WEIGHT = 4.0


@dataclass(frozen=True)
class DataSpec:
    """What batching needs to know about the model: sizes, preprocessing and token ids."""

    vision: ImagePreprocess
    seg: ImagePreprocess
    num_patches: int  # N: rows one image contributes to the sequence
    grid: int  # region encoder grid
    region_image_size: int
    video_frames: int
    mask_size: int  # SAM's low-res mask side (4E)
    seg_grid: int  # E: SAM's image embedding side
    vae_size: int  # pixels the VAE takes (the UNet's native latent side x downsample)
    latent_size: int
    num_signal_tokens: int
    max_positions: int
    image_id: int
    region_id: int
    signal_ids: tuple[int, ...]
    eos_id: int
    pad_id: int

    @classmethod
    def build(cls, config: VitronConfig, tokenizer: PreparedTokenizer) -> "DataSpec":
        v, s = config.vision, config.seg
        f = config.vae.downsample
        return cls(
            vision=ImagePreprocess(v.image_size, tuple(v.image_mean), tuple(v.image_std)),
            seg=ImagePreprocess(s.image_size, tuple(s.image_mean), tuple(s.image_std)),
            num_patches=v.num_patches,
            grid=config.region.grid,
            region_image_size=config.region.image_size,
            video_frames=config.video_frames,
            mask_size=s.mask_size,
            seg_grid=s.image_size // s.patch_size,
            vae_size=config.unet.sample_size * f,
            latent_size=config.unet.sample_size,
            num_signal_tokens=config.signal.num_tokens,
            max_positions=config.llm.max_position_embeddings,
            image_id=tokenizer.token_id(IMAGE_TOKEN),
            region_id=tokenizer.token_id(REGION_TOKEN),
            signal_ids=tuple(tokenizer.token_id(t) for t in signal_tokens(config.signal.num_tokens)),
            eos_id=tokenizer.token_id(tokenizer.eos_token),
            pad_id=0,  # any id: padded positions are masked out of attention and of the loss
        )


# --------------------------------------------------------------------------- text


@dataclass(frozen=True)
class Encoded:
    """One sample's ids (images widened) and labels."""

    ids: list[int]
    labels: list[int]
    prompt_len: int  # ids before the reply (the runtime's prefill)
    # Per reply (the sample's, then each turn's): the position whose logits predict its
    # first token, the last of the question.
    queries: tuple[int, ...] = ()
    # Per reply: the text its question was encoded from and the position of its first token
    # (the whole rendered prompt, from 0, for the sample's own question).
    questions: tuple[tuple[str, int], ...] = ()


def encode_sample(sample: Sample, tokenizer: PreparedTokenizer, spec: DataSpec) -> Encoded:
    """Ids and labels of one sample (see the module docstring)."""
    tok = tokenizer.tokenizer
    text = render_prompt(user_content(sample, spec.video_frames))
    prompt = tok.encode(text, add_special_tokens=False).ids
    wide: list[int] = []
    for t in prompt:
        wide.extend([t] * spec.num_patches if t == spec.image_id else [t])
    # The reply, then each follow-up turn's question (unlabelled) and reply.
    ids, labels, queries = list(wide), [IGNORE] * len(wide), []
    questions = [(text, 0)]
    for user, answer in [(None, sample.answer), *sample.turns]:
        question = []
        if user is not None:
            text = render_follow_up(user)
            question = tok.encode(text, add_special_tokens=False).ids
            questions.append((text, len(ids)))
        reply = tok.encode(f" {answer}", add_special_tokens=False).ids + [spec.eos_id]
        ids += question
        queries.append(len(ids) - 1)
        ids += reply
        labels += [IGNORE] * len(question) + reply
    if any(t == spec.image_id or t == spec.region_id for t in ids[len(wide) :]):
        texts = [sample.answer, *(text for turn in sample.turns for text in turn)]
        raise ValueError(f"a {sample.task} sample's reply or follow-up holds an input placeholder: {texts!r}")
    if len(ids) > spec.max_positions:
        raise ValueError(f"a {sample.task} sample is {len(ids)} positions, more than {spec.max_positions}")
    return Encoded(ids=ids, labels=labels, prompt_len=len(wide), queries=tuple(queries), questions=tuple(questions))


# --------------------------------------------------------------------------- back-end items


@dataclass(frozen=True)
class SegItem:
    """One mask-decoder call: a frame, its target and its prompts."""

    owner: int  # sample index in the batch (whose signal tokens prompt it)
    projector: str  # signal projector module ("segment_image" for edits, as the runtime does)
    frame: np.ndarray  # (H, W, 3) uint8
    target: np.ndarray  # (H, W) bool
    box: tuple[float, float, float, float] | None  # normalised, when the message has a region
    previous: np.ndarray | None  # (H, W) bool: the previous frame's mask, a video's track
    code: tuple[ShapeSpec, ...]  # the referred shape, the segmentation code (see `conditioning`)


@dataclass(frozen=True)
class DiffItem:
    """One denoising target: an image the signal tokens should produce."""

    owner: int
    projector: str
    image: np.ndarray  # (H, W, 3) uint8
    region: np.ndarray | None  # (H, W) bool: the edited shape (None: the whole image counts)
    code: tuple[ShapeSpec, ...]  # the image's shapes, the diffusion code (see `conditioning`)


def backend_items(sample: Sample, owner: int, rng: np.random.Generator) -> tuple[list[SegItem], list[DiffItem]]:
    """The back-end targets of one sample (none for `understand`).

    Segmentation codes name the referred shape by colour and kind (the mask decoder sees
    where it is). Diffusion codes list the target image's shapes in reading order: with
    their places for an edit (the LLM sees the image), with the prompt's own specs for a
    generation (a place the prompt leaves open stays "any": nothing could predict it)."""
    m = sample.module
    seg: list[SegItem] = []
    diff: list[DiffItem] = []
    if m == "understand":
        return seg, diff
    if m == "generate_image":
        diff.append(DiffItem(owner, m, sample.target, None, tuple(sample.specs)))
        return seg, diff
    shape = sample.scene.shapes[sample.shape]
    referent = (ShapeSpec(shape.colour, shape.kind),)
    if m == "segment_image":
        seg.append(SegItem(owner, m, sample.image, sample.mask, sample.region, None, referent))
    elif m == "edit_image":
        # The runtime finds the shape to edit with the same signal tokens through the
        # segment_image projector; train that path on the shape's mask.
        seg.append(SegItem(owner, "segment_image", sample.image, sample.mask, None, None, referent))
        diff.append(DiffItem(owner, m, sample.target, sample.mask, scene_code(sample.target_scene)))
    elif m in ("segment_video", "edit_video"):
        frames, masks = sample.video, sample.masks
        t = int(rng.integers(1, len(frames)))
        projector = m if m == "segment_video" else "segment_image"
        seg.append(SegItem(owner, projector, frames[0], masks[0], None, None, referent))  # first frame: no track yet
        seg.append(SegItem(owner, projector, frames[t], masks[t], None, masks[t - 1], referent))
        if m == "edit_video":
            t = int(rng.integers(len(frames)))
            # One signal conditions every frame, and shapes move: the code leaves places open.
            code = tuple(ShapeSpec(c.colour, c.kind) for c in scene_code(sample.target_scene))
            diff.append(DiffItem(owner, m, sample.target[t], masks[t], code))
    else:
        raise ValueError(f"no back-end targets for module {m!r}")
    return seg, diff


# --------------------------------------------------------------------------- the batch


@dataclass
class Batch:
    """Tensors of a batch. Images, regions and back-end items are flat lists with an
    `*_owner` index into the batch's samples."""

    tasks: tuple[str, ...]
    modules: tuple[str, ...]
    input_ids: torch.Tensor  # (B, T) int64, padded with pad_id
    attention_mask: torch.Tensor  # (B, T) int64
    labels: torch.Tensor  # (B, T) int64, IGNORE where no loss
    pixel_values: torch.Tensor  # (M, 3, S, S): every image and sampled frame, in sample order
    region_boxes: torch.Tensor  # (R, 4) normalised
    region_masks: torch.Tensor  # (R, G, G)
    region_image: torch.Tensor  # (R,) int64 index into pixel_values: the image it points into
    signal_positions: torch.Tensor  # (B, K) int64, -1 for a sample without signal tokens
    seg_owner: torch.Tensor  # (Q,) int64
    seg_projector: tuple[str, ...]
    seg_pixels: torch.Tensor  # (Q, 3, Sg, Sg) SAM input
    seg_targets: torch.Tensor  # (Q, H, W) float 0/1 at the image's own size
    seg_boxes: torch.Tensor  # (Q, 4) xyxy pixels of the SAM input
    seg_has_box: torch.Tensor  # (Q,)
    seg_prompt_masks: torch.Tensor  # (Q, 1, m, m) logits of the previous frame's mask
    seg_has_prompt_mask: torch.Tensor  # (Q,)
    seg_codes: torch.Tensor  # (Q, K, 3) int64 segmentation codes (`conditioning`)
    diff_owner: torch.Tensor  # (P,) int64
    diff_projector: tuple[str, ...]
    diff_images: torch.Tensor  # (P, 3, Hv, Wv) in [-1, 1]
    diff_weights: torch.Tensor  # (P, 1, h, w) per-latent-cell loss weight
    diff_codes: torch.Tensor  # (P, K, 3) int64 diffusion codes
    # What each cell of each image row shows ("colour", "kind", "place" -> (M, N, c*c) int64,
    # `cell_fields`), for the projector's word objective; None unless `collate(words=c)`.
    patch_labels: dict[str, torch.Tensor] | None = None
    # What the shape each region points at is ("colour", "kind", "place" -> (1, R, 1) int64,
    # the layout of `patch_labels` with one cell per region), for the same objective on the
    # region encoder's tokens; None unless `collate(words=c)`.
    region_labels: dict[str, torch.Tensor] | None = None
    # Grounding (`collate(ground=True)`, `vitron_rt.train.grounding`): per question about one
    # shape of an image, its row, the position that predicts the answer, and where it
    # should look: (G, T) over the sequence, each patch of the image weighted by how much
    # of it the shape covers (summing to 1). None unless asked for.
    ground_rows: torch.Tensor | None = None  # (G,) int64
    ground_queries: torch.Tensor | None = None  # (G,) int64
    ground_targets: torch.Tensor | None = None  # (G, T) float
    # 0: the query predicts an answer or is a signal token; 1: it is the last token of the
    # question's words for the shape ("the triangle", "the shape at the top left"); 2: the
    # query of role 0, its target one position, those words' last token or the <region>.
    ground_roles: torch.Tensor | None = None  # (G,) int64
    # What the grounded shape is ("colour", "kind", "place" -> (1, G, 1) int64, the layout of
    # `region_labels`): the words the residual stream should hold there (`ground_words`).
    ground_fields: dict[str, torch.Tensor] | None = None

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]


def _seg_tensors(items: Sequence[SegItem], spec: DataSpec) -> dict[str, torch.Tensor]:
    s, m, k = spec.seg.image_size, spec.mask_size, spec.num_signal_tokens
    if not items:
        return {
            "seg_pixels": torch.zeros(0, 3, s, s),
            "seg_targets": torch.zeros(0, s, s),
            "seg_boxes": torch.zeros(0, 4),
            "seg_has_box": torch.zeros(0),
            "seg_prompt_masks": torch.zeros(0, 1, m, m),
            "seg_has_prompt_mask": torch.zeros(0),
            "seg_codes": torch.zeros(0, k, 3, dtype=torch.int64),
        }
    frames = [it.frame for it in items]
    if any(f.shape[:2] != (s, s) for f in frames):
        # The box and mask prompts below are in the input's pixels: that holds when the
        # frame is SAM's own size (ShapesWorld renders at it), where PAD is the identity.
        raise ValueError(f"segmentation frames must be {s} x {s} (SAM's input side)")
    pixels = preprocess_images(frames, spec.seg, ResizeMode.PAD)  # (Q, 3, S, S)
    boxes = np.zeros((len(items), 4), np.float32)
    has_box = np.zeros(len(items), np.float32)
    prompts = np.zeros((len(items), 1, m, m), np.float32)
    has_prompt = np.zeros(len(items), np.float32)
    for q, it in enumerate(items):
        if it.box is not None:
            boxes[q] = np.asarray(it.box, np.float32) * s
            has_box[q] = 1.0
        if it.previous is not None:
            small = cv2.resize(it.previous.astype(np.float32), (m, m), interpolation=cv2.INTER_AREA)
            prompts[q, 0] = (2.0 * small - 1.0) * PROMPT_MASK_LOGIT
            has_prompt[q] = 1.0
    return {
        "seg_pixels": torch.from_numpy(pixels),
        "seg_targets": torch.from_numpy(np.stack([it.target for it in items]).astype(np.float32)),
        "seg_boxes": torch.from_numpy(boxes),
        "seg_has_box": torch.from_numpy(has_box),
        "seg_prompt_masks": torch.from_numpy(prompts),
        "seg_has_prompt_mask": torch.from_numpy(has_prompt),
        "seg_codes": torch.from_numpy(np.stack([code_array(it.code, k) for it in items])),
    }


def _vae_images(images: Sequence[np.ndarray], spec: DataSpec) -> torch.Tensor:
    """(P, 3, Hv, Wv) in [-1, 1]: each image area-resized to the VAE's side, as the
    runtime's edit pipeline prepares its input."""
    v = spec.vae_size
    out = [to_vae_input(cv2.resize(im, (v, v), interpolation=cv2.INTER_AREA))[0] for im in images]
    return torch.from_numpy(np.stack(out)) if out else torch.zeros(0, 3, v, v)


def _diff_tensors(items: Sequence[DiffItem], spec: DataSpec) -> dict[str, torch.Tensor]:
    h, k = spec.latent_size, spec.num_signal_tokens
    weights = []
    for it in items:
        w = np.ones((h, h), np.float32)
        if it.region is not None:
            w += EDIT_WEIGHT * downsample_mask(it.region, (h, h))
        weights.append(w[None])
    return {
        "diff_images": _vae_images([it.image for it in items], spec),
        "diff_weights": torch.from_numpy(np.stack(weights)) if weights else torch.zeros(0, 1, h, h),
        "diff_codes": torch.from_numpy(np.stack([code_array(it.code, k) for it in items]))
        if items
        else torch.zeros(0, k, 3, dtype=torch.int64),
    }


def collate(
    samples: Sequence[Sample],
    tokenizer: PreparedTokenizer,
    spec: DataSpec,
    rng: np.random.Generator,
    backends: bool = True,
    words: int = 0,
    ground: bool = False,
) -> Batch:
    """The batch of `samples` (see the module docstring). `backends=False` leaves the
    back-end items out (empty seg_* / diff_* tensors): a stage with the LLM loss alone
    never reads them, and building them (targets rendered, SAM and VAE inputs prepared)
    took three quarters of an instruction batch's 0.10 s. `words=c` also labels the
    c x c cells of every image row's patches (`Batch.patch_labels`); `ground=True` adds
    where each question about one shape of an image should look (`Batch.ground_*`)."""
    encoded = [encode_sample(s, tokenizer, spec) for s in samples]
    length = max(len(e.ids) for e in encoded)
    b = len(samples)
    ids = torch.full((b, length), spec.pad_id, dtype=torch.int64)
    attention = torch.zeros((b, length), dtype=torch.int64)
    labels = torch.full((b, length), IGNORE, dtype=torch.int64)
    positions = torch.full((b, spec.num_signal_tokens), -1, dtype=torch.int64)
    images: list[np.ndarray] = []
    shown: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []  # per image row: shape masks, fields
    region_boxes, region_image, region_fields = [], [], []
    seg_items: list[SegItem] = []
    diff_items: list[DiffItem] = []
    grounded: list[tuple[int, int, list[int], np.ndarray, int, int]] = []  # row, query, where, weights, role, shape
    for i, (sample, enc) in enumerate(zip(samples, encoded)):
        n = len(enc.ids)
        ids[i, :n] = torch.tensor(enc.ids)
        attention[i, :n] = 1
        labels[i, :n] = torch.tensor(enc.labels)
        if sample.module != "understand":
            reply = enc.ids[enc.prompt_len :]
            for k, sid in enumerate(spec.signal_ids):
                positions[i, k] = enc.prompt_len + reply.index(sid)
        first_image = len(images)
        times = []
        if sample.media == "image":
            images.append(sample.image)
            times = [0]
        elif sample.media == "video":
            frames = sample.video
            times = sample_frame_indices(len(frames), spec.video_frames)
            images.extend(frames[times])
        if words:
            shown += [frame_fields(sample, int(t)) for t in times]
        if sample.region is not None:
            region_boxes.append(sample.region)
            region_fields.append(_shape_fields(sample, sample.shape))
            region_image.append(first_image)  # a video's region points into its first frame, as in the runtime
        if ground:
            grounded += _grounding(sample, enc, spec, i, tokenizer)
        if backends:
            seg, diff = backend_items(sample, i, rng)
            seg_items += seg
            diff_items += diff
    s = spec.vision.image_size
    pixels = preprocess_images(images, spec.vision) if images else np.zeros((0, 3, s, s), np.float32)
    boxes = torch.tensor(region_boxes, dtype=torch.float32).reshape(-1, 4)
    targets = torch.zeros(len(grounded), length)
    for g, (_, _, where, weights, _, _) in enumerate(grounded):
        targets[g, where] = torch.from_numpy(weights)
    ground_fields = [_shape_fields(samples[g[0]], g[5]) for g in grounded]
    return Batch(
        tasks=tuple(s.task for s in samples),
        modules=tuple(s.module for s in samples),
        input_ids=ids,
        attention_mask=attention,
        labels=labels,
        pixel_values=torch.from_numpy(pixels),
        region_boxes=boxes,
        region_masks=box_to_mask(boxes, spec.grid, spec.region_image_size),
        region_image=torch.tensor(region_image, dtype=torch.int64),
        signal_positions=positions,
        seg_owner=torch.tensor([it.owner for it in seg_items], dtype=torch.int64),
        seg_projector=tuple(it.projector for it in seg_items),
        diff_owner=torch.tensor([it.owner for it in diff_items], dtype=torch.int64),
        diff_projector=tuple(it.projector for it in diff_items),
        **_seg_tensors(seg_items, spec),
        **_diff_tensors(diff_items, spec),
        patch_labels=cell_fields(shown, math.isqrt(spec.num_patches), words, FIELD_NAMES) if words else None,
        region_labels=_field_labels(region_fields) if words else None,
        ground_rows=torch.tensor([g[0] for g in grounded], dtype=torch.int64) if ground else None,
        ground_queries=torch.tensor([g[1] for g in grounded], dtype=torch.int64) if ground else None,
        ground_targets=targets if ground else None,
        ground_roles=torch.tensor([g[4] for g in grounded], dtype=torch.int64) if ground else None,
        ground_fields=_field_labels(ground_fields) if ground else None,
    )


def _shape_fields(sample: Sample, shape: int) -> tuple[int, int, int]:
    """The colour, kind and place labels (`FIELD_NAMES`) of one shape of an image sample."""
    s = sample.scene.shapes[shape]
    return COLOUR_INDEX[s.colour], KIND_INDEX[s.kind], PLACE_INDEX[sample.scene.place(shape)]


def _field_labels(fields: list[tuple[int, int, int]]) -> dict[str, torch.Tensor]:
    """Per field of `FIELD_NAMES`, the (1, n, 1) labels of n shapes (`_shape_fields`)."""
    table = torch.tensor(fields, dtype=torch.int64).reshape(-1, len(FIELD_NAMES))  # (n, 3)
    return {f: table[:, j].reshape(1, -1, 1) for j, f in enumerate(FIELD_NAMES)}


def _grounding(
    sample: Sample, enc: Encoded, spec: DataSpec, row: int, tokenizer: PreparedTokenizer
) -> list[tuple[int, int, list[int], np.ndarray, int, int]]:
    """A sample's grounded queries, each with the image's positions in the sequence, the
    share of the shape on each patch, its role (`Batch.ground_roles`) and the shape. On an image
    input: a question about one shape, from the position that predicts its answer (role 0)
    and from the last token of the words that name the shape in it (role 1); a
    segmentation or edit of one shape, from each signal token (role 0), whose state the
    back end reads, and from its request's words (role 1). Each role-0 query also reads
    the words (or the <region> token) that name its shape (role 2)."""
    if sample.media != "image":
        return []
    region = enc.ids.index(spec.region_id) if sample.region is not None else None
    reads: list[tuple[int, int, int]] = []  # (query, the position it should read: words or region, shape)
    if sample.module == "understand":
        shapes = (sample.shape, *(sample.turn_shapes or (None,) * len(sample.turns)))
        asked = [(q, shape, 0) for q, shape in zip(enc.queries, shapes)]
        for (text, start), query, shape in zip(enc.questions, enc.queries, shapes):
            at = None if shape is None else _reference_end(text, start, sample, shape, enc, spec, tokenizer)
            if at is not None:
                asked.append((at, shape, 1))
            at = region if at is None and start == 0 else at  # a region names the shape of the first question
            if at is not None and shape is not None:
                reads.append((query, at, shape))
    elif sample.module in ("segment_image", "edit_image"):
        signals = [enc.ids.index(sid, enc.prompt_len) for sid in spec.signal_ids]
        asked = [(q, sample.shape, 0) for q in signals]
        text, start = enc.questions[0]
        at = region
        if region is None:
            at = _reference_end(text, start, sample, sample.shape, enc, spec, tokenizer)
            if at is not None:
                asked.append((at, sample.shape, 1))
        if at is not None:
            reads += [(q, at, sample.shape) for q in signals]
    else:
        return []
    out = [(row, query, [at], np.ones(1, np.float32), 2, shape) for query, at, shape in reads]
    where = [p for p, t in enumerate(enc.ids) if t == spec.image_id]
    grid = math.isqrt(spec.num_patches)
    shares: dict[int, np.ndarray] = {}  # shape -> its share of each patch (N,), once per shape
    for shape in {shape for _, shape, _ in asked if shape is not None}:
        mask = sample.shape_masks[shape]  # (H, W) visible
        h, w = mask.shape
        cover = mask.reshape(grid, h // grid, grid, w // grid).mean(axis=(1, 3), dtype=np.float32).reshape(-1)  # (N,)
        if cover.sum() > 0:
            shares[shape] = cover / cover.sum()
    return [(row, query, where, shares[shape], role, shape) for query, shape, role in asked if shape in shares] + out


def _reference_end(
    text: str, start: int, sample: Sample, shape: int, enc: Encoded, spec: DataSpec, tokenizer: PreparedTokenizer
) -> int | None:
    """The position in `enc.ids` of the last token of the longest referring expression for
    `shape` (`templates.referring_expressions`) in a question's `text` (encoded from
    position `start`), or None when the question names the shape otherwise (a region)."""
    lower = text.lower()
    refs = referring_expressions(sample.scene, shape)
    # An existence question names its shape without the article: "is there a red circle?".
    found = [r for r in (*refs, refs[0].removeprefix("the ")) if r in lower]
    if not found:
        return None
    ref = max(found, key=len)
    end = lower.rindex(ref) + len(ref)
    prefix = tokenizer.tokenizer.encode(text[:end], add_special_tokens=False).ids
    at = start - 1
    for t in prefix:
        at += spec.num_patches if t == spec.image_id else 1
    # The prefix must tokenize as the whole text does up to there (a word boundary).
    if at >= len(enc.ids) or enc.ids[at] != prefix[-1]:
        return None
    return at


# --------------------------------------------------------------------------- back ends alone


@dataclass
class BackendBatch:
    """Stage `backends`: the back-end items of the samples, conditioned on their codes
    instead of signal tokens, and images for the VAE (every target and input frame)."""

    vae_images: torch.Tensor  # (V, 3, Hv, Wv) in [-1, 1]
    seg_pixels: torch.Tensor
    seg_targets: torch.Tensor
    seg_boxes: torch.Tensor
    seg_has_box: torch.Tensor
    seg_prompt_masks: torch.Tensor
    seg_has_prompt_mask: torch.Tensor
    seg_codes: torch.Tensor  # (Q, K, 3)
    diff_images: torch.Tensor
    diff_weights: torch.Tensor
    diff_codes: torch.Tensor  # (P, K, 3)


def backend_batch(
    samples: Sequence[Sample],
    spec: DataSpec,
    rng: np.random.Generator,
    box_probability: float = 0.3,
    vae_crop: int = 0,
) -> BackendBatch:
    """A stage-`backends` batch: every sample's back-end items (`backend_items`). Without
    an LLM no message carries a region, so a segmentation item gets its shape's jittered
    box with `box_probability`: the decoder learns both the code-only and the boxed prompt.
    A `vae_crop` > 0 cuts the VAE's images to windows of that side (`random_crops`)."""
    seg: list[SegItem] = []
    diff: list[DiffItem] = []
    vae: list[np.ndarray] = []
    for sample in samples:
        s, d = backend_items(sample, -1, rng)
        for it in s:
            if it.box is None and rng.random() < box_probability:
                it = dataclasses.replace(it, box=jittered_box(it.target, rng))
            seg.append(it)
        diff += d
        vae += [it.image for it in d]
        if sample.media == "image":
            vae.append(sample.image)
        elif sample.media == "video":
            vae.append(sample.video[int(rng.integers(len(sample.video)))])
    vae_images = _vae_images(vae, spec)
    if vae_crop:
        vae_images = random_crops(vae_images, vae_crop, spec.vae_size // spec.latent_size, rng)
    return BackendBatch(vae_images=vae_images, **_seg_tensors(seg, spec), **_diff_tensors(diff, spec))


def random_crops(images: torch.Tensor, side: int, stride: int, rng: np.random.Generator) -> torch.Tensor:
    """(P, 3, H, W) -> (P, 3, side, side): a window of each image at an offset drawn by
    `rng` on a grid of `stride` pixels (the VAE's downsampling factor, so that a window's
    latent cells are cells of the whole image's latent)."""
    p, _, h, w = images.shape
    if side % stride or not 0 < side <= min(h, w):
        raise ValueError(f"a crop side must be a multiple of {stride} in 1..{min(h, w)}, got {side}")
    ys = rng.integers(0, (h - side) // stride + 1, p) * stride
    xs = rng.integers(0, (w - side) // stride + 1, p) * stride
    if not p:
        return images[..., :side, :side]
    return torch.stack([im[:, y : y + side, x : x + side] for im, y, x in zip(images, ys, xs)])


# --------------------------------------------------------------------------- perception


@dataclass(frozen=True)
class PerceptionBatch:
    """Stage `perception`: images, and what each cell of each patch shows, for the vision
    tower and for SAM's image encoder. A patch is cut into c x c cells; a cell is labelled
    with the shape that covers most of it (`MIN_CELL_COVER` of it at least), or as
    background: its colour, kind and place (where the shape's centre is), each field's
    background label one past its classes."""

    # None: the batch was built without that encoder's half (`perception_batch`'s `encoders`).
    pixel_values: torch.Tensor | None = None  # (M, 3, S, S), the vision preprocess
    labels: dict[str, torch.Tensor] | None = None  # "colour", "kind", "place" -> (M, N, c*c) int64
    seg_pixel_values: torch.Tensor | None = None  # (M, 3, Ss, Ss), SAM's preprocess
    seg_labels: dict[str, torch.Tensor] | None = None  # "colour", "kind" -> (M, E*E, 1): a cell per embedding position


# A cell belongs to a shape if that shape's visible part covers at least this much of it.
MIN_CELL_COVER = 0.3
FIELD_NAMES = ("colour", "kind", "place")


def cell_owners(masks: np.ndarray, grid: int, cells: int) -> np.ndarray:
    """(n, H, W) visible masks of n shapes -> (grid*grid, cells*cells) int64: the shape
    that covers most of each cell (at least `MIN_CELL_COVER` of it), n where none does;
    patches row-major, then the cells of a patch row-major (the vision tower's order)."""
    n, h, w = masks.shape
    side = grid * cells
    if h % side or w % side:
        raise ValueError(f"a {h} x {w} image does not cut into {side} x {side} equal cells")
    owner = np.full((side, side), n, np.int64)
    if n:
        cover = masks.reshape(n, side, h // side, side, w // side).mean(axis=(2, 4), dtype=np.float32)
        owner = np.where(cover.max(axis=0) >= MIN_CELL_COVER, cover.argmax(axis=0), n)  # (side, side)
    # (grid, cells, grid, cells) -> (grid, grid, cells, cells) -> (N, c*c)
    return owner.reshape(grid, cells, grid, cells).transpose(0, 2, 1, 3).reshape(grid * grid, cells * cells)


def perception_batch(
    samples: Sequence[Sample],
    spec: DataSpec,
    rng: np.random.Generator,
    cells: int,
    encoders: Sequence[str] = ("vision", "seg"),
) -> PerceptionBatch:
    """A stage-`perception` batch: each sample's input image (a video: one frame, drawn by
    `rng`) with the fields of each cell's owner (`cell_owners`): `cells` per side of a
    vision patch, one per SAM embedding position. `encoders` picks the halves built
    ("vision": the tower's, "seg": SAM's); the other half is None."""
    unknown = set(encoders) - {"vision", "seg"}
    if unknown or not encoders:
        raise ValueError(f"encoders must name 'vision' and / or 'seg', got {tuple(encoders)}")
    images, shown = [], []
    for sample in samples:
        if sample.media == "none":
            continue
        t = int(rng.integers(len(sample.video))) if sample.media == "video" else 0
        images.append(sample.video[t] if sample.media == "video" else sample.image)
        shown.append(frame_fields(sample, t))
    if not images:
        raise ValueError("a perception batch needs samples with an image or a video")
    out = {}
    for encoder, prefix, prep, grid, c, names in (
        ("vision", "", spec.vision, math.isqrt(spec.num_patches), cells, ("colour", "kind", "place")),
        ("seg", "seg_", spec.seg, spec.seg_grid, 1, ("colour", "kind")),
    ):
        if encoder not in encoders:
            continue
        if any(image.shape[:2] != (prep.image_size, prep.image_size) for image in images):
            raise ValueError(f"perception needs images at the encoders' {prep.image_size} x {prep.image_size}")
        out[f"{prefix}pixel_values"] = torch.from_numpy(preprocess_images(images, prep))
        out[f"{prefix}labels"] = cell_fields(shown, grid, c, names)
    return PerceptionBatch(**out)


def frame_fields(sample: Sample, t: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Frame `t` of a sample's input (0 for an image): its shapes' visible masks (n, H, W)
    and, per field of `FIELD_NAMES`, the label of each shape then the background's (one
    past the field's classes): (n + 1,) int64."""
    masks = sample.shape_masks[t] if sample.media == "video" else sample.shape_masks
    scene = sample.scene.at(t)
    fields = {
        "colour": np.array([*(COLOUR_INDEX[x.colour] for x in scene.shapes), len(COLOURS)]),
        "kind": np.array([*(KIND_INDEX[x.kind] for x in scene.shapes), len(KINDS)]),
        "place": np.array([*(PLACE_INDEX[scene.place(i)] for i in range(len(scene))), len(PLACES)]),
    }
    return masks, fields


def cell_fields(
    shown: Sequence[tuple[np.ndarray, dict[str, np.ndarray]]], grid: int, cells: int, names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """`frame_fields` of M frames -> per field of `names`, the label of each cell's owner
    (`cell_owners`): (M, grid*grid, cells*cells) int64."""
    owners = [cell_owners(masks, grid, cells) for masks, _ in shown]
    empty = np.zeros((0, grid * grid, cells * cells), np.int64)  # a batch without images
    return {
        name: torch.from_numpy(np.stack([f[name][o] for (_, f), o in zip(shown, owners)]) if shown else empty)
        for name in names
    }
