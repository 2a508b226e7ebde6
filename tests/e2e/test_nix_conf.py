"""Settings given at install time (--extra-conf, --nix-conf) as a real installer writes,
records, shows and uninstalls them.  The rules they follow are unit-tested in
tests/unit/installer/test_nixconf.py; the Nix-run scenarios are in tests/e2e/test_flakes.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_install import one_error_line
from tests.support import build_small, run_installer


def test_extra_conf_is_written_recorded_shown_and_uninstalled(world_dir: Path) -> None:
    small = build_small(world_dir)
    small.move_build_away()
    conf_file = world_dir / "site.conf"
    conf_file.write_text("# site settings\nuse-sqlite-wal = false\n")
    given = ["--extra-conf", "max-jobs = 3", "--extra-conf", "cores = 2",
             "--nix-conf", str(conf_file)]
    info = run_installer(small.installer, "--info", *given)
    assert info.returncode == 0, info.stderr
    assert "  max-jobs = 3\n" in info.stdout and "  use-sqlite-wal = false\n" in info.stdout

    done = run_installer(small.installer, "-y", *given)
    assert done.returncode == 0, done.stderr
    assert "max-jobs = 3; cores = 2" in done.stderr  # the summary names them
    nix_conf = small.prefix / "etc/nix/nix.conf"
    lines = nix_conf.read_text().splitlines()
    assert lines[-3:] == ["use-sqlite-wal = false", "max-jobs = 3", "cores = 2"]
    shown = subprocess.run(
        ["sh", "-c", f". {small.prefix}/etc/profile.d/nix.sh && nix-store --version >/dev/null"
                     " && nix --extra-experimental-features nix-command show-config"],
        capture_output=True, text=True, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "max-jobs = 3" in shown.stdout and "use-sqlite-wal = false" in shown.stdout

    gone = run_installer(small.installer, "-y", "--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert "kept" not in gone.stderr, gone.stderr
    assert not nix_conf.exists()


@pytest.mark.parametrize("given, words", [
    (["--extra-conf", "store = daemon"], ["`store`", "another store"]),
    (["--extra-conf", "build-users-group = nixbld"], ["`build-users-group`", "group's users"]),
    (["--extra-conf", "max-jobs 3"], ["`max-jobs`", "not a nix.conf line"]),
    (["--extra-conf", "access-tokens github.com=ghp_SECRET"], ["`access-tokens`", "not a"]),
    (["--extra-conf", "store = https://u:SECRET@h"], ["`store`"]),
    (["--nix-conf", "/nonexistent/nix.conf"], ["--nix-conf", "cannot read"]),
])
def test_a_setting_a_prefix_cannot_take_is_refused_before_anything(
        world_dir: Path, given: list[str], words: list[str]) -> None:
    small = build_small(world_dir)
    small.move_build_away()
    proc = run_installer(small.installer, "-y", *given)
    line = one_error_line(proc, *words)
    assert "SECRET" not in line and "daemon" not in line and "nixbld" not in line
    assert proc.returncode == 2
    assert not small.prefix.exists()


def test_a_rerun_rewrites_the_installs_own_nix_conf_but_never_the_users(
        world_dir: Path) -> None:
    small = build_small(world_dir)
    small.move_build_away()
    nix_conf = small.prefix / "etc/nix/nix.conf"
    assert run_installer(small.installer, "-y", "--extra-conf", "max-jobs = 3").returncode == 0
    first = nix_conf.read_text()
    plain = run_installer(small.installer, "-y")  # asks nothing of nix.conf: kept
    assert plain.returncode == 0 and nix_conf.read_text() == first, plain.stderr
    assert "keeping" not in plain.stderr and "rewriting" not in plain.stderr
    again = run_installer(small.installer, "-y", "--extra-conf", "max-jobs = 5")
    assert again.returncode == 0, again.stderr
    lines = nix_conf.read_text().splitlines()
    assert "max-jobs = 5" in lines and "max-jobs = 3" not in lines  # ours, unchanged: rewritten
    assert "rewriting" in again.stderr and "keeping" not in again.stderr

    with open(nix_conf, "a") as f:
        f.write("keep-outputs = true\n")  # now it is the user's
    mine = nix_conf.read_text()
    third = run_installer(small.installer, "-y", "--extra-conf", "cores = 1")
    assert third.returncode == 0, third.stderr
    assert nix_conf.read_text() == mine
    assert "keeping your" in third.stderr and "\n    cores = 1" in third.stderr, third.stderr
    assert "is yours and was kept, so they are not set: add to it  cores = 1" in third.stderr
    gone = run_installer(small.installer, "-y", "--uninstall")
    assert gone.returncode == 0 and nix_conf.read_text() == mine, gone.stderr
