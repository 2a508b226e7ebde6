"""Run with stdin, stdout or stderr closed (``sh inst.sh -y >&-``, ``2>&-``, ``<&-``):
the installer and the builder either work or say one line, and exit codes stay right
(issue 23, item 6).  A closed stream is /dev/null to them: output dropped, input
empty (payload/seal.py open_standard_streams)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .test_install import one_error_line
from tests.conftest import NOBODY
from tests.support import as_user, build_small

NIX_PREFIX = str(Path(sys.executable).with_name("nix-prefix"))


def _sh(command: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with sh, whose redirections close the streams under test."""
    cmd = ["/bin/sh", "-c", command]
    if user is not None:
        cmd = [*as_user(user), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", check=False,
                          env=dict(os.environ, HOME="/nonexistent"))


@pytest.fixture
def small(world_dir: Path):
    built = build_small(world_dir)
    built.move_build_away()
    return built


def _installed(prefix: Path) -> bool:
    return (prefix / "var/nix/profiles/default/bin/hello-nix-prefix").exists()


def test_closed_stdout_install_and_check_exit_0(small) -> None:
    inst = shlex.quote(str(small.installer))
    done = _sh(f"sh {inst} -y >&-")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert _installed(small.prefix)
    check = _sh(f"sh {inst} --check >&-")
    assert check.returncode == 0, check.stderr
    assert "is intact" in check.stderr


def test_closed_stdin_with_y_installs_and_without_y_says_so(small) -> None:
    inst = shlex.quote(str(small.installer))
    asked = _sh(f"sh {inst} <&-")
    one_error_line(asked, "no -y, and no terminal to ask on")
    assert asked.returncode == 2
    assert not small.prefix.exists()
    done = _sh(f"sh {inst} -y <&-")
    assert done.returncode == 0, done.stderr
    assert _installed(small.prefix)


def test_closed_stderr_installs_silently_as_a_user(small, world_dir: Path) -> None:
    prefix = small.prefix  # the build prefix was moved away: the same length, free
    prefix.mkdir()
    os.chown(prefix, NOBODY, NOBODY)
    inst = shlex.quote(str(small.installer))
    done = _sh(f"sh {inst} -y 2>&-", user=NOBODY)
    assert done.returncode == 0
    assert _installed(prefix)
    # A failure still gives its exit code with nobody to tell.
    refused = _sh(f"sh {inst} -y -p / 2>&-", user=NOBODY)
    assert refused.returncode == 4


def test_builder_with_closed_streams(small, world_dir: Path) -> None:
    out = world_dir / "again.sh"
    info = shlex.quote(str(small.closure_info))
    for close in (">&-", "2>&-", ">&- 2>&-"):
        built = _sh(f"{NIX_PREFIX} build {info} -o {out} --store-root "
                    f"{small.prefix.with_name(small.prefix.name + '.build')}/store {close}")
        assert built.returncode == 0, (close, built.stderr)
        assert "Traceback" not in built.stderr
        verified = _sh(f"{NIX_PREFIX} verify {out} {close}")
        assert verified.returncode == 0, (close, verified.stderr)
        out.unlink()
