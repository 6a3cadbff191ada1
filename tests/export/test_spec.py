"""ExportSpec declarations, shape resolution and the registry, without exporting anything."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitron_rt.bundle import DimRange, Profile, Tolerance
from vitron_rt.export.errors import SpecError
from vitron_rt.export.spec import (
    DEFAULT_TOLERANCE,
    IO,
    TORCHSCRIPT,
    ExportSpec,
    case_label,
    get_spec,
    register_spec,
    registered_specs,
    unregister_spec,
)


class Proj(nn.Module):
    """(B, T, 8) -> (B, T, 4)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x)


class ProjSpec(ExportSpec):
    inputs = (IO("x", {0: "batch", 1: "sequence"}),)
    outputs = (IO("y", {0: "batch", 1: "sequence"}),)
    export_shapes = {"batch": 2, "sequence": 5}
    validate_shapes = ({"batch": 1}, {"batch": 3, "sequence": 9})
    profiles = {"batch": (1, 1, 4), "sequence": (1, 8, 16)}

    def sample_inputs(self, module, shape):
        return {"x": torch.randn(shape["batch"], shape["sequence"], 8)}


@pytest.fixture
def registry_names():
    """Names registered by a test, removed afterwards so the global registry stays clean."""
    names: list[str] = []
    yield names
    for n in names:
        unregister_spec(n)


def test_register_and_get(registry_names):
    registry_names.append("test_spec.proj")
    register_spec("test_spec.proj")(ProjSpec)
    spec = get_spec("test_spec.proj")
    assert isinstance(spec, ProjSpec) and spec.name == "test_spec.proj"
    assert registered_specs()["test_spec.proj"] is ProjSpec
    assert spec.input_names == ["x"] and spec.output_names == ["y"]
    assert spec.input_dims == ["batch", "sequence"]


def test_one_class_serves_a_family(registry_names):
    names = ["test_family.segment_image", "test_family.generate_image"]
    registry_names.extend(names)

    @register_spec(*names)
    class FamilySpec(ProjSpec):
        pass

    assert [get_spec(n).qualifier for n in names] == ["segment_image", "generate_image"]
    assert get_spec(names[0]) is not get_spec(names[0])  # a fresh instance each time


def test_duplicate_and_unknown_names(registry_names):
    registry_names.append("test_spec.dup")
    register_spec("test_spec.dup")(ProjSpec)

    class Other(ProjSpec):
        pass

    with pytest.raises(SpecError, match="already registered"):
        register_spec("test_spec.dup")(Other)
    with pytest.raises(KeyError, match="no export spec registered for 'nope'"):
        get_spec("nope")


@pytest.mark.parametrize(
    "attrs, message",
    [
        ({"tolerances": {"z": DEFAULT_TOLERANCE}}, "tolerance for 'z', which is not an output"),
        ({"tolerances": {"y": Tolerance(atol=1e-2, rtol=1e-2)}}, "looser than the default and needs a reason"),
        ({"tolerances": {"y": Tolerance(1e-5, 1e-5, statistic="mean")}}, "statistic 'mean'"),
        ({"exporter": TORCHSCRIPT}, "needs exporter_reason"),
        ({"exporter": "jit"}, "exporter 'jit'"),
        ({"opset": 17}, "opset 17 < 18"),
        ({"outputs": (IO("x"),)}, "tensor name 'x' is used twice"),
        ({"inputs": (IO("x", {0: "batch-size"}),)}, "must be a Python identifier"),
        ({"inputs": (IO("x", dtype="float64"),)}, "dtype 'float64'"),
        ({"outputs": ()}, "declares no inputs or no outputs"),
    ],
)
def test_declaration_errors(attrs, message):
    bad = type("Bad", (ProjSpec,), attrs)
    with pytest.raises(SpecError, match=message):
        register_spec("test_spec.bad")(bad)
    assert "test_spec.bad" not in registered_specs()


def test_looser_tolerance_with_reason_is_accepted():
    spec = type("Loose", (ProjSpec,), {"tolerances": {"y": Tolerance(1e-2, 1e-2, "median", reason="fp16")}})("loose")
    spec.check_declaration()
    assert spec.tolerance("y").statistic == "median"


def test_resolve_merges_partial_validation_shapes():
    plan = ProjSpec("proj").resolve(Proj())
    assert plan.export == {"batch": 2, "sequence": 5}
    assert plan.cases == ({"batch": 1, "sequence": 5}, {"batch": 3, "sequence": 9})
    assert plan.profiles == (Profile("default", {"batch": DimRange(1, 1, 4), "sequence": DimRange(1, 8, 16)}),)
    assert case_label(plan.cases[0]) == "batch=1,sequence=5"


@pytest.mark.parametrize(
    "attrs, message",
    [
        ({"export_shapes": {"batch": 1, "sequence": 5}}, "batch=1 would be specialised"),
        ({"export_shapes": {"batch": 2}}, "no size for dim 'sequence'"),
        ({"export_shapes": {"batch": 2, "sequence": 5, "seq": 3}}, "sizes 'seq', which no input axis names"),
        ({"validate_shapes": ()}, "no validate_shapes"),
        ({"validate_shapes": ({"batch": 2},)}, "equals the export shape"),
        ({"validate_shapes": ({"batch": 1}, {"batch": 1})}, "listed twice"),
        ({"validate_shapes": ({"batch": 9},)}, "lies in no profile"),
        ({"profiles": {}}, "no profiles"),
        ({"profiles": {"batch": (1, 1, 4)}}, "no range for dim 'sequence'"),
        ({"profiles": {"batch": (1, 4, 2), "sequence": (1, 8, 16)}}, "min <= opt <= max"),
    ],
)
def test_resolve_errors(attrs, message):
    spec = type("Bad", (ProjSpec,), attrs)("bad")
    with pytest.raises(SpecError, match=message):
        spec.resolve(Proj())


def test_small_export_dims_are_fine_for_torchscript():
    attrs = {
        "exporter": TORCHSCRIPT,
        "exporter_reason": "test",
        "export_shapes": {"batch": 1, "sequence": 5},
        "validate_shapes": ({"batch": 3},),
    }
    spec = type("TS", (ProjSpec,), attrs)("ts")
    assert spec.resolve(Proj()).export["batch"] == 1


def test_several_profiles():
    profiles = (
        Profile("prefill", {"batch": DimRange(1, 1, 4), "sequence": DimRange(2, 8, 16)}),
        Profile("decode", {"batch": DimRange(1, 1, 4), "sequence": DimRange(1, 1, 1)}),
    )
    spec = type("Two", (ProjSpec,), {"profiles": profiles, "validate_shapes": ({"sequence": 1},)})("two")
    assert spec.resolve(Proj()).profiles == profiles


def test_make_inputs_checks_the_generator():
    class WrongDtype(ProjSpec):
        def sample_inputs(self, module, shape):
            return {"x": torch.zeros(shape["batch"], shape["sequence"], 8, dtype=torch.int64)}

    class WrongSize(ProjSpec):
        def sample_inputs(self, module, shape):
            return {"x": torch.zeros(shape["batch"], 3, 8)}

    class WrongName(ProjSpec):
        def sample_inputs(self, module, shape):
            return {"inp": torch.zeros(2, 5, 8)}

    shape = {"batch": 2, "sequence": 5}
    with pytest.raises(SpecError, match="'x' is torch.int64, the spec declares float32"):
        WrongDtype("w").make_inputs(Proj(), shape)
    with pytest.raises(SpecError, match=r"axis 1 \(sequence\) is 3, not 5"):
        WrongSize("w").make_inputs(Proj(), shape)
    with pytest.raises(SpecError, match="returned \\['inp'\\]"):
        WrongName("w").make_inputs(Proj(), shape)


def test_run_orders_outputs_from_a_mapping_or_sequence():
    class Two(nn.Module):
        def forward(self, x):
            return {"b": x * 2, "a": x + 1}

    class TwoSpec(ProjSpec):
        outputs = (IO("a", {0: "batch"}), IO("b", {0: "batch"}))

    x = torch.ones(2, 3)
    a, b = TwoSpec("two").run(Two(), {"x": x})
    assert torch.equal(a, x + 1) and torch.equal(b, x * 2)

    class Short(TwoSpec):
        def forward(self, module, inputs):
            return (inputs["x"],)

    with pytest.raises(SpecError, match="returned 1 outputs, the spec names 2"):
        Short("short").run(Two(), {"x": x})

    class Missing(TwoSpec):
        def forward(self, module, inputs):
            return {"a": inputs["x"]}

    with pytest.raises(SpecError, match="returned no 'b'"):
        Missing("missing").run(Two(), {"x": x})


def test_default_forward_needs_matching_parameter_names():
    class Renamed(ProjSpec):
        inputs = (IO("features", {0: "batch", 1: "sequence"}),)

    with pytest.raises(SpecError, match=r"Proj.forward\(x\) does not take the spec's inputs \['features'\] by name"):
        Renamed("renamed").run(Proj(), {"features": torch.zeros(2, 5, 8)})
