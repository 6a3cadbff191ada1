"""Where an export's PyTorch side comes from: a preset or checkpoint paths, turned into
reference modules under their manifest names, plus the tokenizer and the config.

`Reference.source` records exactly how it was built, so `vitron-rt check` can rebuild
the same reference from the manifest alone. A trained preset (`mini`: weights shipped in
`vitron_rt/models/trained`, see `vitron_rt.models.shipped`) records the sha256 of its
weights, so a bundle is never checked against other weights than it was exported from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from vitron_rt.bundle import Source
from vitron_rt.models.config import VitronConfig, config_differences, preset
from vitron_rt.models.shipped import (
    TRAINED_DIR,
    ShippedFiles,
    ShippedWeightsError,
    read_record,
    read_tokenizer,
    read_weights,
)
from vitron_rt.models.tokenizer import PreparedTokenizer, tiny_tokenizer

# Presets whose trained weights ship with the package, and how to make them.
TRAINED_PRESETS = {"mini": "python -m vitron_rt.train.mini --install"}


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


def from_preset(name: str, trained_dir: str | Path | None = None) -> Reference:
    """The reference of a preset: the shipped trained weights and tokenizer of a trained
    preset (`TRAINED_PRESETS`; read from `trained_dir`, the package's by default), seeded
    random weights for `tiny`."""
    from vitron_rt.models.model import VitronModel

    cfg = preset(name)  # ValueError names the known presets
    if name in TRAINED_PRESETS:
        return _trained(name, cfg, Path(trained_dir) if trained_dir else TRAINED_DIR)
    if name != "tiny":
        # The real dimensions exist for shapes and parameter counts; exporting 7B random
        # weights (30 GB of fp32) proves nothing a tiny export does not, and Vicuna's
        # tokenizer does not ship here. Real weights come through --checkpoint.
        raise SourceError(
            f"preset {name!r} is for shapes only (build it on the meta device); export real "
            "weights with --checkpoint DIR or --llm PATH, or use --preset tiny or mini"
        )
    model = VitronModel.from_config(cfg)
    src = Source(preset=name, config={"load": {"preset": name}, "vitron": cfg.to_dict()})
    return Reference(model.components(), tiny_tokenizer(cfg.signal.num_tokens), cfg, src)


def _trained(name: str, cfg: VitronConfig, folder: Path) -> Reference:
    """A trained preset from its shipped files, checked: both checksums, the config the
    weights were trained for (a preset changed since is refused), every key."""
    from vitron_rt.models.model import VitronModel
    from vitron_rt.models.weights import CheckpointError, assign_strict

    files = ShippedFiles(folder, name)
    try:
        record = read_record(files)
        state = read_weights(files)
    except ShippedWeightsError as e:
        raise SourceError(f"preset {name!r}: {e}; train them with `{TRAINED_PRESETS[name]}`") from None
    differences = config_differences(record["config"], cfg)
    if differences:
        raise SourceError(
            f"preset {name!r}: {files.record} was trained for another {name} config than this "
            f"vitron-rt's (it differs in {', '.join(differences)}); retrain with `{TRAINED_PRESETS[name]}`"
        )
    model = VitronModel.from_config(cfg)
    try:
        assign_strict(model, state, str(files.weights))
    except CheckpointError as e:
        raise SourceError(str(e)) from None
    tokenizer = read_tokenizer(files, record, cfg.signal.num_tokens)
    if tokenizer.vocab_size != cfg.llm.vocab_size:
        raise SourceError(f"{files.tokenizer}: {tokenizer.vocab_size} entries, the LLM has {cfg.llm.vocab_size} rows")
    load = {"preset": name, "weights_sha256": record["weights"]["sha256"]}
    src = Source(preset=name, config={"load": load, "vitron": cfg.to_dict()})
    return Reference(model.components(), tokenizer, cfg, src)


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
        ref = from_preset(load["preset"])
        want, have = load.get("weights_sha256"), ref.source.config["load"].get("weights_sha256")
        if want != have:
            raise SourceError(
                f"the bundle was exported from {load['preset']} weights with sha256 {want}; the "
                f"installed ones are {have}: export the bundle again"
            )
        return ref
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
