"""A bench result as Markdown tables and PNG plots.

  render_markdown(result) -> str        every section the run has, targets first
  write_plots(result, folder) -> paths  latency per stage, decode tok/s against context,
                                        video fps against length (matplotlib, Agg)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(result: dict[str, Any]) -> str:
    out: list[str] = []
    m = result["machine"]
    out.append(f"## vitron-rt bench: `{result['bundle']}`\n")
    out.append(
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['limits']['threads']} threads; "
        f"measured read bandwidth {m['limits']['read_gb_s']:.1f} GB/s ({m['limits']['read_probe']}), "
        f"fp32 GEMM {m['limits']['gemm_gflop_s']:.0f} GFLOP/s ({m['limits']['gemm_probe']}). "
        f"onnxruntime {m['versions'].get('onnxruntime')}, torch {m['versions'].get('torch')}, "
        f"onnxruntime-genai {m['versions'].get('onnxruntime_genai') or 'not installed'}.\n"
    )
    if result.get("targets"):
        out.append("### Targets\n")
        # Two decimals below 10: a ratio of 0.97 against a goal of 1.0 must not print as 1.0.
        rows = [
            [t["target"], f"{t['measured']:.2f}" if abs(t["measured"]) < 10 else f"{t['measured']:.1f}", t["goal"],
             "met" if t["met"] else "**missed**"]
            for t in result["targets"]
        ]  # fmt: skip
        out.append(_table(["target", "measured", "goal", ""], rows) + "\n")
    llm = result.get("llm")
    if llm:
        out.append(
            f"### LLM: {llm['prompt_tokens']}-token prompt, {llm['new_tokens']} greedy tokens\n\n"
            "decode tok/s = (tokens - 1) / time from the first token to the last; floor = matrix-weight bytes / "
            "measured read bandwidth; % of floor = floor / median step.\n"
        )
        rows = []
        for e in llm["engines"]:
            if "error" in e:
                rows.append([e["name"], "–", "–", "–", "–", "–", "–", e["error"]])
                continue
            rows.append([
                e["name"], e["ttft"]["median_ms"], e["decode_tok_s"], e["e2e_tok_s"], e.get("weight_mib"),
                e.get("floor_ms"), e.get("pct_of_floor"), e.get("tokens_vs_eager", ""),
            ])  # fmt: skip
        out.append(
            _table(
                ["engine", "TTFT ms", "decode tok/s", "e2e tok/s", "weights MiB", "floor ms", "% of floor", "tokens vs eager"],
                rows,
            )
            + "\n"
        )
        if llm.get("ratios"):
            out.append("Ratios (decode tok/s): " + ", ".join(f"{k} {v:.2f}x" for k, v in llm["ratios"].items()) + "\n")
        ctx = llm.get("context")
        if ctx:
            names = list(ctx)
            lengths = sorted({int(c) for n in names for c in ctx[n]})
            rows = [[c, *[ctx[n].get(str(c), {}).get("median_ms") for n in names]] for c in lengths]
            out.append("Decode step (median ms) against context length:\n\n" + _table(["context", *names], rows) + "\n")
    quality = result.get("quality")
    if quality:
        brief = {k: v for k, v in quality.items() if k != "decoders"}
        brief["decoders"] = {q: {k: v for k, v in d.items() if k != "per_prompt"} for q, d in quality.get("decoders", {}).items()}
        out.append(
            "### Quantised decoder quality (per-prompt rows in the JSON)\n\n```\n" + _json_block(brief) + "\n```\n"
        )
    ttft = result.get("image_ttft")
    if ttft:
        out.append(
            f"### Image question, time to first token ({ttft['prompt_tokens']} positions)\n\n"
            + _table(
                ["", "median ms", "p90 ms", "p99 ms"],
                [
                    ["vitron-rt", ttft["vitron_rt"]["median_ms"], ttft["vitron_rt"]["p90_ms"], ttft["vitron_rt"]["p99_ms"]],
                    ["PyTorch eager", ttft["eager"]["median_ms"], ttft["eager"]["p90_ms"], ttft["eager"]["p99_ms"]],
                ],
            )
            + f"\n\nSpeed-up {ttft['speedup']}x. {ttft['note']}.\n"
        )
    real = result.get("image_ttft_realistic")
    if real:
        pf = real["prefill"]
        out.append(
            f"### Image question at a realistic size: ViT-B/16 + this LLM ({real['positions']} positions)\n\n"
            + _table(
                ["stage", "vitron-rt ms", "PyTorch eager ms"],
                [
                    ["preprocess (both)", real["preprocess_ms"], real["preprocess_ms"]],
                    ["vision: " + real["vision"]["component"], real["vision"]["vitron_rt_ms"], real["vision"]["eager_ms"]],
                    ["projector (both, torch)", real["projector_ms"], real["projector_ms"]],
                    [f"prefill ({pf['decoder']})", pf["vitron_rt"]["median_ms"], pf["eager"]["median_ms"]],
                    ["total", real["vitron_rt_ms"], real["eager_ms"]],
                ],
            )
            + f"\n\nSpeed-up {real['speedup']}x. {real['note']}.\n"
        )
    tasks = result.get("tasks")
    if tasks:
        out.append("### Stages per task (ms)\n")
        for task, stages in tasks.items():
            rows = [[s, t["median_ms"], t["p90_ms"], t["p99_ms"]] for s, t in stages.items()]
            out.append(f"**{task}**\n\n" + _table(["stage", "median", "p90", "p99"], rows) + "\n")
    comps = result.get("components")
    if comps:
        out.append("### Components: vitron-rt (ONNX Runtime) against PyTorch eager, fp32\n")
        keys = [k for k in ("component", "size", "eager_ms", "ort_ms", "speedup", "gflop", "pct_of_gemm", "max_abs_err") if any(k in c for c in comps)]
        out.append(_table(keys, [[c.get(k) for k in keys] for c in comps]) + "\n")
    video = result.get("video")
    if video:
        out.append("### segment_video against a PyTorch eager loop\n")
        keys = ["frames", "vitron_rt_fps", "eager_fps", "speedup", "frame_latency_ms_p50", "eager_frame_ms_p50", "peak_frames_in_flight"]
        out.append(_table(keys, [[v.get(k) for k in keys] for v in video]) + "\n")
    mem = result.get("memory")
    if mem:
        out.append("### Memory while serving (fresh process)\n\n```\n" + _json_block(mem) + "\n```\n")
    if result.get("notes"):
        out.append("### Notes\n\n" + "\n".join(f"- {n}" for n in result["notes"]) + "\n")
    if result.get("plots"):
        out.append("### Plots\n\n" + "\n".join(f"![{Path(p).stem}]({Path(p).name})" for p in result["plots"]) + "\n")
    return "\n".join(out)


def _json_block(value: Any) -> str:
    import json

    return json.dumps(value, indent=2)


def write_plots(result: dict[str, Any], folder: Path) -> list[Path]:
    """The three plots the result has data for; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    tasks = result.get("tasks") or {}
    if tasks:
        fig, ax = plt.subplots(figsize=(9, 0.35 * sum(len(s) for s in tasks.values()) + 1.5))
        labels, values = [], []
        for task, stages in tasks.items():
            for stage, t in stages.items():
                if stage == "total":
                    continue
                labels.append(f"{task}: {stage}")
                values.append(t["median_ms"])
        ax.barh(range(len(values)), values)
        ax.set_yticks(range(len(values)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("median ms")
        ax.set_title("Latency per stage")
        fig.tight_layout()
        paths.append(_save(fig, folder / "latency_per_stage.png"))
    ctx = (result.get("llm") or {}).get("context") or {}
    if ctx:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, points in ctx.items():
            xs = sorted(int(c) for c in points)
            ax.plot(xs, [1e3 / points[str(x)]["median_ms"] for x in xs], marker="o", label=name)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("decode tok/s")
        ax.set_title("Decode rate against context")
        ax.legend()
        fig.tight_layout()
        paths.append(_save(fig, folder / "tok_s_vs_context.png"))
    video = result.get("video") or []
    if video:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [v["frames"] for v in video]
        ax.plot(xs, [v.get("vitron_rt_fps") for v in video], marker="o", label="vitron-rt")
        if any("eager_fps" in v for v in video):
            ax.plot(xs, [v.get("eager_fps") for v in video], marker="o", label="PyTorch eager loop")
        ax.set_xlabel("video length (frames)")
        ax.set_ylabel("fps")
        ax.set_title("segment_video throughput")
        ax.legend()
        fig.tight_layout()
        paths.append(_save(fig, folder / "fps_vs_video_length.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
