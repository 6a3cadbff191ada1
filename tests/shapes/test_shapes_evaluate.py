"""The accuracy table: its held-out set, its scoring of each task cluster, the Markdown,
and a run of a few samples through ONNX Runtime with the PyTorch reference beside it."""

import inspect
import json
from types import SimpleNamespace

import numpy as np
import pytest

from vitron_rt.shapes import evaluate as ev
from vitron_rt.shapes.judge import ShapeJudge
from vitron_rt.shapes.tasks import TASKS, TaskGenerator
from vitron_rt.shapes.world import ShapesWorld

JUDGE = ShapeJudge()


def test_the_set_is_held_out_from_training():
    from vitron_rt.train.trainer import Trainer

    assert inspect.signature(Trainer).parameters["world_seed"].default == ev.TRAINING_WORLD_SEED
    assert ev.EVAL_WORLD_SEED != ev.TRAINING_WORLD_SEED
    held, seen = (TaskGenerator(ShapesWorld(seed=s)) for s in (ev.EVAL_WORLD_SEED, ev.TRAINING_WORLD_SEED))
    assert held.sample("seg_image", 0).scene != seen.sample("seg_image", 0).scene


def test_every_scored_task_is_registered_and_in_a_cluster():
    assert set(ev.IMAGE_MIX) | set(ev.VIDEO_MIX) == set(ev.TASK_CLUSTER)
    assert set(ev.TASK_CLUSTER) <= set(TASKS)
    assert set(ev.TASK_CLUSTER.values()) == set(ev.CLUSTERS)
    assert all(TASKS[t].media == "video" for t in ev.VIDEO_MIX)
    assert all(TASKS[t].media != "video" for t in ev.IMAGE_MIX)


def test_allocation_sums_and_follows_the_weights():
    counts = ev.allocate(500, ev.IMAGE_MIX)
    assert sum(counts.values()) == 500
    assert counts["gen_image"] == pytest.approx(1.5 * counts["qa_colour"], abs=1)
    videos = ev.allocate(50, ev.VIDEO_MIX)
    assert sum(videos.values()) == 50 and videos["seg_video"] == pytest.approx(4 * videos["video_count"], abs=2)
    assert sum(ev.allocate(7, ev.VIDEO_MIX).values()) == 7
    gen = TaskGenerator(ShapesWorld(seed=ev.EVAL_WORLD_SEED))
    samples = ev.eval_samples(gen, 26, 10)
    assert len(samples) == 36 and sum(s.media == "video" for s in samples) == 10
    assert [s.prompt for s in samples] == [s.prompt for s in ev.eval_samples(gen, 26, 10)]  # deterministic


def test_options_reject_an_empty_set():
    with pytest.raises(ValueError):
        ev.EvalOptions(images=0, videos=0)
    with pytest.raises(ValueError):
        ev.EvalOptions(images=-1)


def _outcome(text="", module=None, mask=None, picture=None):
    return ev.Outcome(text=text, module=module, parse_error=None, result=None, mask=mask, picture=picture)


def test_scoring_against_the_ground_truth():
    gen = TaskGenerator(ShapesWorld(seed=ev.EVAL_WORLD_SEED))
    qa = gen.sample("qa_colour", 0)
    assert ev.score(qa, _outcome(f" {qa.label.upper()}."), JUDGE).correct
    assert not ev.score(qa, _outcome(f"{qa.label} circle"), JUDGE).correct

    seg = gen.sample("seg_image", 0)
    right = ev.score(seg, _outcome(module="segment_image", mask=seg.mask), JUDGE)
    assert right.scores == {"j": 1.0, "f": 1.0}
    # The right mask from a reply that called another back end does not count.
    assert ev.score(seg, _outcome(module="edit_image", mask=seg.mask), JUDGE).scores["j"] == 0.0

    video = gen.sample("seg_video", 0)
    assert ev.score(video, _outcome(module="segment_video", mask=video.masks), JUDGE).scores["jf"] == 1.0

    made = gen.sample("gen_image", 0)
    assert ev.score(made, _outcome(module="generate_image", picture=made.target), JUDGE).correct
    assert not ev.score(made, _outcome(module="generate_image", picture=np.zeros_like(made.target)), JUDGE).correct

    edit = gen.sample("edit_recolour", 0)
    assert ev.score(edit, _outcome(module="edit_image", picture=edit.target), JUDGE).correct
    assert not ev.score(edit, _outcome(module="edit_image", picture=edit.image), JUDGE).correct
    vedit = gen.sample("edit_video", 0)
    assert ev.score(vedit, _outcome(module="edit_video", picture=vedit.target), JUDGE).correct


def test_token_agreement_counts_positions_over_the_longer_reply():
    def said(ids):
        return ev.Outcome(text="", module=None, parse_error=None, result=SimpleNamespace(token_ids=ids))

    assert ev.agreement(said([5, 6, 7, 2]), said([5, 6, 7, 2]))["token_agreement"] == 1.0
    assert ev.agreement(said([5, 6, 7, 2]), said([5, 9, 7]))["token_agreement"] == 0.5
    assert ev.agreement(said([]), said([]))["token_agreement"] == 1.0
    assert "token_agreement" not in ev.agreement(said([1]), ev.Outcome("", None, None, None))


def test_markdown_table_reads_the_rows():
    report = {
        "bundle": "B", "source": {"preset": "mini", "weights_sha256": "ab" * 32}, "seed": 1,
        "images": 2, "videos": 1, "cpus": 2, "wall_s": 3.0,
        "rows": [
            {"cluster": "qa", "title": "image QA", "metric": "exact match", "n": 2, "ort": {"accuracy": 0.5},
             "pytorch": {"accuracy": 0.5}, "agreement": {"same_text": 1.0, "same_verdict": 1.0}},
            {"cluster": "seg_video", "title": "seg video", "metric": "J&F (J / F)", "n": 1,
             "ort": {"j": 0.8, "f": 0.6, "jf": 0.7}, "pytorch": {"j": 0.8, "f": 0.6, "jf": 0.7},
             "agreement": {"same_text": 1.0, "token_agreement": 0.875, "mask_iou": 0.9995}},
        ],
    }  # fmt: skip
    md = ev.render_markdown(report)
    assert "replies identical 100.0 %, tokens agree 87.5 %, mask IoU 0.9995" in md
    assert "| image QA | 2 | exact match | 50.0 % | 50.0 % | replies identical 100.0 %, verdicts agree 100.0 % |" in md
    assert "0.700 (0.800 / 0.600)" in md and "mask IoU 0.9995" in md and "weights sha256 abababababab" in md


def test_a_few_samples_through_both_runtimes(mini_export, tmp_path):
    from vitron_rt.runtime.session import Session
    from vitron_rt.shapes.reference import ReferenceSession, TorchRunner

    bundle, ref = mini_export
    log = []
    with Session(bundle) as session, ReferenceSession(bundle, ref) as reference:
        report = ev.Evaluation(session, reference, ev.EvalOptions(images=4, videos=1), log=log.append).run()
        assert all(isinstance(r, TorchRunner) for r in reference.runners.values())
        assert not any(isinstance(r, TorchRunner) for r in session.runners.values())
    assert log and report["images"] == 4 and report["videos"] == 1
    assert len(report["samples"]) == 5 and report["source"]["preset"] == "mini"
    rows = {r["cluster"]: r for r in report["rows"]}
    assert sum(r["n"] for c, r in rows.items() if c != "parse") == 5
    for row in rows.values():
        assert set(row) >= {"ort", "pytorch", "agreement"}
    for s in report["samples"]:
        # Greedy decoding of the same weights: the exported graphs must not change a token.
        assert s["agreement"]["same_text"] == 1.0, (s["ort"]["text"], s["pytorch"]["text"])
        assert s["agreement"]["token_agreement"] == 1.0
    ev.write_report(report, tmp_path / "r.json", tmp_path / "r.md")
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == report["rows"]
    assert (tmp_path / "r.md").read_text() == ev.render_markdown(report)
