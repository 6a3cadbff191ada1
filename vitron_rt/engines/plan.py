"""What an engine needs in memory, computed from the manifest alone (plain Python, no GPU).

- `input_ranges`: each dynamic input's (min, opt, max) shapes under one optimization
  profile, from the profile's named-dim ranges (what TensorRT's profiles are built from).
- `BufferPlan`: every I/O tensor's largest shape over a component's profiles and its
  bytes, laid out in one block (one cudaMalloc and one pinned host block per component).
- `KvCachePlan`: the LLM's KV cache in pre-allocated buffers, sized from `LlmInfo`
  (layers, KV heads, head_dim) and the largest context the engine's profiles accept, with
  the ping-pong binding of a decode step (below).
- `shared_activation_bytes`: components that run one after another share one activation
  block (TensorRT's per-context scratch memory) sized to the largest of them.

KV cache without copies. The decoder graph concatenates past and new KV:
past (B, H, P, D) + new (B, H, T, D) -> present (B, H, P+T, D). A present tensor written
contiguously into buffer X is, byte for byte, the past tensor of the next step, shaped
(B, H, P+T, D). So each K and V of each layer has two buffers; a step reads past from one
side and writes present into the other, and the next step swaps sides:

    step n:    past[i] <- side A (B,H,P,D)     present[i] -> side B (B,H,P+T,D)
    step n+1:  past[i] <- side B (B,H,P+T,D)   present[i] -> side A (B,H,P+T+T',D)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vitron_rt.bundle import BundleError, ComponentEntry, LlmInfo, Profile, TensorSpec

# cudaMalloc returns 256-byte aligned memory; sub-buffers of one block keep that alignment
# (TensorRT requires at least 256 for I/O tensors and for context device memory).
ALIGNMENT = 256

_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int8": 1, "uint8": 1, "bool": 1}

Shape = tuple[int, ...]


def itemsize(dtype: str) -> int:
    """Bytes per element of a manifest dtype."""
    try:
        return _ITEMSIZE[dtype]
    except KeyError:
        raise BundleError(f"unknown dtype {dtype!r}; known: {', '.join(_ITEMSIZE)}") from None


def align(nbytes: int, alignment: int = ALIGNMENT) -> int:
    """`nbytes` rounded up to a multiple of `alignment`."""
    return -(-nbytes // alignment) * alignment


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class ShapeRange:
    """One input's shapes under one optimization profile (TensorRT's min / opt / max)."""

    min: Shape
    opt: Shape
    max: Shape


def input_ranges(entry: ComponentEntry, profile: Profile) -> dict[str, ShapeRange]:
    """Every dynamic input's shape range under `profile`, in input order. Static inputs are
    left out: their one shape needs no range (Polygraphy fills them in)."""
    out = {}
    for spec in entry.inputs:
        if spec.dynamic_axes:
            lo, opt, hi = profile.shapes(spec)
            out[spec.name] = ShapeRange(lo, opt, hi)
    return out


def profile_index(entry: ComponentEntry, dims: Mapping[str, int], where: str = "") -> int:
    """The tightest profile whose ranges contain `dims` (the named sizes of one call's
    feeds): a decode step (sequence 1) lies in both of an LLM's profiles and must get the
    decode one, whose kernels were tuned for it. None covering them is an error that shows
    each profile's ranges."""
    if not entry.profiles:
        return 0
    fits = [
        (sum(r.max - r.min for r in prof.dims.values()), i)
        for i, prof in enumerate(entry.profiles)
        if all(n in prof.dims for n in dims) and prof.contains(dims)
    ]
    if fits:
        return min(fits)[1]
    wanted = ", ".join(f"{n}={v}" for n, v in dims.items())
    ranges = "; ".join(
        f"{p.name}: " + ", ".join(f"{n} {r.min}..{r.max}" for n, r in p.dims.items()) for p in entry.profiles
    )
    raise BundleError(f"{where or 'component'}: no optimization profile covers {wanted} ({ranges})")


def max_dims(entry: ComponentEntry, profiles: Iterable[Profile] | None = None) -> dict[str, int]:
    """The largest size of every named dim over `profiles` (default: all of the entry's)."""
    out: dict[str, int] = {}
    for prof in entry.profiles if profiles is None else profiles:
        for name, r in prof.dims.items():
            out[name] = max(out.get(name, 0), r.max)
    return out


# --------------------------------------------------------------------------- I/O buffers


@dataclass(frozen=True)
class TensorBuffer:
    """One I/O tensor's slot: the largest shape it takes, its bytes, and its offset in the
    component's block (aligned)."""

    name: str
    dtype: str
    is_input: bool
    max_shape: Shape
    nbytes: int
    offset: int


@dataclass(frozen=True)
class BufferPlan:
    """Every I/O tensor of one component at its largest shape, packed into one block."""

    component: str
    tensors: tuple[TensorBuffer, ...]
    total_bytes: int

    def __getitem__(self, name: str) -> TensorBuffer:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"{self.component}: no tensor {name!r} in the buffer plan")

    @property
    def input_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors if t.is_input)

    @property
    def output_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors if not t.is_input)

    @classmethod
    def for_component(
        cls,
        name: str,
        entry: ComponentEntry,
        output_shapes: Mapping[str, Shape] | None = None,
        profiles: Iterable[Profile] | None = None,
    ) -> "BufferPlan":
        """The plan at the profiles' maxima. An output dim that is named by no profile (a
        VAE's `image_height`, which the graph computes from `height`) cannot be sized from
        the manifest: its max shape comes from `output_shapes`, which an engine supplies
        after setting every input to its max shape (TensorRT: `context.get_tensor_shape`)."""
        dims = max_dims(entry, profiles)
        given = dict(output_shapes or {})
        tensors: list[TensorBuffer] = []
        offset = 0
        for spec, is_input in [(t, True) for t in entry.inputs] + [(t, False) for t in entry.outputs]:
            if not is_input and spec.name in given:
                shape = tuple(int(d) for d in given[spec.name])
            else:
                shape = _max_shape(name, spec, dims, is_input)
            nbytes = math.prod(shape) * itemsize(spec.dtype)
            tensors.append(TensorBuffer(spec.name, spec.dtype, is_input, shape, nbytes, offset))
            offset += align(nbytes)
        return cls(name, tuple(tensors), offset)


def unsized_outputs(entry: ComponentEntry) -> list[str]:
    """Outputs with a dim no profile names (the graph computes it, e.g. a VAE's
    `image_height` from `height`): their largest shape must come from the engine."""
    dims = max_dims(entry)
    return [t.name for t in entry.outputs if any(d not in dims for d in t.dynamic_axes.values())]


def _max_shape(component: str, spec: TensorSpec, dims: Mapping[str, int], is_input: bool) -> Shape:
    unknown = [d for d in spec.dynamic_axes.values() if d not in dims]
    if unknown:
        what = "input" if is_input else "output"
        hint = "" if is_input else "; the engine must give its max shape (output_shapes)"
        raise BundleError(f"{component}: {what} {spec.name!r} dim {unknown[0]!r} is in no profile{hint}")
    return spec.concrete(dims)


# --------------------------------------------------------------------------- KV cache


@dataclass(frozen=True)
class KvBinding:
    """One KV tensor of one decode step: which buffer it lives in and the shape it has."""

    name: str
    buffer: int
    shape: Shape


@dataclass(frozen=True)
class KvCachePlan:
    """The LLM's KV cache as 2 x (K, V per layer) pre-allocated buffers (ping-pong, see
    the module docstring), each holding (batch, kv_heads, max_context, head_dim)."""

    past_names: tuple[str, ...]
    present_names: tuple[str, ...]
    batch: int
    num_kv_heads: int
    head_dim: int
    max_context: int
    dtype: str

    @property
    def buffer_shape(self) -> Shape:
        return (self.batch, self.num_kv_heads, self.max_context, self.head_dim)  # (B, H, S, D)

    @property
    def buffer_bytes(self) -> int:
        return math.prod(self.buffer_shape) * itemsize(self.dtype)

    @property
    def num_buffers(self) -> int:
        return 2 * len(self.past_names)

    @property
    def total_bytes(self) -> int:
        return self.num_buffers * align(self.buffer_bytes)

    @classmethod
    def from_manifest(
        cls, llm: LlmInfo, entry: ComponentEntry, batch: int | None = None, max_context: int | None = None
    ) -> "KvCachePlan":
        """Sizes from `llm` and the decoder's profiles: batch defaults to the profiles' max
        batch, the context to the smaller of the model's position limit and the longest
        present KV the profiles allow (a longer cache could never be fed)."""
        past = entry.input(llm.past_key % 0)
        present = entry.output(llm.present_key % 0)
        dims = max_dims(entry)
        batch_dim, total_dim = past.shape[0], present.shape[2]  # (B, H, S, D)
        engine_batch = dims.get(batch_dim, batch_dim) if isinstance(batch_dim, str) else batch_dim
        engine_context = dims.get(total_dim, llm.max_position_embeddings) if isinstance(total_dim, str) else total_dim
        limit = min(llm.max_position_embeddings, engine_context)
        batch = engine_batch if batch is None else batch
        context = limit if max_context is None else max_context
        if not 1 <= batch <= engine_batch:
            raise BundleError(f"{llm.component}: KV cache batch {batch} outside the engine's 1..{engine_batch}")
        if not 1 <= context <= limit:
            raise BundleError(f"{llm.component}: KV cache context {context} outside 1..{limit}")
        return cls(
            past_names=tuple(llm.past_names()),
            present_names=tuple(llm.present_names()),
            batch=batch,
            num_kv_heads=llm.num_kv_heads,
            head_dim=llm.head_dim,
            max_context=context,
            dtype=llm.kv_dtype,
        )

    def step(self, past_len: int, step_len: int, side: int, batch: int | None = None) -> list[KvBinding]:
        """The bindings of one decoder call that reads `past_len` cached positions from
        `side` (0 or 1) and appends `step_len` new ones into the other side. Buffer index
        `side * n + i` is the i-th KV name's buffer on that side."""
        b = self.batch if batch is None else batch
        total = past_len + step_len
        if total > self.max_context:
            raise BundleError(f"KV cache full: {past_len} + {step_len} positions > max context {self.max_context}")
        if not 1 <= b <= self.batch:
            raise BundleError(f"KV cache batch {b} outside 1..{self.batch}")
        n = len(self.past_names)
        h, d = self.num_kv_heads, self.head_dim
        out = [KvBinding(name, side * n + i, (b, h, past_len, d)) for i, name in enumerate(self.past_names)]
        out += [KvBinding(name, (1 - side) * n + i, (b, h, total, d)) for i, name in enumerate(self.present_names)]
        return out


# --------------------------------------------------------------------------- shared activations


def shared_activation_bytes(sizes: Mapping[str, int]) -> int:
    """One activation block for components that never run at the same time: the largest
    per-context requirement, aligned (demo/Diffusion's `max(device_memory_size)`)."""
    if not sizes:
        return 0
    return align(max(sizes.values()))
