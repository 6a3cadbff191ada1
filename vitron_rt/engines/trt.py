"""The native TensorRT runner, over cuda-python device and pinned host buffers.

Written against TensorRT 10.x, its Python API as documented for 10.1 and later
(`ICudaEngine.device_memory_size_v2`, `IExecutionContext.set_device_memory(ptr, size)`,
`create_execution_context(ExecutionContextAllocationStrategy.USER_MANAGED)`), with the
10.0 spellings (`device_memory_size`, the `device_memory` attribute) as a fallback.

    activate():  verify the plan's key (keys.verify_engine) -> deserialize -> context
                 -> one device block + one pinned block for every I/O tensor at its
                    largest shape (plan.BufferPlan) -> tensor addresses set once
    infer():     choose the profile covering the feeds -> set input shapes
                 -> copy inputs host->pinned->device -> execute_async_v3(stream)
                 -> copy outputs device->pinned -> synchronize -> return copies
    bind() + infer_async(stream): the same run over device arrays the caller owns
                 (another engine's output, the KV cache), queued on the caller's stream.

Shared activation memory (STYLE point 9): runners given one `SharedActivationMemory`
create their contexts without memory (USER_MANAGED) and all point at one block sized to
the largest requirement. They must never run at the same time: give them one stream, or
synchronise between them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from vitron_rt.bundle import Bundle, ComponentEntry, LlmInfo, TensorSpec
from vitron_rt.engines import cuda as cu
from vitron_rt.engines.base import AsyncRunner, resolve_dims
from vitron_rt.engines.deps import compute_capability, require_trt_stack
from vitron_rt.engines.errors import EngineError, StaleEngineError
from vitron_rt.engines.keys import EngineKey, verify_engine
from vitron_rt.engines.plan import (
    BufferPlan,
    KvCachePlan,
    align,
    profile_index,
    shared_activation_bytes,
    unsized_outputs,
)


@dataclass(frozen=True)
class TrtOptions:
    """How a `TrtRunner` finds and loads its engine."""

    # Which built engine to load ("fp32", "fp16", "int8"): part of its key.
    precision: str = "fp32"
    device: int = 0
    # Hash the plan against its sidecar before loading: seconds for multi-GB plans, and it
    # catches a plan replaced or corrupted behind the sidecar.
    verify_plan_hash: bool = True
    # Build the engine at activation when it is missing or stale (minutes for large
    # components); off by default so a serving process never builds unasked.
    build_missing: bool = False


class SharedActivationMemory:
    """One device block for the activation (scratch) memory of several TensorRT contexts that
    run one after another, sized to the largest (demo/Diffusion's `max(device_memory_size)`).
    A context attached later that needs more grows the block and re-points every context."""

    def __init__(self) -> None:
        self._buffer: cu.DeviceBuffer | None = None
        self._contexts: dict[int, tuple[Any, int]] = {}  # id(context) -> (context, bytes it needs)

    @property
    def nbytes(self) -> int:
        return self._buffer.nbytes if self._buffer is not None else 0

    def sizes(self) -> dict[int, int]:
        return {k: n for k, (_, n) in self._contexts.items()}

    def attach(self, context: Any, nbytes: int) -> None:
        """Give `context` the shared block, growing it first if `nbytes` does not fit. Must
        not be called while an attached context has work in flight."""
        self._contexts[id(context)] = (context, nbytes)
        need = shared_activation_bytes(self.sizes())
        if self._buffer is None or need > self._buffer.nbytes:
            cu.check(cu.cudart().cudaDeviceSynchronize(), "cudaDeviceSynchronize")
            if self._buffer is not None:
                self._buffer.free()
            self._buffer = cu.DeviceBuffer(need)
            for ctx, _ in self._contexts.values():
                _set_device_memory(ctx, self._buffer)
        else:
            _set_device_memory(context, self._buffer)

    def detach(self, context: Any) -> None:
        """Forget `context`; the block is freed with the last one."""
        self._contexts.pop(id(context), None)
        if not self._contexts and self._buffer is not None:
            self._buffer.free()
            self._buffer = None


def _set_device_memory(context: Any, block: cu.DeviceBuffer) -> None:
    if hasattr(context, "set_device_memory"):  # TensorRT 10.1+
        context.set_device_memory(block.ptr, block.nbytes)
    else:  # TensorRT 10.0
        context.device_memory = block.ptr


def _activation_bytes(engine: Any) -> int:
    return int(engine.device_memory_size_v2 if hasattr(engine, "device_memory_size_v2") else engine.device_memory_size)


class TrtRunner(AsyncRunner):
    """One component's TensorRT engine. Build it with `TrtRunner.for_bundle` (the plan is
    found by its key at activation) or from a plan path with the entry it was built from."""

    engine = "trt"

    def __init__(
        self,
        plan: str | Path,
        *,
        entry: ComponentEntry,
        name: str | None = None,
        key: EngineKey | None = None,
        options: TrtOptions | None = None,
        memory: SharedActivationMemory | None = None,
        stream: cu.Stream | None = None,
    ):
        """`entry`: the manifest entry the plan was built from (I/O specs and profiles).
        `name`: the component's name. `key`: what the plan's sidecar must say (None: the
        key is derived at activation from `name`, `entry`, `options.precision`, the
        installed TensorRT and the GPU). `memory`:
        share activation memory with other runners. `stream`: the stream `infer` uses
        (default: one of its own). Does no I/O and touches no GPU."""
        if key is None and name is None:
            raise EngineError(f"{Path(plan).name}: give the component's name= (or its key=) to find the plan's key")
        super().__init__(plan, entry=entry, name=name)
        self.entry: ComponentEntry = entry
        self.options = options or TrtOptions()
        self.key = key
        self.memory = memory
        self._given_stream = stream
        self._locate: Any = None  # set by for_bundle: (trt) -> (plan path, key)
        self._reset_state()

    @classmethod
    def for_bundle(
        cls,
        bundle: Bundle,
        component: str,
        options: TrtOptions | None = None,
        memory: SharedActivationMemory | None = None,
        stream: cu.Stream | None = None,
    ) -> "TrtRunner":
        """The runner of `component`'s engine in `bundle/engines/`. Until activation, `path`
        is the component's ONNX file; activation finds the plan by its key and loads it."""
        options = options or TrtOptions()
        entry = bundle.component(component)
        runner = cls(
            bundle.component_path(component), entry=entry, name=component, options=options, memory=memory, stream=stream
        )

        def locate(trt: ModuleType, cudart: ModuleType) -> tuple[Path, EngineKey]:
            key = EngineKey.for_component(
                component, entry, options.precision, trt.__version__, compute_capability(options.device, cudart)
            )
            path = key.plan_path(bundle.engines_dir)
            if options.build_missing:
                from vitron_rt.engines.trt_build import BuildOptions, Precision, TrtEngineBuilder

                TrtEngineBuilder(bundle, component, BuildOptions(precision=Precision(options.precision)))()
            return path, key

        runner._locate = locate
        return runner

    def _reset_state(self) -> None:
        self._trt: ModuleType | None = None
        self._runtime: Any = None
        self._engine: Any = None
        self.context: Any = None
        self._stream: cu.Stream | None = None
        self._own_stream = False
        self._device: cu.DeviceBuffer | None = None
        self._host: cu.PinnedBuffer | None = None
        self.buffers: BufferPlan | None = None
        self._profile = -1
        self._external = False  # addresses point at caller arrays (bind), not our block

    # ----------------------------------------------------------------- lifecycle

    def _activate_impl(self) -> None:
        trt, cudart = require_trt_stack()
        self._trt = trt
        cu.check(cudart.cudaSetDevice(self.options.device), f"cudaSetDevice({self.options.device})")
        if self._locate is not None:
            self.path, self.key = self._locate(trt, cudart)
        if self.key is None:
            self.key = EngineKey.for_component(
                self.name,
                self.entry,
                self.options.precision,
                trt.__version__,
                compute_capability(self.options.device, cudart),
            )
        try:
            verify_engine(self.path, self.key, check_hash=self.options.verify_plan_hash)
        except StaleEngineError as e:
            raise StaleEngineError(f"{self.name}: {e}; run `vitron-rt build B --engine trt`") from None
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise EngineError(f"{self.name}: TensorRT could not deserialize {self.path.name} (see its log above)")
        if self.memory is not None:
            self.context = self._engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        else:
            self.context = self._engine.create_execution_context()
        if self.context is None:
            raise EngineError(f"{self.name}: TensorRT could not create an execution context (out of device memory?)")
        if self.memory is not None:
            self.memory.attach(self.context, _activation_bytes(self._engine))
        if self._given_stream is not None:
            self._stream = self._given_stream
        else:
            self._stream, self._own_stream = cu.Stream(), True
        self.buffers = BufferPlan.for_component(self.name, self.entry, output_shapes=self._engine_output_maxima())
        self._device = cu.DeviceBuffer(self.buffers.total_bytes)
        self._host = cu.PinnedBuffer(self.buffers.total_bytes)
        self._bind_own_buffers()

    def _io_specs_impl(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        trt, engine = self._trt, self._engine
        inputs, outputs = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
            shape = tuple(d if d >= 0 else f"{name}:{a}" for a, d in enumerate(engine.get_tensor_shape(name)))
            group = inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs
            group.append(TensorSpec(name, dtype, shape))
        return tuple(inputs), tuple(outputs)

    def _deactivate_impl(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        if self.memory is not None and self.context is not None:
            self.memory.detach(self.context)
        self.context = None  # the context before the engine, the engine before the runtime
        self._engine = None
        self._runtime = None
        for buf in (self._device, self._host):
            if buf is not None:
                buf.free()
        if self._own_stream and self._stream is not None:
            self._stream.close()
        self._reset_state()

    # ----------------------------------------------------------------- inference

    def _infer_impl(self, feeds: dict[str, np.ndarray], dims: dict[str, int]) -> dict[str, np.ndarray]:
        assert self._device is not None and self._host is not None and self._stream is not None
        if self._select_profile(dims) or self._external:
            self._bind_own_buffers()
        for name, array in feeds.items():
            slot = self.buffers[name]
            self._set_input_shape(name, array.shape)
            host = self._host.view(array.dtype, array.shape, slot.offset)
            np.copyto(host, array)
            cu.copy_async(self._device.ptr + slot.offset, self._host.ptr + slot.offset, array.nbytes, self._stream)
        self._execute(self._stream)
        shapes = {}
        for spec in self.output_specs:
            slot = self.buffers[spec.name]
            shape = self._output_shape(spec.name)
            nbytes = int(np.prod(shape)) * np.dtype(slot.dtype).itemsize
            cu.copy_async(self._host.ptr + slot.offset, self._device.ptr + slot.offset, nbytes, self._stream)
            shapes[spec.name] = shape
        self._stream.synchronize()
        # Copies: the pinned block is overwritten by the next call.
        return {n: self._host.view(self.buffers[n].dtype, s, self.buffers[n].offset).copy() for n, s in shapes.items()}

    def bind(self, inputs: Mapping[str, cu.DeviceArray], outputs: Mapping[str, cu.DeviceArray] | None = None) -> None:
        """Point inputs (and any outputs given) at device arrays the caller owns, and set the
        input shapes, for `infer_async`. Outputs not given stay in the runner's own block
        (see `output_array`). Binding is host-side work only: nothing is copied."""
        self._require_active("bind")
        dims = resolve_dims(self.input_specs, inputs, self.name)
        self._select_profile(dims)
        self._bind_own_buffers()
        self._external = True
        for name, arr in inputs.items():
            self._set_input_shape(name, arr.shape)
            self._set_address(name, arr.ptr)
        for name, arr in (outputs or {}).items():
            if name not in [o.name for o in self.output_specs]:
                raise EngineError(f"{self.name}: no output named {name!r}")
            want = self._output_shape(name)
            if tuple(arr.shape) != want or np.dtype(arr.dtype).name != self.buffers[name].dtype:
                raise EngineError(
                    f"{self.name}: output {name!r} array is {np.dtype(arr.dtype).name}{list(arr.shape)}, "
                    f"this run writes {self.buffers[name].dtype}{list(want)}"
                )
            self._set_address(name, arr.ptr)

    def output_array(self, name: str) -> cu.DeviceArray:
        """An output in the runner's own device block at the shape of the bound run: pass it
        as the next engine's input to keep data on the device."""
        self._require_active("output_array")
        slot = self.buffers[name]
        assert self._device is not None
        return cu.DeviceArray(self._device.ptr + slot.offset, self._output_shape(name), np.dtype(slot.dtype))

    def _infer_async_impl(self, stream: Any) -> None:
        self._execute(stream)

    # ----------------------------------------------------------------- internals

    def _execute(self, stream: Any) -> None:
        if not self.context.execute_async_v3(cu.stream_handle(stream)):
            raise EngineError(f"{self.name}: execute_async_v3 failed (see the TensorRT log above)")

    def _bind_own_buffers(self) -> None:
        assert self._device is not None and self.buffers is not None
        for slot in self.buffers.tensors:
            self._set_address(slot.name, self._device.ptr + slot.offset)
        self._external = False

    def _set_address(self, name: str, ptr: int) -> None:
        if not self.context.set_tensor_address(name, int(ptr)):
            raise EngineError(f"{self.name}: set_tensor_address({name!r}) failed")

    def _set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if not self.context.set_input_shape(name, tuple(int(d) for d in shape)):
            raise EngineError(f"{self.name}: input {name!r} shape {list(shape)} is outside the engine's profile")

    def _select_profile(self, dims: Mapping[str, int]) -> bool:
        """Switch to the profile covering `dims`; True when it switched (input shapes and,
        to be safe across TensorRT versions, tensor addresses are then set again)."""
        index = profile_index(self.entry, dims, self.name)
        if index == self._profile:
            return False
        assert self._stream is not None
        if not self.context.set_optimization_profile_async(index, self._stream.handle):
            raise EngineError(f"{self.name}: cannot select optimization profile {index}")
        self._profile = index
        return True

    def _output_shape(self, name: str) -> tuple[int, ...]:
        shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise EngineError(f"{self.name}: output {name!r} shape {list(shape)} is not known from the input shapes")
        return shape

    def _engine_output_maxima(self) -> dict[str, tuple[int, ...]]:
        """The largest shape of each output that no profile sizes (`plan.unsized_outputs`),
        as TensorRT computes it with the inputs at each profile's maxima. Only those: the
        maxima of independent dims (an LLM's sequence and past) need not be a shape the
        graph accepts together, while a VAE's image size follows its latent size."""
        unsized = unsized_outputs(self.entry)
        if not unsized:
            return {}
        assert self._stream is not None
        out: dict[str, tuple[int, ...]] = {}
        for index, prof in enumerate(self.entry.profiles or [None]):
            if prof is not None:
                if not self.context.set_optimization_profile_async(index, self._stream.handle):
                    raise EngineError(f"{self.name}: cannot select optimization profile {index}")
                dims = {n: r.max for n, r in prof.dims.items()}
                for spec in self.entry.inputs:
                    self._set_input_shape(spec.name, spec.concrete(dims))
            for name in unsized:
                shape = self._output_shape(name)
                prev = out.get(name, shape)
                out[name] = tuple(max(a, b) for a, b in zip(prev, shape))
        self._profile = len(self.entry.profiles) - 1 if self.entry.profiles else 0
        return out


class DeviceKvCache:
    """The LLM's KV cache in pre-allocated device memory, one block of `plan.num_buffers`
    buffers (ping-pong, see `plan.KvCachePlan`). `step_arrays` gives the device arrays to
    `bind` for one decoder call; nothing is copied or allocated per token."""

    def __init__(self, plan: KvCachePlan):
        self.plan = plan
        self._stride = align(plan.buffer_bytes)
        self._block = cu.DeviceBuffer(plan.total_bytes)

    @classmethod
    def for_llm(cls, llm: LlmInfo, entry: ComponentEntry, batch: int | None = None, max_context: int | None = None):
        return cls(KvCachePlan.from_manifest(llm, entry, batch=batch, max_context=max_context))

    def step_arrays(
        self, past_len: int, step_len: int, side: int, batch: int | None = None
    ) -> tuple[dict[str, cu.DeviceArray], dict[str, cu.DeviceArray]]:
        """(past KV inputs read from `side`, present KV outputs written to the other side) of
        one decoder call, ready for `TrtRunner.bind(inputs, outputs)`."""
        dtype = np.dtype(self.plan.dtype)
        arrays = {
            b.name: cu.DeviceArray(self._block.ptr + b.buffer * self._stride, b.shape, dtype)
            for b in self.plan.step(past_len, step_len, side, batch)
        }
        past = {n: arrays[n] for n in self.plan.past_names}
        present = {n: arrays[n] for n in self.plan.present_names}
        return past, present

    def free(self) -> None:
        self._block.free()
