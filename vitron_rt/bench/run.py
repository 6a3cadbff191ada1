"""`vitron-rt bench B`: every measurement the bundle allows, its peers beside it, in one run.

Order of work (each section is skipped, with a note, when the bundle or the machine
cannot do it):

  machine      read bandwidth and fp32 GEMM rate (stats.machine_limits), versions
  llm          vitron-rt's decoder files (standard graph, ort-gqa, a quantised variant),
               PyTorch eager and onnxruntime-genai (fp32, int4) on the 47-token prompt,
               round-robin so drift hits every engine alike; the floor; step against context
  quality      a quantised variant's token agreement and perplexity (bench/quality.py)
  image_ttft   image question: vision encoder + projector + prefill against eager; with
               --realistic and a real LLM, also composed at ViT-B/16 size (pipelines)
  tasks        every task's stages through the session
  components   each compute-bound component against eager (bench/components.py)
  video        segment_video fps against length, against an eager loop
  memory       peak RSS while serving, in a fresh process (bench/memory.py)
  targets      the issue's targets, each met or missed with the measured figure
"""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitron_rt.bench import llm as llm_bench
from vitron_rt.bench.stats import machine_limits

GOALS = {
    "fp32_vs_genai": 1.3,
    "pct_of_floor": 80.0,
    "quant_vs_genai_int4": 1.0,
    "image_ttft_speedup": 2.0,
    "component_speedup": 2.0,
    "video_speedup": 2.0,
    "context_ratio": 1.5,
    "rss_ratio": 1.3,
}
# The floor and the memory ratio say something only about weights that live in DRAM and
# dominate the process: below this size a decode step reads cache, not memory, and the
# interpreter alone (~56 MiB) outweighs the weights.
MIN_WEIGHT_MIB_FOR_FLOOR = 64.0
# The compute-bound components bench/components.py times against eager.
_COMPUTE_BOUND = {"vision_encoder", "seg_image_encoder", "seg_mask_decoder", "unet"}


@dataclass
class BenchOptions:
    threads: int = 2
    repeats: int = 5
    new_tokens: int = llm_bench.NEW_TOKENS
    peers: bool = True  # PyTorch eager and onnxruntime-genai
    realistic: bool = False  # components at a realistic size too (exports once, cached)
    video_lengths: tuple[int, ...] = (16, 32, 64)
    contexts: tuple[int, ...] = llm_bench.CONTEXTS
    cache: Path | None = None
    sections: tuple[str, ...] = ("llm", "quality", "image_ttft", "tasks", "components", "video", "memory")


@dataclass
class Progress:
    """What the run reports as it goes: `step(text)` before each section."""

    step: Callable[[str], None] = lambda text: None
    notes: list[str] = field(default_factory=list)


def run_bench(bundle: str | Path, opts: BenchOptions, progress: Progress | None = None) -> dict[str, Any]:
    from vitron_rt.bundle import load_bundle

    progress = progress or Progress()
    bundle = Path(bundle)
    load_bundle(bundle)  # a clear BundleError before anything is timed
    result: dict[str, Any] = {"bundle": str(bundle), "options": _options_dict(opts)}
    progress.step("machine limits")
    result["machine"] = _machine(opts.threads)
    read_gb_s = result["machine"]["limits"]["read_gb_s"]

    reference = None
    if opts.peers:
        progress.step("PyTorch reference")
        reference = _reference(bundle, progress)

    from vitron_rt.runtime.session import Session

    with Session(bundle, threads=opts.threads) as session, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "llm" in opts.sections:
            progress.step("LLM: vitron-rt and peers")
            result["llm"] = _llm_section(bundle, session, reference, opts, read_gb_s, progress)
        if "quality" in opts.sections and _quant_kinds(session):
            progress.step("quantised decoder quality")
            result["quality"] = _quality_section(bundle, opts, progress)
        from vitron_rt.bench import pipelines

        comps = set(session.manifest.components)
        if "image_ttft" in opts.sections and {"vision_encoder", "mm_projector"} <= comps and reference is not None:
            progress.step("image question TTFT")
            result["image_ttft"] = pipelines.image_ttft(session, reference, pipelines.sample_image(), opts.repeats)
        if "tasks" in opts.sections and pipelines.available_tasks(session):
            progress.step("tasks, stage by stage")
            stages = pipelines.bench_tasks(session, pipelines.sample_image(), opts.repeats, work)
            result["tasks"] = {t: {s: v.to_dict() for s, v in st.items()} for t, st in stages.items()}
        if "components" in opts.sections and reference is not None and _COMPUTE_BOUND & comps:
            progress.step("components against eager")
            result["components"] = _components_section(bundle, opts, progress, result["machine"]["limits"]["gemm_gflop_s"])
        if "image_ttft" in opts.sections and opts.realistic and reference is not None and _real_llm(session):
            progress.step("image question TTFT at a realistic size (ViT-B/16 + this LLM)")
            result["image_ttft_realistic"] = _realistic_ttft(session, reference, result, opts, progress)
        if "video" in opts.sections and {"seg_image_encoder", "seg_mask_decoder"} <= comps:
            progress.step("segment_video against length")
            clips = pipelines.write_clips(pipelines.sample_video(), opts.video_lengths, work)
            result["video"] = pipelines.video_fps(session, reference, clips, work)
    if "memory" in opts.sections:
        progress.step("memory while serving (fresh process)")
        from vitron_rt.bench.memory import measure_in_child

        result["memory"] = measure_in_child(bundle, opts.threads)
    result["targets"] = targets(result)
    result["notes"] = progress.notes
    return result


def _options_dict(opts: BenchOptions) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.__dict__.items()}


def _machine(threads: int) -> dict[str, Any]:
    import onnxruntime

    versions: dict[str, str | None] = {"onnxruntime": onnxruntime.__version__}
    for mod in ("torch", "transformers", "onnxruntime_genai"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "limits": machine_limits(threads).to_dict(),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _reference(bundle: Path, progress: Progress) -> Any:
    from vitron_rt.bundle import load_bundle

    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401

        from vitron_rt.models.source import SourceError, from_source
    except ImportError as e:
        progress.notes.append(f"no PyTorch peer: {e} (install the export extra)")
        return None
    from vitron_rt.logs import quiet_libraries

    quiet_libraries()
    try:
        return from_source(load_bundle(bundle, verify=False).manifest.source)
    except (SourceError, OSError, ValueError) as e:
        progress.notes.append(f"no PyTorch peer: {e}")
        return None


def _quant_kinds(session: Any) -> dict[str, str]:
    """precision -> kind of the bundle's quantised decoder variants."""
    llm = session.manifest.llm
    return {v.precision: v.kind for v in session.bundle.component(llm.component).variants if v.precision != "fp32"}


def _llm_section(
    bundle: Path, session: Any, reference: Any, opts: BenchOptions, read_gb_s: float, progress: Progress
) -> dict[str, Any]:
    from vitron_rt.runtime.session import Session

    ids = llm_bench.prompt_ids(session.tokenizer)
    n = opts.new_tokens
    llm = session.manifest.llm
    engines: list[tuple[str, Callable[[], Any], int | None]] = []  # name, run, weight bytes
    owned: list[Any] = []

    main_bytes = llm_bench.matrix_weight_bytes(session.bundle.component_path(llm.component))
    standard = Session(bundle, threads=opts.threads, shared_kv=False)
    owned.append(standard)
    engines.append(("vitron-rt fp32 (standard graph)", lambda: llm_bench.run_generation(standard.generator, ids, n), main_bytes))
    if session.generator.shared_kv:
        gqa_bytes = llm_bench.matrix_weight_bytes(session.bundle.component_path(llm.component, "ort-gqa"))
        engines.append(("vitron-rt fp32 (ort-gqa)", lambda: llm_bench.run_generation(session.generator, ids, n), gqa_bytes))
    for precision, kind in _quant_kinds(session).items():
        qs = Session(bundle, threads=opts.threads, quant=precision)
        owned.append(qs)
        q_bytes = llm_bench.matrix_weight_bytes(session.bundle.component_path(llm.component, kind))
        engines.append((f"vitron-rt {precision} ({kind})", lambda qs=qs: llm_bench.run_generation(qs.generator, ids, n), q_bytes))
    eager_name = None
    if reference is not None and "llm_decoder" in reference.components:
        from vitron_rt.bench.peers import EagerLlm

        eager = EagerLlm(reference.components["llm_decoder"], opts.threads)
        eager_name = "PyTorch eager fp32"
        engines.append((eager_name, lambda: eager.generate(ids, n), main_bytes))
    errors: list[dict[str, Any]] = []
    if opts.peers:
        engines += _genai_engines(session, ids, opts, progress, errors)

    stats = {name: llm_bench.GenerationStats(name) for name, _, _ in engines}
    for name, fn, _ in engines:  # warm-up
        fn()
    for _ in range(opts.repeats):
        for name, fn, _ in engines:
            stats[name].samples.append(fn())

    rows = []
    eager_tokens = stats[eager_name].tokens if eager_name else None
    for name, _, weight_bytes in engines:
        row = stats[name].to_dict()
        if weight_bytes:
            floor = llm_bench.floor_ms(weight_bytes, read_gb_s)
            row["weight_mib"] = round(weight_bytes / (1 << 20), 1)
            row["floor_ms"] = round(floor, 2)
            row["pct_of_floor"] = round(100.0 * floor / row["decode_step"]["median_ms"], 1)
        if eager_tokens is not None and name != eager_name:
            agree = _agreement(stats[name].tokens, eager_tokens)
            row["tokens_vs_eager"] = "identical" if agree == len(eager_tokens) else f"first {agree} of {len(eager_tokens)}"
        rows.append(row)
    rows += errors
    context = {}
    if opts.contexts:
        progress.step("LLM: decode step against context")
        context["vitron-rt (standard graph)"] = llm_bench.decode_vs_context(standard.generator, opts.contexts)
        if session.generator.shared_kv:
            context["vitron-rt (ort-gqa)"] = llm_bench.decode_vs_context(session.generator, opts.contexts)
    for s in owned:
        s.close()
    by_name = {r["name"]: r for r in rows if "decode_tok_s" in r}
    return {
        "prompt_tokens": len(ids),
        "new_tokens": n,
        "prompt": llm_bench.PROMPT,
        "engines": rows,
        "ratios": _ratios(by_name, eager_name),
        "context": {name: {str(c): t.to_dict() for c, t in pts.items()} for name, pts in context.items()},
    }


def _genai_engines(session: Any, ids: list[int], opts: BenchOptions, progress: Progress, errors: list) -> list:
    from vitron_rt.bench import peers

    why = peers.genai_available()
    source = session.manifest.source
    checkpoint = (source.config.get("load") or {}).get("llm") or source.checkpoint
    if why is None and not checkpoint:
        why = "the bundle is a preset (random weights): onnxruntime-genai's builder needs a checkpoint"
    if why:
        progress.notes.append(f"no onnxruntime-genai peer: {why}")
        return []
    cache = opts.cache or peers.DEFAULT_CACHE
    engines = []
    try:
        hf = peers.hf_folder_for(checkpoint, cache)
    except (peers.PeerUnavailable, OSError, ValueError) as e:
        progress.notes.append(f"no onnxruntime-genai peer: {e}")
        return []
    for precision in ("fp32", "int4"):
        name = f"onnxruntime-genai {precision}"
        try:
            progress.step(f"onnxruntime-genai: building {precision} (cached after the first run)")
            model_dir = peers.build_genai(hf, precision, cache)
            peer = peers.GenaiLlm(model_dir, opts.threads)
            weight = sum(llm_bench.matrix_weight_bytes(p) for p in model_dir.glob("*.onnx"))
            engines.append((name, lambda peer=peer: peer.generate(ids, opts.new_tokens), weight))
        except Exception as e:  # a peer that fails is reported, never fatal to the bench
            errors.append({"name": name, "error": str(e).splitlines()[0][:200]})
    return engines


def _agreement(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _ratios(by_name: dict[str, dict], eager: str | None) -> dict[str, float]:
    """Decode tok/s ratios the targets read: ours against each peer."""
    out: dict[str, float] = {}
    ours = [n for n in by_name if n.startswith("vitron-rt")]
    fp32 = [n for n in ours if "fp32" in n]
    best_fp32 = max(fp32, key=lambda n: by_name[n]["decode_tok_s"], default=None)
    quant = [n for n in ours if "int4" in n or "int8" in n]
    for peer in ("onnxruntime-genai fp32", eager):
        if best_fp32 and peer and peer in by_name:
            out[f"{best_fp32} / {peer}"] = by_name[best_fp32]["decode_tok_s"] / by_name[peer]["decode_tok_s"]
    for q in quant:
        if "onnxruntime-genai int4" in by_name:
            out[f"{q} / onnxruntime-genai int4"] = by_name[q]["decode_tok_s"] / by_name["onnxruntime-genai int4"]["decode_tok_s"]
    return out


def _quality_section(bundle: Path, opts: BenchOptions, progress: Progress) -> dict[str, Any] | None:
    try:
        from vitron_rt.bench import quality
    except ImportError as e:
        progress.notes.append(f"quantised-decoder quality not measured: {e}")
        return None
    return quality.measure(bundle, threads=opts.threads)


def _components_section(
    bundle: Path, opts: BenchOptions, progress: Progress, gemm_gflop_s: float
) -> list[dict[str, Any]] | None:
    try:
        from vitron_rt.bench import components
    except ImportError as e:
        progress.notes.append(f"components not measured: {e}")
        return None
    sizes = ("tiny", "realistic") if opts.realistic else ("tiny",)
    return components.bench_components(
        bundle, sizes=sizes, threads=opts.threads, cache_dir=None if opts.cache is None else opts.cache / "components",
        gemm_gflop_s=gemm_gflop_s, log=progress.step,
    )  # fmt: skip


def _real_llm(session: Any) -> bool:
    """The bundle's decoder is big enough to stand for a real one (SmolLM2, not tiny)."""
    path = session.bundle.component_path(session.manifest.llm.component)
    return llm_bench.matrix_weight_bytes(path) / (1 << 20) >= MIN_WEIGHT_MIB_FOR_FLOOR


def _realistic_ttft(session: Any, reference: Any, result: dict, opts: BenchOptions, progress: Progress) -> dict | None:
    """pipelines.image_ttft_realistic, with the realistic ViT-B/16 row from the components
    section (timed here when that section did not run it)."""
    from vitron_rt.bench import pipelines

    rows = [r for r in result.get("components") or [] if r["component"] == "vision_encoder" and r["size"] == "realistic"]
    if not rows:
        try:
            from vitron_rt.bench import components
        except ImportError as e:
            progress.notes.append(f"realistic image TTFT not measured: {e}")
            return None
        rows = components.bench_components(
            None, sizes=("realistic",), components=("vision_encoder",), threads=opts.threads,
            cache_dir=None if opts.cache is None else opts.cache / "components",
            gemm_gflop_s=result["machine"]["limits"]["gemm_gflop_s"], log=progress.step,
        )  # fmt: skip
    return pipelines.image_ttft_realistic(session, reference, pipelines.sample_image(), rows[0], opts.repeats)


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets that this run measured, each with its figure and verdict."""
    out: list[dict[str, Any]] = []

    def add(target: str, measured: float, goal: str, met: bool) -> None:
        out.append({"target": target, "measured": round(measured, 3), "goal": goal, "met": bool(met)})

    llm = result.get("llm") or {}
    rows = {r["name"]: r for r in llm.get("engines", []) if "decode_tok_s" in r}
    for key, ratio in (llm.get("ratios") or {}).items():
        if key.endswith("/ onnxruntime-genai fp32"):
            add(f"fp32 decode: {key}", ratio, f">= {GOALS['fp32_vs_genai']}x", ratio >= GOALS["fp32_vs_genai"])
        elif key.endswith("/ onnxruntime-genai int4"):
            add(f"quantised decode: {key}", ratio, f">= {GOALS['quant_vs_genai_int4']}x", ratio >= GOALS["quant_vs_genai_int4"])
    fp32 = [
        r
        for n, r in rows.items()
        if n.startswith("vitron-rt") and "fp32" in n and r.get("weight_mib", 0) >= MIN_WEIGHT_MIB_FOR_FLOOR
    ]
    if fp32:
        best = max(fp32, key=lambda r: r["decode_tok_s"])
        add(f"fp32 decode as % of the floor ({best['name']})", best["pct_of_floor"], f">= {GOALS['pct_of_floor']}%",
            best["pct_of_floor"] >= GOALS["pct_of_floor"])  # fmt: skip
        if "tokens_vs_eager" in best:
            add("fp32 tokens identical to PyTorch (1 = yes)", float(best["tokens_vs_eager"] == "identical"), "1", best["tokens_vs_eager"] == "identical")
    for name, pts in (llm.get("context") or {}).items():
        lo, hi = pts.get("100"), pts.get("2000")
        if lo and hi:
            r = hi["median_ms"] / lo["median_ms"]
            add(f"decode step at 2000 / at 100 ({name})", r, f"<= {GOALS['context_ratio']}x", r <= GOALS["context_ratio"])
    ttft = result.get("image_ttft")
    if ttft and ttft.get("speedup"):
        add("image question TTFT: eager / vitron-rt", ttft["speedup"], f">= {GOALS['image_ttft_speedup']}x", ttft["speedup"] >= GOALS["image_ttft_speedup"])
    real = result.get("image_ttft_realistic")
    if real and real.get("speedup"):
        add(f"image question TTFT, ViT-B/16 + this LLM ({real['positions']} positions): eager / vitron-rt",
            real["speedup"], f">= {GOALS['image_ttft_speedup']}x", real["speedup"] >= GOALS["image_ttft_speedup"])  # fmt: skip
    for c in result.get("components") or []:
        if c.get("speedup") is not None:
            add(f"{c['component']} ({c['size']}): eager / vitron-rt", c["speedup"], f">= {GOALS['component_speedup']}x",
                c["speedup"] >= GOALS["component_speedup"])  # fmt: skip
    for v in result.get("video") or []:
        if v.get("speedup") is not None:
            add(f"segment_video {v['frames']} frames: vitron-rt / eager fps", v["speedup"], f">= {GOALS['video_speedup']}x",
                v["speedup"] >= GOALS["video_speedup"])  # fmt: skip
    mem = result.get("memory") or {}
    if mem.get("ratio") and mem.get("weights_mib", 0) >= MIN_WEIGHT_MIB_FOR_FLOOR:
        add("peak RSS while serving / weights", mem["ratio"], f"<= {GOALS['rss_ratio']}x", mem["ratio"] <= GOALS["rss_ratio"])
    return out
