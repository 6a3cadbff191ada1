"""The ONNX Runtime runner: the embedded default (CPU), and the CUDA and TensorRT
execution providers where onnxruntime-gpu is installed.

    runner = OrtRunner(path, entry=entry, options=OrtOptions(intra_op_threads=2),
                       cache_dir=bundle.engines_dir / "ort")
    with runner:
        out = runner.infer(feeds)                       # plain: ORT allocates the outputs
        runner.bind(feeds, {"logits": logits_buf, ...}) # IOBinding over the caller's arrays
        runner.run_bound()                              # writes into logits_buf, allocates nothing

Optimized-model cache: the first activation saves the graph ONNX Runtime optimized under
`cache_dir`, keyed by the ONNX sha256, the level, the ORT version and the providers
(`keys.ort_cache_name`); later activations load it instead of re-running the fusions. The
saved file stops at the `extended` level, which is portable: `all` adds layouts for this
CPU's vector width (NCHWc blocks), which ONNX Runtime's docs say not to carry to other
hardware, so those are applied again at load, which is quick.

Kernel fusion (`OrtOptions.fuse`, on by default for the CPU provider at the `extended` and
`all` levels): before ONNX Runtime optimizes the graph, `ort_fusion.fuse_file` rewrites the
attention, GELU and bias-GELU subgraphs the exporter writes, which ONNX Runtime's own
optimizer does not recognise, into com.microsoft kernels. The fused graph is what the
cache holds (its key's level reads e.g. `extended+fuse1`) and what every session of the
runner runs, `check` and export's parity checks included, since they run files through
this runner. It needs the `onnx` package; a runtime-only install without it runs the
unfused graph and logs one line.

CUDA / TensorRT execution providers need onnxruntime-gpu (CUDA 12); asked for without it,
activation fails with one line naming the package. Provider options pass through
(`OrtOptions.cuda`, `OrtOptions.tensorrt`).
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from vitron_rt.bundle import ComponentEntry, TensorSpec, sha256_file
from vitron_rt.engines.base import Runner
from vitron_rt.engines.deps import ORT_GPU_HINT
from vitron_rt.engines.errors import EngineError, InputError, MissingDependencyError
from vitron_rt.engines.keys import onnx_digest, ort_cache_name

if TYPE_CHECKING:
    from vitron_rt.engines.ort_fusion import FusionReport

_log = logging.getLogger(__name__)

# Models above this size are saved with external initializers: a protobuf cannot exceed 2 GiB.
_EXTERNAL_DATA_ABOVE = 1 << 30
# ONNX tensor element types as ORT's NodeArg.type spells them -> numpy dtype names.
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(bfloat16)": "bfloat16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class GraphOptimization(enum.Enum):
    """ONNX Runtime's graph optimization levels, by the names its docs use."""

    DISABLED = "disabled"  # the graph as exported
    BASIC = "basic"  # constant folding, redundant node removal
    EXTENDED = "extended"  # + fusions into contrib ops (GELU, LayerNorm, attention)
    ALL = "all"  # + layout optimizations for the CPU it runs on

    def ort_level(self, ort: ModuleType) -> Any:
        name = {
            "disabled": "ORT_DISABLE_ALL",
            "basic": "ORT_ENABLE_BASIC",
            "extended": "ORT_ENABLE_EXTENDED",
            "all": "ORT_ENABLE_ALL",
        }[self.value]
        return getattr(ort.GraphOptimizationLevel, name)

    @property
    def rank(self) -> int:
        return list(GraphOptimization).index(self)


class Provider(enum.Enum):
    """An ONNX Runtime execution provider; CPU is always appended as the fallback for ops
    the others lack."""

    CPU = "CPUExecutionProvider"
    CUDA = "CUDAExecutionProvider"
    TENSORRT = "TensorrtExecutionProvider"


@dataclass(frozen=True)
class TensorrtEpOptions:
    """Options of ONNX Runtime's TensorRT execution provider (its own option names)."""

    # TensorRT builds take seconds to minutes per subgraph: cache them across sessions.
    trt_engine_cache_enable: bool = True
    # None: `<cache_dir>/trt-ep` beside the optimized-model cache, or ORT's default.
    trt_engine_cache_path: str | None = None
    trt_fp16_enable: bool = False
    # Any other TensorRT EP option, passed through as given (e.g. trt_max_workspace_size).
    extra: dict[str, Any] = field(default_factory=dict)

    def provider_options(self, cache_dir: Path | None) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "trt_engine_cache_enable": self.trt_engine_cache_enable,
            "trt_fp16_enable": self.trt_fp16_enable,
        }
        path = self.trt_engine_cache_path or (str(cache_dir / "trt-ep") if cache_dir is not None else None)
        if path is not None and self.trt_engine_cache_enable:
            opts["trt_engine_cache_path"] = path
        opts.update(self.extra)
        return opts


@dataclass(frozen=True)
class OrtOptions:
    """How an `OrtRunner` configures its session."""

    # 0 lets ONNX Runtime pick (one thread per physical core). Set it when several
    # runners share a small CPU, so they do not oversubscribe it.
    intra_op_threads: int = 0
    # Only used by parallel execution mode, which helps graphs with independent branches.
    inter_op_threads: int = 0
    optimization: GraphOptimization = GraphOptimization.ALL
    # Save / reuse the optimized model (only when the runner has a cache_dir).
    cache_optimized: bool = True
    # In priority order, e.g. (TENSORRT, CUDA): TensorRT takes the subgraphs it can, CUDA the
    # rest; CPU is appended last in every case.
    providers: tuple[Provider, ...] = (Provider.CPU,)
    # CUDA EP options, passed through (e.g. {"device_id": 0, "arena_extend_strategy": ...}).
    cuda: dict[str, Any] = field(default_factory=dict)
    tensorrt: TensorrtEpOptions = field(default_factory=TensorrtEpOptions)
    # 3 = errors only: ORT's warnings (unused initializers, ...) are noise in a serving log.
    log_severity: int = 3
    # Session config entries passed through (onnxruntime_session_options_config_keys.h),
    # e.g. {"session.disable_prepacking": "1"}.
    config: dict[str, str] = field(default_factory=dict)
    # Fuse attention / GELU subgraphs into com.microsoft kernels first (engines/ort_fusion.py).
    # CPU provider only: TensorRT takes standard ops, and the GPU paths have their own fusions.
    fuse: bool = True


def _onnxruntime() -> ModuleType:
    import onnxruntime

    return onnxruntime


class OrtRunner(Runner):
    """One ONNX file on one ONNX Runtime `InferenceSession`."""

    engine = "ort"

    def __init__(
        self,
        path: str | Path,
        *,
        entry: ComponentEntry | None = None,
        name: str | None = None,
        options: OrtOptions | None = None,
        cache_dir: str | Path | None = None,
    ):
        """`cache_dir`: where optimized models are saved and reused (a bundle's
        `engines/ort`); None caches nothing. Does no I/O."""
        super().__init__(path, entry=entry, name=name)
        self.options = options or OrtOptions()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.session: Any = None
        # The file the session was created from (the ONNX file or its cached optimized
        # graph), and whether that cache existed before this activation.
        self.model_path: Path | None = None
        self.cache_hit: bool | None = None
        # What kernel fusion did for the graph this runner runs (None: not fused).
        self.fusion: FusionReport | None = None
        self._fused_dir: Path | None = None  # a temporary fused graph, when there is no cache
        self._bound: BoundSession | None = None

    # ----------------------------------------------------------------- lifecycle

    def _activate_impl(self) -> None:
        ort = _onnxruntime()
        providers, provider_options = self._providers(ort)
        level = self.options.optimization
        fuse = self._fuse_wanted(providers)
        model, self.cache_hit, self.fusion = self.path, None, None
        if self.cache_dir is not None and self.options.cache_optimized and level is not GraphOptimization.DISABLED:
            model, self.cache_hit = self._cached_model(ort, providers, provider_options, fuse)
        elif fuse:
            model = self._fuse_to_temp()
        so = self._session_options(ort, level)
        try:
            self.session = ort.InferenceSession(
                str(model), sess_options=so, providers=providers, provider_options=provider_options
            )
        except Exception as e:
            if not self.cache_hit:
                raise EngineError(f"{self.name}: onnxruntime cannot load {model.name}: {_first_line(e)}") from e
            # A damaged cache file (a disk filled mid-write, a hand edit): rebuild it once.
            model.unlink()
            model, self.cache_hit = self._cached_model(ort, providers, provider_options, fuse)
            self.session = ort.InferenceSession(
                str(model), sess_options=so, providers=providers, provider_options=provider_options
            )
        self.model_path = model
        self._check_providers(providers)

    def _io_specs_impl(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        return (
            tuple(_spec_of(a) for a in self.session.get_inputs()),
            tuple(_spec_of(a) for a in self.session.get_outputs()),
        )

    def _infer_impl(self, feeds: dict[str, np.ndarray], dims: dict[str, int]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.output_specs]
        try:
            values = self.session.run(names, feeds)
        except Exception as e:  # onnxruntime raises its own Fail / RuntimeError types
            raise EngineError(f"{self.name}: onnxruntime run failed: {_first_line(e)}") from e
        return dict(zip(names, values))

    def _deactivate_impl(self) -> None:
        self._bound = None
        self.session = None
        if self._fused_dir is not None:
            shutil.rmtree(self._fused_dir, ignore_errors=True)
            self._fused_dir = None

    # ----------------------------------------------------------------- IOBinding

    def bind(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> "BoundSession":
        """Bind caller-owned arrays as every input and every output: `run_bound` then reads
        and writes them in place, so a decode loop over pre-allocated buffers (or views
        into them) allocates no tensor per token. Rebinding replaces the previous binding."""
        self._require_active("bind")
        bound = self._bound or BoundSession(self)
        bound.bind(inputs, outputs)  # checks everything before it changes the binding
        self._bound = bound
        return bound

    def run_bound(self) -> dict[str, np.ndarray]:
        """Run on the bound arrays; returns the caller's output arrays, now filled."""
        self._require_active("run_bound")
        if self._bound is None:
            raise EngineError(f"{self.name}: run_bound() before bind()")
        return self._bound.run()

    # ----------------------------------------------------------------- internals

    def _session_options(self, ort: ModuleType, level: GraphOptimization) -> Any:
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.intra_op_threads
        so.inter_op_num_threads = self.options.inter_op_threads
        so.graph_optimization_level = level.ort_level(ort)
        so.log_severity_level = self.options.log_severity
        for key, value in self.options.config.items():
            so.add_session_config_entry(key, str(value))
        return so

    def _providers(self, ort: ModuleType) -> tuple[list[str], list[dict[str, Any]]]:
        """Provider names and options in priority order, CPU last; a GPU provider this
        onnxruntime lacks is one line naming onnxruntime-gpu."""
        available = ort.get_available_providers()
        wanted = [p for p in self.options.providers if p is not Provider.CPU] + [Provider.CPU]
        names, opts = [], []
        for p in wanted:
            if p.value not in available:
                raise MissingDependencyError(
                    f"ONNX Runtime's {p.value} is not available (this onnxruntime has "
                    f"{', '.join(available)}): {ORT_GPU_HINT}"
                )
            names.append(p.value)
            if p is Provider.CUDA:
                opts.append(dict(self.options.cuda))
            elif p is Provider.TENSORRT:
                opts.append(self.options.tensorrt.provider_options(self.cache_dir))
            else:
                opts.append({})
        return names, opts

    def _check_providers(self, providers: list[str]) -> None:
        """onnxruntime-gpu falls back to the CPU, with only a log line, when CUDA cannot
        start (no GPU, missing CUDA libraries): asked for a GPU, that is an error."""
        got = self.session.get_providers()
        missing = [p for p in providers if p not in got]
        if missing:
            self.session = None
            raise MissingDependencyError(
                f"ONNX Runtime could not start {missing[0]} (no usable GPU, or CUDA / cuDNN / TensorRT "
                f"libraries missing); it fell back to {', '.join(got)}"
            )

    def _fuse_wanted(self, providers: list[str]) -> bool:
        """Kernel fusion applies on the CPU provider alone, at the `extended` level and up."""
        if not self.options.fuse or providers != [Provider.CPU.value]:
            return False
        if self.options.optimization.rank < GraphOptimization.EXTENDED.rank:
            return False
        from vitron_rt.engines.ort_fusion import onnx_available

        if not onnx_available():
            _log.warning("%s: the onnx package is not installed; running without kernel fusion", self.name)
            return False
        return True

    def _fuse(self, dst: Path) -> Path:
        """Fuse the file into `dst`; returns the graph to run (the file itself when there
        was nothing to fuse)."""
        from vitron_rt.engines.ort_fusion import fuse_file

        try:
            self.fusion = fuse_file(self.path, dst)
        except Exception as e:
            raise EngineError(f"{self.name}: kernel fusion of {self.path.name} failed: {_first_line(e)}") from e
        return dst if self.fusion.written else self.path

    def _fuse_to_temp(self) -> Path:
        """The fused graph in a temporary folder, removed at deactivation (no cache_dir)."""
        self._fused_dir = Path(tempfile.mkdtemp(prefix="vitron-ort-fused-"))
        dst = self._fused_dir / self.path.name
        try:
            return self._fuse(dst)
        except EngineError:
            shutil.rmtree(self._fused_dir, ignore_errors=True)
            self._fused_dir = None
            raise

    def _cached_model(
        self, ort: ModuleType, providers: list[str], provider_options: list[dict[str, Any]], fuse: bool = False
    ) -> tuple[Path, bool]:
        """The optimized (and, with `fuse`, kernel-fused) graph for this file, level, ORT
        version and providers: reused when present, else written (through a temporary
        name, renamed when complete). A fused graph's report is kept beside it as JSON."""
        from vitron_rt.engines.ort_fusion import FUSION_VERSION, FusionReport

        level = min(self.options.optimization, GraphOptimization.EXTENDED, key=lambda g: g.rank)
        sha = onnx_digest(self.entry) if self.entry is not None else sha256_file(self.path)
        tag = f"{level.value}+fuse{FUSION_VERSION}" if fuse else level.value
        name = ort_cache_name(self.path.stem, sha, tag, ort.__version__, providers)
        assert self.cache_dir is not None
        path = self.cache_dir / name
        report = path.with_name(path.name + ".fusion.json")
        if path.is_file():
            if fuse and report.is_file():
                self.fusion = FusionReport.from_json(report.read_text())
            return path, True
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fused = path.with_name(f".{path.name}.{os.getpid()}.fused.onnx")
        so = self._session_options(ort, level)
        so.optimized_model_filepath = str(tmp)
        # A source with external data keeps pointing at it from the optimized file unless
        # the initializers are written out again: give the cache its own data file then.
        has_external = self.entry is not None and bool(self.entry.external_data)
        if has_external or self._model_bytes() > _EXTERNAL_DATA_ABOVE:
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", path.name + ".data")
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        try:
            source = self._fuse(fused) if fuse else self.path
            ort.InferenceSession(str(source), sess_options=so, providers=providers, provider_options=provider_options)
            os.replace(tmp, path)
            if self.fusion is not None:
                report.write_text(self.fusion.to_json())
        except EngineError:
            raise
        except Exception as e:
            raise EngineError(f"{self.name}: onnxruntime cannot optimize {self.path.name}: {_first_line(e)}") from e
        finally:
            for p in (tmp, fused, fused.with_name(fused.name + ".data")):
                if p.exists():
                    p.unlink()
        return path, False

    def _model_bytes(self) -> int:
        if self.entry is not None:
            return self.entry.file.size + sum(f.size for f in self.entry.external_data)
        return self.path.stat().st_size


class BoundSession:
    """An ONNX Runtime IOBinding over caller-owned numpy arrays (wrapped as OrtValues, no
    copy). Every output is written into the caller's array; `run` checks that it was."""

    def __init__(self, runner: OrtRunner):
        self._runner = runner
        self._binding = runner.session.io_binding()
        self._outputs: dict[str, np.ndarray] = {}
        # The OrtValues hold references to the arrays; kept here so they outlive the binding.
        self._values: list[Any] = []

    def bind(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        runner = self._runner
        dims = runner.check_feeds(inputs)
        _check_outputs(runner.output_specs, outputs, dims, runner.name)
        for name, array in inputs.items():
            _check_bindable(array, name, runner.name)
        for name, array in outputs.items():
            _check_bindable(array, name, runner.name, writable=True)
        ort = _onnxruntime()
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        values = []
        for name, array in inputs.items():
            value = ort.OrtValue.ortvalue_from_numpy(array)
            self._binding.bind_ortvalue_input(name, value)
            values.append(value)
        for spec in runner.output_specs:
            value = ort.OrtValue.ortvalue_from_numpy(outputs[spec.name])
            self._binding.bind_ortvalue_output(spec.name, value)
            values.append(value)
        self._values = values
        self._outputs = {spec.name: outputs[spec.name] for spec in runner.output_specs}

    def run(self) -> dict[str, np.ndarray]:
        runner = self._runner
        start = time.perf_counter()
        try:
            runner.session.run_with_iobinding(self._binding)
        except Exception as e:
            raise EngineError(f"{runner.name}: onnxruntime bound run failed: {_first_line(e)}") from e
        runner.timing.add((time.perf_counter() - start) * 1e3)
        for value, (name, array) in zip(self._binding.get_outputs(), self._outputs.items()):
            if value.data_ptr() != array.ctypes.data:
                raise EngineError(f"{runner.name}: onnxruntime wrote output {name!r} elsewhere than the bound array")
        return dict(self._outputs)


def _check_outputs(
    specs: tuple[TensorSpec, ...], outputs: Mapping[str, np.ndarray], dims: Mapping[str, int], where: str
) -> None:
    """Output buffers: one per output, right dtype and rank, fixed dims and dims the inputs
    determine at their sizes (ONNX Runtime would otherwise fail mid-run, less clearly)."""
    names = [s.name for s in specs]
    for name in outputs:
        if name not in names:
            raise InputError(f"{where}: unknown output {name!r}; the outputs are {', '.join(names)}")
    for spec in specs:
        if spec.name not in outputs:
            raise InputError(f"{where}: no buffer bound for output {spec.name!r}; bind every output")
        array = outputs[spec.name]
        if not isinstance(array, np.ndarray):
            raise InputError(f"{where}: output {spec.name!r} is a {type(array).__name__}, expected a numpy array")
        if array.dtype.name != spec.dtype or array.ndim != len(spec.shape):
            raise InputError(
                f"{where}: output {spec.name!r} buffer is {array.dtype.name}{list(array.shape)}, "
                f"expected {spec.dtype} of shape {list(spec.shape)}"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
            size = want if isinstance(want, int) else dims.get(want)
            if size is not None and size != got:
                raise InputError(
                    f"{where}: output {spec.name!r} buffer axis {axis} is {got}, this run gives {size} "
                    f"(shape {list(spec.shape)})"
                )


def _check_bindable(array: np.ndarray, name: str, where: str, writable: bool = False) -> None:
    """ONNX Runtime reads and writes bound memory as dense row-major tensors."""
    if not isinstance(array, np.ndarray):
        raise InputError(f"{where}: bound {name!r} is a {type(array).__name__}, expected a numpy array")
    if not array.flags.c_contiguous:
        raise InputError(f"{where}: bound array {name!r} must be C-contiguous (a view of the front of a buffer is)")
    if writable and not array.flags.writeable:
        raise InputError(f"{where}: output buffer {name!r} is read-only")


def _spec_of(arg: Any) -> TensorSpec:
    """A TensorSpec from an ORT NodeArg; an unnamed dynamic dim gets a name of its own
    (`tensor:axis`), so it constrains nothing."""
    dtype = _ORT_TYPES.get(arg.type, arg.type)
    shape = tuple(d if isinstance(d, (int, str)) else f"{arg.name}:{i}" for i, d in enumerate(arg.shape))
    return TensorSpec(arg.name, dtype, shape)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())[:500]
