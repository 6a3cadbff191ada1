"""The command line: every DESIGN.md subcommand is listed, and a stage that cannot run
yet says so in one line and exits 2."""

import subprocess
import sys

import pytest

from vitron_rt import cli

SUBCOMMANDS = ("export", "check", "build", "run", "bench", "serve", "demo", "train-mini", "eval-mini")


def test_help_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "vitron_rt.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in SUBCOMMANDS:
        assert name in out
    assert set(cli.SUBCOMMANDS) == set(SUBCOMMANDS)


MINIMAL_ARGS = {
    "export": ["--preset", "tiny", "--out", "B"],
    "run": ["B", "--prompt", "hi"],
}


@pytest.mark.parametrize("name", [n for n, (_, _, h) in cli.SUBCOMMANDS.items() if getattr(h, "not_built", False)])
def test_unbuilt_stage_is_one_line_exit_2(name, capsys):
    argv = [name, *MINIMAL_ARGS.get(name, [] if name == "demo" else ["B"])]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vitron-rt {name}: not built yet") and "\n" not in err


def test_bad_usage_exits_2():
    proc = subprocess.run([sys.executable, "-m", "vitron_rt.cli", "nonsense"], capture_output=True, text=True)
    assert proc.returncode == 2
    # Arguments a subcommand does not take are refused (only train-mini forwards its own).
    proc = subprocess.run([sys.executable, "-m", "vitron_rt.cli", "demo", "--nonsense"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unrecognized arguments: --nonsense" in proc.stderr


def test_train_mini_forwards_its_arguments(monkeypatch):
    import vitron_rt.train.mini as mini

    seen = []
    monkeypatch.setattr(mini, "main", lambda argv: seen.append(list(argv)) or 0)
    assert cli.main(["train-mini", "--scale", "0.01", "--install"]) == 0
    assert cli.main(["train-mini", "--help"]) == 0
    assert seen == [["--scale", "0.01", "--install"], ["--help"]]


def test_train_mini_help_is_the_trainers():
    out = subprocess.run(
        [sys.executable, "-m", "vitron_rt.cli", "train-mini", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--scale" in out and "--install" in out


def test_eval_mini_help_states_the_real_defaults():
    from vitron_rt.shapes.evaluate import EVAL_WORLD_SEED, TRAINING_WORLD_SEED, EvalOptions

    out = subprocess.run(
        [sys.executable, "-m", "vitron_rt.cli", "eval-mini", "--help"], capture_output=True, text=True, check=True
    ).stdout
    d = EvalOptions()
    assert f"(default {d.images})" in out and f"(default {d.videos})" in out
    assert f"(default {EVAL_WORLD_SEED}; training uses {TRAINING_WORLD_SEED})" in " ".join(out.split())


@pytest.mark.parametrize(
    "argv",
    [["eval-mini", "--images", "-1"], ["eval-mini", "--images", "0", "--videos", "0"], ["demo", "--eval-videos", "-2"]],
)
def test_bad_sizes_are_one_line_exit_2(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vitron-rt {argv[0]}:") and "\n" not in err
