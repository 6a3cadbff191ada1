"""Export specs: one declarative class per component, registered under its manifest name.

A spec says everything about a component that is not in its PyTorch code (optimum's
`OnnxConfig`): tensor names and named dynamic axes, how to make sample inputs for any
shape, the shapes to trace and the *other* shapes to validate on, tolerances (with the
reason for any loosening), TensorRT profile ranges and extra variant files. The generic
exporter (`onnx_export.py`) and validator (`validate.py`) read nothing else, so a model
quirk lives in its spec, never as `if name == ...` in generic code.

    @register_spec("mm_projector")
    class MMProjectorSpec(ExportSpec):
        inputs = (IO("features", {0: "batch", 1: "patches"}),)      # MMProjector.forward(features)
        outputs = (IO("image_embeds", {0: "batch", 1: "patches"}),)
        export_shapes = {"batch": 2, "patches": 5}
        validate_shapes = ({"batch": 1}, {"batch": 3, "patches": 7})
        profiles = {"batch": (1, 1, 4), "patches": (1, 256, 1024)}

        def sample_inputs(self, module, shape):
            return {"features": torch.randn(shape["batch"], shape["patches"], module.cfg.in_dim)}

Fixed dims are not declared: they are read from the sample tensors at export time.
Attributes that depend on the module's config (a maximum sequence length, an image size)
come from the `*_for(module)` methods, whose defaults return the class attributes.
"""

from __future__ import annotations

import inspect
import keyword
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from vitron_rt.bundle import DTYPES, STATISTICS, DimRange, Profile, Tolerance
from vitron_rt.export.errors import SpecError

DYNAMO = "dynamo"
TORCHSCRIPT = "torchscript"
EXPORTERS = (DYNAMO, TORCHSCRIPT)
# The dynamo exporter implements opset 18 and up; lower versions go through a converter
# that may fail. TensorRT 8.6+ and every ORT we support read opset 18.
DEFAULT_OPSET = 18
PRECISIONS = ("fp32", "fp16", "bf16")
# fp32 export against fp32 eager: only kernel and summation order differ.
DEFAULT_TOLERANCE = Tolerance(atol=1e-4, rtol=1e-3, statistic="max", reason="fp32 default")

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_KIND_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True)
class IO:
    """One graph input or output: name, named dynamic axes `{axis: dim name}`, dtype.
    Axes with the same name are the same size everywhere in the component."""

    name: str
    axes: Mapping[int, str] = field(default_factory=dict)
    dtype: str = "float32"


class Variant(ABC):
    """An extra file derived from a component's standard-opset main file (e.g. an ONNX
    Runtime-optimized copy). `kind` names it in the manifest and in its file name."""

    kind: str
    reason: str

    @abstractmethod
    def build(self, main: Path, dst: Path) -> None:
        """Write the variant to `dst` (and any external data beside it) from `main`."""


class GraphVariant(ABC):
    """An extra file with its own I/O contract, written from the module's weights rather
    than derived from the main file (e.g. a decoder over a shared past/present KV buffer).
    The spec's sample inputs do not fit it, so it brings its own check."""

    kind: str
    reason: str
    precision: str = "fp32"  # of its weights; the manifest records it (e.g. "int4")

    def attributes(self) -> dict[str, Any]:
        """Facts for the manifest's variant entry (JSON values), e.g. a quantisation scheme."""
        return {}

    @abstractmethod
    def build_from(self, module: nn.Module, dst: Path) -> None:
        """Write the variant to `dst` (and any external data beside it) from `module`."""

    @abstractmethod
    def validate(self, module: nn.Module, spec: "ExportSpec", path: Path, *, strict: bool = True) -> list[Any]:
        """Check the file at `path` against `module`; return `ValidationRow`s (raise
        `ToleranceError` on a failed value when `strict`, as `validate_file`)."""


@dataclass(frozen=True)
class ShapePlan:
    """A spec's shapes resolved against one module: the dims to trace with, the other
    dims to validate on (full dicts), and the TensorRT profiles."""

    export: dict[str, int]
    cases: tuple[dict[str, int], ...]
    profiles: tuple[Profile, ...]


def case_label(dims: Mapping[str, int]) -> str:
    """`batch=3,sequence=7`: how a shape case is named in errors and tables."""
    return ",".join(f"{k}={v}" for k, v in dims.items()) or "static"


class ExportSpec(ABC):
    """Base of every component spec. Subclasses set the class attributes below and
    implement `sample_inputs`; they override `forward` when the module is not called
    as `module(**inputs)` (a KV cache to pack, a tuple to pick from)."""

    inputs: ClassVar[tuple[IO, ...]] = ()
    outputs: ClassVar[tuple[IO, ...]] = ()
    opset: ClassVar[int] = DEFAULT_OPSET
    exporter: ClassVar[str] = DYNAMO
    exporter_reason: ClassVar[str] = "default: the torch.export-based exporter"
    precision: ClassVar[str] = "fp32"
    # Dims to trace with. Dynamic dims must be >= 2 for dynamo: torch.export specialises
    # a dim traced at size 0 or 1 into a constant.
    export_shapes: ClassVar[Mapping[str, int]] = {}
    # Other shapes to validate on, each a partial dict laid over `export_shapes`
    # (e.g. {"batch": 1}); each must differ from the export shape.
    validate_shapes: ClassVar[Sequence[Mapping[str, int]]] = ()
    tolerances: ClassVar[Mapping[str, Tolerance]] = {}
    default_tolerance: ClassVar[Tolerance] = DEFAULT_TOLERANCE
    # One profile as {dim: (min, opt, max)}, or several as a tuple of `Profile`s.
    profiles: ClassVar[Mapping[str, tuple[int, int, int]] | Sequence[Profile]] = {}
    variants: ClassVar[Sequence[Variant | GraphVariant]] = ()
    # Weights always in external data (raw little-endian bytes in `<name>.onnx.data`), at
    # any size: a runtime may map them from the file instead of loading them.
    external_weights: ClassVar[bool] = False

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @property
    def qualifier(self) -> str | None:
        """The part after the first dot of a parameterised name: `signal_projector.segment_image`
        -> `segment_image`; None for a plain name."""
        return self.name.split(".", 1)[1] if "." in self.name else None

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def input_dims(self) -> list[str]:
        """Dynamic dim names of the inputs, in first-seen order (the names a shape dict uses)."""
        seen: dict[str, None] = {}
        for t in self.inputs:
            for d in t.axes.values():
                seen.setdefault(d, None)
        return list(seen)

    # ------------------------------------------------------------------ what subclasses write

    @abstractmethod
    def sample_inputs(self, module: nn.Module, shape: Mapping[str, int]) -> dict[str, torch.Tensor]:
        """Inputs for `module` at the named dims `shape`, keyed by input name. Seed any
        randomness from `shape` so a case is reproducible."""

    def forward(self, module: nn.Module, inputs: Mapping[str, torch.Tensor]) -> Any:
        """Call the module. Return a tensor, a sequence in `outputs` order, or a mapping
        that holds every output name. The default passes the inputs as keyword arguments,
        so it needs the module's parameter names to be the spec's input names."""
        try:
            inspect.signature(module.forward).bind(**inputs)
        except TypeError:
            params = ", ".join(inspect.signature(module.forward).parameters)
            raise SpecError(
                f"spec {self.name!r}: {type(module).__name__}.forward({params}) does not take the spec's inputs "
                f"{list(inputs)} by name; rename them or override ExportSpec.forward"
            ) from None
        return module(**inputs)

    def bind(self, module: nn.Module) -> "ExportSpec":
        """The spec for this particular module: itself, unless its I/O list depends on the
        module (the decoder's per-layer KV tensors). Generic code binds before exporting."""
        return self

    def attributes(self, module: nn.Module) -> dict[str, Any]:
        """Component constants for the manifest (JSON values), e.g. a VAE's scaling factor."""
        return {}

    def shapes_for_export(self, module: nn.Module) -> dict[str, int]:
        """Dims to trace with; override when they depend on the config (e.g. an image size)."""
        return dict(self.export_shapes)

    def shapes_for_validation(self, module: nn.Module) -> list[dict[str, int]]:
        """Partial dims to validate on, laid over the export dims by `resolve`."""
        return [dict(s) for s in self.validate_shapes]

    def profiles_for(self, module: nn.Module) -> tuple[Profile, ...]:
        """TensorRT profiles; override when a range depends on the config (a context length)."""
        if isinstance(self.profiles, Mapping):
            if not self.profiles:
                return ()
            return (Profile("default", {d: DimRange(*r) for d, r in self.profiles.items()}),)
        return tuple(self.profiles)

    # ------------------------------------------------------------------ used by generic code

    def tolerance(self, output: str) -> Tolerance:
        """The output's own tolerance, else the spec's default."""
        return self.tolerances.get(output, self.default_tolerance)

    def make_inputs(self, module: nn.Module, shape: Mapping[str, int]) -> dict[str, torch.Tensor]:
        """`sample_inputs`, checked against the declaration (names, dtypes, the size of
        every named axis) and put in `inputs` order."""
        where = f"spec {self.name!r}: sample_inputs({case_label(shape)})"
        feeds = self.sample_inputs(module, shape)
        if set(feeds) != set(self.input_names):
            raise SpecError(f"{where} returned {sorted(feeds)}, the spec declares {self.input_names}")
        for io in self.inputs:
            t = feeds[io.name]
            if not isinstance(t, torch.Tensor) or t.dtype != TORCH_DTYPES[io.dtype]:
                got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
                raise SpecError(f"{where}: {io.name!r} is {got}, the spec declares {io.dtype}")
            for axis, dim in io.axes.items():
                if axis >= t.ndim:
                    raise SpecError(f"{where}: {io.name!r} has {t.ndim} dims, the spec names axis {axis}")
                if t.shape[axis] != shape[dim]:
                    raise SpecError(f"{where}: {io.name!r} axis {axis} ({dim}) is {t.shape[axis]}, not {shape[dim]}")
        return {n: feeds[n] for n in self.input_names}

    def run(self, module: nn.Module, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The module's outputs as a list in `outputs` order."""
        result = self.forward(module, inputs)
        names = self.output_names
        if isinstance(result, torch.Tensor):
            result = (result,)
        if isinstance(result, Mapping):
            missing = [n for n in names if n not in result]
            if missing:
                raise SpecError(f"{self.name}: forward returned no {missing[0]!r}; it returned {list(result)}")
            result = [result[n] for n in names]
        result = list(result)
        if len(result) != len(names):
            raise SpecError(f"{self.name}: forward returned {len(result)} outputs, the spec names {len(names)}")
        for n, r in zip(names, result):
            if not isinstance(r, torch.Tensor):
                raise SpecError(f"{self.name}: output {n!r} is a {type(r).__name__}, not a tensor")
        return result

    def check_declaration(self) -> None:
        """Everything that can be checked without a module; register_spec calls it."""
        where = f"spec {self.name!r}"
        if not self.name:
            raise SpecError(f"{type(self).__name__}: a spec needs a name")
        if not self.inputs or not self.outputs:
            raise SpecError(f"{where}: declares no inputs or no outputs")
        names = self.input_names + self.output_names
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SpecError(f"{where}: tensor name {dup[0]!r} is used twice (inputs and outputs share one namespace)")
        for t in (*self.inputs, *self.outputs):
            if not isinstance(t, IO):
                raise SpecError(f"{where}: inputs and outputs must be IO(...) declarations, got {t!r}")
            if t.dtype not in DTYPES:
                raise SpecError(f"{where}: {t.name!r} has dtype {t.dtype!r}; known: {', '.join(DTYPES)}")
            for axis, dim in t.axes.items():
                if not isinstance(axis, int) or axis < 0:
                    raise SpecError(f"{where}: {t.name!r} axis {axis!r} must be a non-negative int")
                if not dim.isidentifier() or keyword.iskeyword(dim):
                    raise SpecError(f"{where}: {t.name!r} dim name {dim!r} must be a Python identifier")
        if self.exporter not in EXPORTERS:
            raise SpecError(f"{where}: exporter {self.exporter!r}; known: {', '.join(EXPORTERS)}")
        if self.exporter != DYNAMO and self.exporter_reason == ExportSpec.exporter_reason:
            raise SpecError(f"{where}: the {self.exporter} exporter needs exporter_reason (why not dynamo)")
        if self.exporter == DYNAMO and self.opset < DEFAULT_OPSET:
            raise SpecError(f"{where}: opset {self.opset} < {DEFAULT_OPSET}, the dynamo exporter's lowest")
        if self.precision not in PRECISIONS:
            raise SpecError(f"{where}: precision {self.precision!r}; known: {', '.join(PRECISIONS)}")
        unknown = [out for out in self.tolerances if out not in self.output_names]
        if unknown:
            raise SpecError(f"{where}: tolerance for {unknown[0]!r}, which is not an output")
        for out, tol in [*self.tolerances.items(), ("the default", self.default_tolerance)]:
            if tol.statistic not in STATISTICS:
                raise SpecError(f"{where}: tolerance statistic {tol.statistic!r}; known: {', '.join(STATISTICS)}")
            if tol.atol < 0 or tol.rtol < 0:
                raise SpecError(f"{where}: tolerance for {out!r} must not be negative")
            looser = tol.atol > DEFAULT_TOLERANCE.atol or tol.rtol > DEFAULT_TOLERANCE.rtol
            if looser and not tol.reason:
                raise SpecError(f"{where}: tolerance for {out!r} is looser than the default and needs a reason")
        kinds = [getattr(v, "kind", None) for v in self.variants]
        for v, kind in zip(self.variants, kinds):
            if not isinstance(v, (Variant, GraphVariant)) or not isinstance(kind, str) or not _KIND_RE.match(kind):
                raise SpecError(f"{where}: variant {v!r} needs a lowercase `kind` like 'ort-optimized'")
            if kinds.count(kind) > 1:
                raise SpecError(f"{where}: variant kind {kind!r} declared twice")

    def resolve(self, module: nn.Module) -> ShapePlan:
        """Resolve the shape attributes against `module` and check them together: every
        input dim has a size, dynamo traces with sizes >= 2, each validation case is new,
        and every shape lies in some TensorRT profile."""
        where = f"spec {self.name!r}"
        dims = self.input_dims
        export = self.shapes_for_export(module)
        self._check_dims(export, dims, f"{where}: export shape")
        if self.exporter == DYNAMO:
            small = [d for d in dims if export[d] < 2]
            if small:
                raise SpecError(
                    f"{where}: export shape {small[0]}={export[small[0]]} would be specialised to a constant by "
                    "torch.export; trace with >= 2 and validate the small size instead"
                )
        cases: list[dict[str, int]] = []
        for partial in self.shapes_for_validation(module):
            case = {**export, **partial}
            self._check_dims(case, dims, f"{where}: validation shape {case_label(partial)}")
            if case == export:
                raise SpecError(f"{where}: validation shape {case_label(partial)} equals the export shape")
            if case in cases:
                raise SpecError(f"{where}: validation shape {case_label(case)} is listed twice")
            cases.append(case)
        if dims and not cases:
            raise SpecError(f"{where}: has dynamic dims but no validate_shapes (shapes other than the export's)")
        profiles = self.profiles_for(module)
        if dims and not profiles:
            raise SpecError(f"{where}: has dynamic dims but no profiles (TensorRT needs a min/opt/max per dim)")
        for prof in profiles:
            missing = [d for d in dims if d not in prof.dims]
            if missing:
                raise SpecError(f"{where}: profile {prof.name!r} has no range for dim {missing[0]!r}")
            unknown = [d for d in prof.dims if d not in dims]
            if unknown:
                raise SpecError(f"{where}: profile {prof.name!r} ranges over {unknown[0]!r}, which no input has")
            for d, r in prof.dims.items():
                if not 0 <= r.min <= r.opt <= r.max:  # 0: an empty KV cache is a real shape
                    raise SpecError(f"{where}: profile {prof.name!r} dim {d!r} needs 0 <= min <= opt <= max, got {r}")
        for case in (export, *cases):
            if profiles and not any(p.contains(case) for p in profiles):
                raise SpecError(f"{where}: shape {case_label(case)} lies in no profile")
        return ShapePlan(export=export, cases=tuple(cases), profiles=profiles)

    @staticmethod
    def _check_dims(shape: Mapping[str, int], dims: list[str], where: str) -> None:
        missing = [d for d in dims if d not in shape]
        if missing:
            raise SpecError(f"{where} gives no size for dim {missing[0]!r}")
        unknown = [d for d in shape if d not in dims]
        if unknown:
            raise SpecError(f"{where} sizes {unknown[0]!r}, which no input axis names")
        bad = [d for d in dims if not isinstance(shape[d], int) or isinstance(shape[d], bool) or shape[d] < 0]
        if bad:
            raise SpecError(f"{where}: {bad[0]}={shape[bad[0]]!r} must be a non-negative int")


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[ExportSpec]] = {}


def register_spec(*names: str):
    """Class decorator: register a spec under one or more manifest names. One class can
    serve a family (`signal_projector.<module>`); each instance reads its `name`."""
    if not names:
        raise SpecError("register_spec needs at least one component name")

    def decorate(cls: type[ExportSpec]) -> type[ExportSpec]:
        if not (isinstance(cls, type) and issubclass(cls, ExportSpec)):
            raise SpecError(f"register_spec decorates ExportSpec subclasses, not {cls!r}")
        for name in names:
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise SpecError(f"component {name!r} is already registered to {_REGISTRY[name].__name__}")
            cls(name).check_declaration()
        for name in names:
            _REGISTRY[name] = cls
        return cls

    return decorate


def get_spec(name: str) -> ExportSpec:
    """A fresh spec instance for a manifest name."""
    try:
        return _REGISTRY[name](name)
    except KeyError:
        known = ", ".join(_REGISTRY) or "none"
        raise KeyError(f"no export spec registered for {name!r}; registered: {known}") from None


def registered_specs() -> dict[str, type[ExportSpec]]:
    """Manifest name -> spec class, in registration order."""
    return dict(_REGISTRY)


def unregister_spec(name: str) -> None:
    """Remove one registration (tests register toy specs and clean up after themselves)."""
    _REGISTRY.pop(name, None)
