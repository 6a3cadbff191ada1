"""Every GPU path, asked for on a machine without its package, driver or GPU, is one clear
line naming what is missing; the rest of the package does not notice."""

from __future__ import annotations

import enum
import subprocess
import sys
import types

import numpy as np
import pytest
from _bundles import tiny_fixture  # noqa: F401  (fixtures)

from vitron_rt.engines import MissingDependencyError, NotActiveError, OrtOptions, deps, make_runner
from vitron_rt.engines.deps import GPU_EXTRA

TRT_MISSING = f"TensorRT is not installed: {GPU_EXTRA}"


def gpu_stack_here() -> bool:
    try:
        deps.require_trt_stack()
        deps.require_polygraphy()
    except MissingDependencyError:
        return False
    return True


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Hide TensorRT, installed or not (a None entry in sys.modules fails its import)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


class _Err(enum.Enum):
    cudaSuccess = 0
    cudaErrorNoDevice = 100


def fake_cudart(err=_Err.cudaSuccess, count=1):
    return types.SimpleNamespace(
        cudaError_t=_Err,
        cudaGetDeviceCount=lambda: (err, count),
        cudaGetErrorName=lambda e: (_Err.cudaSuccess, e.name.encode()),
    )


def test_import_pulls_in_no_gpu_package():
    modules = [
        "vitron_rt.engines",
        "vitron_rt.engines.trt",
        "vitron_rt.engines.trt_build",
        "vitron_rt.engines.cuda",
        "vitron_rt.bench.gpu_check",
    ]
    code = (
        f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
        "heavy = ('tensorrt', 'cuda', 'polygraphy', 'torch', 'cupy'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_tensorrt_missing(no_tensorrt):
    with pytest.raises(MissingDependencyError) as info:
        deps.require_tensorrt()
    assert str(info.value) == TRT_MISSING
    with pytest.raises(MissingDependencyError, match="^TensorRT is not installed"):
        deps.require_trt_stack()  # TensorRT is named first, whatever else is missing


def test_tensorrt_too_old(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(
        MissingDependencyError, match=r"TensorRT 8\.6\.1 is installed; vitron-rt needs TensorRT 10\.x or newer"
    ):
        deps.require_tensorrt()


def test_polygraphy_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "polygraphy.backend.trt", None)
    with pytest.raises(MissingDependencyError) as info:
        deps.require_polygraphy()
    assert str(info.value) == f"Polygraphy is not installed: {GPU_EXTRA}"


def test_cuda_python_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    with pytest.raises(MissingDependencyError) as info:
        deps.require_cudart()
    assert str(info.value) == f"cuda-python is not installed: {GPU_EXTRA}"


def test_no_gpu_or_no_driver():
    with pytest.raises(MissingDependencyError) as info:
        deps.require_gpu(fake_cudart(_Err.cudaErrorNoDevice, 0))
    assert str(info.value) == (
        "no usable CUDA GPU: cudaGetDeviceCount returned cudaErrorNoDevice "
        "(needs an NVIDIA GPU and a driver for CUDA 12 or newer)"
    )
    with pytest.raises(MissingDependencyError, match="the driver reports 0 devices"):
        deps.require_gpu(fake_cudart(count=0))
    assert deps.require_gpu(fake_cudart(count=2)) == 2


def test_cuda_buffers_without_a_gpu():
    if gpu_stack_here():
        pytest.skip("this machine has the GPU stack")
    from vitron_rt.engines import cuda as cu

    try:
        deps.require_gpu()
    except MissingDependencyError as e:
        with pytest.raises(MissingDependencyError) as info:
            cu.DeviceBuffer(16)
        assert str(info.value) == str(e) and "\n" not in str(e)
    else:
        pytest.skip("a CUDA GPU is present")


def test_trt_runner_and_builder_fail_in_one_line_and_stay_inactive(tiny, no_tensorrt):
    from vitron_rt.engines.trt_build import TrtEngineBuilder, build_engines

    runner = make_runner(tiny, "mm_projector", engine="trt")  # constructing needs nothing
    with pytest.raises(MissingDependencyError) as info:
        runner.activate()
    assert str(info.value) == TRT_MISSING and not runner.is_active
    with pytest.raises(NotActiveError):
        runner.infer({"image_features": np.zeros((1, 4, 32), np.float32)})
    builder = TrtEngineBuilder(tiny, "mm_projector")
    with pytest.raises(MissingDependencyError, match="^TensorRT is not installed"):
        builder()
    with pytest.raises(MissingDependencyError, match="^TensorRT is not installed"):
        build_engines(tiny)
    assert not tiny.engines_dir.exists() or not list(tiny.engines_dir.glob("*.plan"))


def test_ort_runner_keeps_working_without_the_gpu_stack(tiny, no_tensorrt, monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    monkeypatch.setitem(sys.modules, "polygraphy.backend.trt", None)
    with make_runner(tiny, "embed_tokens", options=OrtOptions(cache_optimized=False)) as r:
        out = r.infer({"input_ids": np.array([[1, 2, 3]], np.int64)})
    assert out["inputs_embeds"].shape == (1, 3, 64)
