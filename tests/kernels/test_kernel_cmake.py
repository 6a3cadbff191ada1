"""The top-level CMakeLists.txt builds the kernels with nvcc, for sm_87, sm_89 and sm_90,
and its manifest makes the loader take the build (skipped without cmake and nvcc).

One configure and one build into a temporary folder: 15-21 s on a shared 2-core machine
(measured: configure 6-6.5 s, build 9-15 s), well under a minute, so it is not marked slow."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from vitron_rt.kernels import loader
from vitron_rt.kernels.signatures import MODULE_OF, MODULES

ROOT = Path(__file__).resolve().parents[2]
FATBIN_MAGIC = 0xBA55ED50


def _entries(fatbin: bytes) -> list[tuple[str, int]]:
    """(kind, architecture) of each entry of a fatbinary: kind "elf" (SASS) or "ptx"."""
    magic, _, header, size = struct.unpack_from("<IHHQ", fatbin, 0)
    assert magic == FATBIN_MAGIC
    out, off = [], header
    while off < header + size:
        kind, _, entry_header, payload = struct.unpack_from("<HHIQ", fatbin, off)
        arch = struct.unpack_from("<I", fatbin, off + 28)[0]
        out.append(({1: "ptx", 2: "elf"}.get(kind, str(kind)), arch))
        off += entry_header + payload
    return out


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    cmake, nvcc = shutil.which("cmake"), shutil.which("nvcc")
    if cmake is None or nvcc is None:
        pytest.skip("cmake and nvcc are needed to build the kernels")
    out = tmp_path_factory.mktemp("cmake-build")
    start = time.perf_counter()
    subprocess.run([cmake, "-S", str(ROOT), "-B", str(out)], check=True, capture_output=True, text=True)
    configured = time.perf_counter()
    subprocess.run([cmake, "--build", str(out)], check=True, capture_output=True, text=True)
    built = time.perf_counter()
    print(f"cmake configure {configured - start:.1f} s, build {built - configured:.1f} s")
    return out / "kernels"


def test_cmake_builds_every_module_for_every_architecture(build):
    manifest = json.loads((build / loader.MANIFEST_NAME).read_text())
    assert manifest["source_hash"] == loader.source_hash()
    assert manifest["architectures"] == ["87", "89", "90"] and manifest["modules"] == list(MODULES)
    for m in MODULES:
        data = (build / f"{m}.fatbin").read_bytes()
        assert sorted(_entries(data)) == sorted([(k, a) for a in (87, 89, 90) for k in ("elf", "ptx")])
        for kernel, owner in MODULE_OF.items():
            if owner == m:
                assert kernel.encode() in data


def test_the_loader_takes_the_build(build, monkeypatch):
    monkeypatch.setenv(loader.ENV_DIR, str(build))
    for m in MODULES:
        assert loader.find_artifact(m) == build / f"{m}.fatbin"
        image = next(loader.images(m, (9, 0), 13000))
        assert image.kind == "fatbin" and image.origin == str(build / f"{m}.fatbin")
