"""How long training takes here: time a few real steps of every stage, count their FLOPs,
and plan step counts that fit a wall-clock budget (the issue's: 30 minutes on 2 cores).

    python -m vitron_rt.train.budget [--steps 3] [--minutes 30] [--json FILE]

For each stage: the mean wall time and process CPU time of `steps` steps (after one
untimed step), and the mean FLOPs of a step (forward + backward, torch's FlopCounterMode).

Measure with one thread (the default). On a shared machine a step's wall time includes
other people's processes, and with two threads its CPU time does too: OpenMP threads
spin while they wait for each other, and a descheduled partner makes them wait (measured
here: one instruction step, 0.6 CPU-s on one thread, took 1.0-3.5 CPU-s on two). One
thread's CPU time is the work itself. The plan divides it by `speedup`, what the second
core buys on an idle machine (1.7 assumed for these small matrices, not measured: the
machine this was written on never had two idle cores).

The plan splits the budget between the stages by `SHARES` and divides by the step time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from vitron_rt.train.stages import STAGES, Stage
from vitron_rt.train.trainer import Trainer

# Share of the budget per stage (normalised by their sum): the split of the measured full
# run the current step counts come from (`mini.STEPS`; session 7's shipped run, 1672 s of
# stages on an idle machine), so that a plan on another machine keeps the recipe's balance.
SHARES: dict[str, float] = {
    "autoencoder": 0.12,
    "perception": 0.09,
    "seg_perception": 0.06,
    "backends": 0.19,
    "invocation": 0.06,
    "alignment": 0.10,
    "instruction": 0.27,
    "pixel": 0.11,
}


@dataclass(frozen=True)
class StepCost:
    """One stage's measured step."""

    stage: str
    batch_size: int
    wall_s: float  # mean wall time per step, here and now
    cpu_s: float  # mean process CPU time per step (all threads)
    threads: int
    flops: float  # per step, forward + backward (mean over `steps` batches)


@dataclass(frozen=True)
class PlanRow:
    stage: str
    steps: int
    samples: int
    seconds: float
    flops: float


def measure(trainer: Trainer, stage: Stage, steps: int = 3, threads: int = 1) -> StepCost:
    """Time `steps` training steps of `stage` on `threads` torch threads (real steps:
    they change the weights; each step draws its own batch, as training does)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        trainer.run(stage, 1)  # warm-up: allocations, first-call overheads
        wall0, cpu0 = time.perf_counter(), time.process_time()
        trainer.run(stage, steps)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        torch.set_num_threads(before)
    flops = 0.0
    for k in range(steps):  # batches vary (a video batch is ~3x longer): the mean of as many
        batch = trainer.batch(stage, 10_000 + k)
        groups = trainer._prepare(stage)
        gen = torch.Generator().manual_seed(k)
        with FlopCounterMode(display=False) as counter:
            losses = trainer.losses(stage, batch, gen)
            sum(stage.loss_weights.get(n, 0.0) * v for n, v in losses.items()).backward()
        flops += counter.get_total_flops() / steps
        for g in groups:
            for p in g["params"]:
                p.grad = None
    trainer.model.eval().requires_grad_(False)
    trainer.codes.eval().requires_grad_(False)
    return StepCost(
        stage=stage.name,
        batch_size=stage.batch_size,
        wall_s=wall / steps,
        cpu_s=cpu / steps,
        threads=threads,
        flops=float(flops),
    )


# What a second idle core is assumed to buy over one (see the module docstring).
SPEEDUP_2_CORES = 1.7


def plan(
    costs: Sequence[StepCost],
    budget_s: float,
    shares: Mapping[str, float] = SHARES,
    basis: str = "cpu",
    speedup: float = SPEEDUP_2_CORES,
) -> list[PlanRow]:
    """Steps per stage so that stage s takes shares[s] of `budget_s`, timed on `basis`:
    "cpu", the measured CPU time / `speedup` (the machine's cores to itself); "wall", the
    measured wall time (this machine as loaded as it was)."""
    if basis not in ("cpu", "wall"):
        raise ValueError(f"basis must be 'cpu' or 'wall', got {basis!r}")
    total = sum(shares[c.stage] for c in costs)
    rows = []
    for c in costs:
        step = c.cpu_s / speedup if basis == "cpu" else c.wall_s
        n = int(budget_s * shares[c.stage] / total / step)
        rows.append(PlanRow(c.stage, n, n * c.batch_size, n * step, n * c.flops))
    return rows


def _table(costs: Sequence[StepCost], plans: Mapping[str, list[PlanRow]], budget_s: float) -> str:
    head = f"{'stage':14s} {'batch':>5s} {'threads':>7s} {'wall s/step':>11s} {'cpu s/step':>10s} {'GFLOP/step':>10s}"
    lines = [head]
    for c in costs:
        lines.append(
            f"{c.stage:14s} {c.batch_size:5d} {c.threads:7d} {c.wall_s:11.2f} {c.cpu_s:10.2f} {c.flops / 1e9:10.1f}"
        )
    for basis, rows in plans.items():
        lines.append(f"\nplan for {budget_s / 60:.0f} min on the {basis} basis:")
        lines.append(f"{'stage':14s} {'steps':>6s} {'samples':>8s} {'minutes':>8s} {'PFLOP':>7s}")
        for r in rows:
            lines.append(f"{r.stage:14s} {r.steps:6d} {r.samples:8d} {r.seconds / 60:8.1f} {r.flops / 1e15:7.3f}")
        lines.append(f"{'total':14s} {'':6s} {'':8s} {sum(r.seconds for r in rows) / 60:8.1f} "
                     f"{sum(r.flops for r in rows) / 1e15:7.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, log: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitron_rt.train.budget", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per stage (after one warm-up step)")
    parser.add_argument("--minutes", type=float, default=30.0, help="the wall-clock budget to plan for")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while measuring (see above)")
    parser.add_argument("--speedup", type=float, default=SPEEDUP_2_CORES, help="2 idle cores over the CPU time")
    parser.add_argument("--json", metavar="FILE", help="also write the measurements and plans as JSON")
    args = parser.parse_args(argv)

    from vitron_rt.models.config import preset
    from vitron_rt.models.model import VitronModel
    from vitron_rt.shapes.vocab import shapes_tokenizer

    cfg = preset("mini")
    tokenizer = shapes_tokenizer(cfg.llm.vocab_size, cfg.signal.num_tokens, cfg.video_frames)
    trainer = Trainer(VitronModel.from_config(cfg), tokenizer)
    costs = []
    for stage in STAGES.values():
        costs.append(measure(trainer, stage, args.steps, args.threads))
        log(f"measured {stage.name}: {costs[-1].wall_s:.2f} s wall, {costs[-1].cpu_s:.2f} s CPU per step")
    budget = args.minutes * 60
    plans = {basis: plan(costs, budget, basis=basis, speedup=args.speedup) for basis in ("cpu", "wall")}
    log(_table(costs, plans, budget))
    if args.json:
        data = {
            "costs": [asdict(c) for c in costs],
            "speedup": args.speedup,
            "plans": {b: [asdict(r) for r in rows] for b, rows in plans.items()},
            "budget_s": budget,
        }
        with open(args.json, "w") as f:
            json.dump(data, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
