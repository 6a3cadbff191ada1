"""Export a whole reference model into a bundle, and check a bundle against its reference.

    Reference (source.py) ──► for each component: spec.bind → export_component → validate
                              (the decoder: + its quantised variants with `quant=`, checked
                              by agreement with fp32, export/llm_quant.py)
                          ──► greedy parity of the LLM (32 tokens, exact)
                          ──► tokenizer.json + chat_template.jinja
                          ──► manifest.json, then one rename (BundleWriter): all or nothing
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Callable, Sequence
from pathlib import Path

from vitron_rt.bundle import (
    Bundle,
    ImagePreprocess,
    LlmInfo,
    Manifest,
    Producer,
    SignalInfo,
    TokenizerInfo,
    VariantEntry,
    load_bundle,
    write_manifest,
)
from vitron_rt.export import specs as _specs  # noqa: F401  (registers every component spec)
from vitron_rt.export.bundle_writer import BundleWriter
from vitron_rt.export.errors import ExportError
from vitron_rt.export.greedy import GREEDY_TOKENS, greedy_parity
from vitron_rt.export.onnx_export import ExportedComponent, build_variant, export_component
from vitron_rt.models.source import Reference, from_source
from vitron_rt.export.spec import get_spec
from vitron_rt.export.llm_gqa import KIND as GQA_KIND
from vitron_rt.engines.ort import OrtRunner
from vitron_rt.export.validate import ToleranceError, ValidationRow, validate_component

# The decoder component: the one spec with quantised variants (`export --quant`).
LLM_DECODER = "llm_decoder"
TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# The parity prompt: plain text, tokenised by the bundle's own tokenizer.
PARITY_PROMPT = "The capital of France is"


def _quiet(_: str) -> None:
    pass


def export_bundle(
    ref: Reference,
    out: str | Path,
    *,
    overwrite: bool = False,
    log: Callable[[str], None] = _quiet,
    quant: Sequence[str] = (),
) -> tuple[Path, list[ValidationRow]]:
    """Export, validate (on shapes other than the export shapes) and write the bundle.
    `quant`: also write the decoder's weight-quantised variants of these modes ("int4",
    "int8"; export/llm_quant.py), checked by agreement with fp32. Any failure raises and
    leaves no bundle behind."""
    if quant and not ref.has_llm:
        raise ExportError(f"quantisation {', '.join(quant)} applies to the LLM decoder; this model has none")
    rows: list[ValidationRow] = []
    with BundleWriter(out, overwrite=overwrite) as writer:
        entries = {}
        for name, module in ref.components.items():
            spec = get_spec(name).bind(module)
            if quant and name == LLM_DECODER:
                spec = spec.with_quant(quant)
            exported = export_component(module, spec, writer.staging)
            file_rows = validate_component(module, spec, exported)
            rows += file_rows
            quantised = {v.kind for v in exported.entry.variants if v.precision != "fp32"}
            worst = max(r.max_abs_err for r in file_rows if r.file not in quantised)
            log(f"  {name:<34} exported and checked on {len(spec.resolve(module).cases)} new shapes, max abs err {worst:.2g}")
            for kind in sorted(quantised):
                log(f"  {name:<34} {kind}: {_quant_summary([r for r in file_rows if r.file == kind])}")
            entries[name] = exported.entry
        tokenizer = _write_tokenizer(ref, writer)
        llm = _llm_info(ref)
        if llm is not None:
            row = _greedy_row(ref, writer.staging, entries, llm, tokenizer)
            rows.append(row)
            if not row.passed:
                raise ToleranceError(f"greedy tokens through ONNX differ from PyTorch: {row.result.detail}", [row])
            log(f"  {'llm_decoder':<34} {GREEDY_TOKENS} greedy tokens equal PyTorch's")
        manifest = Manifest(
            producer=Producer(tools=_tool_versions()),
            source=ref.source,
            tokenizer=tokenizer,
            llm=llm,
            signal=_signal_info(ref),
            preprocess=_preprocess(ref),
            video_frames=ref.config.video_frames if "vision_encoder" in ref.components else None,
            components=entries,
        )
        path = writer.commit(manifest)
    return path, rows


def check_bundle(bundle: Bundle, runner: Callable = OrtRunner, ref: Reference | None = None) -> list[ValidationRow]:
    """Every component of `bundle` against its rebuilt PyTorch reference, on the spec's
    validation shapes, plus greedy parity. Returns all rows (failures included) so the
    caller can print the whole table; structural errors (names, axes, shapes) raise."""
    ref = ref or from_source(bundle.manifest.source)
    rows: list[ValidationRow] = []
    for name in bundle.manifest.components:
        if name not in ref.components:
            raise KeyError(f"the bundle has {name!r} but its reference model has no such component")
        module = ref.components[name]
        spec = get_spec(name).bind(module)
        quant = [v.precision for v in bundle.component(name).variants if v.precision != "fp32"]
        if quant and name == LLM_DECODER:
            spec = spec.with_quant(quant)
        exported = ExportedComponent(name, bundle.root, bundle.component(name))
        rows += validate_component(module, spec, exported, runner=runner, strict=False)
    llm = bundle.manifest.llm
    if llm is not None:
        tok = bundle.manifest.tokenizer
        rows.append(
            greedy_parity(
                ref.components[llm.embed_component],
                ref.components[llm.component],
                bundle.component_path(llm.embed_component),
                bundle.component_path(llm.component),
                llm,
                _parity_prompt(ref, tok),
                runner=runner,
            )
        )
    return rows


def add_quant_variants(
    bundle_path: str | Path,
    quant: Sequence[str],
    *,
    ref: Reference | None = None,
    log: Callable[[str], None] = _quiet,
) -> list[ValidationRow]:
    """Add the decoder's quantised variants of `quant` to an exported bundle, made from
    its fp32 ort-gqa file (nothing is exported again). Each is built and checked, then the
    manifest is rewritten in one rename; a failed check removes the new files and leaves
    the bundle as it was. Modes the bundle has already are skipped."""
    bundle = load_bundle(bundle_path)
    llm = bundle.manifest.llm
    if llm is None:
        raise ExportError(f"{bundle.root}: quantisation applies to the LLM decoder; this bundle has none")
    entry = bundle.component(llm.component)
    have = {v.kind for v in entry.variants}
    ref = ref or from_source(bundle.manifest.source)
    module = ref.components[llm.component]
    spec = get_spec(llm.component).bind(module).with_quant(quant)
    added: list[VariantEntry] = []
    rows: list[ValidationRow] = []
    try:
        for variant in spec.variants:
            if getattr(variant, "precision", "fp32") == "fp32" or variant.kind in have:
                continue
            main = bundle.component_path(llm.component)
            added.append(build_variant(variant, spec, module, main, bundle.root))
            file_rows = variant.validate(module, spec, bundle.root / added[-1].file.path)
            log(f"  {llm.component:<34} {variant.kind}: {_quant_summary(file_rows)}")
            rows += file_rows
        if added:
            components = dict(bundle.manifest.components)
            components[llm.component] = dataclasses.replace(entry, variants=(*entry.variants, *added))
            write_manifest(dataclasses.replace(bundle.manifest, components=components), bundle.root)
    except BaseException:
        for v in added:
            for ref_file in (v.file, *v.external_data):
                (bundle.root / ref_file.path).unlink(missing_ok=True)
        raise
    return rows


def _quant_summary(rows: list[ValidationRow]) -> str:
    """One log line for a quantised variant's check: what it measured, against what."""
    parts = []
    for r in rows:
        if r.output == "weights":
            parts.append(f"weights within {r.max_abs_err:.3g} steps (<= {r.tolerance.atol:g})")
        elif r.output in ("logits", "hidden_states"):
            parts.append(f"{r.output} median rel err {r.result.stat_rel_err:.2g} (<= {r.tolerance.rtol:g})")
        else:
            parts.append(f"{r.output} {1 - r.max_abs_err:.2f} (>= {1 - r.tolerance.atol:.2f})")
    return "; ".join(parts) + ("" if all(r.passed for r in rows) else " FAILED")


# --------------------------------------------------------------------------- manifest sections


def _write_tokenizer(ref: Reference, writer: BundleWriter) -> TokenizerInfo:
    tok = ref.tokenizer
    file = writer.write_file(TOKENIZER_FILE, tok.tokenizer.to_str(pretty=True))
    template = writer.write_file(CHAT_TEMPLATE_FILE, tok.chat_template) if tok.chat_template else None
    named = [t for t in (tok.bos_token, tok.eos_token) if t] + tok.special_tokens
    return TokenizerInfo(
        file=file,
        chat_template=template,
        bos_token=tok.bos_token,
        eos_token=tok.eos_token,
        signal_tokens=tuple(t for t in tok.special_tokens if t.startswith("<sig_")),
        special_token_ids={t: tok.token_id(t) for t in named},
    )


def _llm_info(ref: Reference) -> LlmInfo | None:
    if not ref.has_llm:
        return None
    dec = ref.components["llm_decoder"]
    gqa = [v for v in get_spec("llm_decoder").variants if v.kind == GQA_KIND]
    return LlmInfo(
        vocab_size=dec.vocab_size,
        hidden_size=dec.hidden_size,
        max_position_embeddings=dec.model.config.max_position_embeddings,
        num_layers=dec.num_layers,
        num_kv_heads=dec.num_kv_heads,
        head_dim=dec.head_dim,
        kv_buffer_length=gqa[0].buffer_length_for(dec) if gqa else None,
    )


def _signal_info(ref: Reference) -> SignalInfo | None:
    if not ref.has_llm:
        return None
    projectors = {name.split(".", 1)[1]: name for name in ref.components if name.startswith("signal_projector.")}
    return SignalInfo(num_tokens=ref.config.signal.num_tokens, projectors=projectors)


def _preprocess(ref: Reference) -> dict[str, ImagePreprocess]:
    out = {}
    if "vision_encoder" in ref.components:
        v = ref.config.vision
        out["vision_encoder"] = ImagePreprocess(v.image_size, tuple(v.image_mean), tuple(v.image_std))
    if "seg_image_encoder" in ref.components:
        s = ref.config.seg
        out["seg_image_encoder"] = ImagePreprocess(s.image_size, tuple(s.image_mean), tuple(s.image_std))
    return out


def _greedy_row(ref, staging: Path, entries, llm: LlmInfo, tokenizer: TokenizerInfo) -> ValidationRow:
    return greedy_parity(
        ref.components[llm.embed_component],
        ref.components[llm.component],
        staging / entries[llm.embed_component].file.path,
        staging / entries[llm.component].file.path,
        llm,
        _parity_prompt(ref, tokenizer),
    )


def _parity_prompt(ref: Reference, tokenizer: TokenizerInfo) -> list[int]:
    ids = ref.tokenizer.tokenizer.encode(PARITY_PROMPT, add_special_tokens=False).ids
    bos = tokenizer.special_token_ids.get(tokenizer.bos_token) if tokenizer.bos_token else None
    return ([bos] if bos is not None else []) + ids


def _tool_versions() -> dict[str, str]:
    versions = {}
    for pkg in ("torch", "transformers", "diffusers", "onnx", "onnxscript", "onnxruntime"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
