"""The nix-prefix command line without a closure: help, colours, completion, --debug.
The commands run against a real closure in tests/e2e/test_cli.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from nix_prefix.builder.cli import app

runner = CliRunner()
NIX_PREFIX = Path(sys.executable).parent / "nix-prefix"


def nix_prefix(*args: object, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    full.update(env)
    return subprocess.run([str(NIX_PREFIX), *args], capture_output=True, text=True, env=full,
                          check=False)


def test_debug_shows_the_traceback(world_dir: Path) -> None:
    result = nix_prefix("inspect", world_dir / "nope.sh", "--debug")
    assert result.exit_code == 2
    assert "Traceback" in result.output
    assert result.output.splitlines()[-1].startswith("nix-prefix: error: ")


def test_every_command_has_help() -> None:
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert {"closure", "build", "inspect", "verify", "retarget", "sample", "demo"} <= set(names)
    for name in names:
        result = nix_prefix(name, "--help")
        assert result.exit_code == 0, (name, result.output)
        assert "Usage:" in result.output
    result = nix_prefix("--help")
    assert "Exit codes" in result.output


def test_no_color_is_respected() -> None:
    # A terminal that has colours: under the caller's TERM=dumb (Emacs, some CI
    # runners) rich rightly gives none even with FORCE_COLOR.
    coloured = _run("build", "--help", FORCE_COLOR="1", TERM="xterm-256color")
    assert coloured.returncode == 0
    assert "\x1b[" in coloured.stdout  # the check below is not vacuous
    plain = _run("build", "--help", FORCE_COLOR="1", NO_COLOR="1", TERM="xterm-256color")
    assert plain.returncode == 0
    assert "\x1b[" not in plain.stdout + plain.stderr
    assert "--roots" in plain.stdout


def test_shell_completion() -> None:
    # Typer guesses the shell from the parent processes (shellingham): a run with
    # no shell above it (a detached CI job) finds none; name it instead.
    script = _run("--show-completion", "bash", _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert script.returncode == 0, script.stderr
    assert "_NIX_PREFIX_COMPLETE" in script.stdout
    words = _run(_NIX_PREFIX_COMPLETE="complete_bash", COMP_WORDS="nix-prefix ins",
                 COMP_CWORD="1")
    assert words.stdout.split() == ["inspect"]
    options = _run(_NIX_PREFIX_COMPLETE="complete_bash", COMP_WORDS="nix-prefix build --ro",
                   COMP_CWORD="2")
    assert "--roots" in options.stdout.split()
