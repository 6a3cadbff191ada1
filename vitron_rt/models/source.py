"""Where an export's PyTorch side comes from: a preset or checkpoint paths, turned into
reference modules under their manifest names, plus the tokenizer and the config.

`Reference.source` records exactly how it was built, so `vitron-rt check` can rebuild
the same reference from the manifest alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from vitron_rt.bundle import Source
from vitron_rt.models.config import VitronConfig, preset
from vitron_rt.models.tokenizer import PreparedTokenizer, tiny_tokenizer


class SourceError(ValueError):
    """A preset or checkpoint that cannot be turned into a reference model."""


@dataclass
class Reference:
    """The PyTorch reference of a bundle: components by manifest name (data-flow order)."""

    components: dict[str, nn.Module]
    tokenizer: PreparedTokenizer
    config: VitronConfig
    source: Source

    @property
    def has_llm(self) -> bool:
        return "llm_decoder" in self.components


def from_preset(name: str) -> Reference:
    """Seeded random weights for every component of a preset that ships a tokenizer."""
    from vitron_rt.models.model import VitronModel

    cfg = preset(name)  # ValueError names the known presets
    if name != "tiny":
        # The real dimensions exist for shapes and parameter counts; exporting 7B random
        # weights (30 GB of fp32) proves nothing a tiny export does not, and Vicuna's
        # tokenizer does not ship here. Real weights come through --checkpoint.
        raise SourceError(
            f"preset {name!r} is for shapes only (build it on the meta device); export real "
            "weights with --checkpoint DIR or --llm PATH, or use --preset tiny"
        )
    model = VitronModel.from_config(cfg)
    src = Source(preset=name, config={"load": {"preset": name}, "vitron": cfg.to_dict()})
    return Reference(model.components(), tiny_tokenizer(cfg.signal.num_tokens), cfg, src)


def from_checkpoints(
    llm: str | None = None,
    checkpoint: str | None = None,
    vision: str | None = None,
    num_signal_tokens: int | None = None,
) -> Reference:
    """Real weights. `--checkpoint DIR`: a Vitron / LLaVA folder (LLM, projector, region
    extractor, and the vision tower when it is inside or given by `vision`); `llm` is then
    the base model under a LoRA checkpoint. `--llm PATH` alone: a text-only bundle of the
    LLM (HF folder, .safetensors or .gguf)."""
    from vitron_rt.models.config import SignalConfig

    k = num_signal_tokens or SignalConfig().num_tokens
    load = {"llm": _abs(llm), "checkpoint": _abs(checkpoint), "vision": _abs(vision), "num_signal_tokens": k}
    if checkpoint:
        from vitron_rt.models.llm import EmbedTokens
        from vitron_rt.models.vitron_checkpoint import load_vitron

        parts = load_vitron(checkpoint, num_signal_tokens=k, vision_path=vision, base_path=llm)
        cfg = parts.vitron_config()
        components = {
            "vision_encoder": parts.vision_encoder,
            "mm_projector": parts.mm_projector,
            "region_encoder": parts.region_encoder,
            "embed_tokens": EmbedTokens(parts.llm.input_embeddings()),
            "llm_decoder": parts.llm,
        }
        tokenizer = parts.tokenizer
    elif llm:
        if vision:
            raise SourceError("--vision needs --checkpoint: a vision tower alone has no projector to feed the LLM")
        from vitron_rt.models.checkpoint import load_llm
        from vitron_rt.models.llm import EmbedTokens

        loaded = load_llm(llm, num_signal_tokens=k)
        base = preset("vitron-7b")
        cfg = dataclasses.replace(
            base,
            name=Path(llm).name,
            llm=loaded.config,
            signal=dataclasses.replace(base.signal, num_tokens=k, in_dim=loaded.config.hidden_size),
            chat_template="model",
        )
        components = {"embed_tokens": EmbedTokens(loaded.decoder.input_embeddings()), "llm_decoder": loaded.decoder}
        tokenizer = loaded.tokenizer
    else:
        raise SourceError("give --preset, --llm PATH or --checkpoint DIR")
    src = Source(checkpoint=_abs(checkpoint or llm), config={"load": load, "vitron": cfg.to_dict()})
    for m in components.values():
        m.eval()
    return Reference(components, tokenizer, cfg, src)


def from_source(source: Source) -> Reference:
    """Rebuild the reference a bundle was exported from (what `check` compares against)."""
    load = source.config.get("load")
    if not isinstance(load, dict):
        raise SourceError("the manifest's source has no 'load' section: cannot rebuild its PyTorch reference")
    if load.get("preset"):
        return from_preset(load["preset"])
    missing = [p for p in (load.get("llm"), load.get("checkpoint"), load.get("vision")) if p and not Path(p).exists()]
    if missing:
        raise SourceError(f"the bundle was exported from {missing[0]}, which is not there any more")
    return from_checkpoints(
        llm=load.get("llm"),
        checkpoint=load.get("checkpoint"),
        vision=load.get("vision"),
        num_signal_tokens=load.get("num_signal_tokens"),
    )


def _abs(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else None
