"""Stand-ins for cuda-python's runtime, TensorRT and Polygraphy, so the control flow of the
TensorRT path (keys, buffer plans, pointer arithmetic, profile switching, shared memory,
the device KV cache) runs on a machine without a GPU.

"Device" memory is host memory: cudaMalloc returns the address of a ctypes buffer and
every copy or kernel access is checked to lie inside one live allocation, so an offset or
size error in a buffer plan fails loudly instead of corrupting memory. A "plan" is JSON
naming its ONNX file; the fake engine runs it with ONNX Runtime, reading its inputs from
and writing its outputs to the bound addresses, as TensorRT would. Only the calls vitron-rt
makes exist (their names as TensorRT 10's and cuda-python's Python APIs spell them)."""

from __future__ import annotations

import ctypes
import enum
import json
import types
from pathlib import Path

import numpy as np

_ORT_DTYPES = {"tensor(float)": np.dtype(np.float32), "tensor(int64)": np.dtype(np.int64)}


class _Err(enum.Enum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1


OK = _Err.cudaSuccess


class FakeCudart:
    """The subset of `cuda.bindings.runtime` used by vitron_rt.engines.cuda and deps."""

    cudaError_t = _Err
    cudaMemcpyKind = enum.Enum("cudaMemcpyKind", {"cudaMemcpyDefault": 4})
    cudaDeviceAttr = enum.Enum(
        "cudaDeviceAttr", {"cudaDevAttrComputeCapabilityMajor": 75, "cudaDevAttrComputeCapabilityMinor": 76}
    )
    cudaStreamNonBlocking = 1

    def __init__(self, capability=(8, 9)):
        self.capability = capability
        self.blocks: dict[int, ctypes.Array] = {}
        self.copies = 0
        self._streams = 0

    # memory
    def _alloc(self, n):
        buf = ctypes.create_string_buffer(int(n))
        self.blocks[ctypes.addressof(buf)] = buf
        return OK, ctypes.addressof(buf)

    cudaMalloc = cudaMallocHost = _alloc

    def _free(self, ptr):
        if ptr not in self.blocks:
            raise AssertionError(f"free of {ptr:#x}, which is not an allocation")
        del self.blocks[ptr]
        return (OK,)

    cudaFree = cudaFreeHost = _free

    def check_range(self, ptr, n, what):
        for start, buf in self.blocks.items():
            if start <= ptr and ptr + n <= start + ctypes.sizeof(buf):
                return
        raise AssertionError(f"{what}: [{ptr:#x}, +{n}) is outside every live allocation")

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        assert kind is self.cudaMemcpyKind.cudaMemcpyDefault and isinstance(stream, int)
        self.check_range(dst, n, "memcpy dst")
        self.check_range(src, n, "memcpy src")
        ctypes.memmove(dst, src, n)
        self.copies += 1
        return (OK,)

    # device
    def cudaGetDeviceCount(self):
        return OK, 1

    def cudaSetDevice(self, device):
        return (OK,)

    def cudaDeviceGetAttribute(self, attr, device):
        major = attr is self.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor
        return OK, self.capability[0] if major else self.capability[1]

    def cudaDeviceSynchronize(self):
        return (OK,)

    def cudaGetErrorName(self, err):
        return OK, err.name.encode()

    # streams and events (work runs at once, so synchronising is a no-op)
    def cudaStreamCreateWithFlags(self, flags):
        self._streams += 1
        return OK, 0x5000 + self._streams

    def cudaStreamSynchronize(self, stream):
        return (OK,)

    def cudaStreamDestroy(self, stream):
        return (OK,)

    def cudaEventCreate(self):
        return OK, object()

    def cudaEventRecord(self, event, stream):
        return (OK,)

    def cudaEventSynchronize(self, event):
        return (OK,)

    def cudaEventElapsedTime(self, start, end):
        return OK, 1.0

    def cudaEventDestroy(self, event):
        return (OK,)


# --------------------------------------------------------------------------- TensorRT


class _Engine:
    def __init__(self, trt, plan: dict):
        import onnxruntime as ort

        self._trt = trt
        self.plan = plan
        self.session = ort.InferenceSession(plan["onnx"], providers=["CPUExecutionProvider"])
        self.inputs = {a.name: a for a in self.session.get_inputs()}
        self.outputs = {a.name: a for a in self.session.get_outputs()}
        self.names = [*self.inputs, *self.outputs]
        # Like TensorRT, a size that grows with the network (here: with the ONNX file).
        self.device_memory_size_v2 = 1000 + Path(plan["onnx"]).stat().st_size // 100

    @property
    def num_io_tensors(self):
        return len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self._trt.TensorIOMode.INPUT if name in self.inputs else self._trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        arg = self.inputs.get(name) or self.outputs[name]
        return _ORT_DTYPES[arg.type]

    def get_tensor_shape(self, name):
        arg = self.inputs.get(name) or self.outputs[name]
        return [d if isinstance(d, int) else -1 for d in arg.shape]

    def create_execution_context(self, strategy=None):
        return _Context(self, strategy)


class _Context:
    def __init__(self, engine: _Engine, strategy):
        self.engine = engine
        self.strategy = strategy
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.profile = 0
        self.device_memory: tuple[int, int] | None = None
        self.runs = 0
        self._out_shapes: dict[tuple, dict[str, tuple[int, ...]]] = {}

    def set_device_memory(self, ptr, size):
        self.device_memory = (ptr, size)

    def set_optimization_profile_async(self, index, stream):
        assert isinstance(stream, int) and 0 <= index < max(1, len(self.engine.plan["profiles"]))
        self.profile = index
        return True

    def set_input_shape(self, name, shape):
        ranges = self.engine.plan["profiles"][self.profile]["inputs"] if self.engine.plan["profiles"] else {}
        if name in ranges:
            lo, hi = ranges[name]["min"], ranges[name]["max"]
            if not all(a <= d <= b for a, d, b in zip(lo, shape, hi)):
                return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr):
        assert isinstance(ptr, int) and ptr
        self.addresses[name] = ptr
        return True

    def get_tensor_shape(self, name):
        if name in self.engine.inputs:
            return list(self.shapes.get(name, self.engine.get_tensor_shape(name)))
        if set(self.shapes) != set(self.engine.inputs):
            return self.engine.get_tensor_shape(name)
        key = tuple(sorted(self.shapes.items()))
        if key not in self._out_shapes:  # shape inference by running on zeros, once per shape set
            feeds = {n: np.zeros(s, _ORT_DTYPES[self.engine.inputs[n].type]) for n, s in self.shapes.items()}
            outs = self.engine.session.run(None, feeds)
            self._out_shapes[key] = {o: v.shape for o, v in zip(self.engine.outputs, outs)}
        return list(self._out_shapes[key][name])

    def execute_async_v3(self, stream):
        rt = FAKE_CUDART
        assert isinstance(stream, int)
        if self.strategy is not None:
            assert self.device_memory is not None and self.device_memory[1] >= self.engine.device_memory_size_v2
        feeds = {}
        for name, arg in self.engine.inputs.items():
            dtype, shape = _ORT_DTYPES[arg.type], self.shapes[name]
            n = int(np.prod(shape)) * dtype.itemsize
            rt.check_range(self.addresses[name], max(n, 1), f"input {name}")
            raw = (ctypes.c_char * n).from_address(self.addresses[name]) if n else b""
            feeds[name] = np.frombuffer(bytes(raw), dtype).reshape(shape)
        outs = self.engine.session.run(None, feeds)
        for name, value in zip(self.engine.outputs, outs):
            value = np.ascontiguousarray(value)
            rt.check_range(self.addresses[name], max(value.nbytes, 1), f"output {name}")
            ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)
        self.runs += 1
        return True


def make_trt(version="10.3.0"):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
    trt.ExecutionContextAllocationStrategy = enum.Enum("ExecutionContextAllocationStrategy", "STATIC USER_MANAGED")
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            self.severity = severity

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            return _Engine(trt, json.loads(bytes(data)))

    trt.Logger, trt.Runtime = Logger, Runtime
    trt.nptype = lambda dtype: dtype
    return trt


# --------------------------------------------------------------------------- Polygraphy


def make_polygraphy(log: list):
    pg = types.ModuleType("polygraphy.backend.trt")

    class Profile(dict):
        def add(self, name, min, opt, max):
            self[name] = {"min": list(min), "opt": list(opt), "max": list(max)}
            return self

    class CreateConfig:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class NetworkFromOnnxPath:
        def __init__(self, path):
            self.path = path

    class EngineBytesFromNetwork:
        def __init__(self, network, config=None, save_timing_cache=None):
            self.network, self.config, self.timing = network, config, save_timing_cache

        def __call__(self):
            log.append({"onnx": self.network.path, **self.config.kwargs, "save_timing_cache": self.timing})
            Path(self.timing).write_bytes(b"timing")
            profiles = [{"inputs": dict(p)} for p in (self.config.kwargs.get("profiles") or [])]
            return json.dumps({"onnx": self.network.path, "profiles": profiles}).encode()

    pg.Profile, pg.CreateConfig = Profile, CreateConfig
    pg.NetworkFromOnnxPath, pg.EngineBytesFromNetwork = NetworkFromOnnxPath, EngineBytesFromNetwork
    return pg


FAKE_CUDART = FakeCudart()
