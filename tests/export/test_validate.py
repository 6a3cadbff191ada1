"""export_component + validation on toy modules: every check, in order, and its exception."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from vitron_rt.bundle import Manifest, Source, Tolerance, load_bundle
from vitron_rt.export import (
    IO,
    TORCHSCRIPT,
    AxisError,
    BundleWriter,
    ExportedComponent,
    ExportError,
    ExportSpec,
    OpsetError,
    OrtOptimized,
    OutputNameError,
    ShapeError,
    ToleranceError,
    export_component,
    format_table,
    validate_component,
    validate_file,
)
from vitron_rt.export.onnx_export import check_standard_domains
from vitron_rt.engines.ort import OrtRunner
from vitron_rt.export.validate import ValidationRow, compare, failure_message

WIDTH = 16


def _randn(shape: dict[str, int], *dims: int) -> torch.Tensor:
    """Seeded by the shape case, so each case is reproducible."""
    g = torch.Generator().manual_seed(hash(tuple(sorted(shape.items()))) % (2**31))
    return torch.randn(*dims, generator=g)


class LinearGelu(nn.Module):
    """(B, T, W) -> (B, T, W)."""

    def __init__(self, width: int = WIDTH):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return nn.functional.gelu(self.fc(x))


class LinearGeluSpec(ExportSpec):
    inputs = (IO("x", {0: "batch", 1: "sequence"}),)
    outputs = (IO("y", {0: "batch", 1: "sequence"}),)
    export_shapes = {"batch": 2, "sequence": 5}
    validate_shapes = ({"batch": 1}, {"batch": 3, "sequence": 9})
    profiles = {"batch": (1, 1, 4), "sequence": (1, 8, 16)}

    def sample_inputs(self, module, shape):
        return {"x": _randn(shape, shape["batch"], shape["sequence"], module.fc.in_features)}


class WithVariant(LinearGeluSpec):
    variants = (OrtOptimized(),)


class TwoOutputs(nn.Module):
    """Logits and their greedy tokens: (B, T, W) -> (B, T, V) float, (B, T) int64."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.head = nn.Linear(WIDTH, 11)

    def forward(self, hidden, scale):
        logits = self.head(hidden) * scale  # scale: (B, 1, 1)
        return {"tokens": logits.argmax(-1), "logits": logits}


class TwoOutputsSpec(ExportSpec):
    inputs = (IO("hidden", {0: "batch", 1: "sequence"}), IO("scale", {0: "batch"}))
    outputs = (IO("logits", {0: "batch", 1: "sequence"}), IO("tokens", {0: "batch", 1: "sequence"}, dtype="int64"))
    export_shapes = {"batch": 2, "sequence": 4}
    validate_shapes = ({"batch": 1, "sequence": 1}, {"batch": 3, "sequence": 6})
    profiles = {"batch": (1, 1, 4), "sequence": (1, 4, 8)}
    tolerances = {"logits": Tolerance(atol=1e-5, rtol=1e-4, argmax=True)}

    def sample_inputs(self, module, shape):
        b, t = shape["batch"], shape["sequence"]
        return {"hidden": _randn(shape, b, t, WIDTH), "scale": torch.full((b, 1, 1), 0.5)}


class FixedOutput(nn.Module):
    """Returns a (rows, W) table whatever the batch; the spec below wrongly calls axis 0
    'batch'. With rows == the export batch (2) the mistake hides at export time."""

    def __init__(self, rows: int = 2):
        super().__init__()
        self.table = nn.Parameter(torch.randn(rows, WIDTH))

    def forward(self, x):
        return self.table * x.mean()


class FixedOutputSpec(LinearGeluSpec):
    outputs = (IO("y", {0: "batch"}),)

    def sample_inputs(self, module, shape):
        return {"x": _randn(shape, shape["batch"], shape["sequence"], WIDTH)}


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """LinearGelu exported once with the dynamo exporter and an ort-optimized variant."""
    module, spec = LinearGelu(), WithVariant("toy_linear")
    exported = export_component(module, spec, tmp_path_factory.mktemp("linear"))
    return module, spec, exported


def test_export_writes_the_manifest_entry(linear):
    module, spec, exported = linear
    e = exported.entry
    assert exported.path.name == "toy_linear.onnx" and exported.path.is_file()
    assert [(t.name, t.dtype, t.shape) for t in e.inputs] == [("x", "float32", ("batch", "sequence", WIDTH))]
    assert [(t.name, t.shape) for t in e.outputs] == [("y", ("batch", "sequence", WIDTH))]
    assert e.exporter == "dynamo" and e.opset == 18 and e.external_data == ()
    assert e.tolerances == {"y": spec.default_tolerance}
    assert e.profiles[0].shapes(e.inputs[0]) == ((1, 1, WIDTH), (1, 8, WIDTH), (4, 16, WIDTH))
    graph = onnx.load(str(exported.path))
    assert [tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim) for v in graph.graph.input] == [
        ("batch", "sequence", WIDTH)
    ]


def test_validation_passes_on_other_shapes_for_main_and_variant(linear):
    module, spec, exported = linear
    rows = validate_component(module, spec, exported)
    assert [(r.file, r.case) for r in rows] == [
        ("main", "batch=1,sequence=5"),
        ("main", "batch=3,sequence=9"),
        ("ort-optimized", "batch=1,sequence=5"),
        ("ort-optimized", "batch=3,sequence=9"),
    ]
    assert all(r.passed and r.max_abs_err < 1e-5 for r in rows)
    table = format_table(rows).splitlines()
    assert table[0].split("  ")[0] == "component" and table[0].endswith("result")
    assert len(table) == 2 + len(rows) and all(line.endswith("ok") for line in table[2:])


def test_main_file_is_standard_opset_and_variant_is_not(linear):
    module, spec, exported = linear
    main = onnx.load(str(exported.path))
    check_standard_domains(main, "main")
    variant = onnx.load(str(exported.variant_path("ort-optimized")))
    assert "com.microsoft" in {i.domain for i in variant.opset_import}
    with pytest.raises(OpsetError, match="non-standard operator domains: .*'com.microsoft' \\(imported\\)"):
        check_standard_domains(variant, "variant")


def test_com_microsoft_node_fails_loudly():
    node = helper.make_node("FusedGemm", ["a", "b"], ["c"], domain="com.microsoft")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [2, 2]) for n in "ab"],
        [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [2, 2])],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    with pytest.raises(OpsetError, match=r"'com.microsoft' \(FusedGemm\)"):
        check_standard_domains(model, "x.onnx")


def test_two_outputs_in_spec_order_with_exact_int_output(tmp_path):
    module, spec = TwoOutputs(), TwoOutputsSpec("two")
    exported = export_component(module, spec, tmp_path)
    assert [(t.name, t.dtype, t.shape) for t in exported.outputs] == [
        ("logits", "float32", ("batch", "sequence", 11)),
        ("tokens", "int64", ("batch", "sequence")),
    ]
    assert exported.inputs[1].shape == ("batch", 1, 1)
    rows = validate_component(module, spec, exported)
    assert [(r.output, r.case) for r in rows] == [
        ("logits", "batch=1,sequence=1"),
        ("tokens", "batch=1,sequence=1"),
        ("logits", "batch=3,sequence=6"),
        ("tokens", "batch=3,sequence=6"),
    ]
    assert all(r.passed for r in rows)
    assert rows[1].max_abs_err == 0.0


def test_fixed_output_declared_dynamic_is_an_axis_error(tmp_path):
    with pytest.raises(AxisError, match=r"output 'y' axis 0 is named 'batch' \(= 2\) but the module gives 4"):
        export_component(FixedOutput(rows=4), FixedOutputSpec("fixed4"), tmp_path)
    # Same size as the export batch: only the graph's declared dims show the mistake.
    with pytest.raises(AxisError, match="output 'y' axis 0 is fixed to 2 in the graph, the spec says dynamic 'batch'"):
        export_component(FixedOutput(rows=2), FixedOutputSpec("fixed2"), tmp_path)


def test_fixed_output_is_an_axis_error_with_torchscript_too(tmp_path):
    """TorchScript writes the declared dynamic_axes into the graph whatever the module
    does, so validation on other shapes is what catches it."""
    spec = type("TS", (FixedOutputSpec,), {"exporter": TORCHSCRIPT, "exporter_reason": "test"})("fixed_ts")
    module = FixedOutput(rows=2)
    exported = export_component(module, spec, tmp_path)
    with pytest.raises(AxisError, match=r"axis 0 is named 'batch' \(= 1\) but the reference gives 2"):
        validate_component(module, spec, exported)


def test_specialised_input_dim_is_an_axis_error(tmp_path):
    """torch.onnx.export does not fail here: it re-exports with the dim made constant."""

    class Specialises(nn.Module):
        def forward(self, x):
            return x.reshape(2, x.shape[1] * x.shape[2])  # only valid for batch == 2

    spec = type("S", (FixedOutputSpec,), {"outputs": (IO("y"),)})("specialises")
    with pytest.raises(AxisError, match="input 'x' axis 0 is fixed to 2 in the graph, the spec says dynamic 'batch'"):
        export_component(Specialises(), spec, tmp_path)


def test_graph_with_a_fixed_named_dim_is_an_axis_error(linear, tmp_path):
    module, spec, exported = linear
    model = onnx.load(str(exported.path))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5  # 'sequence' made fixed
    bad = tmp_path / "fixed.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(AxisError, match="output 'y' axis 1 is fixed to 5 in the graph, the spec says dynamic 'seq"):
        validate_file(module, spec, bad)


def test_torchscript_exporter_records_its_reason(tmp_path):
    spec = type("TS", (LinearGeluSpec,), {"exporter": TORCHSCRIPT, "exporter_reason": "test: fallback path"})("ts")
    module = LinearGelu()
    exported = export_component(module, spec, tmp_path)
    assert (exported.entry.exporter, exported.entry.exporter_reason) == ("torchscript", "test: fallback path")
    assert all(r.passed for r in validate_component(module, spec, exported))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ts.onnx"]  # the raw export is gone


def test_perturbed_onnx_reports_the_smallest_passing_tolerance(linear, tmp_path):
    module, spec, exported = linear
    model = onnx.load(str(exported.path))
    (bias,) = [i for i in model.graph.initializer if i.name.endswith("bias")]
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.01, bias.name))
    bad = tmp_path / "perturbed.onnx"
    onnx.save(model, str(bad))

    with pytest.raises(ToleranceError) as info:
        validate_file(module, spec, bad)
    message = str(info.value)
    assert "output 'y' fails on batch=1,sequence=5, batch=3,sequence=9: max abs err" in message
    assert message.endswith("(max) [2 of 2 comparisons failed]")
    assert len(info.value.rows) == 2 and not any(r.passed for r in info.value.rows)
    atol = float(re.search(r"smallest passing tolerance is atol=(\S+) or", message).group(1))
    assert 1e-3 < atol <= 0.012  # 0.01 through gelu, whose slope peaks near 1.13

    loose = type("Loose", (type(spec),), {"tolerances": {"y": Tolerance(atol, 0.0, reason="test")}})(spec.name)
    assert all(r.passed for r in validate_file(module, loose, bad))
    rows = validate_file(module, spec, bad, strict=False)  # for a `check` table
    assert "FAIL" in format_table(rows)


def test_renamed_output_is_an_output_name_error(linear, tmp_path):
    module, spec, exported = linear
    model = onnx.load(str(exported.path))
    old = model.graph.output[0].name
    model.graph.output[0].name = "z"
    for node in model.graph.node:
        node.output[:] = ["z" if o == old else o for o in node.output]
    bad = tmp_path / "renamed.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(OutputNameError, match=r"graph outputs \['z'\], the spec declares \['y'\]"):
        validate_file(module, spec, bad)


def test_wrong_output_shape_is_a_shape_error(linear):
    """A runner is swappable; this one drops a row of every output."""

    class Truncating(OrtRunner):
        def infer(self, feeds):
            return {k: v[:, :-1] for k, v in super().infer(feeds).items()}

    module, spec, exported = linear
    expected = r"output 'y' on batch=1,sequence=5 is float32\[1, 4, 16\], the reference is float32\[1, 5, 16\]"
    with pytest.raises(ShapeError, match=expected):
        validate_file(module, spec, exported.path, runner=Truncating)


def test_external_data_above_the_threshold(tmp_path):
    module, spec = LinearGelu(width=64), LinearGeluSpec("big")
    exported = export_component(module, spec, tmp_path, external_data_threshold=0)
    assert [f.path for f in exported.entry.external_data] == ["big.onnx.data"]
    assert exported.entry.external_data[0].size >= 64 * 64 * 4
    assert all(r.passed for r in validate_component(module, spec, exported))


def test_export_failure_is_one_clear_line(tmp_path):
    class DataDependent(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x  # control flow on values: not exportable

    spec = type("S", (FixedOutputSpec,), {"outputs": (IO("y", {0: "batch", 1: "sequence"}),)})("branchy")
    with pytest.raises(ExportError) as info:
        export_component(DataDependent(), spec, tmp_path)
    message = str(info.value)
    assert message.startswith("branchy: torch.onnx.export (dynamo) failed: GuardOnDataDependentSymNode")
    assert "\n" not in message


def test_bundle_round_trip_and_check_from_the_loaded_bundle(linear, tmp_path):
    """Export into a BundleWriter, load the bundle back, validate from what it names."""
    module, spec, _ = linear
    out = tmp_path / "bundle"
    with BundleWriter(out) as w:
        exported = export_component(module, spec, w.staging)
        w.commit(Manifest(source=Source(preset="toy"), components={spec.name: exported.entry}))
    bundle = load_bundle(out)
    entry = bundle.component(spec.name)
    assert entry == exported.entry
    assert bundle.component_path(spec.name, "ort-optimized").is_file()
    rows = validate_component(module, spec, ExportedComponent(spec.name, bundle.root, entry))
    assert len(rows) == 4 and all(r.passed for r in rows)


# --------------------------------------------------------------------------- compare


def test_compare_rules():
    ref = np.linspace(1, 2, 100, dtype=np.float32)
    tol = Tolerance(atol=1e-3, rtol=0.0)
    got = ref.copy()
    got[0] += 0.5  # one outlier
    assert not compare(ref, got, tol).passed
    median = compare(ref, got, Tolerance(1e-3, 0.0, statistic="median", reason="outliers"))
    assert median.passed and median.stat_abs_err == 0.0 and median.max_abs_err == pytest.approx(0.5)
    # passes on relative error alone
    assert compare(ref * 1e6, ref * 1e6 * (1 + 1e-5), Tolerance(atol=1e-3, rtol=1e-4)).passed

    nan = ref.copy()
    nan[3] = np.nan
    result = compare(ref, nan, tol)
    assert not result.passed and not result.within_reach and result.detail.startswith("NaN mismatch")
    assert compare(nan, nan.copy(), tol).passed

    ints = np.arange(6)
    ints2 = ints.copy()
    ints2[2] = 7
    assert compare(ints, ints2, tol).detail == "1 of 6 elements differ (exact match required)"

    logits = np.array([[1.0, 1.00001, 0.0]])
    result = compare(logits, logits[:, [1, 0, 2]], Tolerance(atol=1e-4, rtol=0.0, argmax=True))
    assert not result.passed and result.detail.startswith("argmax differs at 1 of 1 positions")


def test_smallest_tolerance_is_rounded_up_so_it_passes():
    ref = np.zeros((1, 3), dtype=np.float32)
    got = np.array([[0.0, 0.0, 0.0123456]], dtype=np.float32)
    tol = Tolerance(1e-4, 0.0)
    row = ValidationRow("c", "main", "y", "batch=1", tol, compare(ref, got, tol))
    message = failure_message([row])
    assert message.startswith("c (main): output 'y' fails on batch=1: max abs err 0.0123 > atol 0.0001")
    atol = float(re.search(r"atol=(\S+) or", message).group(1))
    assert atol == pytest.approx(0.0124) and compare(ref, got, Tolerance(atol, 0.0)).passed
