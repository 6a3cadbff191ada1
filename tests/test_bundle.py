"""The bundle contract: manifest round trip, refusals, and that it imports nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vitron_rt.bundle import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    BundleError,
    ComponentEntry,
    DimRange,
    FileRef,
    ImagePreprocess,
    LlmInfo,
    Manifest,
    Producer,
    Profile,
    SignalInfo,
    Source,
    TensorSpec,
    TokenizerInfo,
    Tolerance,
    VariantEntry,
    load_bundle,
    sha256_file,
    write_manifest,
)

LAYERS = 2
PROJ = "signal_projector.segment_image"


def _entry(root: Path, name: str, inputs, outputs, **kw) -> ComponentEntry:
    (root / f"{name}.onnx").write_bytes(f"onnx bytes of {name}".encode())
    return ComponentEntry(
        file=FileRef.of(root, f"{name}.onnx"),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        opset=18,
        exporter="dynamo",
        exporter_reason="default",
        **kw,
    )


def _manifest(root: Path) -> Manifest:
    """A manifest with every section filled, over small stand-in files."""
    kv = ("batch", 2, "past_sequence", 8)
    present = ("batch", 2, "total_sequence", 8)
    llm = LlmInfo(
        vocab_size=300, hidden_size=16, max_position_embeddings=64, num_layers=LAYERS, num_kv_heads=2, head_dim=8
    )
    dec_in = [
        TensorSpec("inputs_embeds", "float32", ("batch", "sequence", 16)),
        TensorSpec("attention_mask", "int64", ("batch", "total_sequence")),
        TensorSpec("position_ids", "int64", ("batch", "sequence")),
        *(TensorSpec(n, "float32", kv) for n in llm.past_names()),
    ]
    dec_out = [
        TensorSpec("logits", "float32", ("batch", "sequence", 300)),
        TensorSpec("hidden_states", "float32", ("batch", "sequence", 16)),
        *(TensorSpec(n, "float32", present) for n in llm.present_names()),
    ]
    dims = ("batch", "sequence", "past_sequence", "total_sequence")
    profiles = (
        Profile("prefill", {d: DimRange(1, 8, 64) for d in dims}),
        Profile("decode", {**{d: DimRange(1, 8, 64) for d in dims}, "sequence": DimRange(1, 1, 1)}),
    )
    (root / "llm_decoder.onnx.data").write_bytes(b"\0" * 4096)
    (root / "llm_decoder.ort-optimized.onnx").write_bytes(b"optimized")
    decoder = _entry(
        root,
        "llm_decoder",
        dec_in,
        dec_out,
        external_data=(FileRef.of(root, "llm_decoder.onnx.data"),),
        profiles=profiles,
        tolerances={"logits": Tolerance(1e-3, 1e-3, "median", argmax=True, reason="fp16 logits")},
        variants=(VariantEntry("ort-optimized", FileRef.of(root, "llm_decoder.ort-optimized.onnx")),),
    )
    embed = _entry(
        root,
        "embed_tokens",
        [TensorSpec("input_ids", "int64", ("batch", "sequence"))],
        [TensorSpec("inputs_embeds", "float32", ("batch", "sequence", 16))],
        profiles=(Profile("default", {"batch": DimRange(1, 1, 4), "sequence": DimRange(1, 8, 64)}),),
    )
    vision = _entry(
        root,
        "vision_encoder",
        [TensorSpec("pixel_values", "float32", ("batch", 3, 32, 32))],
        [TensorSpec("image_features", "float32", ("batch", 16, 32))],
        profiles=(Profile("default", {"batch": DimRange(1, 1, 4)}),),
    )
    proj = _entry(
        root,
        PROJ,
        [TensorSpec("signal_hidden", "float32", ("batch", 2, 16))],
        [TensorSpec("conditioning", "float32", ("batch", 2, 32))],
        profiles=(Profile("default", {"batch": DimRange(1, 1, 4)}),),
        attributes={"backend": "segmentation"},
    )
    (root / "tokenizer.json").write_text('{"model": "stand-in"}')
    (root / "chat_template.jinja").write_text("{{ bos_token }}")
    tokenizer = TokenizerInfo(
        file=FileRef.of(root, "tokenizer.json"),
        chat_template=FileRef.of(root, "chat_template.jinja"),
        bos_token="<s>",
        eos_token="</s>",
        signal_tokens=("<sig_0>", "<sig_1>"),
        special_token_ids={"<s>": 1, "</s>": 2, "<image>": 259, "<region>": 260, "<sig_0>": 261, "<sig_1>": 262},
    )
    return Manifest(
        producer=Producer(tools={"torch": "2.13.0", "onnx": "1.23.2"}),
        source=Source(preset="tiny", config={"name": "tiny", "seed": 0}),
        tokenizer=tokenizer,
        llm=llm,
        signal=SignalInfo(num_tokens=2, projectors={"segment_image": PROJ}),
        preprocess={"vision_encoder": ImagePreprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))},
        video_frames=4,
        components={"vision_encoder": vision, "embed_tokens": embed, "llm_decoder": decoder, PROJ: proj},
    )


@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    write_manifest(_manifest(tmp_path), tmp_path)
    return tmp_path


def _edit_manifest(root: Path, edit) -> None:
    path = root / MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_round_trip(bundle_dir):
    manifest = _manifest(bundle_dir)
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest == manifest
    assert bundle.manifest.to_json() == (bundle_dir / MANIFEST_NAME).read_text()
    assert list(json.loads(bundle.manifest.to_json())) == [
        "schema_version", "producer", "source", "tokenizer", "llm", "signal", "preprocess", "video_frames", "components"
    ]
    assert list(bundle.manifest.components) == ["vision_encoder", "embed_tokens", "llm_decoder", PROJ]
    assert bundle.component_path("llm_decoder", "ort-optimized") == bundle_dir / "llm_decoder.ort-optimized.onnx"
    assert bundle.engines_dir == bundle_dir / "engines"


def test_llm_names_come_from_the_manifest(bundle_dir):
    m = load_bundle(bundle_dir).manifest
    assert m.llm.past_names()[:2] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert m.llm.present_names()[-1] == f"present.{LAYERS - 1}.value"
    dec = m.components["llm_decoder"]
    assert dec.input("past_key_values.1.key").dynamic_axes == {0: "batch", 2: "past_sequence"}
    decode = dec.profiles[1]
    assert decode.shapes(dec.input("inputs_embeds")) == ((1, 1, 16), (8, 1, 16), (64, 1, 16))


def test_files_lists_every_file_once(bundle_dir):
    paths = [f.path for f in load_bundle(bundle_dir).manifest.files()]
    assert paths[:2] == ["tokenizer.json", "chat_template.jinja"]
    assert {"llm_decoder.onnx.data", "llm_decoder.ort-optimized.onnx"} <= set(paths)
    assert len(paths) == len(set(paths)) == 8


def test_sha_mismatch_is_refused(bundle_dir):
    data = bundle_dir / "llm_decoder.onnx.data"
    data.write_bytes(b"\1" + data.read_bytes()[1:])  # same size, other content
    with pytest.raises(BundleError, match=r"llm_decoder.onnx.data does not match its sha256"):
        load_bundle(bundle_dir)
    load_bundle(bundle_dir, verify=False)  # sizes only


def test_truncated_or_missing_file_is_refused(bundle_dir):
    (bundle_dir / "tokenizer.json").write_text("{}")
    with pytest.raises(BundleError, match=r"tokenizer.json is 2 bytes, the manifest says 21"):
        load_bundle(bundle_dir, verify=False)
    (bundle_dir / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="missing file tokenizer.json"):
        load_bundle(bundle_dir)


def test_other_schema_version_is_refused(bundle_dir):
    _edit_manifest(bundle_dir, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    expected = rf"schema version {SCHEMA_VERSION + 1}, but this vitron-rt .* reads version {SCHEMA_VERSION}"
    with pytest.raises(BundleError, match=expected):
        load_bundle(bundle_dir)
    _edit_manifest(bundle_dir, lambda d: d.pop("schema_version"))
    with pytest.raises(BundleError, match="no schema_version; not a vitron-rt manifest"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["components"]["embed_tokens"].update(opset="18"), r"components.embed_tokens.opset: expected int"),
        (lambda d: d["components"]["embed_tokens"].pop("inputs"), r"components.embed_tokens: missing field 'inputs'"),
        (lambda d: d["llm"].update(rope="x"), r"llm: unknown field 'rope'"),
        (lambda d: d["components"]["embed_tokens"]["file"].update(path="../x.onnx"), r"'../x.onnx' must be relative"),
        (lambda d: d["llm"].update(past_key="past.key"), r"llm.past_key 'past.key' must hold exactly one %d"),
        (lambda d: d["llm"].update(num_layers=3), r"llm names input 'past_key_values.2.key', which 'llm_decoder'"),
        (lambda d: d["signal"].update(num_tokens=3), r"tokenizer lists 2 signal tokens, signal.num_tokens is 3"),
        (lambda d: d["tokenizer"]["special_token_ids"].pop("<image>"), r"special token '<image>' has no id"),
        (
            lambda d: d["preprocess"].update(seg_image_encoder=d["preprocess"]["vision_encoder"]),
            r"names component 'seg_image_encoder'",
        ),
        (
            lambda d: d["components"]["embed_tokens"]["profiles"][0]["dims"].pop("sequence"),
            r"profile 'default' has no range for input dim 'sequence'",
        ),
        (lambda d: d["components"]["embed_tokens"]["inputs"][0].update(dtype="int128"), r"dtype 'int128'"),
    ],
)
def test_bad_manifests_are_refused_with_the_field(bundle_dir, edit, message):
    _edit_manifest(bundle_dir, edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no such bundle folder"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match=r"not a bundle \(no manifest.json\)"):
        load_bundle(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path)


def test_sha256_streams_large_files(tmp_path):
    import hashlib

    data = bytes(range(256)) * (40_000)  # ~10 MB: more than one read chunk
    (tmp_path / "big").write_bytes(data)
    assert sha256_file(tmp_path / "big") == hashlib.sha256(data).hexdigest()


def test_bundle_module_imports_nothing_heavy():
    code = (
        "import sys, vitron_rt.bundle; "
        "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'vitron_rt.export', 'vitron_rt.runtime', "
        "'vitron_rt.engines', 'vitron_rt.models') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
