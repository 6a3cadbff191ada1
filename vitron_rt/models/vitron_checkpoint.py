"""Loading (and writing) checkpoints in the released Vitron / LLaVA layout.

The released Vitron (SkyworkAI/Vitron) is a LLaVA `LlavaLlamaForCausalLM`. Its state-dict
keys, and the component each one feeds here:

    model.embed_tokens.* model.layers.* model.norm.* lm_head.*  -> llm (LlamaForCausalLM keys)
    model.mm_projector.{0,2}.{weight,bias}                      -> mm_projector (mlp2x_gelu)
    model.region_extractor.region_linear.layers.{0,1,2}.*       -> region_encoder
    model.region_extractor.loc_encoder.loc_encoder.{0,2}.*      -> region_encoder
    model.image_tower.image_tower.{embeddings,pre_layrnorm,encoder,post_layernorm}.*
                                       -> vision_encoder (Vitron: LanguageBind_Image's vision_model)
    model.vision_tower.vision_tower.vision_model.*              -> vision_encoder (LLaVA's name)
    model.video_tower.video_tower.*    skipped: LanguageBind_Video_merge is not a component here
    *.rotary_emb.inv_freq              skipped: a derived buffer older transformers saved

LLaVA builds its towers with `delay_load=True` and reads their weights from the tower's own
folder (`config.mm_image_tower` / `mm_vision_tower`), so the vision weights come from, in
order: `vision_path`; the tower keys inside the checkpoint; that named folder when it
exists locally. A CLIP folder may be a CLIPVisionModel, a full CLIPModel, or LanguageBind's
(text half skipped; a PEFT-wrapped encoder is unwrapped and its LoRA merged).

The released weights ship as a LoRA fine-tune (`Vitron-lora`: adapter_config.json,
adapter_model.bin, non_lora_trainables.bin, config.json) over a full base folder
(`Vitron-base`); LLaVA's builder loads the base, overlays non_lora_trainables (keys
`base_model.model.model.mm_projector.*` ...), then merges the adapter (r=128,
alpha=256). `load_vitron` does the same: W += B @ A * alpha / r (alpha / sqrt(r) for
rsLoRA), alpha and r from adapter_config.json. A full folder that carries lora_A/lora_B
keys itself is merged the same way. DoRA and embedding LoRA are refused by name.

Loading is strict: `weights.assign_strict` per component, with keys shown under their
checkpoint names, so a missing, unexpected or mis-shaped key is a CheckpointError naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vitron_rt.models.config import (
    LlmConfig,
    ProjectorConfig,
    RegionConfig,
    VisionConfig,
    VitronConfig,
    preset,
)
from vitron_rt.models.llm import LlmDecoder
from vitron_rt.models.projector import MMProjector, released_key_map
from vitron_rt.models.region import RegionEncoder
from vitron_rt.models.tokenizer import PreparedTokenizer, from_transformers
from vitron_rt.models.vision import VisionEncoder
from vitron_rt.models.weights import CheckpointError, assign_strict, read_state_dict

PROJECTOR_PREFIX = "model.mm_projector."
REGION_PREFIX = "model.region_extractor."
# Where the checkpoint keeps the image tower; Vitron's name first (its tower *is* the vision
# transformer, so no `vision_model.`), then LLaVA's.
VISION_PREFIXES = (
    "model.image_tower.image_tower.",
    "model.vision_tower.vision_tower.vision_model.",
    "model.vision_tower.vision_tower.",
)
SAVE_VISION_PREFIX = VISION_PREFIXES[0]
# Keys we know and deliberately do not load, with the reason the report gives.
SKIPPED_PREFIXES = {"model.video_tower.": "video tower (LanguageBind_Video_merge), not a component of this runtime"}
SKIPPED_SUFFIXES = {".rotary_emb.inv_freq": "derived RoPE buffer"}
# The text half of a full CLIP / LanguageBind folder, and a buffer older CLIPs saved.
_CLIP_SKIPPED = ("text_model.", "visual_projection.", "text_projection.", "logit_scale", "embeddings.position_ids")
# Files in a checkpoint folder that hold no model weights (or not the base model's).
_NOT_MODEL_WEIGHTS = {
    "adapter_model.bin",
    "adapter_model.safetensors",
    "non_lora_trainables.bin",
    "training_args.bin",
    "mm_projector.bin",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
}
# The released RegionExtractor is built with its defaults: a fixed 224-px frame, 3 layers.
RELEASED_REGION_IMAGE_SIZE = 224
RELEASED_REGION_FEATURE_LAYERS = 3


# ---------------------------------------------------------------------------------------
# What load_vitron returns


@dataclass
class LoadReport:
    """Where the weights came from and what was done to them, for logs and the manifest."""

    checkpoint: str
    base: str | None = None  # the base folder of a LoRA adapter folder
    vision: str = ""  # where the vision tower's weights were read
    lora_modules: int = 0  # linear layers that had a LoRA delta merged in
    lora_scale: float | None = None  # alpha / r of the LLM adapter
    added_token_rows: int = 0  # embedding / head rows added for tokens the checkpoint lacks
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> checkpoint keys


@dataclass
class VitronParts:
    """The front half of a Vitron checkpoint as reference modules, with their configs."""

    llm: LlmDecoder
    vision_encoder: VisionEncoder
    mm_projector: MMProjector
    region_encoder: RegionEncoder
    tokenizer: PreparedTokenizer
    llm_config: LlmConfig
    vision_config: VisionConfig
    projector_config: ProjectorConfig
    region_config: RegionConfig
    num_signal_tokens: int
    report: LoadReport | None = None

    def vitron_config(self, base: VitronConfig | None = None) -> VitronConfig:
        """`base` (default: the vitron-7b preset) with this checkpoint's front-end configs and
        K signal tokens at the LLM's width; the back ends keep `base`'s configs."""
        base = base or preset("vitron-7b")
        signal = dataclasses.replace(base.signal, num_tokens=self.num_signal_tokens, in_dim=self.llm_config.hidden_size)
        return dataclasses.replace(
            base,
            name=Path(self.report.checkpoint).name if self.report else base.name,
            vision=self.vision_config,
            projector=self.projector_config,
            region=self.region_config,
            llm=self.llm_config,
            signal=signal,
            chat_template="vicuna_v1",
        )


# ---------------------------------------------------------------------------------------
# Folder inspection


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({e})") from None


def _has_mm_fields(cfg: Mapping) -> bool:
    return any(k.startswith("mm_") for k in cfg)


def _model_weight_files(folder: Path) -> list[Path]:
    """The base model's weight files in `folder`: shards from an index, else every weight
    file except adapters, trainer state and projector-only dumps."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            weight_map = _read_json(index).get("weight_map", {})
            return [folder / name for name in sorted(set(weight_map.values()))]
    for pattern in ("*.safetensors", "*.bin"):
        files = [f for f in sorted(folder.glob(pattern)) if f.name not in _NOT_MODEL_WEIGHTS]
        if files:
            return files
    return []


def _weight_key_names(folder: Path) -> Iterator[str]:
    """Tensor names of a folder without loading tensors (index files and safetensors headers)."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            yield from _read_json(index).get("weight_map", {})
            return
    from safetensors import safe_open

    for f in sorted(folder.glob("*.safetensors")):
        with contextlib.suppress(Exception), safe_open(str(f), "pt") as handle:
            yield from handle.keys()


def is_vitron_folder(path: str | Path) -> bool:
    """True for an HF-style folder in the LLaVA / Vitron layout: its config.json has `mm_*`
    fields, or its weights (index or safetensors headers) have `model.mm_projector.*` keys.
    Cheap: reads JSON and safetensors headers only, never `.bin` weights."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    config = folder / "config.json"
    if config.is_file():
        with contextlib.suppress(CheckpointError):
            if _has_mm_fields(_read_json(config)):
                return True
    return any(_canonical(k).startswith(PROJECTOR_PREFIX) for k in _weight_key_names(folder))


# ---------------------------------------------------------------------------------------
# Key names


def _canonical(key: str) -> str:
    """One name per tensor, whatever wrapped it when it was saved.

    PEFT prefixes (`base_model.model.`), LLaVA's doubled `model.model.` in
    non_lora_trainables, PEFT's adapter name (`lora_A.default.weight`) and its wrapped base
    layer (`q_proj.base_layer.weight`) are undone, as LLaVA's builder and PEFT's merge do.
    """
    while key.startswith("base_model.model."):
        key = key[len("base_model.model.") :]
    if key.startswith("model.model."):
        key = key[len("model.") :]
    key = re.sub(r"\.(lora_[AB])\.[^.]+\.weight$", r".\1.weight", key)
    return key.replace(".base_layer.", ".")


def _clip_key(key: str) -> str | None:
    """A vision-tower key as a transformers CLIPVisionModel names it, or None to skip it."""
    if key.startswith("vision_model."):
        key = key[len("vision_model.") :]
    if key.startswith(_CLIP_SKIPPED):
        return None
    # LanguageBind wraps its encoder in PEFT: encoder.base_model.model.layers.* -> encoder.layers.*
    return key.replace("encoder.base_model.model.", "encoder.")


@dataclass
class _Routed:
    llm: dict[str, torch.Tensor] = field(default_factory=dict)
    projector: dict[str, torch.Tensor] = field(default_factory=dict)  # sub-keys
    region: dict[str, torch.Tensor] = field(default_factory=dict)  # sub-keys
    vision: dict[str, torch.Tensor] = field(default_factory=dict)  # CLIP sub-keys
    vision_prefix: str = ""
    skipped: dict[str, list[str]] = field(default_factory=dict)


def _route(sd: Mapping[str, torch.Tensor]) -> _Routed:
    """Split canonical checkpoint keys by component. Keys no component claims go to the LLM,
    whose strict load then reports them as unexpected under their own names."""
    out = _Routed()
    for key, tensor in sd.items():
        reason = next((r for p, r in SKIPPED_PREFIXES.items() if key.startswith(p)), None)
        reason = reason or next((r for s, r in SKIPPED_SUFFIXES.items() if key.endswith(s)), None)
        if reason:
            out.skipped.setdefault(reason, []).append(key)
            continue
        if key.startswith(PROJECTOR_PREFIX):
            out.projector[key[len(PROJECTOR_PREFIX) :]] = tensor
            continue
        if key.startswith(REGION_PREFIX):
            out.region[key[len(REGION_PREFIX) :]] = tensor
            continue
        prefix = next((p for p in VISION_PREFIXES if key.startswith(p)), None)
        if prefix is not None:
            sub = _clip_key(key[len(prefix) :])
            if sub is None:
                out.skipped.setdefault("buffer or text half of the vision tower", []).append(key)
            else:
                out.vision[sub] = tensor
                out.vision_prefix = out.vision_prefix or prefix
            continue
        out.llm[key] = tensor
    return out


# ---------------------------------------------------------------------------------------
# LoRA


@dataclass(frozen=True)
class LoraSettings:
    """What merging needs from a PEFT adapter_config.json."""

    alpha: float
    use_rslora: bool = False
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_adapter_config(cls, cfg: Mapping, where: str) -> "LoraSettings":
        if cfg.get("use_dora"):
            raise CheckpointError(f"{where}: DoRA adapters (use_dora) are not supported; merge them with PEFT first")
        if cfg.get("fan_in_fan_out"):
            raise CheckpointError(f"{where}: fan_in_fan_out adapters (GPT-2 Conv1D) are not supported")
        if "lora_alpha" not in cfg:
            raise CheckpointError(f"{where}: adapter config has no lora_alpha")
        return cls(
            alpha=float(cfg["lora_alpha"]),
            use_rslora=bool(cfg.get("use_rslora", False)),
            alpha_pattern=dict(cfg.get("alpha_pattern") or {}),
        )

    def scale(self, module: str, rank: int) -> float:
        """alpha / r (rsLoRA: alpha / sqrt(r)); an alpha_pattern entry matching the module wins."""
        alpha = self.alpha
        for pattern, value in self.alpha_pattern.items():
            if re.fullmatch(rf"(.*\.)?{pattern}", module):
                alpha = float(value)
                break
        return alpha / (math.sqrt(rank) if self.use_rslora else rank)


def _lora_modules(sd: Mapping[str, torch.Tensor]) -> list[str]:
    return sorted({k[: -len(".lora_A.weight")] for k in sd if k.endswith(".lora_A.weight")})


def merge_lora(
    sd: Mapping[str, torch.Tensor], settings: LoraSettings | None, what: str
) -> tuple[dict[str, torch.Tensor], int]:
    """Fold every `<m>.lora_A.weight` / `<m>.lora_B.weight` pair into `<m>.weight`.

    W (out, in) += scale * B (out, r) @ A (r, in), computed in float32 and stored in W's
    dtype. Returns the merged state dict and the number of modules merged. LoRA keys without
    `settings`, half pairs, a missing base weight or mismatched shapes raise CheckpointError.
    """
    unsupported = [k for k in sd if "lora_magnitude_vector" in k or "lora_embedding_" in k]
    if unsupported:
        raise CheckpointError(f"{what}: unsupported LoRA kinds (DoRA / embedding LoRA): {', '.join(unsupported[:6])}")
    modules = _lora_modules(sd)
    orphans = [k for k in sd if k.endswith(".lora_B.weight") and k[: -len(".lora_B.weight")] not in modules]
    if orphans:
        raise CheckpointError(f"{what}: lora_B without lora_A: {', '.join(orphans[:6])}")
    if not modules:
        return dict(sd), 0
    if settings is None:
        raise CheckpointError(
            f"{what}: has LoRA weights ({modules[0]}.lora_A.weight, ...) but no adapter_config.json "
            "gives their alpha; put the adapter config next to them"
        )
    out = dict(sd)
    for m in modules:
        a = out.pop(f"{m}.lora_A.weight")
        b = out.pop(f"{m}.lora_B.weight", None)
        if b is None:
            raise CheckpointError(f"{what}: {m}.lora_A.weight has no {m}.lora_B.weight")
        w = out.get(f"{m}.weight")
        if w is None:
            raise CheckpointError(f"{what}: LoRA for {m} but the checkpoint has no base weight {m}.weight")
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise CheckpointError(
                f"{what}: LoRA shapes for {m} do not fit: A {tuple(a.shape)}, B {tuple(b.shape)}, W {tuple(w.shape)}"
            )
        delta = b.float() @ a.float() * settings.scale(m, a.shape[0])  # (out, in)
        out[f"{m}.weight"] = (w.float() + delta).to(w.dtype)
    return out, len(modules)


# ---------------------------------------------------------------------------------------
# Reading the sources


def _read_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        for key, tensor in read_state_dict(f).items():
            sd[_canonical(key)] = tensor
    return sd


def _resolve_folder(name: str | None, *near: Path | None) -> Path | None:
    """`name` as a local folder: as given, else inside or next to one of the `near` folders
    (Vitron's README puts the towers beside the checkpoints)."""
    if not name:
        return None
    candidates = [Path(name)]
    for anchor in (a for a in near if a is not None):
        candidates += [anchor / name, anchor.parent / name]
    return next((c for c in candidates if c.is_dir()), None)


@dataclass
class _Checkpoint:
    folder: Path
    config: dict
    weights: dict[str, torch.Tensor]
    lora: LoraSettings | None
    base: Path | None
    tokenizer_folder: Path


def _read_checkpoint(folder: Path, base_path: str | Path | None) -> _Checkpoint:
    """Config, canonical weights and LoRA settings of a full folder or an adapter folder."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder")
    adapter_cfg_path = folder / "adapter_config.json"
    adapter_cfg = _read_json(adapter_cfg_path) if adapter_cfg_path.is_file() else None
    lora = LoraSettings.from_adapter_config(adapter_cfg, str(adapter_cfg_path)) if adapter_cfg else None
    adapter_files = [f for f in (folder / "adapter_model.safetensors", folder / "adapter_model.bin") if f.is_file()]

    if adapter_files:  # an adapter folder over a base folder (the released Vitron-lora)
        named = adapter_cfg.get("base_model_name_or_path") if adapter_cfg else None
        base = Path(base_path) if base_path is not None else _resolve_folder(named, folder)
        if base is None or not base.is_dir():
            raise CheckpointError(
                f"{folder}: a LoRA adapter folder; its base model ({base_path or named!r}) is not a local "
                "folder; pass base_path=<the base checkpoint folder> (for Vitron: Vitron-base)"
            )
        files = _model_weight_files(base)
        if not files:
            raise CheckpointError(f"{base}: no model weight files (.safetensors or .bin)")
        weights = _read_weights(files)
        non_lora = folder / "non_lora_trainables.bin"
        if non_lora.is_file():  # trained projector / region extractor, over the base's copies
            weights.update(_read_weights([non_lora]))
        weights.update(_read_weights(adapter_files[:1]))
    else:
        base = None
        files = _model_weight_files(folder)
        if not files:
            raise CheckpointError(f"{folder}: no model weight files (.safetensors or .bin)")
        weights = _read_weights(files)

    config_path = folder / "config.json"
    if not config_path.is_file() and base is not None:
        config_path = base / "config.json"
    config = _read_json(config_path)
    has_tokenizer = any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))
    tokenizer_folder = folder if has_tokenizer or base is None else base
    return _Checkpoint(folder, config, weights, lora, base, tokenizer_folder)


def _vision_config_dict(cfg: Mapping) -> dict:
    """The CLIP vision fields of a config.json: CLIPVisionConfig's own, or the `vision_config`
    of a CLIPConfig / LanguageBind config / vitron-rt checkpoint."""
    sub = cfg.get("vision_config")
    return dict(sub) if isinstance(sub, Mapping) else dict(cfg)


def _preprocess_overrides(folder: Path) -> dict:
    """image_mean / image_std from a tower folder's preprocessor_config.json, when it has one."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    pre = _read_json(path)
    return {k: tuple(float(x) for x in pre[k]) for k in ("image_mean", "image_std") if k in pre}


def _read_clip_folder(folder: Path) -> tuple[dict, dict[str, torch.Tensor], str, dict]:
    """(vision config dict, CLIP sub-key weights, display prefix, preprocess overrides)."""
    cfg = _vision_config_dict(_read_json(folder / "config.json"))
    files = _model_weight_files(folder)
    if not files:
        raise CheckpointError(f"{folder}: no vision tower weight files (.safetensors or .bin)")
    raw = _read_weights(files)
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in raw) else ""
    weights = {}
    for key, tensor in raw.items():
        sub = _clip_key(key)
        if sub is not None:
            weights[sub] = tensor
    return cfg, weights, prefix, _preprocess_overrides(folder)


def _build_vision_config(cfg: Mapping, select_layer: int, overrides: dict) -> VisionConfig:
    from transformers import CLIPVisionConfig

    clean = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "transformers_version")}
    hf = CLIPVisionConfig(**clean)
    size = hf.image_size if isinstance(hf.image_size, int) else hf.image_size[0]
    return VisionConfig(
        image_size=size,
        patch_size=hf.patch_size,
        hidden_size=hf.hidden_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        intermediate_size=hf.intermediate_size,
        select_layer=select_layer,
        layer_norm_eps=hf.layer_norm_eps,
        hidden_act=hf.hidden_act,
        **overrides,
    )


def _vision_lora(cfg: Mapping, where: str) -> LoraSettings | None:
    """LanguageBind keeps its encoder's LoRA settings in the vision config (lora_r, lora_alpha)."""
    if not cfg.get("lora_r"):
        return None
    return LoraSettings.from_adapter_config({"lora_alpha": cfg.get("lora_alpha", cfg["lora_r"])}, where)


def _llm_config(cfg: Mapping, vocab_rows: int | None) -> LlmConfig:
    from transformers import LlamaConfig

    drop = ("model_type", "architectures", "transformers_version", "_name_or_path", "vision_config", "text_config")
    clean = {k: v for k, v in cfg.items() if k not in drop}
    llm = LlmConfig.from_hf(LlamaConfig(**clean))
    return dataclasses.replace(llm, vocab_size=vocab_rows) if vocab_rows else llm


def _mount(module: nn.Module, prefix: str) -> nn.Module:
    """A throwaway tree that holds `module` at `prefix`, so strict-load messages carry the
    checkpoint's full key names (e.g. `model.mm_projector.0.weight`)."""
    parts = [p for p in prefix.split(".") if p]
    if not parts:
        return module
    root = cur = nn.Module()
    for name in parts[:-1]:
        child = nn.Module()
        cur.add_module(name, child)
        cur = child
    cur.add_module(parts[-1], module)
    return root


def _assign(module: nn.Module, sub_sd: Mapping[str, torch.Tensor], prefix: str, what: str) -> None:
    assign_strict(_mount(module, prefix), {prefix + k: v for k, v in sub_sd.items()}, what)


@contextlib.contextmanager
def _building(dtype: torch.dtype):
    """Build modules in `dtype` and skip their random initialisation (every tensor is then
    loaded from the checkpoint, which assign_strict guarantees)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise, only slower
        no_init_weights = contextlib.nullcontext
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            yield
    finally:
        torch.set_default_dtype(previous)


def _load_tokenizer(folder: Path, num_signal_tokens: int) -> PreparedTokenizer:
    try:
        from transformers import PreTrainedTokenizerFast

        if (folder / "tokenizer.json").is_file():
            hf_tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
        else:
            from transformers import AutoTokenizer

            hf_tok = AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # missing files, sentencepiece not installed, ...
        raise CheckpointError(f"{folder}: cannot load the tokenizer ({type(e).__name__}: {e})") from None
    return from_transformers(hf_tok, num_signal_tokens, chat_template="vicuna_v1")


def _grow_rows(sd: dict[str, torch.Tensor], key: str, rows: int) -> None:
    """Append rows to an embedding-like matrix, each the mean of the existing rows (as LLaVA
    initialises tokens it adds): the new tokens start at an average embedding."""
    w = sd[key]
    extra = w.float().mean(dim=0, keepdim=True).expand(rows - w.shape[0], -1).to(w.dtype)
    sd[key] = torch.cat([w, extra], dim=0)


# ---------------------------------------------------------------------------------------
# load / save


def _vision_part(
    ckpt: _Checkpoint, routed: _Routed, vision_path: str | Path | None, select_layer: int, report: LoadReport
) -> tuple[VisionConfig, dict[str, torch.Tensor], str]:
    """The tower's config, CLIP sub-key weights (LoRA merged) and display prefix.

    Base weights: `vision_path`, else the tower keys in the checkpoint, else the folder the
    config names (`mm_image_tower` / `mm_vision_tower`). Config: that folder's config.json,
    or for an in-checkpoint tower the checkpoint's `vision_config` or the named folder's.
    A tower folder's own LoRA (LanguageBind: lora_r / lora_alpha in its vision config) is
    merged first; LoRA pairs the checkpoint holds for the tower are merged on top with the
    checkpoint's adapter settings, whichever folder the base weights came from.
    """
    cfg, where = ckpt.config, str(ckpt.folder)
    ckpt_lora = {k: v for k, v in routed.vision.items() if ".lora_" in k}
    ckpt_plain = {k: v for k, v in routed.vision.items() if ".lora_" not in k}
    tower_name = cfg.get("mm_image_tower") or cfg.get("mm_vision_tower")
    tower_folder = Path(vision_path) if vision_path is not None else None
    if tower_folder is None and not ckpt_plain:
        tower_folder = _resolve_folder(tower_name, ckpt.folder, ckpt.base)
        if tower_folder is None:
            raise CheckpointError(
                f"{where}: no vision tower weights in the checkpoint, and the tower it names "
                f"({tower_name!r}) is not a local folder; pass vision_path=<CLIP or LanguageBind folder>"
            )
    if tower_folder is not None:
        if not tower_folder.is_dir():
            raise CheckpointError(f"{tower_folder}: vision_path is not a folder")
        config, weights, prefix, overrides = _read_clip_folder(tower_folder)
        if ckpt_plain:
            report.skipped.setdefault(f"tower copy in the checkpoint (read from {tower_folder})", []).extend(
                routed.vision_prefix + k for k in ckpt_plain
            )
        report.vision = str(tower_folder)
        weights, _ = merge_lora(weights, _vision_lora(config, str(tower_folder)), f"{tower_folder}: vision tower")
        ckpt_lora_settings = ckpt.lora
    else:
        weights, prefix, overrides = ckpt_plain, routed.vision_prefix, {}
        if isinstance(cfg.get("vision_config"), Mapping):
            config = dict(cfg["vision_config"])
        else:
            named = _resolve_folder(tower_name, ckpt.folder, ckpt.base)
            if named is None:
                raise CheckpointError(
                    f"{where}: the checkpoint holds the vision tower's weights but not its config "
                    f"(no vision_config, and {tower_name!r} is not a local folder); pass vision_path"
                )
            config = _vision_config_dict(_read_json(named / "config.json"))
            overrides = _preprocess_overrides(named)
        report.vision = f"{where} ({prefix}*)"
        ckpt_lora_settings = ckpt.lora or _vision_lora(config, where)
    if ckpt_lora:
        weights, merged = merge_lora({**weights, **ckpt_lora}, ckpt_lora_settings, f"{where}: vision tower")
        report.lora_modules += merged
    return _build_vision_config(config, select_layer, overrides), weights, prefix


def load_vitron(
    path: str | Path,
    num_signal_tokens: int,
    vision_path: str | Path | None = None,
    base_path: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> VitronParts:
    """Load a Vitron / LLaVA checkpoint folder into the reference components.

    path: a full folder (config.json with mm_* fields, weights with the keys in the module
    docstring) or a LoRA adapter folder (adapter_config.json, adapter_model.*,
    non_lora_trainables.bin) whose base is `base_path` (default: the adapter config's
    base_model_name_or_path, if it is a local folder). vision_path: a CLIP / LanguageBind
    folder for the image tower (default: the tower inside the checkpoint, else the folder
    config.json names). The tokenizer gets `<image>`, `<region>` and `num_signal_tokens`
    signal tokens; embedding and head rows are added for ids the checkpoint lacks.
    Dimensions come from the config files (vocabulary rows from the embedding); any key
    that does not fit raises CheckpointError.
    """
    ckpt = _read_checkpoint(Path(path), base_path)
    cfg = ckpt.config
    where = str(ckpt.folder)
    if not _has_mm_fields(cfg) and not any(k.startswith(PROJECTOR_PREFIX) for k in ckpt.weights):
        raise CheckpointError(
            f"{where}: not a Vitron / LLaVA checkpoint (no mm_* config fields, no mm_projector weights)"
        )
    feature = cfg.get("mm_vision_select_feature", "patch")
    if feature != "patch":
        raise CheckpointError(f"{where}: mm_vision_select_feature={feature!r} is not supported (only 'patch')")
    if "mm_vision_select_layer" not in cfg:
        raise CheckpointError(f"{where}: config.json has no mm_vision_select_layer")
    select_layer = int(cfg["mm_vision_select_layer"])

    routed = _route(ckpt.weights)
    report = LoadReport(checkpoint=where, base=str(ckpt.base) if ckpt.base else None, skipped=routed.skipped)
    vision_cfg, vision_sd, vision_prefix = _vision_part(ckpt, routed, vision_path, select_layer, report)

    # -- configs of the rest --------------------------------------------------------------
    embed = routed.llm.get("model.embed_tokens.weight")
    llm_cfg = _llm_config(cfg, embed.shape[0] if embed is not None else None)
    tokenizer = _load_tokenizer(ckpt.tokenizer_folder, num_signal_tokens)
    lora_modules = _lora_modules(routed.llm)
    if ckpt.lora is not None and lora_modules:
        first = lora_modules[0]
        report.lora_scale = ckpt.lora.scale(first, routed.llm[f"{first}.lora_A.weight"].shape[0])
    llm_sd, merged = merge_lora(routed.llm, ckpt.lora, f"{where}: llm")
    report.lora_modules += merged
    if tokenizer.vocab_size > llm_cfg.vocab_size:
        report.added_token_rows = tokenizer.vocab_size - llm_cfg.vocab_size
        for key in ("model.embed_tokens.weight", "lm_head.weight"):
            if key in llm_sd:
                _grow_rows(llm_sd, key, tokenizer.vocab_size)
        llm_cfg = dataclasses.replace(llm_cfg, vocab_size=tokenizer.vocab_size)

    kind = cfg.get("mm_projector_type", "linear")  # LLaVA's default when the field is absent
    mm_hidden = int(cfg.get("mm_hidden_size", vision_cfg.hidden_size))
    if mm_hidden != vision_cfg.hidden_size:
        raise CheckpointError(
            f"{where}: mm_hidden_size {mm_hidden} != the vision tower's hidden_size {vision_cfg.hidden_size}"
        )
    projector_cfg = ProjectorConfig(in_dim=mm_hidden, out_dim=llm_cfg.hidden_size, kind=kind)
    region_cfg = RegionConfig(
        feature_dim=mm_hidden,
        out_dim=llm_cfg.hidden_size,
        grid=vision_cfg.grid,
        feature_layers=RELEASED_REGION_FEATURE_LAYERS,
        loc_hidden=llm_cfg.hidden_size // 2,
        image_size=int(cfg.get("region_image_size", RELEASED_REGION_IMAGE_SIZE)),
    )
    rename = released_key_map(kind)
    projector_sd = {rename.get(k, k): v for k, v in routed.projector.items()}
    for what, sub in (("mm_projector", routed.projector), ("region_extractor", routed.region)):
        if _lora_modules(sub):
            raise CheckpointError(f"{where}: LoRA weights on the {what}, which LLaVA never adapts")

    # -- build and load --------------------------------------------------------------------
    with _building(dtype):
        try:
            vision = VisionEncoder(vision_cfg)
            projector = MMProjector(projector_cfg)
        except ValueError as e:
            raise CheckpointError(f"{where}: {e}") from None
        region = RegionEncoder(region_cfg)
        llm = LlmDecoder.from_config(llm_cfg)
    llm.model.tie_weights()  # skipping initialisation also skips transformers' tying step
    problems = []  # every component is checked, so one error lists every bad key
    for module, sub_sd, prefix, what in (
        (vision.clip, vision_sd, vision_prefix, f"{report.vision}: vision tower"),
        (projector, projector_sd, PROJECTOR_PREFIX, f"{where}: mm_projector"),
        (region, routed.region, REGION_PREFIX, f"{where}: region_extractor"),
        (llm.model, llm_sd, "", f"{where}: llm"),
    ):
        try:
            _assign(module, sub_sd, prefix, what)
        except CheckpointError as e:
            problems.append(str(e))
    if problems:
        raise CheckpointError("; ".join(problems))
    return VitronParts(
        llm=llm.eval(),
        vision_encoder=vision.eval(),
        mm_projector=projector.eval(),
        region_encoder=region.eval(),
        tokenizer=tokenizer,
        llm_config=llm_cfg,
        vision_config=vision_cfg,
        projector_config=projector_cfg,
        region_config=region_cfg,
        num_signal_tokens=num_signal_tokens,
        report=report,
    )


def vitron_state_dict(parts: VitronParts) -> dict[str, torch.Tensor]:
    """Every tensor of `parts` under the released checkpoint names (see module docstring).

    A tied LM head is written once (as the embedding), like transformers does.
    """
    sd: dict[str, torch.Tensor] = {}
    llm = parts.llm.model
    tied = llm.get_output_embeddings().weight is llm.get_input_embeddings().weight
    for k, v in llm.state_dict().items():
        if not (tied and k == "lm_head.weight"):
            sd[k] = v
    inverse = {ours: theirs for theirs, ours in released_key_map(parts.projector_config.kind).items()}
    for k, v in parts.mm_projector.state_dict().items():
        sd[PROJECTOR_PREFIX + inverse.get(k, k)] = v
    for k, v in parts.region_encoder.state_dict().items():
        sd[REGION_PREFIX + k] = v
    for k, v in parts.vision_encoder.clip.state_dict().items():
        sd[SAVE_VISION_PREFIX + k] = v
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}


def vitron_config_json(parts: VitronParts, tower_name: str = "vitron-rt:in-checkpoint") -> dict:
    """config.json in the LLaVA / Vitron layout: the LLaMA config plus the mm_* fields the
    released loader reads, the tower's CLIP config (`vision_config`, since the tower is in
    the checkpoint) and `region_image_size` (the released extractor's pixel frame)."""
    vision, region = parts.vision_config, parts.region_config
    cfg = parts.llm_config.to_hf().to_dict()
    for k in ("transformers_version", "_name_or_path", "id2label", "label2id"):
        cfg.pop(k, None)
    vision_hf = vision.to_hf().to_dict()
    vision_hf.pop("transformers_version", None)
    cfg.update(
        architectures=["LlavaLlamaForCausalLM"],
        model_type="llava",
        mm_image_tower=tower_name,
        mm_hidden_size=parts.projector_config.in_dim,
        mm_projector_type=parts.projector_config.kind,
        mm_vision_select_layer=vision.select_layer,
        mm_vision_select_feature="patch",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        image_aspect_ratio="pad",
        vision_config=vision_hf,
        region_image_size=region.image_size,
    )
    return cfg


def save_vitron(parts: VitronParts, folder: str | Path) -> Path:
    """Write `parts` as a checkpoint folder in the released layout: config.json,
    model.safetensors (released key names), tokenizer.json + tokenizer_config.json.
    `load_vitron(folder, parts.num_signal_tokens)` reads it back."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(vitron_config_json(parts), indent=2, sort_keys=True))
    save_file(vitron_state_dict(parts), str(out / "model.safetensors"), metadata={"format": "pt"})
    tok = parts.tokenizer
    tok.tokenizer.save(str(out / "tokenizer.json"))
    specials = {k: v for k, v in (("bos_token", tok.bos_token), ("eos_token", tok.eos_token)) if v}
    if tok.tokenizer.token_to_id("<unk>") is not None:
        specials["unk_token"] = "<unk>"
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": parts.llm_config.max_position_embeddings,
        **specials,
    }
    if tok.chat_template:
        tok_cfg["chat_template"] = tok.chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    return out
