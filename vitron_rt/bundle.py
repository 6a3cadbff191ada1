"""The bundle contract: what `export` writes and what the runtime and engines read.

A bundle is a folder:

    manifest.json            this module's `Manifest`, as JSON (stable key order)
    <component>.onnx         one per component, standard ONNX opsets only
    <component>.onnx.data    external weights, for components above the size threshold
    <component>.<kind>.onnx  optional variants (e.g. kind "ort-optimized", "ort-gqa")
    tokenizer.json           + the chat template file, when the model has one
    engines/                 the TensorRT engine cache, keyed by what produced each plan

The manifest names every file (with its size and sha256) and every tensor (name, dtype,
named dynamic axes), so a reader hard-codes no names: the LLM's KV inputs, for example,
are `llm.past_key % layer`. `load_bundle` refuses a manifest of another schema version,
a file that is missing, the wrong size or the wrong hash, and a manifest whose sections
contradict each other, each with one line naming the file or field.

Imports only the standard library (numpy is allowed, not needed): export writes this
contract, runtime and engines read it, and it imports none of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vitron_rt import __version__

# Bump when a reader of the previous version would misread a new manifest.
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
ENGINES_DIR = "engines"

# Tensor element types, by their numpy names (the runtime feeds numpy arrays).
DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool")
# How an error tensor is reduced before it is compared with a tolerance.
STATISTICS: tuple[str, ...] = ("max", "median")

_HASH_CHUNK = 8 << 20  # 8 MiB: large enough to hash GB files at disk speed, small in memory


class BundleError(Exception):
    """A bundle that cannot be used as it is: wrong schema, missing or altered file, bad field."""


# --------------------------------------------------------------------------- files


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB weight files never sit in memory."""
    h = hashlib.sha256()
    buf = bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


@dataclass(frozen=True)
class FileRef:
    """One file of the bundle. `path` is relative to the bundle folder, POSIX separators;
    `size` is checked before the (slow) hash, so a truncated copy is caught at once."""

    path: str
    sha256: str
    size: int

    @classmethod
    def of(cls, root: str | os.PathLike, relpath: str | os.PathLike) -> "FileRef":
        """Hash and measure `root/relpath` (as the exporter does when it writes the file)."""
        rel = PurePosixPath(Path(relpath).as_posix())
        full = Path(root) / rel
        return cls(path=str(rel), sha256=sha256_file(full), size=full.stat().st_size)


# --------------------------------------------------------------------------- tensors


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: its name, dtype, and shape with dynamic dims named,
    e.g. `("batch", "sequence", 64)`. Dims with the same name are the same size."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """Axis index -> dim name, for the dims that are not fixed."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def concrete(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        """The shape with each named dim replaced by its size in `dims`."""
        try:
            return tuple(dims[d] if isinstance(d, str) else d for d in self.shape)
        except KeyError as e:
            raise BundleError(f"tensor {self.name!r}: no size given for dim {e.args[0]!r}") from None


@dataclass(frozen=True)
class DimRange:
    """TensorRT optimization-profile range of one named dim: 0 <= min <= opt <= max
    (0 is a real size: the empty KV cache of a first prefill)."""

    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class Profile:
    """One TensorRT optimization profile: a range for every dynamic input dim, by name.
    A component may have several (e.g. an LLM's prefill and decode profiles)."""

    name: str
    dims: dict[str, DimRange]

    def shapes(self, tensor: TensorSpec) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes of one input under this profile."""
        missing = [d for d in tensor.dynamic_axes.values() if d not in self.dims]
        if missing:
            raise BundleError(f"profile {self.name!r} has no range for dim {missing[0]!r} of {tensor.name!r}")
        lo = tensor.concrete({n: r.min for n, r in self.dims.items()})
        opt = tensor.concrete({n: r.opt for n, r in self.dims.items()})
        hi = tensor.concrete({n: r.max for n, r in self.dims.items()})
        return lo, opt, hi

    def contains(self, dims: Mapping[str, int]) -> bool:
        """Whether every dim of `dims` that this profile ranges over lies in its range."""
        return all(r.min <= dims[n] <= r.max for n, r in self.dims.items() if n in dims)


@dataclass(frozen=True)
class Tolerance:
    """How closely an exported output must match the PyTorch reference (Polygraphy's rule):
    it passes when `statistic(|a - b|) <= atol` or `statistic(|a - b| / |b|) <= rtol`.
    `max` suits masks and features; `median` suits fp16 logits, where a few outliers are
    expected. `argmax` also requires the argmax over the last axis to agree exactly
    (greedy tokens). `reason` says why a tolerance is looser than the default."""

    atol: float
    rtol: float
    statistic: str = "max"
    argmax: bool = False
    reason: str = ""


# --------------------------------------------------------------------------- components


@dataclass(frozen=True)
class VariantEntry:
    """An extra file for a component beside its standard-opset main file, e.g. kind
    "ort-optimized" (ONNX Runtime fused ops, loadable by ORT only)."""

    kind: str
    file: FileRef
    external_data: tuple[FileRef, ...] = ()
    reason: str = ""
    # Precision of its weights: "fp32", or a quantised one ("int4", "int8") that a
    # runtime serves only when asked for it.
    precision: str = "fp32"
    # Variant-specific facts: a quantised decoder's scheme, the variant whose I/O
    # contract it shares ("base"), the tolerances its check holds it to.
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ComponentEntry:
    """One exported component: its ONNX file and everything a runner needs to feed it."""

    file: FileRef
    external_data: tuple[FileRef, ...] = ()
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    # "dynamo" or "torchscript", and why (the fallback is only taken for a recorded reason).
    exporter: str
    exporter_reason: str
    precision: str = "fp32"
    profiles: tuple[Profile, ...] = ()
    # Per output; `check` compares with exactly these.
    tolerances: dict[str, Tolerance] = field(default_factory=dict)
    variants: tuple[VariantEntry, ...] = ()
    # Component-specific constants the runtime needs (a VAE's scaling factor, a mask size).
    attributes: dict[str, Any] = field(default_factory=dict)

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name, "input")

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name, "output")

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def variant(self, kind: str) -> VariantEntry:
        for v in self.variants:
            if v.kind == kind:
                return v
        have = ", ".join(v.kind for v in self.variants) or "none"
        raise BundleError(f"no variant {kind!r}; this component has: {have}")

    def files(self) -> Iterator[FileRef]:
        """Every file of this component: main, its external data, each variant's files."""
        yield self.file
        yield from self.external_data
        for v in self.variants:
            yield v.file
            yield from v.external_data


def _by_name(tensors: tuple[TensorSpec, ...], name: str, what: str) -> TensorSpec:
    for t in tensors:
        if t.name == name:
            return t
    raise BundleError(f"no {what} named {name!r}; {what}s: {', '.join(t.name for t in tensors)}")


# --------------------------------------------------------------------------- model-level sections


@dataclass(frozen=True)
class Producer:
    """What wrote the bundle: vitron-rt's version and the tools that mattered (torch, onnx)."""

    name: str = "vitron-rt"
    version: str = __version__
    tools: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    """Where the weights came from: a preset (seeded random weights) and/or a checkpoint,
    plus the full component config, so `check` can rebuild the PyTorch reference."""

    preset: str | None = None
    checkpoint: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class TokenizerInfo:
    """The tokenizer file, the chat template (None: prompts are raw text), and the
    special tokens the runtime looks up by role, with their ids."""

    file: FileRef
    chat_template: FileRef | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    image_token: str = "<image>"
    region_token: str = "<region>"
    signal_tokens: tuple[str, ...] = ()
    # Every special token named above -> its id in `file`.
    special_token_ids: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class LlmInfo:
    """The decoder's KV-cache contract and the names of its role tensors.

    KV names are printf patterns over the layer index (onnxruntime-genai style); the cache
    layout is (batch, num_kv_heads, past_sequence, head_dim) per layer and per K/V."""

    component: str = "llm_decoder"
    embed_component: str = "embed_tokens"
    vocab_size: int
    hidden_size: int
    max_position_embeddings: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    kv_dtype: str = "float32"
    past_key: str = "past_key_values.%d.key"
    past_value: str = "past_key_values.%d.value"
    present_key: str = "present.%d.key"
    present_value: str = "present.%d.value"
    input_ids: str = "input_ids"  # embed_tokens' input
    inputs_embeds: str = "inputs_embeds"  # embed_tokens' output and llm_decoder's input
    attention_mask: str = "attention_mask"
    position_ids: str = "position_ids"
    logits: str = "logits"
    hidden_states: str = "hidden_states"  # last layer, read at the signal tokens
    # Positions the decoder's "ort-gqa" variant serves (its RoPE tables; the longest
    # shared KV buffer it takes). None: the bundle has no such variant (older bundles).
    kv_buffer_length: int | None = None

    def past_names(self) -> list[str]:
        """Every past-KV input name, layer by layer: key, value, key, value, ..."""
        return [p % i for i in range(self.num_layers) for p in (self.past_key, self.past_value)]

    def present_names(self) -> list[str]:
        """Every present-KV output name, in the same order as `past_names`."""
        return [p % i for i in range(self.num_layers) for p in (self.present_key, self.present_value)]


@dataclass(frozen=True)
class ImagePreprocess:
    """How one image encoder wants its pixels: square side, then (x / 255 - mean) / std."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class SignalInfo:
    """K signal tokens per module, and each module's projector component."""

    num_tokens: int
    projectors: dict[str, str] = field(default_factory=dict)  # module -> component name


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """Everything in `manifest.json`. Field order here is the key order in the file."""

    schema_version: int = SCHEMA_VERSION
    producer: Producer = field(default_factory=Producer)
    source: Source = field(default_factory=Source)
    tokenizer: TokenizerInfo | None = None
    llm: LlmInfo | None = None
    signal: SignalInfo | None = None
    # Encoder component name -> its image preprocessing.
    preprocess: dict[str, ImagePreprocess] = field(default_factory=dict)
    video_frames: int | None = None  # frames sampled uniformly from a video
    # In data-flow order (the order they were added).
    components: dict[str, ComponentEntry] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _to_json(self)

    def to_json(self) -> str:
        """Stable, human-readable JSON: dataclass field order, two-space indent, short
        lists and objects of plain values on one line (shapes, ranges), no NaN."""
        return _dumps(self.to_dict()) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_NAME) -> "Manifest":
        """Parse and check a manifest dict; a wrong schema version is refused first, since
        the rest of a foreign version's fields cannot be trusted to mean the same."""
        if not isinstance(data, dict):
            raise BundleError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if "schema_version" not in data:
            raise BundleError(f"{where}: no schema_version; not a vitron-rt manifest")
        version = data["schema_version"]
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"{where}: schema version {version!r}, but this vitron-rt ({__version__}) reads "
                f"version {SCHEMA_VERSION}; re-export the bundle with this vitron-rt"
            )
        manifest = _from_json(cls, data, where)
        manifest.check(where)
        return manifest

    def files(self) -> Iterator[FileRef]:
        """Every file the manifest names, each once."""
        seen: set[str] = set()
        refs: list[FileRef] = []
        if self.tokenizer is not None:
            refs.append(self.tokenizer.file)
            if self.tokenizer.chat_template is not None:
                refs.append(self.tokenizer.chat_template)
        for entry in self.components.values():
            refs.extend(entry.files())
        for ref in refs:
            if ref.path not in seen:
                seen.add(ref.path)
                yield ref

    def check(self, where: str = MANIFEST_NAME) -> None:
        """Cross-field consistency: every name one section gives another must exist there."""
        for ref in self.files():
            _check_relpath(ref.path, where)
        for name, entry in self.components.items():
            _check_component(name, entry, f"{where}: component {name!r}")
        for enc in self.preprocess:
            self._need_component(enc, f"{where}: preprocess")
        if self.signal is not None:
            for module, comp in self.signal.projectors.items():
                self._need_component(comp, f"{where}: signal projector of {module!r}")
        if self.tokenizer is not None:
            t = self.tokenizer
            named = [t.bos_token, t.eos_token, t.image_token, t.region_token, *t.signal_tokens]
            for tok in named:
                if tok is not None and tok not in t.special_token_ids:
                    raise BundleError(f"{where}: tokenizer: special token {tok!r} has no id in special_token_ids")
            if self.signal is not None and len(t.signal_tokens) != self.signal.num_tokens:
                raise BundleError(
                    f"{where}: tokenizer lists {len(t.signal_tokens)} signal tokens, signal.num_tokens is "
                    f"{self.signal.num_tokens}"
                )
        if self.llm is not None:
            self._check_llm(self.llm, where)

    def _need_component(self, name: str, what: str) -> ComponentEntry:
        if name not in self.components:
            raise BundleError(f"{what} names component {name!r}, which the bundle does not have")
        return self.components[name]

    def _check_llm(self, llm: LlmInfo, where: str) -> None:
        for attr in ("past_key", "past_value", "present_key", "present_value"):
            pattern = getattr(llm, attr)
            if pattern.count("%d") != 1 or pattern.count("%") != 1:
                raise BundleError(f"{where}: llm.{attr} {pattern!r} must hold exactly one %d (the layer index)")
        dec = self._need_component(llm.component, f"{where}: llm")
        want_in = [llm.inputs_embeds, llm.attention_mask, llm.position_ids, *llm.past_names()]
        want_out = [llm.logits, llm.hidden_states, *llm.present_names()]
        for names, have, what in ((want_in, dec.input_names, "input"), (want_out, dec.output_names, "output")):
            missing = [n for n in names if n not in have]
            if missing:
                raise BundleError(f"{where}: llm names {what} {missing[0]!r}, which {llm.component!r} does not have")
        emb = self._need_component(llm.embed_component, f"{where}: llm.embed_component")
        if llm.input_ids not in emb.input_names or llm.inputs_embeds not in emb.output_names:
            raise BundleError(
                f"{where}: {llm.embed_component!r} must map input {llm.input_ids!r} to output {llm.inputs_embeds!r}"
            )


def _check_relpath(path: str, where: str) -> None:
    """A manifest path must stay inside the bundle: relative, POSIX, no `..`."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or "\\" in path or ".." in p.parts or path.startswith("~"):
        raise BundleError(f"{where}: file path {path!r} must be relative to the bundle, without '..'")


def _check_component(name: str, entry: ComponentEntry, where: str) -> None:
    for group, tensors in (("input", entry.inputs), ("output", entry.outputs)):
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise BundleError(f"{where}: duplicate {group} names in {names}")
        for t in tensors:
            if t.dtype not in DTYPES:
                raise BundleError(f"{where}: {group} {t.name!r} has dtype {t.dtype!r}; known: {', '.join(DTYPES)}")
    input_dims = {d for t in entry.inputs for d in t.dynamic_axes.values()}
    for prof in entry.profiles:
        for dim, r in prof.dims.items():
            if not 0 <= r.min <= r.opt <= r.max:
                raise BundleError(f"{where}: profile {prof.name!r} dim {dim!r} needs 0 <= min <= opt <= max, got {r}")
        missing = sorted(input_dims - set(prof.dims))
        if missing:
            raise BundleError(f"{where}: profile {prof.name!r} has no range for input dim {missing[0]!r}")
    for out, tol in entry.tolerances.items():
        if out not in entry.output_names:
            raise BundleError(f"{where}: tolerance for {out!r}, which is not an output")
        if tol.statistic not in STATISTICS:
            raise BundleError(f"{where}: tolerance statistic {tol.statistic!r}; known: {', '.join(STATISTICS)}")


# --------------------------------------------------------------------------- JSON <-> dataclasses


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


_INLINE_WIDTH = 100  # a list/object of plain values this short stays on one line


def _dumps(value: Any, level: int = 0) -> str:
    if isinstance(value, (dict, list)):
        items = value.values() if isinstance(value, dict) else value
        if not any(isinstance(v, (dict, list)) for v in items):
            flat = json.dumps(value, allow_nan=False, ensure_ascii=False)
            if len(flat) <= _INLINE_WIDTH:
                return flat
        pad, inner = "  " * level, "  " * (level + 1)
        if isinstance(value, dict):
            body = [
                f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {_dumps(v, level + 1)}" for k, v in value.items()
            ]
            return "{\n" + ",\n".join(body) + f"\n{pad}}}"
        return "[\n" + ",\n".join(f"{inner}{_dumps(v, level + 1)}" for v in value) + f"\n{pad}]"
    return json.dumps(value, allow_nan=False, ensure_ascii=False)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _from_json(tp: Any, value: Any, where: str) -> Any:
    """Build `tp` from parsed JSON, strictly: unknown or missing keys and wrong types are
    errors naming the field's path, e.g. `manifest.json: components.unet.opset`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors: list[BundleError] = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _from_json(opt, value, where)
            except BundleError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
        raise BundleError(f"{where}: expected {names}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise BundleError(f"{where}: expected an object, got {type(value).__name__}")
        hints = _hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise BundleError(f"{where}: unknown field {unknown[0]!r}")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = _from_json(hints[name], value[name], f"{where}.{name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise BundleError(f"{where}: missing field {name!r}")
        return tp(**kwargs)
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise BundleError(f"{where}: expected an object, got {type(value).__name__}")
        return {k: _from_json(val_tp, v, f"{where}.{k}") for k, v in value.items()}
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise BundleError(f"{where}: expected a list, got {type(value).__name__}")
        item_tp = typing.get_args(tp)[0]
        items = [_from_json(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise BundleError(f"{where}: expected a number, got {value!r}")
    if tp in (int, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise BundleError(f"{where}: expected {tp.__name__}, got {value!r}")
    raise BundleError(f"{where}: cannot read type {tp}")  # a schema bug, not a bad file


# --------------------------------------------------------------------------- read / write


def write_manifest(manifest: Manifest, folder: str | os.PathLike) -> Path:
    """Check `manifest` and write it as `folder/manifest.json` (via a temporary file and a
    rename, so a reader never sees half a manifest). Returns the path."""
    manifest.check()
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    tmp = folder / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: its folder and manifest. Paths it hands out are absolute."""

    root: Path
    manifest: Manifest

    def path(self, ref: FileRef | str) -> Path:
        return self.root / (ref.path if isinstance(ref, FileRef) else ref)

    def component(self, name: str) -> ComponentEntry:
        try:
            return self.manifest.components[name]
        except KeyError:
            have = ", ".join(self.manifest.components) or "none"
            raise BundleError(f"{self.root}: bundle has no component {name!r}; it has: {have}") from None

    def component_path(self, name: str, variant: str | None = None) -> Path:
        """The ONNX file of a component, or of one of its variants by kind."""
        entry = self.component(name)
        return self.path(entry.file if variant is None else entry.variant(variant).file)

    @property
    def engines_dir(self) -> Path:
        return self.root / ENGINES_DIR

    def verify(self, hashes: bool = True) -> None:
        """Every named file exists with its recorded size and (when `hashes`) sha256."""
        for ref in self.manifest.files():
            full = self.path(ref)
            if not full.is_file():
                raise BundleError(f"{self.root}: missing file {ref.path}")
            size = full.stat().st_size
            if size != ref.size:
                raise BundleError(f"{self.root}: {ref.path} is {size} bytes, the manifest says {ref.size}")
            if hashes and sha256_file(full) != ref.sha256:
                raise BundleError(
                    f"{self.root}: {ref.path} does not match its sha256 in the manifest (altered or corrupt file)"
                )


def load_bundle(path: str | os.PathLike, verify: bool = True) -> Bundle:
    """Read and check a bundle folder. Sizes are always checked; `verify=False` skips
    hashing (seconds per GB) for callers that verified this folder already."""
    root = Path(path)
    manifest_path = root / MANIFEST_NAME
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle folder")
    if not manifest_path.is_file():
        raise BundleError(f"{root}: not a bundle (no {MANIFEST_NAME})")
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_path}: not valid JSON ({e})") from None
    bundle = Bundle(root=root, manifest=Manifest.from_dict(data, where=str(manifest_path)))
    bundle.verify(hashes=verify)
    return bundle
