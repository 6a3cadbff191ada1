"""Device code for the kernels: the CMake-built fatbinary when it matches the sources,
else the same sources compiled at first use with NVRTC (cuda.core) and cached on disk.

    images(module, capability)  yields, in order of preference:
      1. <dir>/<module>.fatbin from a CMake build whose vitron_kernels.json names the
         current source hash (dirs: $VITRON_KERNELS_DIR, vitron_rt/kernels/prebuilt/,
         <checkout>/build/kernels/); the driver picks the cubin for the GPU or JITs the PTX
      2. a cubin NVRTC built for exactly this GPU (PTX for the newest architecture NVRTC
         knows, when the GPU is newer still), from the disk cache when it has one

The caller (the CUDA backend) tries them in turn: a fatbinary built without this GPU's
architecture fails to load and the NVRTC image is used instead. Every artifact is keyed by
what produced it (STYLE.md, 8): the build manifest by the hash of the sources, a cached
NVRTC image by that hash, the module, the target architecture, the NVRTC version, the
driver version and the compile options; a stale one is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from vitron_rt.kernels.errors import NVRTC_HINT, KernelUnavailable
from vitron_rt.kernels.signatures import MODULES

CSRC = Path(__file__).parent / "csrc"
MANIFEST_NAME = "vitron_kernels.json"
ENV_DIR = "VITRON_KERNELS_DIR"
ENV_CACHE = "VITRON_KERNELS_CACHE"
# NVRTC options, part of the cache key. No fast math: the kernels' float arithmetic
# must round as the numpy references do.
NVRTC_STD = "c++17"


@dataclass(frozen=True)
class Image:
    """Loadable device code for one module: `kind` is fatbin, cubin or ptx; `origin` says
    where it came from, for messages."""

    module: str
    data: bytes
    kind: str
    origin: str


def source_files() -> list[Path]:
    """Every file that goes into the device code (csrc/*.cu, *.cuh), sorted by name."""
    return sorted((p for p in CSRC.iterdir() if p.suffix in (".cu", ".cuh")), key=lambda p: p.name)


@lru_cache(maxsize=1)
def source_hash() -> str:
    """sha256 over "<name>:<sha256 of file>\\n" for each source file in name order; the
    CMake build computes the same string (CMakeLists.txt) and writes it to its manifest."""
    lines = "".join(f"{p.name}:{hashlib.sha256(p.read_bytes()).hexdigest()}\n" for p in source_files())
    return hashlib.sha256(lines.encode()).hexdigest()


def artifact_dirs() -> list[Path]:
    """Where CMake-built kernels are looked for, in order."""
    dirs = []
    if os.environ.get(ENV_DIR):
        dirs.append(Path(os.environ[ENV_DIR]))
    dirs.append(Path(__file__).parent / "prebuilt")  # `cmake --install build`
    dirs.append(Path(__file__).resolve().parents[2] / "build" / "kernels")  # a source checkout's build
    return dirs


def read_manifest(folder: Path) -> dict | None:
    """The build manifest in `folder`, or None when there is none or it is unreadable."""
    try:
        return json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def find_artifact(module: str) -> Path | None:
    """The fatbinary of `module` from the first build whose sources are these."""
    want = source_hash()
    for folder in artifact_dirs():
        manifest = read_manifest(folder)
        if manifest is None or manifest.get("source_hash") != want:
            continue
        path = folder / f"{module}.fatbin"
        if path.is_file():
            return path
    return None


def cache_dir() -> Path:
    """Where NVRTC images are kept: $VITRON_KERNELS_CACHE, else the user cache folder."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vitron-rt" / "kernels"


def _nvrtc():
    """(cuda.core's Program, ProgramOptions, nvrtc bindings), or KernelUnavailable."""
    try:
        from cuda.bindings import nvrtc
        from cuda.core import Program, ProgramOptions
    except ImportError as e:
        raise KernelUnavailable(f"cannot compile the kernels: cuda.core is not installed ({e}); {NVRTC_HINT}") from None
    try:
        err, major, minor = nvrtc.nvrtcVersion()
        _, archs = nvrtc.nvrtcGetSupportedArchs()
    except Exception as e:  # cuda.pathfinder raises its own error when libnvrtc is absent
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise KernelUnavailable(f"cannot compile the kernels: NVRTC is not loadable ({first}); {NVRTC_HINT}") from None
    return Program, ProgramOptions, (int(major), int(minor)), [int(a) for a in archs]


def nvrtc_target(capability: tuple[int, int], supported: list[int]) -> tuple[str, str]:
    """(NVRTC arch option, image kind) for a GPU: a cubin for exactly its architecture
    when NVRTC knows it, else PTX for the newest one NVRTC knows (the driver JITs it)."""
    arch = capability[0] * 10 + capability[1]
    if arch in supported:
        return f"sm_{arch}", "cubin"
    older = [a for a in supported if a < arch]
    if not older:
        raise KernelUnavailable(
            f"this NVRTC compiles for sm_{min(supported)}..sm_{max(supported)}, not for the GPU's sm_{arch}"
        )
    return f"compute_{max(older)}", "ptx"


def compile_nvrtc(module: str, capability: tuple[int, int], driver_version: int) -> Image:
    """`module`'s image for this GPU from NVRTC, through the disk cache."""
    if module not in MODULES:
        raise ValueError(f"unknown kernel module {module!r}; known: {', '.join(MODULES)}")
    program, options_cls, version, supported = _nvrtc()
    target, kind = nvrtc_target(capability, supported)
    key = hashlib.sha256(
        json.dumps(
            {
                "source_hash": source_hash(),
                "module": module,
                "target": target,
                "nvrtc": list(version),
                "driver": driver_version,
                "std": NVRTC_STD,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:20]
    path = cache_dir() / f"{module}-{target}-{key}.{kind}"
    origin = f"NVRTC {version[0]}.{version[1]} {target} ({path})"
    try:
        return Image(module, path.read_bytes(), kind, origin + ", cached")
    except OSError:
        pass
    source = (CSRC / f"{module}.cu").read_text()
    options = options_cls(name=f"{module}.cu", arch=target, include_path=str(CSRC), std=NVRTC_STD)
    try:
        code = program(source, "c++", options).compile(kind).code
    except Exception as e:  # NVRTC's compile log arrives as the exception text
        raise KernelUnavailable(f"NVRTC failed to compile {module}.cu for {target}: {' '.join(str(e).split())[:500]}")
    data = bytes(code)
    _write_atomic(path, data)
    return Image(module, data, kind, origin)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and a rename; a cache that cannot be written is only
    a cache (the image is still returned)."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def images(module: str, capability: tuple[int, int], driver_version: int) -> Iterator[Image]:
    """Candidate images of `module` for this GPU, best first (see the module docstring).
    NVRTC runs only if the caller asks for the next one."""
    artifact = find_artifact(module)
    if artifact is not None:
        yield Image(module, artifact.read_bytes(), "fatbin", str(artifact))
    yield compile_nvrtc(module, capability, driver_version)
