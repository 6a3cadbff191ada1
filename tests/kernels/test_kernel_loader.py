"""Finding and building device code: the source hash, the CMake artifact lookup, the
NVRTC target choice and compile cache, and the kernels' C parameter lists."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from vitron_rt.kernels import loader
from vitron_rt.kernels.errors import KernelUnavailable
from vitron_rt.kernels.signatures import C_TYPES, MODULE_OF, MODULES, SIGNATURES, KernelArgs


def test_source_hash_covers_every_source(tmp_path, monkeypatch):
    names = [p.name for p in loader.source_files()]
    assert names == sorted(names) and "common.cuh" in names
    assert {f"{m}.cu" for m in MODULES} <= set(names)
    copy = tmp_path / "csrc"
    shutil.copytree(loader.CSRC, copy)
    monkeypatch.setattr(loader, "CSRC", copy)
    loader.source_hash.cache_clear()
    try:
        before = loader.source_hash()
        (copy / "common.cuh").write_text((copy / "common.cuh").read_text() + "\n// edit\n")
        loader.source_hash.cache_clear()
        assert loader.source_hash() != before
    finally:
        loader.source_hash.cache_clear()


def _fake_build(folder, source_hash):
    folder.mkdir(parents=True)
    for m in MODULES:
        (folder / f"{m}.fatbin").write_bytes(b"\x50\xed\x55\xba" + m.encode())
    (folder / loader.MANIFEST_NAME).write_text(json.dumps({"source_hash": source_hash}))


def test_artifacts_are_used_only_for_these_sources(tmp_path, monkeypatch):
    stale, fresh = tmp_path / "stale", tmp_path / "fresh"
    _fake_build(stale, "0" * 64)
    _fake_build(fresh, loader.source_hash())
    monkeypatch.setattr(loader, "artifact_dirs", lambda: [stale])
    assert loader.find_artifact("mask") is None
    monkeypatch.setattr(loader, "artifact_dirs", lambda: [stale, fresh])
    assert loader.find_artifact("mask") == fresh / "mask.fatbin"

    def no_nvrtc(*args):
        raise AssertionError("NVRTC must not run while the fatbinary is there")

    monkeypatch.setattr(loader, "compile_nvrtc", no_nvrtc)
    first = next(loader.images("sampling", (8, 9), 13000))
    assert first.kind == "fatbin" and first.data.endswith(b"sampling")


def test_artifact_dirs_honour_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(loader.ENV_DIR, str(tmp_path))
    assert loader.artifact_dirs()[0] == tmp_path
    monkeypatch.setenv(loader.ENV_CACHE, str(tmp_path / "cache"))
    assert loader.cache_dir() == tmp_path / "cache"


def test_nvrtc_target():
    supported = [75, 80, 86, 87, 89, 90, 100, 120]
    assert loader.nvrtc_target((8, 9), supported) == ("sm_89", "cubin")
    assert loader.nvrtc_target((13, 0), supported) == ("compute_120", "ptx")  # newer than NVRTC: JIT
    assert loader.nvrtc_target((8, 8), supported) == ("compute_87", "ptx")
    with pytest.raises(KernelUnavailable, match="sm_70"):
        loader.nvrtc_target((7, 0), supported)


def _nvrtc_or_skip():
    try:
        loader._nvrtc()
    except KernelUnavailable as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("arch", [(8, 7), (8, 9), (9, 0)])
def test_nvrtc_compiles_every_module_and_caches_it(arch, tmp_path, monkeypatch):
    _nvrtc_or_skip()
    monkeypatch.setenv(loader.ENV_CACHE, str(tmp_path))
    for m in MODULES:
        image = loader.compile_nvrtc(m, arch, 13000)
        assert image.kind == "cubin" and image.data[:4] == b"\x7fELF" and "cached" not in image.origin
        for kernel, owner in MODULE_OF.items():
            if owner == m:
                assert kernel.encode() in image.data
    cached = loader.compile_nvrtc("mask", arch, 13000)
    assert "cached" in cached.origin
    assert len(list(tmp_path.iterdir())) == len(MODULES)
    assert "cached" not in loader.compile_nvrtc("mask", arch, 13010).origin  # another driver: another key


_DECL = re.compile(r"VK_KERNEL\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(([^)]*)\)", re.S)


def _c_type(decl: str) -> tuple[str, str]:
    decl = " ".join(decl.split())
    name = re.findall(r"\w+", decl)[-1]
    if "*" in decl:
        return name, "pointer"
    ctype = decl[: decl.rindex(name)].replace("const", "").strip()
    return name, ctype


def test_python_signatures_match_the_cuda_declarations():
    found = {}
    for m in MODULES:
        for kernel, params in _DECL.findall((loader.CSRC / f"{m}.cu").read_text()):
            found[kernel] = (m, tuple(_c_type(p) for p in params.split(",")))
    assert set(found) == set(SIGNATURES) == set(MODULE_OF)
    for kernel, (module, params) in found.items():
        assert MODULE_OF[kernel] == module
        assert params == SIGNATURES[kernel], kernel
        assert all(c in C_TYPES for _, c in params)


def test_kernel_args_pack_each_value_at_its_width():
    import ctypes

    values = {name: i + 1 for i, (name, _) in enumerate(SIGNATURES["vk_gather_rows"])}
    args = KernelArgs("vk_gather_rows", values)
    ptrs = (ctypes.c_void_p * len(values)).from_address(args.address)
    for (name, ctype), p in zip(SIGNATURES["vk_gather_rows"], ptrs):
        assert C_TYPES[ctype].from_address(p).value == values[name]
    with pytest.raises(TypeError, match="missing"):
        KernelArgs("vk_gather_rows", {"src": 0})
