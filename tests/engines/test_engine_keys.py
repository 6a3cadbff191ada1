"""Engine cache keys: each ingredient changes the file name, the sidecar is checked before a
plan is loaded, and stale plans are found, never loaded (plain Python)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from _engine_manifests import DECODE, PREFILL, llm_decoder

from vitron_rt.bundle import DimRange, FileRef, Profile
from vitron_rt.engines import StaleEngineError
from vitron_rt.engines.keys import (
    EngineKey,
    onnx_digest,
    ort_cache_name,
    profiles_digest,
    sidecar_path,
    stale_engines,
    verify_engine,
    write_engine,
)

BASE = EngineKey.for_component("llm_decoder", llm_decoder(), "fp16", "10.3.0.26", (8, 9))


def test_file_name_spells_out_the_key():
    name = BASE.file_name
    assert name.startswith("llm_decoder.abababababababab.fp16.p-")
    assert name.endswith(".trt10.3.0.26.sm89.plan")
    assert BASE.compute_capability == "8.9" and BASE.onnx_sha256 == "ab" * 32


@pytest.mark.parametrize(
    "change",
    [
        {"component": "embed_tokens"},
        {"onnx_sha256": "cd" * 32},
        {"precision": "fp32"},
        {"profiles": profiles_digest([PREFILL])},
        {"tensorrt": "10.4.0"},
        {"compute_capability": "9.0"},
    ],
)
def test_each_ingredient_changes_the_file_name(change):
    assert dataclasses.replace(BASE, **change).file_name != BASE.file_name


def test_profile_ranges_and_external_weights_change_the_key():
    wider = Profile("decode", {**DECODE.dims, "batch": DimRange(1, 1, 8)})
    assert profiles_digest([PREFILL, DECODE]) != profiles_digest([PREFILL, wider])
    assert profiles_digest([PREFILL, DECODE]) != profiles_digest([DECODE, PREFILL])
    assert profiles_digest([PREFILL, DECODE]) == BASE.profiles
    data = FileRef("c.onnx.data", "11" * 32, 10)
    with_data = llm_decoder(external=(data,))
    new_weights = llm_decoder(external=(dataclasses.replace(data, sha256="22" * 32),))
    assert onnx_digest(llm_decoder()) == "ab" * 32
    assert len({onnx_digest(llm_decoder()), onnx_digest(with_data), onnx_digest(new_weights)}) == 3


def test_written_engine_verifies_against_its_key(tmp_path):
    path = write_engine(tmp_path, BASE, b"plan bytes", extra={"profiles": ["prefill", "decode"]})
    assert path.name == BASE.file_name and sidecar_path(path).name == BASE.file_name + ".json"
    meta = verify_engine(path, BASE)
    assert meta["key"] == BASE.to_dict() and meta["profiles"] == ["prefill", "decode"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left


def test_foreign_or_damaged_engines_are_refused(tmp_path):
    path = write_engine(tmp_path, BASE, b"plan bytes")
    other_gpu = dataclasses.replace(BASE, compute_capability="9.0")
    with pytest.raises(StaleEngineError, match="built for compute_capability '8.9', this run needs '9.0'"):
        verify_engine(path, other_gpu)
    path.write_bytes(b"plan byteZ")  # same size, other contents
    with pytest.raises(StaleEngineError, match="contents differ from the sha256 in its sidecar"):
        verify_engine(path, BASE)
    verify_engine(path, BASE, check_hash=False)  # the size still matches
    path.write_bytes(b"plan")
    with pytest.raises(StaleEngineError, match="4 bytes, its sidecar says 10"):
        verify_engine(path, BASE)
    sidecar_path(path).unlink()
    with pytest.raises(StaleEngineError, match="no sidecar .* \\(an interrupted build\\)"):
        verify_engine(path, BASE)
    sidecar_path(path).write_text("{not json")
    with pytest.raises(StaleEngineError, match="unreadable sidecar"):
        verify_engine(path, BASE)
    with pytest.raises(StaleEngineError, match="no such engine"):
        verify_engine(tmp_path / "missing.plan", BASE)


def test_stale_plans_of_the_same_component_are_listed(tmp_path):
    old = write_engine(tmp_path, dataclasses.replace(BASE, tensorrt="10.0.1"), b"old")
    write_engine(tmp_path, BASE, b"new")
    write_engine(tmp_path, dataclasses.replace(BASE, component="llm_decoder.extra"), b"x")
    write_engine(tmp_path, dataclasses.replace(BASE, component="llm"), b"y")
    assert stale_engines(tmp_path, BASE) == [old]
    assert stale_engines(tmp_path / "none", BASE) == []
    assert json.loads(sidecar_path(old).read_text())["key"]["tensorrt"] == "10.0.1"


def test_ort_cache_name_holds_its_ingredients():
    name = ort_cache_name("unet", "ef" * 32, "extended", "1.32.0", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert name == "unet.efefefefefefefef.extended.ort1.32.0.cuda-cpu.onnx"
    assert ort_cache_name("unet", "ef" * 32, "basic", "1.32.0", ["CPUExecutionProvider"]) != name
