"""Peak memory while serving, measured in a fresh process so the bench's own peers
(torch, onnxruntime-genai) do not count.

    python -m vitron_rt.bench.memory BUNDLE [--threads N] [--quant KIND]

The child imports the runtime, notes its RSS (the interpreter, numpy, ONNX Runtime: the
floor no bundle changes), opens a Session, answers the bench prompt (64 greedy tokens),
runs every image task the bundle has once, and prints one JSON object:

  base_rss_mib       RSS after imports, before the session
  peak_rss_mib       the process's peak RSS at the end
  weights_mib        bytes of the bundle files it served from (`Session.loaded_files`: every
                     activated runner's ONNX file and external data, the mapped embedding table)
  ratio              peak_rss_mib / weights_mib (the target: <= 1.3)
  ratio_above_base   (peak - base) / weights: what serving costs on top of the interpreter
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def measure_serving(bundle: str, threads: int, quant: str | None = None) -> dict[str, Any]:
    from vitron_rt.bench.llm import prompt_ids, run_generation
    from vitron_rt.bench.pipelines import available_tasks, sample_image
    from vitron_rt.bench.stats import current_rss_mib, peak_rss_mib
    from vitron_rt.runtime.sampling import SamplingParams
    from vitron_rt.runtime.session import Session

    base = current_rss_mib()
    kwargs = {"quant": quant} if quant else {}
    with Session(bundle, threads=threads, **kwargs) as session:
        run_generation(session.generator, prompt_ids(session.tokenizer))
        tasks = available_tasks(session)
        if tasks:
            image = sample_image()
            with tempfile.TemporaryDirectory() as tmp:
                for name, task, prompt in tasks:
                    session.run(prompt, image=image, task=task, out_dir=Path(tmp) / name,
                                sampling=SamplingParams(greedy=True, max_new_tokens=16))  # fmt: skip
        weights = sum(session.loaded_files().values()) / (1 << 20)
        peak = peak_rss_mib()
    return {
        "base_rss_mib": round(base, 1),
        "peak_rss_mib": round(peak, 1),
        "weights_mib": round(weights, 1),
        "ratio": round(peak / weights, 3) if weights else None,
        "ratio_above_base": round((peak - base) / weights, 3) if weights else None,
        "quant": quant,
    }


def measure_in_child(bundle: str | Path, threads: int, quant: str | None = None, timeout_s: float = 600) -> dict[str, Any]:
    """`measure_serving` in a fresh interpreter; {"error": ...} when it fails."""
    cmd = [sys.executable, "-m", "vitron_rt.bench.memory", str(bundle), "--threads", str(threads)]
    if quant:
        cmd += ["--quant", quant]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"memory probe failed: {tail[0]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vitron_rt.bench.memory")
    p.add_argument("bundle")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quant", default=None)
    args = p.parse_args(argv)
    from vitron_rt.logs import quiet_libraries

    quiet_libraries()
    print(json.dumps(measure_serving(args.bundle, args.threads, args.quant)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
