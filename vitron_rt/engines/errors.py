"""Exceptions of the engines, one class per kind of failure; every message is one line.

A `MissingDependencyError` is the answer to "this machine cannot take the GPU path"
(no TensorRT, no cuda-python, no GPU, no onnxruntime-gpu). The CLI prints it and exits 2;
nothing else in the package is affected by it.
"""

from __future__ import annotations


class EngineError(RuntimeError):
    """A runner or builder that cannot do what was asked (bad state, failed engine call)."""


class MissingDependencyError(EngineError):
    """A GPU path was asked for on a machine that lacks a package, a driver or a GPU."""


class NotActiveError(EngineError):
    """`infer` (or another call that needs a session) before `activate()` or after `deactivate()`."""


class InputError(EngineError, ValueError):
    """Feeds that do not match the component's inputs: a name, dtype, rank or fixed dim."""


class StaleEngineError(EngineError):
    """A cached engine or optimized model that was not produced from this bundle, precision,
    profile set, TensorRT version and GPU: it is never loaded, only rebuilt."""
