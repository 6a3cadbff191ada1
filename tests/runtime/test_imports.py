"""Serving needs no torch: the runtime, the bundle contract, the engines and the CLI's
entry point import without it (DESIGN.md, "Who may import whom")."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module", ["vitron_rt", "vitron_rt.runtime", "vitron_rt.engines", "vitron_rt.cli", "vitron_rt.models.config"]
)
def test_module_imports_without_torch(module):
    code = (
        "import sys, importlib; importlib.import_module(%r); "
        "heavy = sorted(m for m in ('torch', 'transformers', 'diffusers', 'onnxscript') if m in sys.modules); "
        "print(','.join(heavy))" % module
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing {module} pulled in {out}"
