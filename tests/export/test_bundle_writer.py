"""BundleWriter: a bundle appears whole or not at all."""

from __future__ import annotations

import pytest

from vitron_rt.bundle import MANIFEST_NAME, BundleError, ComponentEntry, FileRef, Manifest, TensorSpec, load_bundle
from vitron_rt.export.bundle_writer import BundleWriter


def _commit_one(w: BundleWriter, content: bytes = b"graph") -> Manifest:
    (w.staging / "c.onnx").write_bytes(content)
    entry = ComponentEntry(
        file=FileRef.of(w.staging, "c.onnx"),
        inputs=(TensorSpec("x", "float32", (2,)),),
        outputs=(TensorSpec("y", "float32", (2,)),),
        opset=18,
        exporter="dynamo",
        exporter_reason="default",
    )
    manifest = Manifest(components={"c": entry})
    w.commit(manifest)
    return manifest


def _siblings(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_commit_moves_a_whole_bundle_into_place(tmp_path):
    out = tmp_path / "b"
    writer = BundleWriter(out)
    assert not out.exists() and _siblings(tmp_path) == []  # constructing touches nothing
    with writer as w:
        tok = w.write_file("tokenizer.json", "{}")
        assert tok.size == 2 and not out.exists()
        manifest = _commit_one(w)
    assert load_bundle(out).manifest == manifest
    assert _siblings(tmp_path) == ["b"]
    assert sorted(p.name for p in out.iterdir()) == ["c.onnx", MANIFEST_NAME, "tokenizer.json"]


def test_failure_leaves_nothing(tmp_path):
    out = tmp_path / "b"
    with pytest.raises(RuntimeError, match="export blew up"):
        with BundleWriter(out) as w:
            (w.staging / "half.onnx").write_bytes(b"half")
            raise RuntimeError("export blew up")
    assert _siblings(tmp_path) == []


def test_closing_without_commit_is_an_error_and_leaves_nothing(tmp_path):
    with pytest.raises(BundleError, match="closed without commit"):
        with BundleWriter(tmp_path / "b") as w:
            (w.staging / "c.onnx").write_bytes(b"graph")
    assert _siblings(tmp_path) == []


def test_manifest_naming_a_missing_file_is_not_committed(tmp_path):
    out = tmp_path / "b"
    with pytest.raises(BundleError, match="missing file c.onnx"):
        with BundleWriter(out) as w:
            (w.staging / "c.onnx").write_bytes(b"graph")
            entry = ComponentEntry(
                file=FileRef.of(w.staging, "c.onnx"),
                inputs=(),
                outputs=(),
                opset=18,
                exporter="dynamo",
                exporter_reason="default",
            )
            (w.staging / "c.onnx").unlink()
            w.commit(Manifest(components={"c": entry}))
    assert _siblings(tmp_path) == []


def test_existing_target_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "b"
    with BundleWriter(out) as w:
        _commit_one(w, b"first")
    with pytest.raises(BundleError, match="already exists; pass overwrite=True"):
        with BundleWriter(out) as w:
            _commit_one(w, b"second")
    assert (out / "c.onnx").read_bytes() == b"first"
    with BundleWriter(out, overwrite=True) as w:
        _commit_one(w, b"second")
    assert (out / "c.onnx").read_bytes() == b"second"
    assert _siblings(tmp_path) == ["b"]


def test_overwrite_never_replaces_a_folder_that_is_not_a_bundle(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="non-empty folder that is not a bundle"):
        with BundleWriter(tmp_path / "home", overwrite=True) as w:
            _commit_one(w)
    assert (tmp_path / "home" / "notes.txt").read_text() == "mine"


def test_unwritable_output_is_one_clear_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError) as info:
        with BundleWriter(tmp_path / "file" / "b") as w:
            _commit_one(w)
    where, parent = tmp_path / "file" / "b", tmp_path / "file"
    assert str(info.value) == f"cannot write a bundle to {where}: {parent} is a file, not a folder"
