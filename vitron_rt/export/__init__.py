"""Export: PyTorch reference components -> ONNX files, validated, in a versioned bundle.

    spec.py           ExportSpec, IO, register_spec / get_spec: one declarative spec per component
    onnx_export.py    export_component(module, spec, out_dir) -> ExportedComponent
    validate.py       validate_component / validate_file against the reference; format_table
    llm_gqa.py        the decoder's "ort-gqa" variant: GroupQueryAttention over shared KV buffers
    bundle_writer.py  BundleWriter: stage a bundle, commit it with one rename
    errors.py         SpecError, ExportError, OpsetError, ValidationError and its kinds

Needs the `export` extra (torch, onnx, onnxscript); the runtime never imports this package.
"""

from vitron_rt.bundle import Tolerance
from vitron_rt.export.bundle_writer import BundleWriter
from vitron_rt.export.errors import (
    AxisError,
    ExportError,
    InputNameError,
    OpsetError,
    OutputNameError,
    ShapeError,
    SpecError,
    ToleranceError,
    ValidationError,
)
from vitron_rt.export.onnx_export import (
    EXTERNAL_DATA_THRESHOLD,
    ExportedComponent,
    OrtOptimized,
    export_component,
)
from vitron_rt.export.spec import (
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    DYNAMO,
    IO,
    TORCHSCRIPT,
    ExportSpec,
    Variant,
    get_spec,
    register_spec,
    registered_specs,
)
from vitron_rt.export.validate import (
    ValidationRow,
    format_table,
    validate_component,
    validate_file,
)

__all__ = [
    "AxisError",
    "BundleWriter",
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "DYNAMO",
    "EXTERNAL_DATA_THRESHOLD",
    "ExportError",
    "ExportSpec",
    "ExportedComponent",
    "IO",
    "InputNameError",
    "OpsetError",
    "OrtOptimized",
    "OutputNameError",
    "ShapeError",
    "SpecError",
    "TORCHSCRIPT",
    "Tolerance",
    "ToleranceError",
    "ValidationError",
    "ValidationRow",
    "Variant",
    "export_component",
    "format_table",
    "get_spec",
    "register_spec",
    "registered_specs",
    "validate_component",
    "validate_file",
]
