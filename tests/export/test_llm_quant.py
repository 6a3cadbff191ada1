"""The decoder's weight-quantised variants (export/llm_quant.py): every MatMul becomes
MatMulNBits at the scheme's bits and each dequantised weight is within one step of fp32;
the check holds a variant to its stated tolerances and fails a corrupted file; export
writes and records the variant only when asked; the session runs it only when asked;
on SmolLM2 the int4 decoder still answers the capital of France as fp32 does."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import onnx
import pytest
import torch
from onnx import numpy_helper

from vitron_rt import cli
from vitron_rt.bundle import BundleError, load_bundle
from vitron_rt.engines import EngineError, OrtOptions
from vitron_rt.export import specs as _specs  # noqa: F401  (registers the component specs)
from vitron_rt.export.errors import ExportError, SpecError
from vitron_rt.export.llm_gqa import OrtGqaDecoder
from vitron_rt.export.llm_quant import (
    QUANT_MODES,
    QUANT_TOLERANCES,
    QuantizedGqaDecoder,
    WeightQuant,
    compare_to_base,
    lm_head_node,
)
from vitron_rt.export.pipeline import add_quant_variants, check_bundle, export_bundle
from vitron_rt.export.spec import get_spec
from vitron_rt.export.validate import ToleranceError
from vitron_rt.models.config import preset
from vitron_rt.models.llm import LlmDecoder
from vitron_rt.models.source import from_checkpoints
from vitron_rt.runtime.sampling import SamplingParams
from vitron_rt.runtime.session import Session

TINY = preset("tiny").llm
TEST_OPTIONS = OrtOptions(intra_op_threads=1, cache_optimized=False)


def _decoder(**changes) -> LlmDecoder:
    torch.manual_seed(1)
    return LlmDecoder.from_config(dataclasses.replace(TINY, **changes)).eval()


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _build(dec: LlmDecoder, folder: Path, scheme: WeightQuant) -> tuple[QuantizedGqaDecoder, Path]:
    """The fp32 ort-gqa file and the quantised one beside it, as the export writes them."""
    variant = QuantizedGqaDecoder(scheme, OrtGqaDecoder(), QUANT_TOLERANCES[scheme.name])
    variant.base.build_from(dec, folder / "llm_decoder.ort-gqa.onnx")
    path = folder / f"llm_decoder.{variant.kind}.onnx"
    variant.build_from(dec, path)
    return variant, path


# --------------------------------------------------------------------------- the variant file


@pytest.mark.parametrize("mode", sorted(QUANT_MODES))
def test_every_matmul_is_quantised_and_the_check_passes(tmp_path, mode):
    # Untied seed 1: the lowest int4 top-1 agreement measured on the tiny decoders (0.75).
    dec = _decoder(tie_word_embeddings=False)
    variant, path = _build(dec, tmp_path, QUANT_MODES[mode])
    rows = variant.validate(dec, get_spec("llm_decoder").bind(dec), path)
    assert [r.output for r in rows] == ["weights", "logits", "hidden_states", "top-1 agreement", "greedy prefix"]
    assert all(r.passed for r in rows) and {r.file for r in rows} == {f"ort-gqa-{mode}"}
    model = onnx.load(str(path))
    ops = Counter(n.op_type for n in model.graph.node)
    assert "MatMul" not in ops and ops["MatMulNBits"] == 5 * TINY.num_layers + 1  # qkv, o, gate, up, down; head
    scheme = QUANT_MODES[mode]
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            a = _attrs(node)
            assert (a["bits"], a["block_size"], a["accuracy_level"]) == (scheme.bits, 32, 4)
    # Everything but the MatMuls is the fp32 graph's, and no weight is off by more than a step.
    steps, count = compare_to_base(tmp_path / "llm_decoder.ort-gqa.onnx", path)
    assert count == ops["MatMulNBits"] and 0.4 < steps <= 1.001


@pytest.mark.parametrize("head_bits", [8, None])
def test_lm_head_precision_is_its_own_choice(tmp_path, head_bits):
    dec = _decoder()
    variant, path = _build(dec, tmp_path, WeightQuant("int4", lm_head_bits=head_bits))
    model = onnx.load(str(path))
    head = lm_head_node(model) if head_bits is None else None
    if head_bits is None:  # left as the fp32 MatMul
        assert head.name == "lm_head/MatMul"
    else:
        (node,) = [n for n in model.graph.node if n.op_type == "MatMulNBits" and n.name.startswith("lm_head/")]
        assert _attrs(node)["bits"] == head_bits
    rows = variant.validate(dec, get_spec("llm_decoder").bind(dec), path)
    assert all(r.passed for r in rows)


def test_a_corrupted_weight_fails_the_check(tmp_path):
    """One matrix's scales off by 1.5x: the file no longer holds the fp32 weights' round to
    nearest, which the weights row catches whatever the model does with it."""
    dec = _decoder()
    variant, path = _build(dec, tmp_path, QUANT_MODES["int4"])
    model = onnx.load(str(path))
    scales = next(t for t in model.graph.initializer if t.name == "layers.1.o_proj.weight_t_scales")
    scales.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scales) * 1.5, scales.name))
    onnx.save(model, str(path))
    spec = get_spec("llm_decoder").bind(dec)
    with pytest.raises(ToleranceError, match="weights"):
        variant.validate(dec, spec, path)
    (weights, *_) = variant.validate(dec, spec, path, strict=False)
    assert not weights.passed and weights.max_abs_err > 1.001


def test_a_different_graph_is_a_structural_error(tmp_path):
    dec = _decoder()
    _, path = _build(dec, tmp_path, QUANT_MODES["int4"])
    other = tmp_path / "other.onnx"
    OrtGqaDecoder().build_from(_decoder(num_layers=1), other)
    with pytest.raises(ExportError, match="differ"):
        compare_to_base(other, path)


def test_bad_quantisation_values_are_clear_errors():
    with pytest.raises(SpecError, match=r"unknown quantisation 'int3'; known: int4, int8"):
        get_spec("llm_decoder").with_quant(["int3"])
    with pytest.raises(ValueError, match="4 or 8 bits"):
        WeightQuant("int3", bits=3)
    with pytest.raises(ValueError, match="power of two"):
        WeightQuant("int4", block_size=24)
    with pytest.raises(ValueError, match="no tolerances"):
        QuantizedGqaDecoder(WeightQuant("int5"), OrtGqaDecoder())
    # The spec keeps its declared variants; quantised ones only on request, once each.
    spec = get_spec("llm_decoder")
    assert [v.kind for v in spec.variants] == ["ort-gqa"]
    assert [v.kind for v in spec.with_quant(["int4", "int4"]).variants] == ["ort-gqa", "ort-gqa-int4"]


# --------------------------------------------------------------------------- export and run (tiny LLaMA)


@pytest.fixture(scope="module")
def tiny_quant(tmp_path_factory, llama_folder):
    """(bundle, rows, log lines) of a tiny LLaMA folder exported with `quant=("int4",)`."""
    tmp = tmp_path_factory.mktemp("quant")
    folder = llama_folder(tmp / "llama", tie_word_embeddings=False)
    log: list[str] = []
    path, rows = export_bundle(from_checkpoints(llm=str(folder)), tmp / "b", quant=("int4",), log=log.append)
    return path, rows, log


def test_export_writes_and_records_the_variant(tiny_quant):
    path, rows, log = tiny_quant
    bundle = load_bundle(path)  # every file hashed, the new one included
    entry = bundle.component("llm_decoder").variant("ort-gqa-int4")
    assert entry.precision == "int4" and bundle.component("llm_decoder").variant("ort-gqa").precision == "fp32"
    assert entry.attributes["base"] == "ort-gqa"
    q = entry.attributes["quantization"]
    assert (q["bits"], q["block_size"], q["accuracy_level"], q["symmetric"], q["lm_head_bits"]) == (4, 32, 4, True, 4)
    assert entry.attributes["tolerances"]["min_top1"] == QUANT_TOLERANCES["int4"].min_top1
    assert "not exact" in entry.reason
    quant_rows = [r for r in rows if r.file == "ort-gqa-int4"]
    assert len(quant_rows) == 5 and all(r.passed for r in rows)
    assert any("ort-gqa-int4: weights within" in line for line in log)
    # `check` rebuilds the reference and runs the same check on the bundle's file.
    checked = check_bundle(bundle)
    assert all(r.passed for r in checked) and sum(r.file == "ort-gqa-int4" for r in checked) == 5
    on_disk = json.loads((path / "manifest.json").read_text())["components"]["llm_decoder"]["variants"]
    assert [(v["kind"], v["precision"]) for v in on_disk] == [("ort-gqa", "fp32"), ("ort-gqa-int4", "int4")]


def test_session_runs_the_quantised_decoder_only_when_asked(tiny_quant):
    path = tiny_quant[0]
    ids_prompt = [{"role": "user", "content": "hello"}]
    with Session(path, options=TEST_OPTIONS, verify=False) as fp32:
        assert (fp32.quant, fp32.decoder_variant) == ("fp32", "ort-gqa")
        assert fp32.generator.decoder.path.name == "llm_decoder.ort-gqa.onnx"
    with Session(path, options=TEST_OPTIONS, verify=False, quant="int4") as q:
        assert (q.quant, q.decoder_variant) == ("int4", "ort-gqa-int4")
        assert q.generator.decoder.path.name == "llm_decoder.ort-gqa-int4.onnx"
        result = q.conversation().run("hello", sampling=SamplingParams(greedy=True, max_new_tokens=4))
        assert result.debug["decoder"] == {"variant": "ort-gqa-int4", "quant": "int4"}
        ids = q.tokenizer.apply_chat_template(ids_prompt)
        assert len(q.generator.generate(ids, SamplingParams(greedy=True, max_new_tokens=4)).token_ids) >= 1
    with pytest.raises(BundleError, match=r"no int8 decoder .*--quant int8"):
        Session(path, options=TEST_OPTIONS, verify=False, quant="int8")
    with pytest.raises(EngineError, match="shared KV buffer"):
        Session(path, options=TEST_OPTIONS, verify=False, quant="int4", shared_kv=False)
    with pytest.raises(ValueError, match="unknown quant 'int3'"):
        Session(path, options=TEST_OPTIONS, verify=False, quant="int3")


def test_run_cli_quant(tiny_quant, tmp_path, capsys):
    path = str(tiny_quant[0])
    argv = ["run", path, "--prompt", "hi", "--greedy", "--max-new-tokens", "3", "--json"]
    assert cli.main([*argv, "--quant", "int4"]) == 0
    assert json.loads(capsys.readouterr().out)["usage"]["completion_tokens"] >= 1
    # The same bundle as exported without --quant: no int4 variant in the manifest.
    plain = tmp_path / "plain"
    shutil.copytree(path, plain, ignore=shutil.ignore_patterns("*.ort-gqa-int4.onnx"))
    manifest = json.loads((plain / "manifest.json").read_text())
    manifest["components"]["llm_decoder"]["variants"] = manifest["components"]["llm_decoder"]["variants"][:1]
    (plain / "manifest.json").write_text(json.dumps(manifest))
    for bundle, quant in ((path, "int8"), (str(plain), "int4")):
        assert cli.main(["run", bundle, "--prompt", "hi", "--quant", quant]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("vitron-rt run:") and f"--quant {quant}" in err[0]


def test_cli_flags_reach_the_export_and_bad_values_exit_2(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_export(ref, out, **kwargs):
        seen.update(kwargs)
        raise ExportError("stopped here")

    monkeypatch.setattr("vitron_rt.export.pipeline.export_bundle", fake_export)
    assert cli.main(["export", "--preset", "tiny", "--out", str(tmp_path / "b"), "--quant", "int4"]) == 1
    assert seen["quant"] == ["int4"]
    for argv in (
        ["export", "--preset", "tiny", "--out", str(tmp_path / "b"), "--quant", "int3"],
        ["run", str(tmp_path), "--prompt", "hi", "--quant", "int3"],
    ):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
        assert "invalid choice: 'int3'" in capsys.readouterr().err


# --------------------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def smol_quant(smollm2_bundle, tmp_path_factory):
    """(bundle, rows): the session's SmolLM2 bundle (hard-linked, not copied) with the int4
    variant added from its own ort-gqa file; nothing is exported again."""
    root = tmp_path_factory.mktemp("smol-quant") / "b"
    root.mkdir()
    for f in smollm2_bundle.iterdir():
        if f.is_file() and f.name != "manifest.json":
            os.link(f, root / f.name)
    shutil.copy(smollm2_bundle / "manifest.json", root / "manifest.json")
    return root, add_quant_variants(root, ["int4"])


def test_smollm2_int4_variant(smol_quant, smollm2_bundle):
    root, rows = smol_quant
    assert [r.output for r in rows] == ["weights", "logits", "hidden_states", "top-1 agreement", "greedy prefix"]
    assert all(r.passed for r in rows)
    bundle = load_bundle(root)
    int4 = bundle.component_path("llm_decoder", "ort-gqa-int4").stat().st_size
    fp32 = bundle.component_path("llm_decoder", "ort-gqa").stat().st_size
    assert int4 < 100e6 and int4 < fp32 / 6  # measured 86.3 MB against 540 MB
    # The bundle it came from is untouched.
    assert [v.kind for v in load_bundle(smollm2_bundle).component("llm_decoder").variants] == ["ort-gqa"]


def test_smollm2_int4_still_knows_paris(smol_quant):
    """Greedy, "What is the capital of France?": fp32 says "The capital of France is Paris.";
    int4 was measured to give the same first 6 tokens (then "," for "."), so it must keep
    them and the answer."""
    root = smol_quant[0]
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    params = SamplingParams(greedy=True, max_new_tokens=12)
    replies = {}
    for quant in ("fp32", "int4"):
        with Session(root, options=OrtOptions(intra_op_threads=2, cache_optimized=False), quant=quant) as s:
            replies[quant] = s.generator.generate(s.tokenizer.apply_chat_template(msgs), params)
    assert replies["fp32"].text == "The capital of France is Paris."
    assert replies["int4"].text.startswith("The capital of France is Paris")
    assert replies["int4"].token_ids[:6] == replies["fp32"].token_ids[:6]
