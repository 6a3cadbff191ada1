"""`vitron-rt check --engine` and `vitron-rt build` over the engines, and the GPU check
script on a machine without a GPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
from _bundles import bundle_copy_fixture, tiny_fixture  # noqa: F401  (fixtures)

from vitron_rt import cli
from vitron_rt.engines import OrtRunner
from vitron_rt.engines.deps import GPU_EXTRA
from vitron_rt.engines.errors import MissingDependencyError


def gpu_stack_here() -> bool:
    from vitron_rt.engines import deps

    try:
        deps.require_trt_stack()
        deps.require_polygraphy()
    except MissingDependencyError:
        return False
    return True


def test_check_with_ort_runs_through_the_engine_runner(tiny, monkeypatch, capsys):
    activated: list[tuple[str, bool]] = []
    original = OrtRunner._activate_impl

    def spy(self):
        activated.append((self.name, self.entry is not None))
        original(self)

    monkeypatch.setattr(OrtRunner, "_activate_impl", spy)
    before = sorted(tiny.root.rglob("*"))
    assert cli.main(["check", str(tiny.root), "--engine", "ort"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1].startswith("all ") and "checks passed" in out
    # Every component ran on an OrtRunner built from its manifest entry.
    assert {name for name, with_entry in activated if with_entry} == set(tiny.manifest.components)
    assert sorted(tiny.root.rglob("*")) == before  # check writes nothing into the bundle


@pytest.mark.parametrize(
    "argv", [["build", "--engine", "trt"], ["build", "--engine", "trt", "--fp16"], ["check", "--engine", "trt"]]
)
def test_trt_without_tensorrt_is_one_line_exit_2(tiny, monkeypatch, capsys, argv):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert cli.main([argv[0], str(tiny.root), *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert err == f"vitron-rt {argv[0]}: TensorRT is not installed: {GPU_EXTRA}\n"


def test_build_trt_here_exits_2_in_one_line(tiny):
    """The real command on this machine, in a subprocess: whatever piece is missing."""
    if gpu_stack_here():
        pytest.skip("this machine can build TensorRT engines")
    proc = subprocess.run(
        [sys.executable, "-m", "vitron_rt.cli", "build", str(tiny.root), "--engine", "trt"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vitron-rt build: ")
    assert "Traceback" not in proc.stderr


def test_build_precision_flags_need_trt(tiny, capsys):
    assert cli.main(["build", str(tiny.root), "--int8"]) == 2
    assert capsys.readouterr().err == "vitron-rt build: --int8 is a TensorRT precision; add --engine trt\n"


def test_build_ort_caches_every_components_optimized_model(bundle_copy, capsys):
    assert cli.main(["build", str(bundle_copy.root)]) == 0
    first = capsys.readouterr()
    n = len(bundle_copy.manifest.components)
    assert f"{n} ONNX Runtime optimized models in" in first.out
    assert len(list((bundle_copy.engines_dir / "ort").glob("*.onnx"))) == n
    assert cli.main(["build", str(bundle_copy.root), "--engine", "ort"]) == 0
    assert capsys.readouterr().err.count(" reused: ") == n


def test_build_of_a_missing_bundle_is_one_line(tmp_path, capsys):
    assert cli.main(["build", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vitron-rt build: ") and err.count("\n") == 1


def test_gpu_check_runs_and_says_what_it_skipped():
    proc = subprocess.run(
        [sys.executable, "-m", "vitron_rt.bench.gpu_check"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    assert "torch_matmul" in out and "cuda_roundtrip" in out and "failed" in out.splitlines()[-1]
    if not gpu_stack_here():
        rows = {
            line.split()[0]: line
            for line in out.splitlines()
            if line.split()[:1] in (["torch_matmul"], ["cuda_roundtrip"])
        }
        assert "skipped" in rows["cuda_roundtrip"] and "skipped" in rows["torch_matmul"]
        assert "no GPU" in rows["torch_matmul"] or "not installed" in rows["torch_matmul"]
        assert any(s in rows["cuda_roundtrip"] for s in ("no usable CUDA GPU", "cuda-python is not installed"))
