"""The pipelines are runtime code: importing them pulls in no torch, no exporter, no
PyTorch reference models (DESIGN.md, "Who may import whom")."""

import subprocess
import sys


def test_pipelines_import_without_torch_models_or_export():
    code = (
        "import sys, vitron_rt.runtime.pipelines; "
        "bad = ('torch', 'transformers', 'diffusers', 'onnxscript', 'vitron_rt.models', 'vitron_rt.export'); "
        "print(','.join(sorted(m for m in bad if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing vitron_rt.runtime.pipelines pulled in {out}"
