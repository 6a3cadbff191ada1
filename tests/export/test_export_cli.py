"""`vitron-rt export` and `vitron-rt check` end to end: LLaMA-family folders of several
shapes, a Vitron-layout checkpoint, and bad input (one clear line, non-zero exit, nothing
half-written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vitron_rt import cli
from vitron_rt.bundle import MANIFEST_NAME, load_bundle
from vitron_rt.export.pipeline import check_bundle, export_bundle
from vitron_rt.models.source import from_checkpoints


def one_line_error(capsys, code: int, argv: list[str]) -> str:
    """Run the CLI; the failure must be exactly one `vitron-rt <cmd>:` line, and last
    (progress lines may come before it), with no traceback."""
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith(f"vitron-rt {argv[0]}:")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert not any("Traceback" in line for line in err), err
    return errors[0]


def no_partial_left(folder: Path) -> bool:
    return not any(p.name.startswith(".") and "partial" in p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    "variant",
    [
        {},  # GQA 4/2, tied head, default RoPE
        {"num_kv_heads": 4, "tie_word_embeddings": False, "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
        {
            "tie_word_embeddings": False,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        },
    ],
    ids=["gqa-tied", "mha-untied-linear-rope", "gqa-untied-llama3-rope"],
)
def test_llama_family_folder_exports_and_checks(tmp_path, variant, llama_folder):
    folder = llama_folder(tmp_path / "llama", **variant)
    path, rows = export_bundle(from_checkpoints(llm=str(folder)), tmp_path / "b")
    assert all(r.passed for r in rows)
    bundle = load_bundle(path)
    assert set(bundle.manifest.components) == {"embed_tokens", "llm_decoder"}
    llm = bundle.manifest.llm
    assert llm.num_kv_heads == variant.get("num_kv_heads", 2)
    # `check` rebuilds the reference from the manifest alone and passes, greedy included.
    check_rows = check_bundle(bundle)
    assert all(r.passed for r in check_rows)
    assert any(r.output == "greedy tokens" for r in check_rows)


def test_vitron_layout_checkpoint_exports(tmp_path):

    import importlib.util

    # The tiny checkpoint with the released key names, as the loader's own tests build it.
    spec = importlib.util.spec_from_file_location(
        "vitron_ckpt_tests", Path(__file__).parents[1] / "models" / "test_vitron_checkpoint.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from vitron_rt.models.vitron_checkpoint import save_vitron

    folder = save_vitron(mod.tiny_parts(), tmp_path / "tiny-vitron")
    path, rows = export_bundle(from_checkpoints(checkpoint=str(folder)), tmp_path / "b")
    manifest = load_bundle(path).manifest
    assert {"vision_encoder", "mm_projector", "region_encoder", "embed_tokens", "llm_decoder"} == set(
        manifest.components
    )
    assert manifest.tokenizer.chat_template is not None  # vicuna_v1
    assert all(r.passed for r in check_bundle(load_bundle(path)))


def test_cli_export_and_check_tiny(tiny_bundle, capsys):
    assert cli.main(["check", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    assert "greedy tokens" in out and "all " in out and "FAIL" not in out


def test_unknown_preset(tmp_path, capsys):
    line = one_line_error(capsys, 1, ["export", "--preset", "huge", "--out", str(tmp_path / "b")])
    assert "unknown preset 'huge'" in line
    assert not (tmp_path / "b").exists()


def test_unwritable_output(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    line = one_line_error(capsys, 1, ["export", "--preset", "tiny", "--out", str(tmp_path / "file" / "b")])
    assert "cannot write a bundle" in line


def test_existing_bundle_is_not_replaced(tiny_bundle, tmp_path, capsys):
    copy = shutil.copytree(tiny_bundle, tmp_path / "b")
    before = (copy / MANIFEST_NAME).read_text()
    line = one_line_error(capsys, 1, ["export", "--preset", "tiny", "--out", str(copy)])
    assert "exists" in line and "--overwrite" in line
    assert (copy / MANIFEST_NAME).read_text() == before


def test_corrupt_gguf(tmp_path, capsys):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 20)
    one_line_error(capsys, 1, ["export", "--llm", str(bad), "--out", str(tmp_path / "b")])
    assert not (tmp_path / "b").exists() and no_partial_left(tmp_path)


def test_unknown_architecture(tmp_path, capsys, llama_folder):
    folder = llama_folder(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "qwen2"
    (folder / "config.json").write_text(json.dumps(config))
    line = one_line_error(capsys, 1, ["export", "--llm", str(folder), "--out", str(tmp_path / "b")])
    assert "qwen2" in line
    assert not (tmp_path / "b").exists() and no_partial_left(tmp_path)


def test_missing_keys(tmp_path, capsys, llama_folder):
    from safetensors.torch import load_file, save_file

    folder = llama_folder(tmp_path / "m")
    weights = load_file(folder / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    line = one_line_error(capsys, 1, ["export", "--llm", str(folder), "--out", str(tmp_path / "b")])
    assert "model.layers.1.mlp.up_proj.weight" in line
    assert not (tmp_path / "b").exists()


def test_check_refuses_a_tampered_file(tiny_bundle, tmp_path, capsys):
    copy = shutil.copytree(tiny_bundle, tmp_path / "b")
    with open(copy / "mm_projector.onnx", "ab") as f:
        f.write(b"\0")
    line = one_line_error(capsys, 1, ["check", str(copy)])
    assert "mm_projector.onnx" in line


def test_check_refuses_another_schema_version(tiny_bundle, tmp_path, capsys):
    copy = shutil.copytree(tiny_bundle, tmp_path / "b")
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["schema_version"] = 999
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    line = one_line_error(capsys, 1, ["check", str(copy)])
    assert "999" in line
