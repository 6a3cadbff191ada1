"""The paper's training recipe, scaled down to ShapesWorld: stages as objects.

    stage        data (vitron_rt.shapes.tasks)        trains                          losses
    ──────────── ──────────────────────────────────── ─────────────────────────────── ──────────────────────────────
    autoencoder  the back-end tasks' images           VAE                              L1 + MSE recon, latent scale
    perception   ALIGNMENT_MIX's images, no text      vision tower, its head           colour, kind and place of every
                                                                                       cell of every patch
                                                                                       (`perception`)
    seg_perception  the same                          SAM encoder, its head            colour and kind of every patch
    backends     the back-end tasks, no text          SAM, UNet, code encoders         masks prompted by codes (+box,
                                                                                       +previous mask); denoising
                                                                                       conditioned on codes
    invocation   text-to-image requests (no image)    LLM                              LLM (reply text + <sig_k>)
    alignment    ALIGNMENT_MIX: captions              projector, LLM                   LLM (caption tokens) + the
                                                                                       projector's words (what each
                                                                                       patch shows, `perception`)
    instruction  INSTRUCTION_MIX: every task (video   projector, region, LLM,          LLM (reply text + <sig_k>) +
                 at half weight), image questions     signal projectors                words + alignment of the
                 with follow-up turns                                                  projected signal to the
                                                                                       target's code + the asked
                                                                                       shape's words in the states
                                                                                       that find and read it
                                                                                       (`ground_words`) and in
                                                                                       each region token
    pixel        PIXEL_MIX + the understanding tasks  LLM, signal projectors,          LLM + alignment of the projected
                                                      SAM decoder, UNet (lr x0.1)      signal to the target's code +
                                                                                       mask and denoising losses
                                                                                       through the projectors

Vitron starts from pretrained parts (a CLIP tower, Vicuna, SEEM, GLIGEN) and its first
stage trains only the projector; here every part starts from random weights. So the
first four stages stand in for the specialists' own pretraining: the back ends learn from
a small conditioning encoder of their own (`conditioning`: a scene code, the role SD's
text encoder plays for GLIGEN), which needs no LLM step per example, the expensive part
on 2 cores, and the vision tower and SAM's encoder first learn to see from the
renderer's ground truth (the role CLIP's and SAM's pretraining play). The LLM first
learns to copy a request's words into its reply on text alone (`invocation`, the
language pretraining Vicuna brings: a message names what was asked). Then the paper's
three stages, the vision tower frozen from here on (as LLaVA's is; trained on through the
LLM loss, it lost what perception taught it): (1) vision-language alignment, training the
LLM with the projector; (2) the paper's invocation-oriented instruction tuning (stage
`instruction`, not `invocation`), with the signal projectors aligned to the back ends'
codes from here on; (3) pixel-level alignment: the signal projectors are pulled towards
the codes the back ends understand (NExT-GPT's decoding-side alignment) while the
back-end losses flow through them into the LLM.

A `Stage` is plain configuration you can hold, print and change before anything runs; the
`Trainer` (`vitron_rt.train.trainer`) runs one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from vitron_rt.shapes.tasks import ALIGNMENT_MIX, INSTRUCTION_MIX, PIXEL_MIX, TASKS

# Trainable groups: a name -> the parameters it covers (see `trainer.group_parameters`).
GROUPS: tuple[str, ...] = (
    "vision",  # vision_encoder
    "projector",  # mm_projector
    "region",  # region_encoder
    "llm",  # llm_decoder with its (tied) embedding
    "signal",  # every signal projector and their shared invariant MLP
    "seg_encoder",  # SAM's image encoder
    "seg_decoder",  # SAM's prompt encoder and mask decoder
    "unet",
    "vae",
    "codes",  # the back ends' code encoders (training scaffolding, not exported)
    "patch_head",  # the perception stage's per-patch heads (training scaffolding, not exported)
)
KINDS = ("autoencoder", "perception", "backends", "language", "pixel")
LOSSES = (
    "recon",
    "latent_scale",
    "patch",
    "seg_patch",
    "code_mask",
    "code_denoise",
    "lm",
    "words",
    "region_words",
    "ground",
    "ground_words",
    "align",
    "mask",
    "denoise",
)


@dataclass(frozen=True)
class Stage:
    """One training stage: what data, which parameters, which losses (weights), how fast.

    `kind` picks the step: "autoencoder" (the VAE), "backends" (SAM and the UNet on
    codes), "perception" (the vision tower and SAM's encoder on per-patch ground truth),
    "language" (LLM loss only), "pixel" (LLM loss, alignment, and the back-end losses
    through the signal projectors). `loss_weights` name the losses of `LOSSES`
    that are summed; a loss of weight 0 is not computed. `lr_scale` multiplies the
    learning rate of some groups (back ends fine-tuned gently after their pretraining).
    """

    name: str
    kind: str
    mix: dict[str, float]
    trainable: tuple[str, ...]
    loss_weights: dict[str, float]
    batch_size: int
    lr: float
    lr_scale: dict[str, float] = field(default_factory=dict)
    warmup: int = 20
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    # Timesteps drawn per diffusion target: the rest of the step (the LLM, the VAE
    # encoder) is paid once for all of them.
    diffusion_draws: int = 2
    # Video samples make a batch ~3x longer (256 image positions); batches are drawn
    # either all-video or video-free, video with this share of the mix's weight.
    bucket_by_media: bool = True
    # The VAE's images cut to random windows of this side (`data.random_crops`); 0: whole.
    # A convolutional autoencoder learns the same per-pixel map from a window, for less.
    vae_crop: int = 0
    # Follow-up questions added to each image-understanding sample without a region
    # (`TaskGenerator.with_follow_ups`): more answers taught per image forward.
    follow_ups: int = 0
    # The `ground` loss (`vitron_rt.train.grounding`): which LLM head learns to look at the
    # shape a question is about, from the position that predicts the answer (and from each
    # signal token of a segmentation or edit), and which from the last token of the words
    # naming the shape; `ground_roles` picks which of the two (`data.Batch.ground_roles`).
    ground_layer: int = 2
    ground_head: int = 0
    ground_ref_layer: int = 1
    ground_ref_head: int = 0
    # ... and which head, from the position that predicts the answer (or from each signal
    # token), learns to read those words (or the <region> token): role 2.
    ground_read_layer: int = 2
    ground_read_head: int = 1
    ground_roles: tuple[int, ...] = (0, 1)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"stage kind must be one of {KINDS}, got {self.kind!r}")
        unknown = set(self.trainable) - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown trainable groups {sorted(unknown)}; known: {', '.join(GROUPS)}")
        unknown = set(self.lr_scale) - set(self.trainable)
        if unknown:
            raise ValueError(f"lr_scale names groups the stage does not train: {sorted(unknown)}")
        unknown = set(self.loss_weights) - set(LOSSES)
        if unknown:
            raise ValueError(f"unknown losses {sorted(unknown)}; known: {', '.join(LOSSES)}")
        unknown = set(self.mix) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)} in the mix of stage {self.name!r}")
        if not set(self.ground_roles) <= {0, 1, 2}:
            roles = self.ground_roles
            raise ValueError(
                f"stage {self.name!r}: ground_roles are 0 (answers, signals), 1 (words) and 2 (reading), got {roles}"
            )
        heads = (self.ground_layer, self.ground_head, self.ground_ref_layer, self.ground_ref_head)
        if min(*heads, self.ground_read_layer, self.ground_read_head) < 0:
            raise ValueError(f"stage {self.name!r}: grounding layers and heads must be >= 0")
        if self.follow_ups < 0:
            raise ValueError(f"stage {self.name!r}: follow_ups must be >= 0, got {self.follow_ups}")
        if self.vae_crop < 0:
            raise ValueError(f"stage {self.name!r}: vae_crop must be >= 0 (0: whole images), got {self.vae_crop}")
        if self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"stage {self.name!r}: batch_size must be >= 1 and lr > 0")

    def replace(self, **changes) -> "Stage":
        return dataclasses.replace(self, **changes)


def _with_understanding(pixel: dict[str, float], share: float) -> dict[str, float]:
    """The pixel tasks plus the understanding tasks at `share` of the total weight, so the
    last stage does not wash out what instruction tuning taught."""
    understanding = {t: w for t, w in INSTRUCTION_MIX.items() if t not in pixel}
    scale = share / (1.0 - share) * sum(pixel.values()) / sum(understanding.values())
    return {**pixel, **{t: w * scale for t, w in understanding.items()}}


def _video_scaled(mix: dict[str, float], factor: float) -> dict[str, float]:
    """`mix` with every video task's weight times `factor` (a video sample costs ~3 image
    samples' LLM time: 4 frames of patches)."""
    return {t: w * factor if TASKS[t].media == "video" else w for t, w in mix.items()}


# Learning rates suit models this small trained from scratch (AdamW, warmup, cosine decay).
AUTOENCODER = Stage(
    name="autoencoder",
    kind="autoencoder",
    mix=dict(PIXEL_MIX),  # only the images are used: inputs and targets
    trainable=("vae",),
    loss_weights={"recon": 1.0, "latent_scale": 0.1},
    # Steps (at a batch of 4 or more) make the VAE keep a shape's kind. Reconstructions of 32
    # held-out text-to-image targets the shapes judge accepts (the pictures: 31): batch 16,
    # 80 steps 0, 140 steps 2, 500 steps 28 (0.87 s a step on 2 threads); batch 8, 500
    # steps 21, 700 steps 27 (0.43 s); batch 4, 800 steps 21, 1000 steps 27 (0.26 s).
    # Again on 64 (a fresh VAE from the mini seed, every asked shape read back right / of
    # the asked kind): batch 4, 650 steps 64 / 74 %, 1000 steps 80 / 88 %, 1300 steps 94 /
    # 95 %; batch 2, 1300 steps 64 / 76 %; at 650 steps, lr 3e-3 36 / 47 %, a foreground
    # weight of 30 (`trainer.VAE_FOREGROUND_WEIGHT`) 42 / 56 %. Generation and edits can
    # draw no better than their VAE decodes (the full recipe with 1200 whole-image steps
    # instead of 650 drew 7 of 56 text-to-image requests right instead of 0, but took 30.0
    # minutes). Windows of 48 of the 64 pixels cost 0.14 s a step instead of 0.26 and keep
    # most of it: 1300 steps 92 / 94 % (185 s), 1200 steps 84 / 90 %; windows of 32, 1300
    # steps, 39 / 56 % at batch 4 and 80 / 86 % at batch 8 (0.13 s).
    batch_size=4,
    lr=1e-3,
    vae_crop=48,
)
# The two encoders learn to see in stages of their own: the vision tower needs twice the
# steps SAM's encoder does (measured on held-out cells: the tower's kind right on 53-65 %
# after 500 steps, 92 % after 1000; SAM's encoder, 8-pixel patches, 96 % after 500), and its
# steps cost less than half of SAM's (0.15 s against 0.39 s at batch 24 in the shipped run).
PERCEPTION = Stage(
    name="perception",
    kind="perception",
    mix=dict(ALIGNMENT_MIX),  # captioned scenes: 1-4 shapes, images and video frames
    trainable=("vision", "patch_head"),
    loss_weights={"patch": 1.0},
    batch_size=24,
    lr=2e-3,
)
SEG_PERCEPTION = PERCEPTION.replace(
    name="seg_perception", trainable=("seg_encoder", "patch_head"), loss_weights={"seg_patch": 1.0}
)
# Text-to-image weighs 3 here (2 in the instruction mix): the UNet learns to draw from the
# codes in this stage alone (in `pixel` at a tenth of the rate). Alone on text-to-image
# with true codes (its layout and x0 prediction, 32 images a step), it drew the asked
# colour in the asked place 82 % of the time after 250 steps and 86 % after 450, so
# colour and place want a few thousand images; the kind stayed at ~30 % either way.
BACKENDS = Stage(
    name="backends",
    kind="backends",
    mix={**PIXEL_MIX, "gen_image": 3.0},
    trainable=("seg_encoder", "seg_decoder", "unet", "codes"),
    loss_weights={"code_mask": 1.0, "code_denoise": 1.0},
    batch_size=16,
    lr=1e-3,
    diffusion_draws=4,
)
# Text-only requests teach the LLM to copy: a text-to-image reply repeats the request's
# shapes in its prose and instruction, and a 4-layer LLM trained from scratch does not
# learn that from the instruction mix, where it defaulted to frequent words ("Draw a red
# triangle" -> "a purple triangle"). Measured on half-length runs from the same start
# (alignment 120, instruction 270 steps; teacher-forced probe, 48 held-out samples a task):
# with 300 of these steps first (batch 32), text-to-image replies right word for word
# 0 % -> 85 %, image segmentation 10 % -> 52 %, video segmentation 19 % -> 44 %; 100 steps
# gave 42 % / 8 % / 8 %, and the same requests mixed into alignment instead 0 %. Batch 16
# here (0.33 s a step, the LLM's forward and backward: building the batch takes 0.02 s). In
# the full recipe (session 6's shipped run against the one before it, same probe): 8 % -> 83 %,
# 52 % -> 75 %, 42 % -> 67 %, and SAM's masks from the signal tokens mIoU 0.55 -> 0.69.
INVOCATION = Stage(
    name="invocation",
    kind="language",
    mix={"gen_image": 1.0},
    trainable=("llm",),
    loss_weights={"lm": 1.0},
    batch_size=16,
    lr=1e-3,
)
# The projector's word objective ("words", `perception.words_loss`): each projected patch,
# read by the LLM's output head, predicts the words of what it shows (its colour, kind and
# place), as CLIP's language-aligned features give LLaVA's projector a head start. Measured
# from one start (session 7's shipped vision tower, a fresh LLM and projector: invocation
# 300, alignment 230, then 300 steps of image QA alone; teacher-forced probe, 48 held-out
# samples a task), without -> with it: colour questions 17 -> 71 %, region colour 27 -> 65 %,
# the moving shape's colour 10 -> 56 %, but counting 58 -> 29 % (video count 46 -> 23 %);
# kind and place unchanged. With it in the QA steps as well, those four: 58, 71, 35, 42 %.
# The full recipe at seed 0, eval-mini: image QA 49.2 -> 54.1 %, region QA 30.6 -> 53.2 %.
ALIGNMENT = Stage(
    name="alignment",
    kind="language",
    mix=dict(ALIGNMENT_MIX),
    trainable=("projector", "llm"),
    loss_weights={"lm": 1.0, "words": 1.0},
    batch_size=16,
    lr=1e-3,
)
# Instruction tuning also aligns the projected signal tokens to their targets' codes (what
# NExT-GPT does from its first stage): it costs nothing beside the LLM step, and without it
# the signal states did not carry the target (measured on the first trained mini: a linear
# probe of the <sig_k> states read the referred shape's kind at chance, and the segment
# projector's output barely varied between samples, 0.06 std against a code's 0.64).
# Grounding ("ground", `vitron_rt.train.grounding`): one head (layer 2, head 0) is pulled
# from each answer's query and each image segmentation or edit's signal tokens to the asked
# shape's patches, another (layer 1, head 0) from the last token of the words naming it.
# Measured from one start (the shipped vision tower and back ends, a fresh LLM, projector,
# region encoder and signal projectors; invocation 300, alignment 230, then this stage's
# 520 steps without signal alignment; teacher-forced probe, 48 held-out a task), without ->
# with it at 0.5: colour questions 58 -> 71 %, kind 52 -> 60 %, place 46 -> 50 %, all QA
# 49.7 -> 51.6 % (counting and video QA the same or lower). The answer head's loss stalls
# near 2.1, the cross entropy of attention spread over every shape's patches (the target's
# own entropy is 1.4): it learns where the shapes are sooner than which one is asked about.
# Not in the recipe: the full run with it at 0.5 here and in `pixel` (and text-to-image
# targets at radius 22-28) scored lower on eval-mini than the shipped weights (image QA
# 51.4 -> 48.6 %, image segmentation 0.566 -> 0.480 mIoU, image edits 14.5 -> 9.1 %).
# In the recipe instead: `ground_words` on roles 1 and 2. The words' state after layer 1
# (role 1) and the answer's (or signal token's) state after layer 2 (role 2, which reads
# the words or the <region>) predict the asked shape's words, read by the output head;
# `region_words` asks each region token for the words of the shape in its box. From the
# same start as above, all QA / colour / kind / place / region colour / region kind:
#   without                                        49.7 / 58 / 52 / 46 / 60 / 62 %
#   attention of roles 1 + 2 at 0.5, region words  50.2 / 65 / 62 / 56 / 62 / 60 %
#     the same with role 0 (the answer's head)      49.8 / 67 / 67 / 46 / 67 / 62 %
#     the same at weight 2                          49.5 / 62 / 62 / 52 / 62 / 58 %
#     the same + ground_words                       52.4 / 73 / 71 / 60 / 79 / 77 %
#   ground_words + region words (the recipe)        53.5 / 75 / 71 / 56 / 73 / 73 %
# (counting and the video questions, which grounding does not cover, the same or lower.)
# With attention alone both hops formed (role 1's head put 66 % of its mass on the asked
# shape, role 2's all of it on the words), yet a linear probe read the asked colour off the
# words' state after layer 1 on 81 % of held-out questions and off the answer's after
# layer 2 on 64 %, as before: the read did not carry what the words had found. With
# ground_words (the recipe's row) the same probes read 85 % and 76 %.
# The selection wants steps: from that start, the recipe's row with 780 steps instead of
# 520 (2 threads, 532 s) read all QA 64.4 %, colour 94 %, kind 81 %, place 81 %, region
# colour 92 %, region kind 88 %. To pay for them, video tasks weigh half here (a video
# sample costs ~3 image samples' LLM time; 0.74 s a step against 0.77). Full runs,
# eval-mini (image QA / region QA / video QA of 21 / image mIoU / video J&F), against the
# recipe before (520 steps, video at full weight; 28.1 min): 60.5 / 71.2 / 52.4 % / 0.528
# / 0.484. 780 steps (autoencoder 750, perception 900; 31.5 min, over the budget): 70.8 /
# 67.6 / 38.1 % / 0.577 / 0.469. The recipe, 720 steps (autoencoder 650, perception 900,
# backends 230, pixel 220; 26.7 min), with existence questions answered "yes" grounded
# on the shape they name: 69.2 / 71.2 / 52.4 % / 0.547 / 0.469. Existence questions went
# 54 -> 70 % (780 steps, not grounded) and 65 % (the recipe): the grounding's own effect is
# within the noise of 37 questions.
INSTRUCTION = Stage(
    name="instruction",
    kind="pixel",
    mix=_video_scaled(INSTRUCTION_MIX, 0.5),
    trainable=("projector", "region", "llm", "signal"),
    loss_weights={"lm": 1.0, "words": 1.0, "align": 1.0, "ground_words": 1.0, "region_words": 1.0},
    batch_size=16,
    lr=6e-4,
    follow_ups=3,
    ground_roles=(1, 2),
)
# `ground_words` here too: the full run without it in this stage (the stages before it
# byte-identical), eval-mini against the run with it (520 instruction steps then): image
# QA 55.7 / 60.5 %, region QA 67.6 / 71.2 %, video QA 42.9 / 52.4 %, image segmentation
# 0.559 / 0.528 mIoU, image edits 9.1 % both.
PIXEL = Stage(
    name="pixel",
    kind="pixel",
    mix=_with_understanding(PIXEL_MIX, 0.25),
    trainable=("llm", "signal", "seg_decoder", "unet"),
    loss_weights={"lm": 1.0, "align": 1.0, "mask": 0.5, "denoise": 0.5, "ground_words": 1.0},
    lr_scale={"seg_decoder": 0.1, "unet": 0.1},
    batch_size=8,
    lr=4e-4,
    ground_roles=(1, 2),
)
STAGES: dict[str, Stage] = {
    s.name: s
    for s in (AUTOENCODER, PERCEPTION, SEG_PERCEPTION, BACKENDS, INVOCATION, ALIGNMENT, INSTRUCTION, PIXEL)
}
