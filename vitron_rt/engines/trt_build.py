"""ONNX -> TensorRT engines, one per component, through Polygraphy's loaders.

Written against TensorRT 10.x (its Python API as documented for 10.1 and later) and
Polygraphy 0.49+ (`polygraphy.backend.trt`):

    EngineBytesFromNetwork(NetworkFromOnnxPath(onnx),
                           CreateConfig(fp16=, int8=, profiles=[Profile().add(name, min, opt, max)],
                                        load_timing_cache=engines/timing.cache),
                           save_timing_cache=engines/timing.cache)

Profiles come from the manifest: each of a component's `Profile`s (the LLM has "prefill"
and "decode") becomes one TensorRT optimization profile, each dynamic input's min / opt /
max shapes read off its named dims (`plan.input_ranges`). The plan is written under the
bundle's `engines/` with its full key in the file name and a JSON sidecar (`keys`); a
plan whose key matches is reused, anything else is rebuilt.

Precision. fp32: the manifest's default, and strictly fp32 (Polygraphy clears TensorRT's
default TF32 flag), so fp32 engines meet the same tolerances as ONNX Runtime. fp16:
TensorRT may pick fp16 kernels where they are faster. int8: int8 and fp16 enabled; with
no calibrator, int8 kernels are only used where the ONNX graph carries Q/DQ nodes
(explicit quantization, TensorRT 10's supported route), so an unquantized export builds
as fp16.

A builder is a stage object: constructing it reads nothing and needs no GPU; calling it
checks for TensorRT, Polygraphy, cuda-python and a GPU (one line naming what is missing).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitron_rt.bundle import Bundle, ComponentEntry
from vitron_rt.engines.deps import compute_capability, require_polygraphy, require_trt_stack
from vitron_rt.engines.errors import EngineError, StaleEngineError
from vitron_rt.engines.keys import TIMING_CACHE_NAME, EngineKey, stale_engines, verify_engine, write_engine
from vitron_rt.engines.plan import ShapeRange, input_ranges


class Precision(enum.Enum):
    """What the builder may use besides fp32 (see the module docstring)."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    def config_flags(self) -> dict[str, bool]:
        """Polygraphy `CreateConfig` precision flags."""
        return {"fp16": self in (Precision.FP16, Precision.INT8), "int8": self is Precision.INT8}


@dataclass(frozen=True)
class BuildOptions:
    """How engines are built."""

    precision: Precision = Precision.FP32
    # None: TensorRT's default workspace limit (the device's memory). Set it on shared or
    # small (Jetson) devices so a build cannot take memory the other processes need.
    workspace_mib: int | None = None
    # None: TensorRT's default (3). Higher searches more tactics: slower builds, sometimes faster engines.
    builder_optimization_level: int | None = None
    # Build even when a plan with the same key exists (e.g. after a TensorRT bug fix of the
    # same version string).
    force: bool = False


def profile_table(entry: ComponentEntry) -> list[tuple[str, dict[str, ShapeRange]]]:
    """Each manifest profile as (name, {input: (min, opt, max) shapes}): exactly what the
    TensorRT profiles are built from. Plain Python, shown by `build` and tested without TensorRT."""
    if not entry.profiles:
        if any(t.dynamic_axes for t in entry.inputs):
            raise EngineError("a component with dynamic inputs needs at least one profile in the manifest")
        return []
    return [(prof.name, input_ranges(entry, prof)) for prof in entry.profiles]


def polygraphy_profiles(entry: ComponentEntry) -> list[Any]:
    """The manifest profiles as Polygraphy `Profile`s (needs Polygraphy, not TensorRT)."""
    pg = require_polygraphy()
    out = []
    for _, ranges in profile_table(entry):
        prof = pg.Profile()
        for name, r in ranges.items():
            prof.add(name, min=r.min, opt=r.opt, max=r.max)
        out.append(prof)
    return out


@dataclass(frozen=True)
class BuiltEngine:
    """One component's engine after a build: where it is, its key, whether an existing plan
    was reused, how long the build took, and which older plans of the component it replaces."""

    component: str
    path: Path
    key: EngineKey
    reused: bool
    seconds: float
    stale: tuple[Path, ...] = ()


class TrtEngineBuilder:
    """Builds (or reuses) one component's TensorRT engine in the bundle's `engines/`."""

    def __init__(self, bundle: Bundle, component: str, options: BuildOptions | None = None):
        """Stores what to build; reads nothing, needs no GPU."""
        self.bundle = bundle
        self.component = component
        self.options = options or BuildOptions()

    @property
    def entry(self) -> ComponentEntry:
        return self.bundle.component(self.component)

    def key(self, tensorrt_version: str, capability: tuple[int, int]) -> EngineKey:
        return EngineKey.for_component(
            self.component, self.entry, self.options.precision.value, tensorrt_version, capability
        )

    def __call__(self) -> BuiltEngine:
        trt, cudart = require_trt_stack()
        pg = require_polygraphy()
        key = self.key(trt.__version__, compute_capability(0, cudart))
        engines = self.bundle.engines_dir
        path = key.plan_path(engines)
        stale = tuple(stale_engines(engines, key))
        if not self.options.force:
            try:
                verify_engine(path, key)
                return BuiltEngine(self.component, path, key, reused=True, seconds=0.0, stale=stale)
            except StaleEngineError:
                pass  # missing, interrupted or foreign: build it
        engines.mkdir(parents=True, exist_ok=True)
        timing_cache = engines / TIMING_CACHE_NAME
        start = time.perf_counter()
        config = pg.CreateConfig(
            **self.options.precision.config_flags(),
            profiles=polygraphy_profiles(self.entry) or None,
            load_timing_cache=str(timing_cache) if timing_cache.is_file() else None,
            memory_pool_limits=self._memory_pools(trt),
            builder_optimization_level=self.options.builder_optimization_level,
        )
        network = pg.NetworkFromOnnxPath(str(self.bundle.component_path(self.component)))
        try:
            plan = pg.EngineBytesFromNetwork(network, config=config, save_timing_cache=str(timing_cache))()
        except Exception as e:  # Polygraphy reports a failed build as PolygraphyException
            raise EngineError(f"{self.component}: TensorRT build failed: {_one_line(e)}") from e
        if plan is None:
            raise EngineError(f"{self.component}: TensorRT build returned no engine (see the TensorRT log above)")
        sidecar = {"profiles": [{"name": n, "inputs": _ranges_json(r)} for n, r in profile_table(self.entry)]}
        path = write_engine(engines, key, plan, extra=sidecar)
        return BuiltEngine(self.component, path, key, reused=False, seconds=time.perf_counter() - start, stale=stale)

    def _memory_pools(self, trt: Any) -> dict[Any, int] | None:
        if self.options.workspace_mib is None:
            return None
        return {trt.MemoryPoolType.WORKSPACE: self.options.workspace_mib << 20}


def build_engines(
    bundle: Bundle,
    options: BuildOptions | None = None,
    components: Iterable[str] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> list[BuiltEngine]:
    """One engine per component (all, in manifest order, by default). Checks the GPU stack
    once before the first build, so a machine without it fails in one line at once."""
    require_trt_stack()
    require_polygraphy()
    names = list(bundle.manifest.components) if components is None else list(components)
    built = []
    for name in names:
        result = TrtEngineBuilder(bundle, name, options)()
        what = "reused" if result.reused else f"built in {result.seconds:.1f} s"
        log(f"  {name:<34} {what}: {result.path.name}")
        built.append(result)
    return built


def _ranges_json(ranges: dict[str, ShapeRange]) -> dict[str, dict[str, list[int]]]:
    return {n: {"min": list(r.min), "opt": list(r.opt), "max": list(r.max)} for n, r in ranges.items()}


def _one_line(e: BaseException) -> str:
    return " ".join((str(e).strip() or type(e).__name__).split())[:500]
