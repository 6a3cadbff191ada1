"""Every component exports from its tiny PyTorch reference and validates on shapes other
than the export shapes, and every registered spec is covered (STYLE.md 7: a registered
component without a test is a failure, not a gap)."""

from __future__ import annotations

import pytest
import torch

import vitron_rt.export.specs  # noqa: F401  (registers)
from vitron_rt.bundle import load_bundle
from vitron_rt.export.spec import get_spec, registered_specs
from vitron_rt.models.config import preset
from vitron_rt.models.model import COMPONENT_NAMES, VitronModel


def test_every_component_has_a_spec_and_every_spec_a_component():
    assert set(registered_specs()) == set(COMPONENT_NAMES)


@pytest.mark.parametrize("name", sorted(registered_specs()))
def test_component_exported_and_validated(tiny_export, name):
    path, rows = tiny_export
    mine = [r for r in rows if r.component == name and r.output != "greedy tokens"]
    spec = get_spec(name)
    cases = {r.case for r in mine}
    # Every output on at least two shapes that are not the export shape.
    assert {r.output for r in mine} >= set(spec.output_names)
    assert len(cases) >= 2
    assert all(r.passed for r in mine)
    entry = load_bundle(path).manifest.components[name]
    assert [t.name for t in entry.inputs][: len(spec.input_names)] == spec.input_names
    assert entry.profiles, "TensorRT needs min/opt/max profiles for every dynamic dim"


def test_greedy_parity_row(tiny_export):
    _, rows = tiny_export
    (row,) = [r for r in rows if r.output == "greedy tokens" and r.file == "main"]
    assert row.passed and row.case == "32 tokens"


@pytest.fixture(scope="module")
def tiny_model():
    return VitronModel.from_config(preset("tiny"))


@pytest.mark.parametrize("name", COMPONENT_NAMES)
def test_tiny_outputs_are_large_enough_for_the_tolerance(tiny_model, name):
    """A parity check on outputs smaller than its atol passes anything. The tiny preset's
    random weights must give every float output a scale well above its tolerance."""
    module = tiny_model.component(name)
    spec = get_spec(name).bind(module)
    feeds = spec.make_inputs(module, spec.resolve(module).export)
    with torch.no_grad():
        outs = spec.run(module, feeds)
    for io, out in zip(spec.outputs, outs):
        if out.is_floating_point() and out.numel() and out.shape[2:3] != (0,):
            scale = out.abs().max().item()
            assert scale > 50 * spec.tolerance(io.name).atol, f"{name}.{io.name}: max |out| = {scale:.2g}"
