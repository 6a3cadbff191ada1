"""Trained weights that ship inside the package, in a compact storage, with checksums.

    vitron_rt/models/trained/
      <name>.safetensors       the weights, each tensor in one storage scheme (below)
      <name>.tokenizer.json    the tokenizer the weights were trained with
      <name>.json              the record: sha256 of both files, the config the weights
                               fit, the scheme table, and how they were trained

Schemes (per tensor, named in the safetensors metadata, so the loader needs no table):

    int8     matrices and conv kernels: symmetric int8 per output channel (row), one
             fp32 scale per row (absmax / 127). The weights are ~99.5 % matrices, so
             this is ~1 byte a parameter, a quarter of fp32.
    int4g32  symmetric 4 bits in groups of 32 along the row (fp16 scale per group, two
             values a byte): ~0.56 byte a parameter, for parts that tolerate it.
    fp32     vectors (norms, biases, scales): few, and kept exact.

Loading dequantizes to fp32: the reference modules (and everything exported from them)
run in fp32 on the stored values. The record's sha256 is checked before anything is
read, so a truncated copy, a Git LFS pointer or a file swapped without its record is a
clear `ShippedWeightsError`, never a model with wrong weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vitron_rt.models.tokenizer import CHAT_TEMPLATES, PreparedTokenizer, add_vitron_tokens

TRAINED_DIR = Path(__file__).parent / "trained"
FORMAT = "vitron-rt-shipped/1"
SCHEMES = ("int8", "int4g32", "fp32")
GROUP = 32  # int4g32's group length
_META_KEY = "vitron_rt.storage"


class ShippedWeightsError(ValueError):
    """Shipped weights that are missing, corrupt, or made for another config."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- schemes


def _rows(w: torch.Tensor) -> torch.Tensor:
    """(O, ...) -> (O, I): a conv kernel's output channel is its row."""
    return w.detach().float().reshape(w.shape[0], -1)


def quantize(name: str, w: torch.Tensor, scheme: str) -> dict[str, torch.Tensor]:
    """The stored tensors of one weight under `scheme` (keys derived from `name`)."""
    if scheme == "fp32" or w.dim() < 2:
        return {name: w.detach().float().contiguous()}
    rows = _rows(w)  # (O, I)
    if scheme == "int8":
        scale = rows.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127.0  # (O, 1)
        q = torch.round(rows / scale).clamp(-127, 127).to(torch.int8)
        return {name: q.contiguous(), f"{name}::scale": scale[:, 0].contiguous()}
    if scheme == "int4g32":
        o, i = rows.shape
        pad = (-i) % GROUP
        groups = torch.nn.functional.pad(rows, (0, pad)).reshape(o, -1, GROUP)  # (O, G, 32)
        scale = (groups.abs().amax(2, keepdim=True).clamp_min(1e-12) / 7.0).half()  # (O, G, 1)
        q = torch.round(groups / scale.float()).clamp(-7, 7).to(torch.int16) + 8  # 1..15
        q = q.reshape(o, -1)  # (O, I + pad), even
        packed = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)  # (O, (I + pad) / 2)
        return {name: packed.contiguous(), f"{name}::scale": scale[..., 0].contiguous()}
    raise ValueError(f"unknown storage scheme {scheme!r}; known: {', '.join(SCHEMES)}")


def dequantize(name: str, stored: Mapping[str, torch.Tensor], scheme: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The fp32 tensor of `shape` that `quantize(name, ..., scheme)` stored."""
    data = stored[name]
    if scheme == "fp32":
        return data.float().reshape(shape)
    scale = stored[f"{name}::scale"].float()
    if scheme == "int8":
        return (data.float() * scale[:, None]).reshape(shape)
    if scheme == "int4g32":
        o = shape[0]
        i = 1
        for s in shape[1:]:
            i *= s
        q = torch.stack([data & 0xF, data >> 4], dim=-1).reshape(o, -1).to(torch.int16) - 8  # (O, I + pad)
        w = q.float().reshape(o, -1, GROUP) * scale[..., None]  # (O, G, 32)
        return w.reshape(o, -1)[:, :i].reshape(shape)
    raise ShippedWeightsError(f"{name}: unknown storage scheme {scheme!r}")


def unique_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each parameter and persistent buffer once, under its first name (shared weights,
    e.g. the tied embedding or the halves of one SAM, are stored once)."""
    seen: set[int] = set()
    out = {}
    for name, p in model.state_dict(keep_vars=True).items():
        if id(p) not in seen:
            seen.add(id(p))
            out[name] = p.detach()
    return out


def scheme_of(name: str, tensor: torch.Tensor, plan: Mapping[str, str]) -> str:
    """The scheme `plan` gives `name`: the longest matching name prefix, "int8" for
    other matrices; vectors are always fp32."""
    if tensor.dim() < 2 or not tensor.is_floating_point():
        return "fp32"
    matches = [p for p in plan if name.startswith(p)]
    return plan[max(matches, key=len)] if matches else "int8"


def pack_state(model: nn.Module, plan: Mapping[str, str] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors to store and the storage table {name: {scheme, shape}} of `model`."""
    tensors: dict[str, torch.Tensor] = {}
    table = {}
    for name, w in unique_parameters(model).items():
        scheme = scheme_of(name, w, plan or {})
        tensors.update(quantize(name, w, scheme))
        table[name] = {"scheme": scheme, "shape": list(w.shape)}
    return tensors, table


def unpack_state(tensors: Mapping[str, torch.Tensor], table: Mapping[str, dict]) -> dict[str, torch.Tensor]:
    """fp32 state dict from `pack_state`'s tensors and table."""
    return {name: dequantize(name, tensors, e["scheme"], tuple(e["shape"])) for name, e in table.items()}


def stored_copy(model: nn.Module, plan: Mapping[str, str] | None = None) -> dict[str, torch.Tensor]:
    """What a model's weights become after a round trip through the storage (to measure
    its effect without writing a file)."""
    return unpack_state(*pack_state(model, plan))


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class ShippedFiles:
    """The three files of one shipped model in `folder`."""

    folder: Path
    name: str

    @property
    def weights(self) -> Path:
        return self.folder / f"{self.name}.safetensors"

    @property
    def tokenizer(self) -> Path:
        return self.folder / f"{self.name}.tokenizer.json"

    @property
    def record(self) -> Path:
        return self.folder / f"{self.name}.json"


def write_shipped(
    model: nn.Module,
    tokenizer_json: str,
    files: ShippedFiles,
    config: dict,
    tokenizer_info: dict,
    plan: Mapping[str, str] | None = None,
    training: dict | None = None,
) -> dict:
    """Write the weights, the tokenizer and the record (with both checksums); the record."""
    from safetensors.torch import save

    files.folder.mkdir(parents=True, exist_ok=True)
    tensors, table = pack_state(model, plan)
    blob = save(tensors, metadata={"format": FORMAT, _META_KEY: json.dumps(table)})
    files.weights.write_bytes(_sorted_metadata(blob))
    files.tokenizer.write_text(tokenizer_json, encoding="utf-8")
    record = {
        "format": FORMAT,
        "weights": {"file": files.weights.name, "sha256": sha256_file(files.weights), "plan": dict(plan or {})},
        "tokenizer": {"file": files.tokenizer.name, "sha256": sha256_file(files.tokenizer), **tokenizer_info},
        "config": config,
        "training": training or {},
    }
    files.record.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def read_record(files: ShippedFiles) -> dict:
    """The record, after checking that both files are there and match their sha256."""
    if not files.record.is_file() or not files.weights.is_file():
        raise ShippedWeightsError(f"no trained weights for {files.name!r} in {files.folder}")
    try:
        record = json.loads(files.record.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ShippedWeightsError(f"{files.record}: not JSON ({e})") from None
    if record.get("format") != FORMAT:
        raise ShippedWeightsError(f"{files.record}: format {record.get('format')!r}, this vitron-rt reads {FORMAT!r}")
    for part, path in (("weights", files.weights), ("tokenizer", files.tokenizer)):
        if not path.is_file():
            raise ShippedWeightsError(f"{path}: missing (the record {files.record.name} names it)")
        want, got = record[part]["sha256"], sha256_file(path)
        if got != want:
            raise ShippedWeightsError(
                f"{path}: sha256 {got} does not match {want} recorded in {files.record.name} "
                "(a corrupt or partial copy, a Git LFS pointer, or a file replaced without its record)"
            )
    return record


def _sorted_metadata(blob: bytes) -> bytes:
    """A safetensors file with its header's `__metadata__` keys in sorted order. safetensors
    writes them in the order of a Rust HashMap, which changes from process to process, so
    the same weights gave files (and sha256 records) that differ in two header bytes
    (measured: two runs of one seed, identical tensors, two checksums). The header keeps
    its length (padded with spaces, as the format allows), so the data offsets hold."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) > n:
        raise AssertionError(f"the re-ordered safetensors header grew from {n} to {len(text)} bytes")
    return blob[:8] + text.ljust(n, b" ") + blob[8 + n :]


def read_weights(files: ShippedFiles) -> dict[str, torch.Tensor]:
    """fp32 state dict of checked shipped weights (call `read_record` first)."""
    from safetensors import safe_open

    with safe_open(str(files.weights), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT or _META_KEY not in meta:
            raise ShippedWeightsError(f"{files.weights}: not a {FORMAT} file")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return unpack_state(tensors, json.loads(meta[_META_KEY]))


def read_tokenizer(files: ShippedFiles, record: Mapping, num_signal_tokens: int) -> PreparedTokenizer:
    """The shipped tokenizer with Vitron's special tokens, its chat template (a name of
    `CHAT_TEMPLATES`, or the template text) and its BOS / EOS, as the record names them."""
    from tokenizers import Tokenizer

    info = record["tokenizer"]
    template = info.get("chat_template")
    return add_vitron_tokens(
        Tokenizer.from_file(str(files.tokenizer)),
        num_signal_tokens,
        chat_template=CHAT_TEMPLATES.get(template, template),
        bos_token=info.get("bos_token"),
        eos_token=info.get("eos_token"),
    )
