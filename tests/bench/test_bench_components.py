"""bench/components.py on the tiny size: the rows' structure, parity with PyTorch, the
fusion report, FLOP counting, and the export cache. Nothing here asserts a speed: the
numbers of a timed test on a shared 2-core machine would test the neighbours."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vitron_rt.bench.components import COMPONENTS, bench_components, graph_flops

# A GEMM rate given rather than measured: the rows' percentages only need a number.
GEMM = 100.0
FLAT = ("component", "size", "eager_ms", "ort_ms", "speedup", "speedup_pairs", "gflop", "pct_of_gemm",
        "eager_pct_of_gemm", "max_abs_err", "parity_passed")  # fmt: skip


@pytest.fixture(scope="module")
def tiny_rows(tiny_bundle):
    return bench_components(tiny_bundle, sizes=("tiny",), warmup=1, repeat=2, compare_unfused=True, gemm_gflop_s=GEMM)


def test_one_row_per_component_with_every_figure(tiny_rows):
    assert [r["component"] for r in tiny_rows] == list(COMPONENTS)
    for r in tiny_rows:
        assert all(r[k] is not None for k in FLAT), r
        assert r["size"] == "tiny" and r["threads"] == 2 and r["gemm_gflop_s"] == GEMM
        for side in ("eager", "ort", "ort_unfused"):
            assert r[side]["n"] == 2 and r[side]["median_ms"] > 0
            assert r[side]["median_ms"] <= r[side]["p90_ms"] <= r[side]["p99_ms"]
        # from the 4-decimal medians: eager_ms / ort_ms are rounded to 0.01 ms, too coarse at tiny sizes
        assert r["speedup"] == pytest.approx(r["eager"]["median_ms"] / r["ort"]["median_ms"], rel=1e-2)
        assert r["flops"] > 0 and r["gflop"] == round(r["flops"] / 1e9, 3)
        ort_s = r["ort"]["median_ms"] / 1e3
        assert r["pct_of_gemm"] == pytest.approx(100 * r["flops"] / ort_s / 1e9 / GEMM, abs=0.051)
        assert r["export_s"] is None  # the bundle's own file: nothing exported


def test_onnx_matches_pytorch_under_the_spec_tolerances(tiny_rows):
    for r in tiny_rows:
        assert r["parity_passed"], r["parity"]
        for p in r["parity"]:
            # The outputs are large enough for the tolerance to mean something.
            assert p["ref_max_abs"] > 50 * p["atol"] and p["max_abs_err"] <= p["atol"] + p["rtol"] * p["ref_max_abs"]


def test_every_attention_of_the_timed_graph_was_fused(tiny_rows):
    for r in tiny_rows:
        assert r["fusion"]["fused"]["MultiHeadAttention"] >= 1 and not r["fusion"]["skipped_attention"], r["fusion"]


def test_flops_count_the_graphs_products(tmp_path):
    """(1,4,8)x(8,16) MatMul + a 3x3 Conv 2->5 channels on 6x6 (pad 1): 2 FLOPs per MAC."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Conv", ["img", "k"], ["z"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4, 8]),
         helper.make_tensor_value_info("img", TensorProto.FLOAT, ["b", 2, "h", "h"])],  # fmt: skip
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],  # fmt: skip
        [numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal((5, 2, 3, 3)).astype(np.float32), "k")],  # fmt: skip
    )
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    flops = graph_flops(path, {"x": (3, 4, 8), "img": (3, 2, 6, 6)})
    assert flops == 2 * 3 * 4 * 8 * 16 + 2 * (3 * 5 * 6 * 6) * (2 * 3 * 3)


def test_exports_are_cached_between_runs(tmp_path):
    """Without a bundle the tiny component is exported (and validated) once into the cache."""
    kw = dict(sizes=("tiny",), components=("seg_mask_decoder",), warmup=0, repeat=1, gemm_gflop_s=GEMM,
              cache_dir=tmp_path)  # fmt: skip
    (first,) = bench_components(None, **kw)
    (second,) = bench_components(None, **kw)
    assert first["export_s"] is not None and second["export_s"] is None
    assert first["export_validation"] and all(v["passed"] for v in first["export_validation"])
    assert second["export_validation"] == first["export_validation"]
    assert second["gflop"] == first["gflop"] and second["parity_passed"]
    folders = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(folders) == 1 and folders[0].name.startswith("seg_mask_decoder-tiny-")


def test_unknown_size_is_refused():
    with pytest.raises(ValueError, match="unknown size"):
        bench_components(None, sizes=("huge",))
