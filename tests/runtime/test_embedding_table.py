"""The token embedding served from the memory-mapped table: bit-equal to the engine's
Gather, refusing ids outside the table, and falling back to the engine for a bundle whose
table is inline (older exports) or does not have the layout it claims."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vitron_rt.bundle import load_bundle
from vitron_rt.engines import OrtOptions, make_runner
from vitron_rt.runtime.embedding import MappedTable
from vitron_rt.runtime.errors import VitronInputError
from vitron_rt.runtime.sampling import SamplingParams
from vitron_rt.runtime.session import Session


def test_mapped_rows_equal_the_engine_gather(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    llm = bundle.manifest.llm
    table = MappedTable.from_bundle(bundle, llm)
    assert table is not None and table.rows == bundle.manifest.components[llm.embed_component].attributes["table_rows"]
    runner = make_runner(bundle, llm.embed_component, "ort", OrtOptions(intra_op_threads=1))
    runner.activate()
    try:
        ids = np.arange(table.rows, dtype=np.int64)
        want = runner.infer({llm.input_ids: ids[None]})[llm.inputs_embeds]  # (1, V, D)
    finally:
        runner.deactivate()
    np.testing.assert_array_equal(table.lookup(ids), want)
    out = np.full((1, 1, table.dim), np.nan, dtype=np.float32)
    assert table.lookup([5], out=out) is out
    np.testing.assert_array_equal(out[0, 0], want[0, 5])
    for bad in (-1, table.rows):
        with pytest.raises(VitronInputError, match="outside the embedding table"):
            table.lookup([0, bad])


def test_session_serves_the_table_and_generates_as_the_engine_does(tiny_bundle):
    params = SamplingParams(greedy=True, max_new_tokens=12)
    with Session(tiny_bundle, threads=1) as mapped:
        assert mapped.embedding_table is not None
        ids = mapped.tokenizer.encode("the quick brown fox")
        tokens = mapped.generator.generate(ids, params).token_ids
        files = mapped.loaded_files()
        assert mapped.embedding_table.path.resolve() in files
        embed_onnx = mapped.bundle.component_path(mapped.manifest.llm.embed_component).resolve()
        assert embed_onnx not in files  # no engine holds the table
        engine = mapped.runner(mapped.manifest.llm.embed_component)  # the engine path, beside it
        gen = mapped.generator
        gen.embedder = type(gen.embedder)(engine, gen.llm)
        assert gen.generate(ids, params).token_ids == tokens


@pytest.mark.parametrize("edit", ["inline", "wrong_rows"])
def test_bundles_without_the_layout_use_the_engine(tiny_bundle, tmp_path, edit):
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    manifest = json.loads((root / "manifest.json").read_text())
    entry = manifest["components"]["embed_tokens"]
    if edit == "inline":
        entry["external_data"] = []  # as an export before the table went to external data
    else:
        entry["attributes"]["table_rows"] += 1  # the data file no longer holds what is claimed
    (root / "manifest.json").write_text(json.dumps(manifest))
    bundle = load_bundle(root, verify=False)
    assert MappedTable.from_bundle(bundle, bundle.manifest.llm) is None
