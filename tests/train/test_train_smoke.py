"""The recipe runs: every stage trains a few steps on a tiny slice, in order, each loss
goes down on its repeated batch, only the stage's groups change, checkpoints round-trip,
and the budget planner's arithmetic holds."""

import pytest
import torch

from vitron_rt.models.config import preset
from vitron_rt.models.model import VitronModel
from vitron_rt.shapes.vocab import shapes_tokenizer
from vitron_rt.train.budget import SHARES, StepCost, measure, plan
from vitron_rt.train.stages import GROUPS, STAGES, Stage
from vitron_rt.train.trainer import Trainer, group_parameters

CFG = preset("mini")
STEPS = 6
# Small batches that still exercise every loss of the stage (an explicit mix, no bucketing,
# so the one repeated batch holds a segmentation, a generation and an edit).
SLICE = {"seg_image": 1.0, "gen_image": 1.0, "edit_recolour": 1.0}
SMOKE: dict[str, Stage] = {
    "autoencoder": STAGES["autoencoder"].replace(batch_size=3, mix=SLICE, bucket_by_media=False),
    "perception": STAGES["perception"].replace(batch_size=3),
    "seg_perception": STAGES["seg_perception"].replace(batch_size=3),
    "backends": STAGES["backends"].replace(batch_size=3, mix=SLICE, bucket_by_media=False),
    "invocation": STAGES["invocation"].replace(batch_size=3),
    "alignment": STAGES["alignment"].replace(batch_size=3),
    # Every sample has a region, so the region encoder trains too; the batch (region_what
    # twice, seg_image_region) holds a signal to align.
    "instruction": STAGES["instruction"].replace(
        batch_size=3, mix={"region_what": 1.0, "seg_image_region": 1.0}, bucket_by_media=False
    ),
    "pixel": STAGES["pixel"].replace(
        batch_size=3, mix=SLICE, bucket_by_media=False, lr_scale={"seg_decoder": 1.0, "unet": 1.0}
    ),
}


@pytest.fixture(scope="module")
def trainer():
    tok = shapes_tokenizer(CFG.llm.vocab_size, CFG.signal.num_tokens, CFG.video_frames)
    return Trainer(VitronModel.from_config(CFG), tok)


def _snapshot(trainer: Trainer) -> dict[str, list[torch.Tensor]]:
    return {
        g: [p.detach().clone() for p in group_parameters(trainer.model, trainer.codes, g, trainer.patch_head)]
        for g in GROUPS
    }


def _changed(before, after) -> set[str]:
    return {g for g in GROUPS if any(not torch.equal(a, b) for a, b in zip(before[g], after[g]))}


def test_the_recipe_runs_and_every_loss_goes_down(trainer):
    assert list(SMOKE) == list(STAGES)  # the recipe's order
    for name, stage in SMOKE.items():
        before = _snapshot(trainer)
        log = trainer.run(stage, STEPS, fixed_batch=True)
        first, last = log.losses[0], log.losses[-1]
        weighted = [k for k in first if stage.loss_weights.get(k)]
        assert set(weighted) == {k for k, w in stage.loss_weights.items() if w}, name  # every loss was computed
        for k in weighted:
            assert last[k] < first[k], (name, k, log.series(k))
        assert last["total"] < 0.9 * first["total"], (name, log.series())
        changed = _changed(before, _snapshot(trainer))
        # Groups shared with a trained group (the tied embedding is in "llm") aside,
        # exactly the stage's groups moved.
        assert changed == set(stage.trainable), (name, changed)
        assert all(not p.requires_grad for p in trainer.model.parameters())  # frozen again after the run


def test_steps_draw_new_batches_unless_fixed(trainer):
    stage = SMOKE["alignment"]
    a, b = trainer.batch(stage, 0), trainer.batch(stage, 1)
    assert not torch.equal(a.input_ids[:, :10], b.input_ids[:, :10]) or a.input_ids.shape != b.input_ids.shape
    assert torch.equal(trainer.batch(stage, 1).input_ids, b.input_ids)


def test_checkpoints_round_trip(trainer, tmp_path):
    trainer.save(tmp_path / "ckpt")
    other = Trainer(VitronModel.from_config(CFG), trainer.tokenizer, seed=1)
    assert not torch.equal(other.codes.diffusion.colour.weight, trainer.codes.diffusion.colour.weight)
    other.load(tmp_path / "ckpt")
    mine, theirs = trainer.model.state_dict(), other.model.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert torch.equal(other.codes.diffusion.colour.weight, trainer.codes.diffusion.colour.weight)


def test_budget_measures_and_plans(trainer):
    threads = torch.get_num_threads()
    cost = measure(trainer, SMOKE["alignment"].replace(batch_size=2), steps=1, threads=1)
    assert cost.wall_s > 0 and cost.cpu_s > 0 and cost.flops > 1e8 and cost.threads == 1
    assert torch.get_num_threads() == threads  # restored
    costs = [StepCost(name, 16, wall_s=2.0, cpu_s=2.0, threads=1, flops=1e11) for name in SHARES]
    rows = plan(costs, budget_s=1800, basis="cpu", speedup=2.0)  # 1 s per step on two cores
    assert [r.stage for r in rows] == list(SHARES)
    for r in rows:
        assert r.steps == int(1800 * SHARES[r.stage] / sum(SHARES.values()))
        assert r.samples == 16 * r.steps and r.flops == pytest.approx(1e11 * r.steps)
    assert sum(r.seconds for r in rows) <= 1800
    assert sum(r.seconds for r in plan(costs, 1800, basis="wall")) <= 1800
    with pytest.raises(ValueError, match="basis"):
        plan(costs, 1800, basis="gpu")


def test_stage_definitions_are_checked():
    with pytest.raises(ValueError, match="unknown trainable"):
        STAGES["alignment"].replace(trainable=("vision", "wings"))
    with pytest.raises(ValueError, match="unknown losses"):
        STAGES["alignment"].replace(loss_weights={"lm": 1.0, "fun": 1.0})
    with pytest.raises(ValueError, match="lr_scale"):
        STAGES["alignment"].replace(lr_scale={"unet": 0.1})
    with pytest.raises(ValueError, match="unknown tasks"):
        STAGES["alignment"].replace(mix={"poetry": 1.0})


def test_a_fixed_seed_gives_the_same_weights(trainer):
    """Two fresh runs of the same steps end bit for bit equal (the issue's reproducibility)."""
    stage = SMOKE["pixel"].replace(batch_size=2)

    def train() -> dict[str, torch.Tensor]:
        t = Trainer(VitronModel.from_config(CFG), trainer.tokenizer, seed=3)
        t.run(stage, 2)
        return t.model.state_dict()

    a, b = train(), train()
    assert all(torch.equal(a[k], b[k]) for k in a)
    untrained = VitronModel.from_config(CFG).state_dict()
    assert not torch.equal(a["unet.unet.conv_in.weight"], untrained["unet.unet.conv_in.weight"])


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_the_denoising_target_is_what_the_sampler_reads_back(kind):
    """The training target of each prediction type, fed to the runtime's DDIM step as the
    UNet's output, gives back the x0 that was noised."""
    import numpy as np

    from vitron_rt.runtime.pipelines.scheduler import DdimConfig, DDIMScheduler
    from vitron_rt.train.forward import NoiseSchedule

    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    t = torch.tensor([1, 500, 999])
    schedule = NoiseSchedule()
    xt, target = schedule.add_noise(x0, noise, t), schedule.target(kind, x0, noise, t)
    sched = DDIMScheduler(DdimConfig(prediction_type=kind))
    for i, step in enumerate(t.tolist()):
        out = sched.step(target[i : i + 1].numpy(), step, xt[i : i + 1].numpy(), 20)
        np.testing.assert_allclose(out.pred_original_sample, x0[i : i + 1].numpy(), atol=2e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="unknown prediction_type"):
        schedule.target("x0", x0, noise, t)
