"""`vitron-rt bench`: the harness's arithmetic, one short run on the tiny bundle, the CLI,
and the onnxruntime-genai peer on a tiny random LLaMA. No timings are asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vitron_rt.bench import llm as llm_bench
from vitron_rt.bench.run import BenchOptions, Progress, run_bench, targets
from vitron_rt.bench.stats import Timing, measure


def test_percentiles_are_nearest_rank():
    t = Timing([float(v) for v in range(1, 21)])  # 1..20
    assert t.median == 10.5
    assert t.p90 == 18.0
    assert t.p99 == 20.0  # with 20 samples p99 is the largest
    assert Timing().to_dict()["n"] == 0


def test_measure_warms_up_and_repeats():
    calls = []
    t = measure(lambda: calls.append(1), warmup=2, repeat=5)
    assert len(calls) == 7 and t.n == 5


def test_generation_rates_follow_the_run_json_definition():
    s = llm_bench.GenerationSample(tokens=list(range(64)), ttft_ms=100.0, decode_ms=630.0)
    assert s.decode_tok_s == pytest.approx(63 / 0.63)
    assert s.e2e_tok_s == pytest.approx(64 / 0.73)


def test_matrix_weight_bytes_counts_matmul_weights_only(tmp_path):
    from onnx import TensorProto, helper, numpy_helper, save

    w = numpy_helper.from_array(np.zeros((8, 16), np.float32), "w")  # 512 bytes, a MatMul weight
    b = numpy_helper.from_array(np.zeros((16,), np.float32), "b")  # 64 bytes, an Add: not counted
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 16])],
        [w, b],
    )
    save(helper.make_model(graph), tmp_path / "m.onnx")
    assert llm_bench.matrix_weight_bytes(tmp_path / "m.onnx") == 512
    assert llm_bench.floor_ms(32_000_000, 32.0) == pytest.approx(1.0)


def _engine(name, tok_s, weight_mib, pct, tokens="identical"):
    return {"name": name, "decode_tok_s": tok_s, "weight_mib": weight_mib, "pct_of_floor": pct, "tokens_vs_eager": tokens}


def test_targets_judge_each_measured_figure():
    result = {
        "llm": {
            "engines": [_engine("vitron-rt fp32 (ort-gqa)", 46.0, 515.0, 81.0), _engine("vitron-rt int4", 80.0, 90.0, 50.0)],
            "ratios": {"vitron-rt fp32 (ort-gqa) / onnxruntime-genai fp32": 1.45, "vitron-rt int4 / onnxruntime-genai int4": 0.9},
            "context": {"vitron-rt (ort-gqa)": {"100": {"median_ms": 20.0}, "2000": {"median_ms": 32.0}}},
        },
        "memory": {"ratio": 1.2, "weights_mib": 600.0},
        "video": [{"frames": 16, "speedup": 1.5}],
    }
    verdicts = {t["target"]: t["met"] for t in targets(result)}
    assert verdicts["fp32 decode: vitron-rt fp32 (ort-gqa) / onnxruntime-genai fp32"] is True
    assert verdicts["quantised decode: vitron-rt int4 / onnxruntime-genai int4"] is False
    assert verdicts["fp32 decode as % of the floor (vitron-rt fp32 (ort-gqa))"] is True
    assert verdicts["decode step at 2000 / at 100 (vitron-rt (ort-gqa))"] is False  # 1.6x
    assert verdicts["peak RSS while serving / weights"] is True
    assert verdicts["segment_video 16 frames: vitron-rt / eager fps"] is False


def test_floor_and_memory_targets_skip_weights_that_fit_in_cache():
    result = {
        "llm": {"engines": [_engine("vitron-rt fp32 (standard graph)", 600.0, 0.3, 3.0)], "ratios": {}},
        "memory": {"ratio": 20.0, "weights_mib": 6.4},
    }
    names = [t["target"] for t in targets(result)]
    assert not any("floor" in n or "RSS" in n for n in names)


@pytest.fixture(scope="module")
def tiny_result(tiny_bundle):
    steps: list[str] = []
    opts = BenchOptions(repeats=1, new_tokens=8, video_lengths=(3, 5), contexts=(16, 32))
    result = run_bench(tiny_bundle, opts, Progress(step=steps.append))
    return result, steps


def test_tiny_bench_measures_every_section(tiny_result):
    result, steps = tiny_result
    assert steps[0] == "machine limits" and len(steps) >= 6
    limits = result["machine"]["limits"]
    assert limits["read_gb_s"] > 0 and limits["gemm_gflop_s"] > 0
    llm = result["llm"]
    names = [e["name"] for e in llm["engines"]]
    assert "PyTorch eager fp32" in names and any(n.startswith("vitron-rt") for n in names)
    for e in llm["engines"]:
        if e["name"].startswith("vitron-rt") and "fp32" in e["name"]:
            assert e["tokens_vs_eager"] == "identical", e  # fp32 greedy tokens match PyTorch exactly
            assert e["completion_tokens"] == 8
    assert set(next(iter(llm["context"].values()))) == {"16", "32"}
    assert set(result["tasks"]) == {"understand_image", "segment_image", "generate_image", "edit_image"}
    assert {"prefill", "decode", "seg_image_encoder", "seg_mask_decoder"} <= set(result["tasks"]["segment_image"])
    assert result["image_ttft"]["vitron_rt"]["median_ms"] > 0 and result["image_ttft"]["eager"]["median_ms"] > 0
    assert [v["frames"] for v in result["video"]] == [3, 5]
    assert all(v["vitron_rt_fps"] > 0 and v["eager_fps"] > 0 for v in result["video"])
    mem = result["memory"]
    assert mem["peak_rss_mib"] >= mem["base_rss_mib"] > 0 and mem["weights_mib"] > 0
    assert any("onnxruntime-genai" in n for n in result["notes"])  # a preset has no checkpoint for its builder
    assert all(isinstance(t["met"], bool) for t in result["targets"])


def test_report_renders_tables_and_plots(tiny_result, tmp_path):
    from vitron_rt.bench.report import render_markdown, write_plots

    result, _ = tiny_result
    plots = write_plots(result, tmp_path)
    assert {p.name for p in plots} == {"latency_per_stage.png", "tok_s_vs_context.png", "fps_vs_video_length.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    md = render_markdown(result | {"plots": [str(p) for p in plots]})
    for heading in ("### Targets", "### LLM", "### Stages per task", "### segment_video", "### Memory"):
        assert heading in md
    json.dumps(result)  # the --json file


def test_cli_with_json_only_is_quiet(tiny_bundle, tmp_path):
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "vitron_rt.cli", "bench", str(tiny_bundle), "--json", str(out), "--repeats", "1",
           "--max-new-tokens", "4", "--no-peers"] + [a for s in ("quality", "image_ttft", "tasks", "components", "video", "memory") for a in ("--skip", s)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    result = json.loads(out.read_text())
    assert result["llm"]["engines"][0]["completion_tokens"] == 4
    assert "tasks" not in result and "memory" not in result


def test_cli_bad_bundle_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "vitron_rt.cli", "bench", str(tmp_path / "nope"), "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_genai_peer_matches_eager_on_the_same_weights(tmp_path, llama_folder):
    """onnxruntime-genai's builder on a tiny random LLaMA folder and the eager peer on the
    same weights pick the same greedy tokens: the peers compare like with like."""
    pytest.importorskip("onnxruntime_genai")
    from transformers import LlamaForCausalLM

    from vitron_rt.bench.peers import EagerLlm, GenaiLlm, build_genai

    folder = llama_folder(tmp_path / "llama")
    model_dir = build_genai(folder, "fp32", cache=tmp_path / "cache")
    assert build_genai(folder, "fp32", cache=tmp_path / "cache") == model_dir  # cached

    class _Decoder:  # EagerLlm takes a models.llm.LlmDecoder; only its `.model` is used
        model = LlamaForCausalLM.from_pretrained(folder).eval()

    ids = [int(i) for i in np.random.default_rng(0).integers(3, 200, size=12)]
    ours = EagerLlm(_Decoder, threads=1).generate(ids, 10)
    theirs = GenaiLlm(model_dir, threads=1).generate(ids, 10)
    assert theirs.tokens == ours.tokens
    assert theirs.ttft_ms > 0 and theirs.decode_ms > 0


def test_bench_package_imports_no_torch_until_run():
    code = "import sys, vitron_rt.bench.run, vitron_rt.bench.report; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent)
    assert done.stdout.strip() == "False", done.stderr


def test_peak_rss_of_a_child_is_its_own():
    """Linux carries a process's pre-exec RSS high-water mark into getrusage's ru_maxrss,
    so a probe started by a large parent would report the parent's peak: the bench reads
    VmHWM instead. The parent here holds ~400 MiB; the child must report far less."""
    ballast = np.ones(400 * (1 << 20) // 8)  # ~400 MiB, touched
    code = "from vitron_rt.bench.stats import peak_rss_mib; print(peak_rss_mib())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(done.stdout) < 200, done.stdout
    assert ballast.sum() > 0


def test_realistic_ttft_composes_measured_stages(tiny_bundle):
    """The composed figure adds the same preprocess and projector to both sides, the given
    vision row's medians, and a prefill of the question + 196 image positions timed on
    both engines; the report renders it and the targets judge it."""
    from vitron_rt.bench.pipelines import image_ttft_realistic, sample_image
    from vitron_rt.bench.report import render_markdown
    from vitron_rt.models.source import from_preset
    from vitron_rt.runtime.session import Session

    vision_row = {"description": "ViT-B/16 (stand-in row)", "dims": {"batch": 1}, "ort_ms": 100.0, "eager_ms": 300.0}
    with Session(tiny_bundle, threads=1) as session:
        r = image_ttft_realistic(session, from_preset("tiny"), sample_image(), vision_row, repeats=2)
    question = len(session.tokenizer.apply_chat_template([{"role": "user", "content": "Describe this image in detail."}]))
    assert r["positions"] == question + 196
    assert r["prefill"]["vitron_rt"]["n"] == r["prefill"]["eager"]["n"] == 2
    shared = r["preprocess_ms"] + r["projector_ms"]
    assert r["vitron_rt_ms"] == pytest.approx(shared + 100.0 + r["prefill"]["vitron_rt"]["median_ms"], abs=0.02)
    assert r["eager_ms"] == pytest.approx(shared + 300.0 + r["prefill"]["eager"]["median_ms"], abs=0.02)
    assert r["speedup"] == pytest.approx(r["eager_ms"] / r["vitron_rt_ms"], rel=1e-3)
    verdicts = [t for t in targets({"image_ttft_realistic": r}) if "ViT-B/16" in t["target"]]
    assert len(verdicts) == 1 and verdicts[0]["met"] == (r["speedup"] >= 2.0)
    md = render_markdown({"machine": {"cpu": "x", "cores": 2, "limits": {"threads": 1, "read_gb_s": 1.0, "read_probe": "p",
                          "gemm_gflop_s": 1.0, "gemm_probe": "p"}, "versions": {}}, "bundle": "b", "image_ttft_realistic": r})  # fmt: skip
    assert "realistic size: ViT-B/16" in md and "| total |" in md
