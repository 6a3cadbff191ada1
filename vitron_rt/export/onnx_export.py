"""Export one component to ONNX, as its spec says.

    spec.resolve(module)          shapes: export / validation cases / profiles, checked
    spec.make_inputs(export dims) sample tensors, checked against the declaration
    spec.run(module, inputs)      the reference outputs -> output dtypes and fixed dims
    torch.onnx.export             dynamo (dynamic_shapes from the named axes) or
                                  torchscript (dynamic_axes), opset = spec.opset
    checks on the saved file      input/output names == spec; named dims symbolic;
                                  standard domains only
    variants                      built from the main file, e.g. ort-optimized
    -> ExportedComponent          the folder, and the manifest entry with sha256s

Weights go to external data (`<name>.onnx.data`) when the module holds more than
`EXTERNAL_DATA_THRESHOLD` bytes of parameters and buffers. The threshold is 1 GiB, half
of protobuf's 2 GiB limit on one file, which leaves room for constants the exporter
folds into the graph (RoPE tables, attention masks) that are not module parameters.
Below it a component is one self-contained file, which is simpler to copy and inspect,
unless its spec asks for external weights (`embed_tokens`: the runtime maps its table).

Exporter stages hold no state between calls: `export_component` does all its I/O when
called and nothing at import beyond importing torch and onnx.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from vitron_rt.bundle import ComponentEntry, FileRef, TensorSpec, VariantEntry
from vitron_rt.export.errors import AxisError, ExportError, OpsetError, SpecError
from vitron_rt.export.spec import DYNAMO, IO, TORCH_DTYPES, ExportSpec, GraphVariant, Variant
from vitron_rt.export.validate import check_graph_axes, check_io_names

EXTERNAL_DATA_THRESHOLD = 1 << 30  # bytes of weights; see the module docstring
# Operator domains TensorRT's parser and every ONNX runtime implement.
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
_DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}


@dataclass(frozen=True)
class ExportedComponent:
    """A component written to `root` (the bundle folder being built): its manifest entry,
    whose file paths are relative to `root`."""

    name: str
    root: Path
    entry: ComponentEntry

    @property
    def path(self) -> Path:
        return self.root / self.entry.file.path

    @property
    def sha256(self) -> str:
        return self.entry.file.sha256

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.entry.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.entry.outputs

    def variant_path(self, kind: str) -> Path:
        return self.root / self.entry.variant(kind).file.path


class _Adapter(nn.Module):
    """Positional tensors in `spec.inputs` order -> a tuple in `spec.outputs` order, so the
    graph's inputs and outputs are exactly the spec's whatever the module's signature."""

    def __init__(self, module: nn.Module, spec: ExportSpec):
        super().__init__()
        self.module = module
        self.spec = spec

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.spec.run(self.module, dict(zip(self.spec.input_names, args))))


def export_component(
    module: nn.Module,
    spec: ExportSpec,
    out_dir: str | Path,
    *,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> ExportedComponent:
    """Export `module` as `spec.name` into `out_dir` and return its manifest entry.

    Raises SpecError for a spec that contradicts its own sample inputs, ExportError when
    torch.onnx.export fails, AxisError when a dim the spec names is fixed (by the module's
    output, or by the exporter specialising it), OpsetError for a non-standard domain in
    the main file and InputNameError / OutputNameError when the saved graph's names are
    not the spec's."""
    out_dir = Path(out_dir)
    plan = spec.resolve(module)
    module.eval()
    feeds = spec.make_inputs(module, plan.export)
    with torch.no_grad():
        ref = spec.run(module, feeds)
    inputs = tuple(_tensor_spec(spec, io, t, plan.export, "input") for io, t in zip(spec.inputs, feeds.values()))
    outputs = tuple(_tensor_spec(spec, io, t, plan.export, "output") for io, t in zip(spec.outputs, ref))

    out_dir.mkdir(parents=True, exist_ok=True)
    main = out_dir / f"{spec.name}.onnx"
    external = spec.external_weights or _weight_bytes(module) > external_data_threshold
    _remove_onnx(main)
    adapter = _Adapter(module, spec).eval()
    args = tuple(feeds.values())
    with torch.no_grad(), warnings.catch_warnings():
        # Exporter chatter (axis renaming notes, deprecations of its own internals).
        warnings.simplefilter("ignore", (UserWarning, FutureWarning, DeprecationWarning))
        if spec.exporter == DYNAMO:
            _export_dynamo(adapter, args, spec, main, external)
        else:
            _export_torchscript(adapter, args, spec, main, external)

    where = str(main)
    graph = onnx.load(str(main), load_external_data=False)
    check_io_names(graph, spec, where)
    # torch.onnx.export does not fail when the module's code fixes a dim declared dynamic:
    # it re-exports with torch.export's suggested fix (the dim becomes a constant). The
    # graph's declared dims are where that shows.
    check_graph_axes(graph, spec, where)
    check_standard_domains(graph, where)
    opset = opset_version(graph)
    if opset != spec.opset:
        raise ExportError(f"{where}: exported with opset {opset}, the spec asks for {spec.opset}")

    attributes = dict(spec.attributes(module))
    try:
        json.dumps(attributes, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise SpecError(f"spec {spec.name!r}: attributes must be plain JSON values ({e})") from None
    variants = tuple(build_variant(v, spec, module, main, out_dir) for v in spec.variants)
    entry = ComponentEntry(
        file=FileRef.of(out_dir, main.name),
        external_data=tuple(FileRef.of(out_dir, p) for p in external_files(graph)),
        inputs=inputs,
        outputs=outputs,
        opset=opset,
        exporter=spec.exporter,
        exporter_reason=spec.exporter_reason,
        precision=spec.precision,
        profiles=plan.profiles,
        tolerances={o: spec.tolerance(o) for o in spec.output_names},
        variants=variants,
        attributes=attributes,
    )
    return ExportedComponent(name=spec.name, root=out_dir, entry=entry)


def _tensor_spec(spec: ExportSpec, io: IO, t: torch.Tensor, dims: dict[str, int], group: str) -> TensorSpec:
    """The manifest's view of one sample tensor: fixed dims as traced, named dims by name."""
    where = f"{spec.name}: {group} {io.name!r}"
    dtype = _DTYPE_NAMES.get(t.dtype)
    if dtype != io.dtype:
        raise SpecError(f"{where} is {t.dtype} at export, the spec declares {io.dtype}")
    for axis, dim in io.axes.items():
        if axis >= t.ndim:
            raise AxisError(f"{where} has rank {t.ndim}, the spec names axis {axis} ({dim})")
        if dim in dims and t.shape[axis] != dims[dim]:
            raise AxisError(
                f"{where} axis {axis} is named {dim!r} (= {dims[dim]}) but the module gives {t.shape[axis]}"
            )
    return TensorSpec(name=io.name, dtype=dtype, shape=tuple(io.axes.get(i, n) for i, n in enumerate(t.shape)))


def _weight_bytes(module: nn.Module) -> int:
    """Bytes of parameters and buffers, each tensor once (tied weights share one)."""
    seen: dict[int, int] = {}
    for t in (*module.parameters(), *module.buffers()):
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def _remove_onnx(path: Path) -> None:
    """Remove a previous file and its external data: onnx appends to an existing data file."""
    for p in (path, path.with_name(path.name + ".data")):
        p.unlink(missing_ok=True)


def _export_dynamo(adapter: nn.Module, args: tuple, spec: ExportSpec, main: Path, external: bool) -> None:
    dims = {d: torch.export.Dim(d) for d in spec.input_dims}
    # One entry for the adapter's *args, holding one {axis: Dim} (or None) per input.
    per_input = tuple({a: dims[d] for a, d in io.axes.items()} or None for io in spec.inputs)
    try:
        program = torch.onnx.export(
            adapter,
            args,
            input_names=spec.input_names,
            output_names=spec.output_names,
            opset_version=spec.opset,
            dynamo=True,
            dynamic_shapes=(per_input,),
            external_data=external,
            optimize=True,
            verbose=False,
        )
        program.save(str(main), external_data=external)
    except Exception as e:
        raise ExportError(f"{spec.name}: torch.onnx.export (dynamo) failed: {_root_cause(e)}") from e


def _export_torchscript(adapter: nn.Module, args: tuple, spec: ExportSpec, main: Path, external: bool) -> None:
    dynamic_axes = {io.name: dict(io.axes) for io in (*spec.inputs, *spec.outputs) if io.axes}
    # Written next to the target, then re-saved with this module's external-data rule
    # (the TorchScript exporter picks its own file layout above 2 GiB).
    raw_dir = main.with_name(f".{main.name}.raw")
    raw_dir.mkdir(exist_ok=True)
    raw = raw_dir / "model.onnx"
    try:
        torch.onnx.export(
            adapter,
            args,
            str(raw),
            input_names=spec.input_names,
            output_names=spec.output_names,
            opset_version=spec.opset,
            dynamo=False,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
        model = onnx.load(str(raw))
        onnx.save_model(
            model,
            str(main),
            save_as_external_data=external,
            all_tensors_to_one_file=True,
            location=main.name + ".data",
            size_threshold=1024,
        )
    except Exception as e:
        raise ExportError(f"{spec.name}: torch.onnx.export (torchscript) failed: {_root_cause(e)}") from e
    finally:
        for p in raw_dir.iterdir():
            p.unlink()
        raw_dir.rmdir()


def _root_cause(e: BaseException) -> str:
    """The innermost cause's first line: torch wraps export failures in pages of advice."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def build_variant(
    variant: Variant | GraphVariant, spec: ExportSpec, module: nn.Module, main: Path, out_dir: Path
) -> VariantEntry:
    """Write `variant` of `spec`'s component into `out_dir` (from `main`, or from the
    module for a GraphVariant) and return its manifest entry."""
    dst = out_dir / f"{spec.name}.{variant.kind}.onnx"
    _remove_onnx(dst)
    try:
        if isinstance(variant, GraphVariant):
            variant.build_from(module, dst)
        else:
            variant.build(main, dst)
    except Exception as e:
        raise ExportError(f"{spec.name}: building variant {variant.kind!r} failed: {_root_cause(e)}") from e
    if not dst.is_file():
        raise ExportError(f"{spec.name}: variant {variant.kind!r} wrote no {dst.name}")
    graph = onnx.load(str(dst), load_external_data=False)
    if not isinstance(variant, GraphVariant):  # a GraphVariant has its own I/O contract
        check_io_names(graph, spec, str(dst))
    graph_variant = isinstance(variant, GraphVariant)
    return VariantEntry(
        kind=variant.kind,
        file=FileRef.of(out_dir, dst.name),
        external_data=tuple(FileRef.of(out_dir, p) for p in external_files(graph)),
        reason=variant.reason,
        precision=variant.precision if graph_variant else "fp32",
        attributes=dict(variant.attributes()) if graph_variant else {},
    )


# --------------------------------------------------------------------------- graph inspection


def opset_version(model: onnx.ModelProto) -> int:
    """The default (ai.onnx) domain's opset version."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ExportError("the model imports no ai.onnx opset")


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """A graph and every subgraph under it (If / Loop / Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    for g in _graphs(model.graph):
        yield from g.node
    for fn in model.functions:
        yield from fn.node


def check_standard_domains(model: onnx.ModelProto, where: str) -> None:
    """Fail when the graph uses or imports an operator domain outside standard ONNX (e.g.
    com.microsoft fusions): the main file must load in TensorRT and any ONNX runtime.
    Domains of functions defined in the file itself are allowed; their bodies are checked."""
    local = {fn.domain for fn in model.functions}
    allowed = STANDARD_DOMAINS | local
    bad: dict[str, set[str]] = {}
    for node in _nodes(model):
        if node.domain not in allowed:
            bad.setdefault(node.domain, set()).add(node.op_type)
    for imp in model.opset_import:
        if imp.domain not in allowed:
            bad.setdefault(imp.domain, set())
    if bad:
        # Domains with nodes first (the real problem), then ones only imported.
        ranked = sorted(bad.items(), key=lambda kv: (not kv[1], kv[0]))
        listed = "; ".join(f"{d!r} ({', '.join(sorted(ops)) or 'imported'})" for d, ops in ranked)
        raise OpsetError(
            f"{where}: non-standard operator domains: {listed}; a main file must be standard ONNX "
            "(runtime-specific graphs belong in a variant)"
        )


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for g in _graphs(model.graph):
        yield from g.initializer
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def external_files(model: onnx.ModelProto) -> list[str]:
    """Relative paths of the external data files a model (loaded without its data) names."""
    files: dict[str, None] = {}
    for t in _tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for kv in t.external_data:
                if kv.key == "location":
                    files.setdefault(kv.value, None)
    return list(files)


# --------------------------------------------------------------------------- variants


class OrtOptimized(Variant):
    """ONNX Runtime's own graph optimisation of the main file, saved for reuse: fused
    kernels (com.microsoft ops) that only ORT runs, and no optimisation cost at load.

    `level` "basic" keeps standard ops; "extended" adds ORT's fusions (the point of
    this variant). "all" is not offered: its layout transforms tie the file to one CPU.
    """

    kind = "ort-optimized"
    _LEVELS = ("basic", "extended")

    def __init__(self, level: str = "extended", reason: str = "ONNX Runtime fused kernels; loads in ORT only"):
        if level not in self._LEVELS:
            raise SpecError(f"OrtOptimized level {level!r}; known: {', '.join(self._LEVELS)}")
        self.level = level
        self.reason = reason

    def __repr__(self) -> str:
        return f"OrtOptimized(level={self.level!r})"

    def build(self, main: Path, dst: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        }[self.level]
        opts.optimized_model_filepath = str(dst)
        if external_files(onnx.load(str(main), load_external_data=False)):
            opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", dst.name + ".data")
            opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(main), opts, providers=["CPUExecutionProvider"])
