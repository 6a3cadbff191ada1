"""Cache keys of built artifacts: an artifact is keyed by everything that produced it, so a
stale or foreign one is detected and rebuilt, never loaded (STYLE point 8).

A TensorRT engine depends on the ONNX file (its sha256), the precision, the optimization
profiles, the TensorRT version and the GPU's compute capability. The key goes into the
file name (so two builds never collide and a glance at engines/ tells them apart) and,
in full, into a JSON sidecar written after the plan (so a half-written plan has no
sidecar) and checked before the plan is deserialized:

    engines/llm_decoder.3f2a9c0d41b7e6aa.fp16.p-5c1d0e9a.trt10.3.0.sm89.plan
    engines/llm_decoder.3f2a9c0d41b7e6aa.fp16.p-5c1d0e9a.trt10.3.0.sm89.plan.json

An ONNX Runtime optimized model depends on the ONNX sha256, the optimization level, the
ONNX Runtime version and the execution providers (fused nodes are provider-specific):

    engines/ort/llm_decoder.3f2a9c0d41b7e6aa.all.ort1.32.0.cpu.onnx
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitron_rt import __version__
from vitron_rt.bundle import ComponentEntry, Profile, sha256_file
from vitron_rt.engines.errors import StaleEngineError

PLAN_SUFFIX = ".plan"
SIDECAR_SUFFIX = ".json"
ORT_CACHE_DIR = "ort"
TIMING_CACHE_NAME = "timing.cache"

_SHA_CHARS = 16  # in file names: 64 bits tell files apart; the sidecar holds the full hash


def profiles_digest(profiles: Iterable[Profile]) -> str:
    """A short hash of a profile set: names and every dim's (min, opt, max), in order.
    Changing any range changes the engine, so it changes the key."""
    canon = [{"name": p.name, "dims": {d: [r.min, r.opt, r.max] for d, r in sorted(p.dims.items())}} for p in profiles]
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:8]


def onnx_digest(entry: ComponentEntry) -> str:
    """The sha256 of a component's ONNX file; with external weights, a sha256 over every
    file's sha256, so new weights under an unchanged graph file still change the key."""
    if not entry.external_data:
        return entry.file.sha256
    parts = [f"{ref.path}:{ref.sha256}" for ref in (entry.file, *entry.external_data)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _version_tag(version: str) -> str:
    """'10.3.0.26' -> '10.3.0.26'; anything but digits, dots and letters is dropped."""
    return "".join(c for c in version if c.isalnum() or c == ".")


@dataclass(frozen=True)
class EngineKey:
    """Everything a TensorRT plan depends on."""

    component: str
    onnx_sha256: str
    precision: str
    profiles: str  # profiles_digest(...)
    tensorrt: str  # tensorrt.__version__
    compute_capability: str  # "8.9"

    @classmethod
    def for_component(
        cls, component: str, entry: ComponentEntry, precision: str, tensorrt: str, compute_capability: tuple[int, int]
    ) -> "EngineKey":
        """The key of `component`'s engine from its manifest entry (sha256 and profiles) and
        the build's precision, TensorRT version and GPU."""
        major, minor = compute_capability
        return cls(
            component=component,
            onnx_sha256=onnx_digest(entry),
            precision=precision,
            profiles=profiles_digest(entry.profiles),
            tensorrt=tensorrt,
            compute_capability=f"{major}.{minor}",
        )

    @property
    def file_name(self) -> str:
        sm = "sm" + self.compute_capability.replace(".", "")
        return (
            f"{self.component}.{self.onnx_sha256[:_SHA_CHARS]}.{self.precision}.p-{self.profiles}."
            f"trt{_version_tag(self.tensorrt)}.{sm}{PLAN_SUFFIX}"
        )

    def plan_path(self, engines_dir: str | os.PathLike) -> Path:
        return Path(engines_dir) / self.file_name

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def sidecar_path(plan: str | os.PathLike) -> Path:
    plan = Path(plan)
    return plan.with_name(plan.name + SIDECAR_SUFFIX)


def write_engine(
    engines_dir: str | os.PathLike, key: EngineKey, plan: bytes | memoryview, extra: dict | None = None
) -> Path:
    """Write the plan, then its sidecar, each through a temporary file and a rename: a
    crash leaves either nothing or a plan without a sidecar, which `verify_engine` refuses."""
    folder = Path(engines_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = key.plan_path(folder)
    data = bytes(plan)
    _atomic_write(path, data)
    sidecar = {
        "key": key.to_dict(),
        "plan": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        "producer": {"name": "vitron-rt", "version": __version__},
        **(extra or {}),
    }
    _atomic_write(sidecar_path(path), (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())
    return path


def verify_engine(path: str | os.PathLike, key: EngineKey, check_hash: bool = True) -> dict[str, Any]:
    """Refuse a plan that is missing, has no sidecar, was built from something else than
    `key`, or is not the file its sidecar describes (truncated, replaced). Returns the
    sidecar. Each refusal is one `StaleEngineError` line naming the plan and the reason."""
    path = Path(path)
    if not path.is_file():
        raise StaleEngineError(f"{path.name}: no such engine")
    side = sidecar_path(path)
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StaleEngineError(f"{path.name}: no sidecar {side.name} (an interrupted build)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise StaleEngineError(f"{path.name}: unreadable sidecar {side.name}") from None
    recorded = meta.get("key", {}) if isinstance(meta, dict) else {}
    for field, want in key.to_dict().items():
        got = recorded.get(field)
        if got != want:
            raise StaleEngineError(f"{path.name}: built for {field} {got!r}, this run needs {want!r}")
    plan = meta.get("plan", {})
    size = path.stat().st_size
    if plan.get("size") != size:
        raise StaleEngineError(f"{path.name}: {size} bytes, its sidecar says {plan.get('size')}")
    if check_hash and plan.get("sha256") != sha256_file(path):
        raise StaleEngineError(f"{path.name}: contents differ from the sha256 in its sidecar")
    return meta


def stale_engines(engines_dir: str | os.PathLike, key: EngineKey) -> list[Path]:
    """Other plans of the same component in `engines_dir`: older builds that `key` replaces
    (another ONNX file, precision, profile set, TensorRT or GPU)."""
    folder = Path(engines_dir)
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.glob(f"*{PLAN_SUFFIX}") if p.name != key.file_name and _component_of(p.name) == key.component
    )


def _component_of(file_name: str) -> str:
    """The component part of a plan file name: everything before the 16-hex-digit sha."""
    parts = file_name.split(".")
    for i, part in enumerate(parts):
        if len(part) == _SHA_CHARS and all(c in "0123456789abcdef" for c in part):
            return ".".join(parts[:i])
    return ""


# --------------------------------------------------------------------------- ONNX Runtime


def ort_cache_name(component: str, onnx_sha256: str, level: str, ort_version: str, providers: Iterable[str]) -> str:
    """File name of an ONNX Runtime optimized model (see the module docstring)."""
    eps = "-".join(p.removesuffix("ExecutionProvider").lower() for p in providers)
    return f"{component}.{onnx_sha256[:_SHA_CHARS]}.{level}.ort{_version_tag(ort_version)}.{eps}.onnx"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
