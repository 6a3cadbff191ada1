"""Reading weight files and assigning them to modules, strictly.

A checkpoint whose keys do not match the module exactly is an error that lists the
missing, unexpected and mis-shaped keys: never a silent random initialisation.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked: bad path, bad file, or keys that do not match."""


def _show(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of one weight file: `.safetensors`, or a PyTorch `.bin`/`.pt` (weights only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if path.suffix in (".bin", ".pt", ".pth"):
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
            if not isinstance(sd, Mapping):
                raise CheckpointError(f"{path}: holds a {type(sd).__name__}, not a state dict")
            return dict(sd)
    except CheckpointError:
        raise
    except Exception as e:  # truncated / corrupt files surface as many library errors
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    raise CheckpointError(f"{path}: unsupported weight file type {path.suffix!r} (want .safetensors or .bin)")


def read_folder_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF-style folder: one file, or shards listed by a `*.index.json`."""
    folder = Path(folder)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            sd: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                sd.update(read_state_dict(folder / shard))
            return sd
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise CheckpointError(f"{folder}: no .safetensors or .bin weight files")
    sd = {}
    for f in files:
        sd.update(read_state_dict(f))
    return sd


def assign_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Load `state_dict` into `module`, or raise CheckpointError naming every mismatch.

    Tied parameters (e.g. a tied LM head) appear once in `state_dict`; keys that alias an
    already-named parameter are not required.
    """
    expected = {k: v for k, v in module.state_dict().items()}
    # Aliases of one tensor (tied weights) need only one of their names in the checkpoint.
    by_storage: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        by_storage.setdefault(id(p), []).append(name)
    optional = {n for names in by_storage.values() if len(names) > 1 for n in names}
    missing = [k for k in expected if k not in state_dict and k not in optional]
    missing += [
        names[0]
        for names in by_storage.values()
        if len(names) > 1 and not any(n in state_dict for n in names)
    ]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(expected[k].shape)}"
        for k in state_dict
        if k in expected and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_show(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {_show(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped {len(misshaped)}: {_show(misshaped)}")
    if problems:
        raise CheckpointError(f"{what}: keys do not match the model; " + "; ".join(problems))
    module.load_state_dict(dict(state_dict), strict=False, assign=False)
