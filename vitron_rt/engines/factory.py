"""Runners by engine name: what the runtime and the CLI call, so neither imports an engine
module it does not use.

    runner = make_runner(bundle, "llm_decoder", engine="ort", options=OrtOptions(intra_op_threads=2))
    rows = check_bundle(bundle, runner=runner_factory(bundle, "ort"))   # validate_file's runner(path)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitron_rt.bundle import Bundle
from vitron_rt.engines.base import Runner
from vitron_rt.engines.errors import EngineError
from vitron_rt.engines.keys import ORT_CACHE_DIR

ENGINES = ("ort", "trt")


def make_runner(
    bundle: Bundle, component: str, engine: str = "ort", options: Any = None, variant: str | None = None, **kwargs: Any
) -> Runner:
    """An inactive runner of one bundle component. `options`: an `OrtOptions` for "ort"
    (optimized models cached under `engines/ort`), a `TrtOptions` for "trt" (the engine
    is found in `engines/` by its key at activation). `variant`: run that variant's file
    instead of the main one (ONNX Runtime only; its I/O specs come from the file, since
    a variant may have its own contract). `kwargs` go to the runner (TensorRT:
    `memory=`, `stream=`). Constructing it reads nothing and needs no GPU."""
    bundle.component(component)  # an unknown name fails here, naming the bundle's components
    if variant is not None and engine != "ort":
        raise EngineError(f"{component}: variant {variant!r} runs on ONNX Runtime only, not {engine!r}")
    if engine == "ort":
        from vitron_rt.engines.ort import OrtRunner

        return OrtRunner(
            bundle.component_path(component, variant),
            entry=bundle.component(component) if variant is None else None,
            name=component,
            options=options,
            cache_dir=bundle.engines_dir / ORT_CACHE_DIR,
            **kwargs,
        )
    if engine == "trt":
        from vitron_rt.engines.trt import TrtRunner

        return TrtRunner.for_bundle(bundle, component, options, **kwargs)
    raise EngineError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")


def runner_factory(
    bundle: Bundle, engine: str = "ort", options: Any = None, cache: bool = False
) -> Callable[[str | Path], Runner]:
    """A `runner(path)` callable, as `validate_file` and `check_bundle` take one: a path of
    one of the bundle's components gets that component's runner with its manifest specs;
    any other ONNX path gets a spec-less ONNX Runtime runner (TensorRT needs the manifest).
    `cache=False` keeps `check` from writing optimized models into the bundle."""
    if engine not in ENGINES:
        raise EngineError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    by_path = {bundle.component_path(n).resolve(): n for n in bundle.manifest.components}

    def factory(path: str | Path) -> Runner:
        component = by_path.get(Path(path).resolve())
        if engine == "ort":
            from vitron_rt.engines.ort import OrtRunner

            if component is None:
                return OrtRunner(path, options=options)
            return OrtRunner(
                path,
                entry=bundle.component(component),
                name=component,
                options=options,
                cache_dir=bundle.engines_dir / ORT_CACHE_DIR if cache else None,
            )
        if component is None:
            raise EngineError(
                f"{Path(path).name}: not a component of {bundle.root}; TensorRT runs bundle components only"
            )
        return make_runner(bundle, component, engine, options)

    return factory
