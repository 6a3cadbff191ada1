"""Exceptions of the export stage, one class per kind of failure.

Validation failures are separate classes (optimum's order: names, then dynamic axes, then
shapes, then values) so a caller, or a test, can tell a graph that is wired wrong from
one that is merely imprecise. Every message is one line that names the component.
"""

from __future__ import annotations


class SpecError(ValueError):
    """An export spec that contradicts itself or the module it describes."""


class ExportError(RuntimeError):
    """torch.onnx.export failed, or wrote a file that breaks the bundle contract."""


class OpsetError(ExportError):
    """A main ONNX file uses an operator domain outside the standard ONNX opsets."""


class ValidationError(Exception):
    """An exported ONNX file disagrees with its PyTorch reference."""


class InputNameError(ValidationError):
    """The graph's input names are not the spec's."""


class OutputNameError(ValidationError):
    """The graph's output names are not the spec's."""


class AxisError(ValidationError):
    """A dim the spec names as dynamic is fixed in the graph, or the reverse."""


class ShapeError(ValidationError):
    """An output's shape or dtype differs from the reference's on some shape case."""


class ToleranceError(ValidationError):
    """Output values differ from the reference's by more than the tolerance allows.

    `rows` holds every comparison made, passed or not, for a `check` table."""

    def __init__(self, message: str, rows: list | None = None):
        super().__init__(message)
        self.rows = rows or []
