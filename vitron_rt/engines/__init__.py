"""Runners over ONNX Runtime and TensorRT: one lifecycle (activate / infer / deactivate).

Knows ONNX files and engine plans, never torch modules or tasks. Importing this package
imports neither tensorrt nor cuda-python nor polygraphy: the GPU paths load them when
called, and a missing one is a `MissingDependencyError` in one line.

    base.py       Runner / AsyncRunner: checks, timing, context manager
    ort.py        OrtRunner (CPU default; CUDA / TensorRT EPs), IOBinding, optimized-model cache
    trt.py        TrtRunner, shared activation memory, device KV cache (TensorRT 10.x)
    trt_build.py  ONNX -> TensorRT engines through Polygraphy, profiles from the manifest
    plan.py       buffer, KV-cache and activation sizes from the manifest (plain Python)
    keys.py       cache keys, engine file names, sidecars, stale detection (plain Python)
    cuda.py       device / pinned buffers, streams, events over cuda-python
    deps.py       the optional GPU stack, imported on demand
    factory.py    make_runner / runner_factory by engine name
"""

from vitron_rt.engines.base import AsyncRunner, Runner, Timing
from vitron_rt.engines.errors import (
    EngineError,
    InputError,
    MissingDependencyError,
    NotActiveError,
    StaleEngineError,
)
from vitron_rt.engines.factory import ENGINES, make_runner, runner_factory
from vitron_rt.engines.ort import BoundSession, GraphOptimization, OrtOptions, OrtRunner, Provider, TensorrtEpOptions

__all__ = [
    "ENGINES",
    "AsyncRunner",
    "BoundSession",
    "EngineError",
    "GraphOptimization",
    "InputError",
    "MissingDependencyError",
    "NotActiveError",
    "OrtOptions",
    "OrtRunner",
    "Provider",
    "Runner",
    "StaleEngineError",
    "TensorrtEpOptions",
    "Timing",
    "make_runner",
    "runner_factory",
]
