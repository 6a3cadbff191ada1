"""Parity of an exported ONNX file with its PyTorch reference, on shapes it was not traced at.

Checks run in this order, each failure its own exception class (optimum's order,
Polygraphy's error report):

    1. names        graph inputs/outputs == spec         InputNameError / OutputNameError
    2. axes         every named dim is symbolic in the graph, every other input dim is
                    fixed, and the reference's sizes follow the names on every case  AxisError
    3. shapes       ONNX output shape and dtype == reference's on every case        ShapeError
    4. values       within the output's Tolerance on every case                     ToleranceError

A failed value comparison names the smallest atol and rtol that would have passed. The
rows of every comparison come back (and ride on the ToleranceError) for `format_table`.

Files run through the engines' runners: `OrtRunner(path)` (CPU) by default, or any
`runner(path)` with the same context-manager-and-`infer` shape (`check --engine`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import onnx
import torch
from torch import nn

from vitron_rt.bundle import Tolerance
from vitron_rt.engines.ort import OrtRunner
from vitron_rt.export.errors import (
    AxisError,
    InputNameError,
    OutputNameError,
    ShapeError,
    ToleranceError,
)
from vitron_rt.export.spec import ExportSpec, GraphVariant, case_label

if TYPE_CHECKING:
    from vitron_rt.export.onnx_export import ExportedComponent


class Runner(Protocol):
    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


RunnerFactory = Callable[[Path], AbstractContextManager[Runner]]


@dataclass(frozen=True)
class Comparison:
    """One output against its reference. `max_*` are maxima over the tensor; `stat_*` use
    the tolerance's statistic (equal to `max_*` for "max") and are the smallest atol /
    rtol that would have passed. `detail` says why it failed ("" when it passed)."""

    max_abs_err: float
    max_rel_err: float
    stat_abs_err: float
    stat_rel_err: float
    passed: bool
    detail: str = ""
    # True when only the size of the error failed it (not NaNs, exact ints or argmax),
    # i.e. when a looser tolerance would pass.
    within_reach: bool = True


@dataclass(frozen=True)
class ValidationRow:
    """One output compared on one shape case, as the `check` table shows it."""

    component: str
    file: str  # "main" or a variant kind
    output: str
    case: str
    tolerance: Tolerance
    result: Comparison

    @property
    def passed(self) -> bool:
        return self.result.passed

    @property
    def max_abs_err(self) -> float:
        return self.result.max_abs_err

    @property
    def max_rel_err(self) -> float:
        return self.result.max_rel_err


# --------------------------------------------------------------------------- graph checks


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None] | None:
    """Declared dims of a graph value: int (fixed), str (named), None (unknown);
    None for the whole list when the graph declares no shape."""
    t = value.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def check_io_names(model: onnx.ModelProto, spec: ExportSpec, where: str) -> None:
    """Graph inputs (initializers aside) and outputs are the spec's, in the spec's order."""
    inits = {i.name for i in model.graph.initializer}
    ins = [v.name for v in model.graph.input if v.name not in inits]
    outs = [v.name for v in model.graph.output]
    if ins != spec.input_names:
        raise InputNameError(f"{where}: graph inputs {ins}, the spec declares {spec.input_names}")
    if outs != spec.output_names:
        raise OutputNameError(f"{where}: graph outputs {outs}, the spec declares {spec.output_names}")


def check_graph_axes(model: onnx.ModelProto, spec: ExportSpec, where: str) -> None:
    """Each named dim is symbolic in the graph. Input dims the spec leaves unnamed must be
    fixed (TensorRT needs a profile range for every dynamic input dim); an output may be
    more dynamic than the spec says."""
    values = {v.name: v for v in (*model.graph.input, *model.graph.output)}
    for group, ios in (("input", spec.inputs), ("output", spec.outputs)):
        for io in ios:
            dims = _dims(values[io.name])
            if dims is None:
                continue  # no declared shape: nothing is fixed, the runtime checks cover it
            for axis, dim in io.axes.items():
                if axis >= len(dims):
                    raise AxisError(
                        f"{where}: {group} {io.name!r} has rank {len(dims)}, the spec names axis {axis} ({dim})"
                    )
                if isinstance(dims[axis], int):
                    why = "the module's code fixes it" if group == "input" else "the module's output does not follow it"
                    raise AxisError(
                        f"{where}: {group} {io.name!r} axis {axis} is fixed to {dims[axis]} in the graph, "
                        f"the spec says dynamic {dim!r} ({why})"
                    )
            if group == "input":
                extra = [a for a, d in enumerate(dims) if not isinstance(d, int) and a not in io.axes]
                if extra:
                    raise AxisError(
                        f"{where}: input {io.name!r} axis {extra[0]} is dynamic ({dims[extra[0]]}) in the graph, "
                        "the spec fixes it"
                    )


# --------------------------------------------------------------------------- value comparison


def _round_up(x: float, digits: int = 3) -> float:
    """`x` rounded up to `digits` significant digits, so a printed tolerance does pass."""
    if not math.isfinite(x) or x <= 0:
        return x
    scale = 10 ** (math.floor(math.log10(x)) - digits + 1)
    return math.ceil(x / scale) * scale


def compare(ref: np.ndarray, got: np.ndarray, tol: Tolerance) -> Comparison:
    """`got` against the reference `ref` under `tol`.

    Float outputs pass when `stat(abs err) <= atol` or `stat(rel err) <= rtol`
    (Polygraphy's rule), NaNs must sit where the reference has them, and with
    `tol.argmax` the argmax over the last axis must agree. Integer and bool outputs
    must be equal."""
    if ref.size == 0:
        return Comparison(0.0, 0.0, 0.0, 0.0, True)
    if not (np.issubdtype(ref.dtype, np.floating) or np.issubdtype(got.dtype, np.floating)):
        diff = np.abs(ref.astype(np.int64) - got.astype(np.int64))
        wrong = int(np.count_nonzero(diff))
        max_abs, rel = float(diff.max()), (math.inf if wrong else 0.0)
        detail = f"{wrong} of {ref.size} elements differ (exact match required)" if wrong else ""
        return Comparison(max_abs, rel, max_abs, rel, wrong == 0, detail, within_reach=False)

    a = got.astype(np.float64)
    b = ref.astype(np.float64)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if (nan_a != nan_b).any():
        n = int(np.count_nonzero(nan_a & ~nan_b))
        m = int(np.count_nonzero(nan_b & ~nan_a))
        detail = f"NaN mismatch: {n} NaNs the reference lacks, {m} it has that ONNX lacks"
        return Comparison(math.inf, math.inf, math.inf, math.inf, False, detail, within_reach=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        abs_err = np.abs(a - b)
        abs_err[(a == b) | nan_a] = 0.0  # equal infinities, and NaNs in the same places
        rel_err = np.where(abs_err == 0, 0.0, abs_err / np.abs(b))
    stat = np.max if tol.statistic == "max" else np.median
    max_abs, max_rel = float(abs_err.max()), float(rel_err.max())
    s_abs, s_rel = float(stat(abs_err)), float(stat(rel_err))
    if not (s_abs <= tol.atol or s_rel <= tol.rtol):
        detail = (
            f"{tol.statistic} abs err {s_abs:.3g} > atol {tol.atol:g} and "
            f"{tol.statistic} rel err {s_rel:.3g} > rtol {tol.rtol:g}"
        )
        return Comparison(max_abs, max_rel, s_abs, s_rel, False, detail)
    if tol.argmax and b.ndim:
        wrong = int(np.count_nonzero(a.argmax(-1) != b.argmax(-1)))
        if wrong:
            positions = int(np.prod(b.shape[:-1]))
            detail = f"argmax differs at {wrong} of {positions} positions (greedy tokens must match)"
            return Comparison(max_abs, max_rel, s_abs, s_rel, False, detail, within_reach=False)
    return Comparison(max_abs, max_rel, s_abs, s_rel, True)


def failure_message(rows: list[ValidationRow]) -> str:
    """One line for the first failing output: on which cases, why, and (when a looser
    tolerance would do) the smallest atol and rtol that pass every one of its cases."""
    failed = [r for r in rows if not r.passed]
    first = failed[0]
    same = [r for r in failed if (r.component, r.file, r.output) == (first.component, first.file, first.output)]
    head = (
        f"{first.component} ({first.file}): output {first.output!r} fails on "
        f"{', '.join(r.case for r in same)}: {first.result.detail}"
    )
    hard = [r for r in same if not r.result.within_reach]
    if hard:
        return f"{head} [{len(failed)} of {len(rows)} comparisons failed]"
    need_abs = _round_up(max(r.result.stat_abs_err for r in same))
    need_rel = _round_up(max(r.result.stat_rel_err for r in same))
    return (
        f"{head}; the smallest passing tolerance is atol={need_abs:.3g} or rtol={need_rel:.3g} "
        f"({first.tolerance.statistic}) [{len(failed)} of {len(rows)} comparisons failed]"
    )


# --------------------------------------------------------------------------- validation


def validate_file(
    module: nn.Module,
    spec: ExportSpec,
    path: str | Path,
    *,
    label: str = "main",
    cases: list[dict[str, int]] | None = None,
    runner: RunnerFactory = OrtRunner,
    strict: bool = True,
) -> list[ValidationRow]:
    """Validate one ONNX file against `module` on each of the spec's validation shapes
    (or `cases`). Structural failures always raise; value failures raise ToleranceError
    when `strict`, after every comparison has run, and otherwise come back as rows with
    `passed=False` (for a `check` table)."""
    path = Path(path)
    where = f"{spec.name} ({label}: {path.name})"
    graph = onnx.load(str(path), load_external_data=False)
    check_io_names(graph, spec, where)
    check_graph_axes(graph, spec, where)
    if cases is None:
        cases = list(spec.resolve(module).cases)
    graph_out = {v.name: _dims(v) for v in graph.graph.output}
    module.eval()
    rows: list[ValidationRow] = []
    with runner(path) as session:
        for case in cases:
            label_case = case_label(case)
            feeds = spec.make_inputs(module, case)
            with torch.no_grad():
                ref = [t.detach().cpu().numpy() for t in spec.run(module, feeds)]
            _check_reference_axes(spec, case, ref, graph_out, f"{where} on {label_case}")
            got = session.infer({n: t.detach().cpu().numpy() for n, t in feeds.items()})
            for io, r in zip(spec.outputs, ref):
                g = np.asarray(got[io.name])
                if g.shape != r.shape or g.dtype != r.dtype:
                    raise ShapeError(
                        f"{where}: output {io.name!r} on {label_case} is {g.dtype}{list(g.shape)}, "
                        f"the reference is {r.dtype}{list(r.shape)}"
                    )
            for io, r in zip(spec.outputs, ref):
                tol = spec.tolerance(io.name)
                result = compare(r, np.asarray(got[io.name]), tol)
                rows.append(ValidationRow(spec.name, label, io.name, label_case, tol, result))
    if strict and not all(r.passed for r in rows):
        raise ToleranceError(failure_message(rows), rows)
    return rows


def _check_reference_axes(
    spec: ExportSpec,
    case: Mapping[str, int],
    ref: list[np.ndarray],
    graph_out: Mapping[str, list[int | str | None] | None],
    where: str,
) -> None:
    """The reference's own sizes must follow the spec: an output axis named after an input
    dim has that dim's size, and a dim the graph fixes does not change with the case.
    This catches an output the spec calls dynamic that the module keeps fixed, whatever
    the exporter wrote into the graph."""
    for io, r in zip(spec.outputs, ref):
        for axis, dim in io.axes.items():
            if axis >= r.ndim:
                raise AxisError(f"{where}: output {io.name!r} has rank {r.ndim}, the spec names axis {axis} ({dim})")
            if dim in case and r.shape[axis] != case[dim]:
                raise AxisError(
                    f"{where}: output {io.name!r} axis {axis} is named {dim!r} (= {case[dim]}) "
                    f"but the reference gives {r.shape[axis]}"
                )
        dims = graph_out.get(io.name)
        if dims is None or len(dims) != r.ndim:
            continue
        for axis, d in enumerate(dims):
            if isinstance(d, int) and axis not in io.axes and d != r.shape[axis]:
                raise AxisError(
                    f"{where}: output {io.name!r} axis {axis} is fixed to {d} in the graph but the reference gives "
                    f"{r.shape[axis]}; name it as a dynamic axis in the spec"
                )


def validate_component(
    module: nn.Module,
    spec: ExportSpec,
    exported: ExportedComponent,
    *,
    runner: RunnerFactory = OrtRunner,
    strict: bool = True,
) -> list[ValidationRow]:
    """Validate a component's main file and each of its variants. `exported` comes from
    `export_component`, or is rebuilt from a loaded bundle for `check`:
    `ExportedComponent(name, bundle.root, bundle.component(name))`."""
    cases = list(spec.resolve(module).cases)
    rows = validate_file(module, spec, exported.path, cases=cases, runner=runner, strict=strict)
    for v in exported.entry.variants:
        path = exported.root / v.file.path
        declared = next((d for d in spec.variants if d.kind == v.kind), None)
        if isinstance(declared, GraphVariant):  # its own I/O contract, so its own check
            rows += declared.validate(module, spec, path, strict=strict)
            continue
        rows += validate_file(module, spec, path, label=v.kind, cases=cases, runner=runner, strict=strict)
    return rows


def format_table(rows: list[ValidationRow]) -> str:
    """A fixed-width table of validation rows, one line per output and shape case."""
    header = ("component", "file", "output", "case", "max abs err", "max rel err", "tolerance", "result")
    lines = [header]
    for r in rows:
        t = r.tolerance
        lines.append(
            (
                r.component,
                r.file,
                r.output,
                r.case,
                f"{r.max_abs_err:.3g}",
                f"{r.max_rel_err:.3g}",
                f"atol={t.atol:g} rtol={t.rtol:g} {t.statistic}" + (" argmax" if t.argmax else ""),
                "ok" if r.passed else "FAIL",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
