"""Config dataclasses for every reference component, and the presets built from them.

One dataclass per row of DESIGN.md's component table. Configs are plain data (no torch
import), so the CLI, the manifest and the tests can read them without building anything.
Components that wrap a library model turn their config into the library's config with
`to_hf()` / `to_diffusers()`; those imports happen inside the method.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field

from vitron_rt.models.tokenizer import TINY_BASE_VOCAB

# What a denoising UNet predicts, in the runtime scheduler's names
# (`vitron_rt.runtime.pipelines.scheduler.PREDICTION_TYPES`, which the runtime checks).
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

# The `<module>` names of DESIGN.md, in the order of Vitron's letters A..G after `understand`.
MODULES: tuple[str, ...] = (
    "understand",
    "segment_image",
    "segment_video",
    "generate_image",
    "edit_image",
    "generate_video",
    "edit_video",
    "image_to_video",
)
# Which back end each module drives; `understand` drives none and has no signal projector.
MODULE_BACKEND: dict[str, str] = {
    "segment_image": "segmentation",
    "segment_video": "segmentation",
    "generate_image": "diffusion",
    "edit_image": "diffusion",
    "generate_video": "diffusion",
    "edit_video": "diffusion",
    "image_to_video": "diffusion",
}
SIGNAL_MODULES: tuple[str, ...] = tuple(m for m in MODULES if m in MODULE_BACKEND)


@dataclass(frozen=True)
class VisionConfig:
    """CLIP ViT vision tower. Vitron: LanguageBind_Image, a CLIP ViT-L/14 at 224 px."""

    image_size: int = 224
    patch_size: int = 14
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    # LLaVA's mm_vision_select_layer = -2: the penultimate layer's hidden states.
    select_layer: int = -2
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"  # OpenAI CLIP's activation
    # CLIP's normalisation; the runtime's preprocess reads these from the manifest.
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def to_hf(self):
        from transformers import CLIPVisionConfig

        return CLIPVisionConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            layer_norm_eps=self.layer_norm_eps,
            hidden_act=self.hidden_act,
        )


@dataclass(frozen=True)
class ProjectorConfig:
    """LLaVA `mm_projector`, kind mlp2x_gelu: Linear(Dv, D), GELU, Linear(D, D)."""

    in_dim: int = 1024
    out_dim: int = 4096
    kind: str = "mlp2x_gelu"


@dataclass(frozen=True)
class RegionConfig:
    """Vitron's `region_extractor`: mask-pooled patch features + a box location MLP -> 1 token."""

    feature_dim: int = 1024  # Dv, the vision tower's width
    out_dim: int = 4096  # D, the LLM's width
    grid: int = 16  # the patch grid the box is rasterised on (224 / 14)
    # 3 ReLU layers 1024 -> 4096 -> 4096 -> 4096, as in the released extractor.
    feature_layers: int = 3
    loc_hidden: int = 2048  # location MLP 4 -> 2048 -> 4096
    # The released extractor works in pixels of a fixed 224 x 224 frame (RegionExtractor's
    # image_size default, whatever the tower): its location MLP sees pixel coordinates and
    # its box mask is drawn at this size, then resized to the grid. Boxes arrive here
    # normalised to [0,1]; the encoder scales them by this.
    image_size: int = 224


@dataclass(frozen=True)
class LlmConfig:
    """LLaMA-family decoder (Vicuna-7B v1.5 for Vitron, SmolLM2 for tests)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    intermediate_size: int = 11008
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_hf(self):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            rope_scaling=self.rope_scaling,
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
        )

    @classmethod
    def from_hf(cls, hf) -> "LlmConfig":
        """Read the fields we keep from a transformers LlamaConfig (any LLaMA-family config)."""
        rope = getattr(hf, "rope_parameters", None) or {}
        theta = rope.get("rope_theta", getattr(hf, "rope_theta", 10000.0))
        scaling = getattr(hf, "rope_scaling", None)
        if scaling is None and rope.get("rope_type", "default") != "default":
            scaling = dict(rope)
        # transformers 5 aliases rope_scaling to rope_parameters, which is never None: plain
        # RoPE reads back as {"rope_type": "default", ...}. That is no scaling.
        if scaling is not None and scaling.get("rope_type", scaling.get("type")) == "default":
            scaling = None
        return cls(
            vocab_size=hf.vocab_size,
            hidden_size=hf.hidden_size,
            num_layers=hf.num_hidden_layers,
            num_heads=hf.num_attention_heads,
            num_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
            intermediate_size=hf.intermediate_size,
            max_position_embeddings=hf.max_position_embeddings,
            rms_norm_eps=hf.rms_norm_eps,
            rope_theta=float(theta),
            rope_scaling=scaling,
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            bos_token_id=hf.bos_token_id if hf.bos_token_id is not None else 1,
            eos_token_id=hf.eos_token_id if isinstance(hf.eos_token_id, int) else 2,
        )


@dataclass(frozen=True)
class SignalConfig:
    """The paper's decoding-side projectors: K signal tokens per module, their last-layer
    hidden states projected into a back end's conditioning. The projection has a
    task-invariant part (shared by every module) and a task-specific part, concatenated,
    then mapped to the back end's width."""

    num_tokens: int = 4  # K signal tokens <sig_0>..<sig_{K-1}>
    in_dim: int = 4096  # D, the LLM's width
    invariant_dim: int = 1024
    specific_dim: int = 1024
    # Back-end conditioning widths: SAM's prompt embedding, SD's cross-attention width.
    segmentation_dim: int = 256
    diffusion_dim: int = 768

    def out_dim(self, module: str) -> int:
        backend = MODULE_BACKEND[module]
        return self.segmentation_dim if backend == "segmentation" else self.diffusion_dim


@dataclass(frozen=True)
class SegConfig:
    """SAM-like segmentation back end (transformers SamModel). Default: SAM ViT-B."""

    image_size: int = 1024
    patch_size: int = 16
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    prompt_dim: int = 256  # SAM's output_channels == prompt encoder / mask decoder width
    decoder_layers: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    iou_head_hidden_dim: int = 256
    mask_input_channels: int = 16
    num_pos_feats: int = 128
    # Weight init std of random (non-checkpoint) weights. SAM's own 0.02 leaves a narrow
    # tiny decoder's mask logits near 1e-4, where a fp32 parity tolerance cannot tell a
    # right export from a wrong one; the tiny preset raises it.
    initializer_range: float = 0.02
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def embedding_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def mask_size(self) -> int:
        """Side of the low-resolution mask logits SAM predicts (4x the embedding grid)."""
        return 4 * self.embedding_size

    def to_hf(self):
        from transformers import SamConfig
        from transformers.models.sam.configuration_sam import (
            SamMaskDecoderConfig,
            SamPromptEncoderConfig,
            SamVisionConfig,
        )

        vision = SamVisionConfig(
            hidden_size=self.hidden_size,
            output_channels=self.prompt_dim,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
            window_size=self.window_size,
            global_attn_indexes=list(self.global_attn_indexes),
            mlp_dim=self.mlp_dim,
            num_pos_feats=self.num_pos_feats,
        )
        prompt = SamPromptEncoderConfig(
            hidden_size=self.prompt_dim,
            image_size=self.image_size,
            patch_size=self.patch_size,
            mask_input_channels=self.mask_input_channels,
        )
        decoder = SamMaskDecoderConfig(
            hidden_size=self.prompt_dim,
            mlp_dim=self.decoder_mlp_dim,
            num_hidden_layers=self.decoder_layers,
            num_attention_heads=self.decoder_heads,
            iou_head_hidden_dim=self.iou_head_hidden_dim,
        )
        return SamConfig(
            vision_config=vision.to_dict(),
            prompt_encoder_config=prompt.to_dict(),
            mask_decoder_config=decoder.to_dict(),
            initializer_range=self.initializer_range,
        )


@dataclass(frozen=True)
class UNetConfig:
    """diffusers UNet2DConditionModel. Default: Stable Diffusion 1.x (GLIGEN's base)."""

    sample_size: int = 64
    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    cross_attention_dim: int = 768
    attention_head_dim: int = 8
    norm_num_groups: int = 32
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )
    up_block_types: tuple[str, ...] = (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    )
    # Length of the text/conditioning sequence the UNet was trained with (CLIP text: 77).
    context_length: int = 77
    # Channels of the layout map drawn from the conditioning tokens and concatenated to the
    # latents (`vitron_rt.models.diffusion.Layout`); 0: none, a diffusers UNet as it is.
    layout_channels: int = 0
    # Side of the silhouette each conditioning token draws around its place in the layout
    # (`Layout`: a kernel swept over the token's `where`); 0 or 1: the place alone.
    layout_kernel: int = 0
    # What the UNet predicts, which the sampler must know: "epsilon" (SD-1.x),
    # "v_prediction" or "sample" (x0). The bundle records it for the runtime.
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        if self.layout_channels < 0:
            raise ValueError(f"layout_channels must be >= 0, got {self.layout_channels}")
        if self.layout_kernel < 0 or (self.layout_kernel > 1 and self.layout_kernel % 2 == 0):
            raise ValueError(f"layout_kernel must be 0 or an odd side, got {self.layout_kernel}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {self.prediction_type!r}; known: {', '.join(PREDICTION_TYPES)}")

    def to_diffusers(self) -> dict:
        """The UNet2DConditionModel's arguments: its input carries the layout channels too."""
        d = dataclasses.asdict(self)
        for k in ("context_length", "layout_channels", "layout_kernel", "prediction_type"):
            d.pop(k)
        d["in_channels"] = self.in_channels + self.layout_channels
        for k in ("block_out_channels", "down_block_types", "up_block_types"):
            d[k] = list(d[k])
        return d


@dataclass(frozen=True)
class VaeConfig:
    """diffusers AutoencoderKL. Default: Stable Diffusion 1.x's VAE (8x downsampling)."""

    sample_size: int = 512
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def to_diffusers(self) -> dict:
        n = len(self.block_out_channels)
        return dict(
            sample_size=self.sample_size,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            latent_channels=self.latent_channels,
            block_out_channels=list(self.block_out_channels),
            layers_per_block=self.layers_per_block,
            norm_num_groups=self.norm_num_groups,
            scaling_factor=self.scaling_factor,
            down_block_types=["DownEncoderBlock2D"] * n,
            up_block_types=["UpDecoderBlock2D"] * n,
        )


@dataclass(frozen=True)
class VitronConfig:
    """Every component's config: one preset. `seed` makes random weights reproducible."""

    name: str
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    region: RegionConfig = field(default_factory=RegionConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    signal: SignalConfig = field(default_factory=SignalConfig)
    seg: SegConfig = field(default_factory=SegConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    # Frames sampled uniformly from a video (LanguageBind_Video_merge: 8).
    video_frames: int = 8
    chat_template: str = "vicuna_v1"
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def config_differences(recorded: Mapping, config) -> list[str]:
    """The dotted field names where a recorded config (`to_dict`, through JSON) and the
    dataclass `config` differ. A field the record lacks was added since it was written: it
    differs only where `config` holds another value than the field's default (a default
    keeps what the code did before the field existed); a field without a default always
    differs. A recorded field `config` lacks differs."""
    out, names = [], set()
    for f in dataclasses.fields(config):
        names.add(f.name)
        value = getattr(config, f.name)
        if f.name not in recorded:
            if f.default is not MISSING:
                default = f.default
            elif f.default_factory is not MISSING:
                default = f.default_factory()
            else:  # a field every config must give: the record cannot stand for this one
                default = MISSING
            if default is MISSING or value != default:
                out.append(f.name)
        elif dataclasses.is_dataclass(value) and isinstance(recorded[f.name], Mapping):
            out += [f"{f.name}.{d}" for d in config_differences(recorded[f.name], value)]
        else:
            plain = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
            if json.loads(json.dumps(plain)) != recorded[f.name]:  # tuples as JSON lists
                out.append(f.name)
    return out + sorted(set(recorded) - names)


def _tiny() -> VitronConfig:
    """Seeded random weights, small enough to export and check every component in seconds.

    Widths are multiples of 8 so GroupNorm / attention heads divide evenly; the LLM has
    GQA (4 query heads over 2 KV heads) so the KV path of the real models is exercised.
    """
    d, dv, k = 64, 32, 2
    return VitronConfig(
        name="tiny",
        vision=VisionConfig(
            image_size=32, patch_size=8, hidden_size=dv, num_layers=2, num_heads=2, intermediate_size=64
        ),
        projector=ProjectorConfig(in_dim=dv, out_dim=d),
        region=RegionConfig(feature_dim=dv, out_dim=d, grid=4, loc_hidden=32, image_size=32),
        llm=LlmConfig(
            vocab_size=TINY_BASE_VOCAB + 2 + k,  # bytes + <image>, <region>, K signal tokens
            hidden_size=d,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=128,
            max_position_embeddings=512,
            tie_word_embeddings=True,
        ),
        signal=SignalConfig(
            num_tokens=k, in_dim=d, invariant_dim=16, specific_dim=16, segmentation_dim=32, diffusion_dim=32
        ),
        seg=SegConfig(
            image_size=64,
            patch_size=8,
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            mlp_dim=64,
            window_size=4,
            global_attn_indexes=(1,),
            prompt_dim=32,
            decoder_layers=2,
            decoder_heads=2,
            decoder_mlp_dim=64,
            iou_head_hidden_dim=32,
            # SAM's own 16: with 4 the mask embedding's first LayerNorm sees 1 channel (4 // 4)
            # and maps every mask_input to the same constant.
            mask_input_channels=16,
            num_pos_feats=16,
            initializer_range=0.2,  # mask logits O(0.1-1), see SegConfig
        ),
        unet=UNetConfig(
            sample_size=8,
            block_out_channels=(16, 32),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            context_length=8,
            layout_channels=4,
        ),
        vae=VaeConfig(sample_size=32, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8),
        video_frames=4,
    )


def _mini() -> VitronConfig:
    """Every component small enough to train from scratch on 2 CPU cores, on ShapesWorld
    (`vitron_rt.shapes`, 128 x 128 images; `vitron_rt.train` trains it).

    Vision: 128 px in 16 px patches, 64 tokens per image (4 frames of a video: 256), all 4
    layers used (select_layer -1: no layer computed only to be dropped). LLM: 4 layers at
    256 wide, GQA 8 over 4 heads, vocabulary of the ShapesWorld BPE tokenizer
    (`vitron_rt.shapes.vocab`, trained to exactly this size). Segmentation: SAM at 128 px,
    16 x 16 embeddings, 64 x 64 mask logits. Diffusion in latent space: a 3-block VAE
    (4x down) at 64 px, so the UNet denoises 4 x 16 x 16 latents conditioned on the K
    signal tokens; the VAE is trained to unit-scale latents, hence scaling_factor 1.
    """
    d, dv, k = 256, 128, 4
    return VitronConfig(
        name="mini",
        vision=VisionConfig(
            image_size=128,
            patch_size=16,
            hidden_size=dv,
            num_layers=4,
            num_heads=4,
            intermediate_size=4 * dv,
            select_layer=-1,
        ),
        projector=ProjectorConfig(in_dim=dv, out_dim=d),
        region=RegionConfig(feature_dim=dv, out_dim=d, grid=8, loc_hidden=dv, image_size=128),
        llm=LlmConfig(
            vocab_size=576,  # = vitron_rt.shapes.vocab's trained size (a test checks it)
            hidden_size=d,
            num_layers=4,
            num_heads=8,
            num_kv_heads=4,
            intermediate_size=704,
            max_position_embeddings=512,  # a 4-frame video prompt is ~360 positions
            tie_word_embeddings=True,
        ),
        signal=SignalConfig(
            num_tokens=k, in_dim=d, invariant_dim=128, specific_dim=128, segmentation_dim=64, diffusion_dim=128
        ),
        seg=SegConfig(
            image_size=128,
            patch_size=8,
            hidden_size=96,
            num_layers=4,
            num_heads=4,
            mlp_dim=384,
            window_size=8,
            global_attn_indexes=(1, 3),
            prompt_dim=64,
            decoder_layers=2,
            decoder_heads=4,
            decoder_mlp_dim=256,
            iou_head_hidden_dim=64,
            mask_input_channels=16,
            num_pos_feats=32,
            # Trained from scratch: at SAM's 0.02 the decoder's mask logits start ~1e-4 and
            # the mask loss barely moves for the first hundred steps (measured); 0.1 learns.
            initializer_range=0.1,
        ),
        # Two levels (16 and 8 latent pixels), both cross-attending to the signal tokens:
        # enough for 16 x 16 latents of flat shapes; a third level about doubled the step.
        unet=UNetConfig(
            sample_size=16,
            block_out_channels=(64, 128),
            layers_per_block=1,
            cross_attention_dim=128,
            attention_head_dim=8,
            norm_num_groups=32,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            context_length=k,
            # A layout drawn from the signal tokens, and x0 prediction: measured on the UNet
            # alone (250 steps of text-to-image on true codes, judged on 48 held-out
            # requests), the asked colour / colour in its place were drawn 61 / 29 % of the
            # time with neither, 61 / 27 % with the layout alone (epsilon), 89 / 29 % with x0
            # alone and 91 / 82 % with both (see `vitron_rt.models.diffusion`).
            layout_channels=16,
            prediction_type="sample",
        ),
        vae=VaeConfig(
            sample_size=64, block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16, scaling_factor=1.0
        ),
        video_frames=4,
    )


def _vitron_7b() -> VitronConfig:
    """The released Vitron's dimensions: CLIP ViT-L/14 @224, Vicuna-7B, SAM ViT-B, SD-1.x."""
    k = SignalConfig().num_tokens
    # Vicuna's 32000 rows + <image>, <region> and the K signal tokens added by the tokenizer.
    return VitronConfig(name="vitron-7b", llm=LlmConfig(vocab_size=32000 + 2 + k))


PRESETS = {"tiny": _tiny, "mini": _mini, "vitron-7b": _vitron_7b}


def preset(name: str) -> VitronConfig:
    """The named preset's config; an unknown name is a ValueError listing the known ones."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
