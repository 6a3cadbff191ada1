"""The command line: every DESIGN.md subcommand is listed, and a stage that cannot run
yet says so in one line and exits 2."""

import subprocess
import sys

import pytest

from vitron_rt import cli

SUBCOMMANDS = ("export", "check", "build", "run", "bench", "serve", "demo")


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
