"""The installer's command line as users meet it: help, the summary, -u, --modify-profile."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.installer import nixstore
from nix_prefix.installer.prefix import Prefix

from .test_install import _run_on_terminal, machine_nix, one_error_line
from tests.support import build_small, run_installer, tree_snapshot

NEWER = r"""
derivation {
  name = "nix-prefix-sample-newer";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  args = [ "-c" ("mkdir -p $out/bin; printf '#!/bin/sh\necho newer\n' > $out/bin/newer; "
                + "chmod +x $out/bin/newer") ];
}
"""


@pytest.fixture
def small(world_dir: Path):
    built = build_small(world_dir)
    built.move_build_away()
    return built


def test_help_lists_every_option(small) -> None:
    proc = run_installer(small.installer, "--help")
    assert proc.returncode == 0
    for flag in ("-p P, --prefix P", "-y, --yes, -b, --batch", "-u, --update", "--check",
                 "--list", "--info", "--modify-profile", "--unmodify-profile",
                 "--no-modify-profile", "-q, --quiet", "--version", "exit codes:",
                 "NIX_PREFIX_PYTHON", "NIX_PREFIX_DEBUG"):
        assert flag in proc.stdout, flag


def test_summary_says_what_where_how_to_start_and_undo(small) -> None:
    prefix = small.prefix
    proc = run_installer(small.installer, "-b", "-p", str(prefix))
    assert proc.returncode == 0, proc.stderr
    summary = proc.stderr[proc.stderr.index("\nInstalled "):]
    assert "hello-nix-prefix" in summary and "nix-prefix-sample-lonely" in summary
    assert f"in {prefix}\n" in summary
    assert "(generation 1)" in summary
    assert f"  . {prefix}/etc/profile.d/nix.sh\n" in summary
    assert f"source {prefix}/etc/profile.d/nix.fish" in summary
    assert f"sh {small.installer} -p {prefix} --modify-profile" in summary
    assert f"-u -p {prefix}" in summary
    assert f"sh {small.installer} -p {prefix} --uninstall" in summary
    quiet = run_installer(small.installer, "-y", "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""


NIX_VARS = ("NIX_STORE_DIR", "NIX_STATE_DIR", "NIX_LOG_DIR", "NIX_CONF_DIR", "NIX_PROFILES",
            "NIX_PROFILE", "NIX_STATE_HOME")


def _shell_env(command: list[str]) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/")}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    return dict(line.split("=", 1) for line in lines[:-1] if "=" in line) | {"out": lines[-1]}


def test_nix_fish_sets_what_nix_sh_sets(small) -> None:
    """fish users source nix.fish: the same variables, the profile first on PATH, and the
    prefix's Nix and programs found."""
    fish = shutil.which("fish")
    assert fish, "fish is missing: run sh .ci/setup.sh"
    prefix = small.prefix
    proc = run_installer(small.installer, "-y", "-q", "-p", str(prefix))
    assert proc.returncode == 0, proc.stderr
    show = "env; hello-nix-prefix"
    sh = _shell_env(["sh", "-c", f". {prefix}/etc/profile.d/nix.sh; {show}"])
    fish_env = _shell_env([fish, "--no-config", "-c",
                           f"source {prefix}/etc/profile.d/nix.fish; {show}"])
    for name in NIX_VARS:
        assert fish_env.get(name) == sh[name], name
    assert sh["NIX_STORE_DIR"] == f"{prefix}/store"
    profile_bin = f"{prefix}/var/nix/profiles/default/bin"
    assert fish_env["PATH"].split(":")[0] == sh["PATH"].split(":")[0] == profile_bin
    assert fish_env["out"] == sh["out"] and sh["out"]  # the profile's program ran
    # Sourced twice, PATH holds the profile once.
    twice = _shell_env([fish, "--no-config", "-c", f"source {prefix}/etc/profile.d/nix.fish; "
                        f"source {prefix}/etc/profile.d/nix.fish; {show}"])
    assert twice["PATH"].split(":").count(profile_bin) == 1


def test_update_needs_u_and_makes_a_new_generation(world_dir: Path) -> None:
    built = build_small(world_dir)
    (newer,) = built.nix.build_expr(NEWER)
    hello = built.roots[0]
    info = built.nix.write_closure_info([hello, newer], world_dir / "newer-ci")
    newer_installer = world_dir / "newer.sh"
    build_installer(read_closure(info), newer_installer, BuildOptions(level=0))
    built.move_build_away()
    prefix = built.prefix

    first = run_installer(built.installer, "-y")
    assert first.returncode == 0, first.stderr
    before = tree_snapshot(prefix)

    refused = run_installer(newer_installer, "-y")
    line = one_error_line(refused, "already has a nix-prefix install", "generation 1",
                          "hello-nix-prefix", "pass -u")
    assert refused.returncode == 2, line
    assert tree_snapshot(prefix) == before

    updated = run_installer(newer_installer, "-y", "-u")
    assert updated.returncode == 0, updated.stderr
    assert "(generation 2)" in updated.stderr
    assert (prefix / "var/nix/profiles/default-1-link").is_symlink()
    listed = machine_nix(prefix, "nix-env", "-p", str(prefix / "var/nix/profiles/default"),
                         "-q", "--out-path", "--no-name")
    # The new roots, plus what the old generation had and the new one does not replace.
    assert set(listed.stdout.split()) == {hello, newer, built.roots[1]}
    # What the -u check reads without running Nix agrees with nix-env.
    assert nixstore.profile_paths(Prefix(str(prefix))) == set(listed.stdout.split())

    again = run_installer(built.installer, "-y")  # the old installer's roots are all there
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr


def test_modify_profile_is_idempotent_and_reversible(small, world_dir: Path) -> None:
    home = world_dir / "home"
    home.mkdir()
    dotfiles = world_dir / "dotfiles"
    dotfiles.mkdir()
    (dotfiles / "bashrc").write_text("# my bashrc\nalias ll='ls -l'")  # no final newline
    (home / ".bashrc").symlink_to(dotfiles / "bashrc")
    (home / ".zshrc").write_text("# my zshrc\n")
    (home / ".zshrc").chmod(0o600)
    originals = {p: p.read_text() for p in (home / ".bashrc", home / ".zshrc")}
    env = dict(os.environ, HOME=str(home))
    prefix = small.prefix

    proc = run_installer(small.installer, "-y", "--modify-profile", env=env)
    assert proc.returncode == 0, proc.stderr
    line = f". '{prefix}/etc/profile.d/nix.sh'"
    for name in (".profile", ".bashrc", ".zshrc"):
        assert line in (home / name).read_text(), name
    assert not (home / ".bash_profile").exists()
    assert (home / ".bashrc").is_symlink()
    assert (dotfiles / "bashrc").read_text().startswith(originals[home / ".bashrc"] + "\n")
    assert (home / ".zshrc").stat().st_mode & 0o777 == 0o600
    assert f"the line is in {home}/.profile, {home}/.bashrc, {home}/.zshrc" in proc.stderr
    # The line works: a login shell started from the new ~/.profile finds the program.
    hello = machine_nix(prefix, "sh", "-c", f". {home}/.profile && hello-nix-prefix")
    assert hello.stdout == "hello from nix-prefix\n", hello.stderr

    snapshot = {n: (home / n).read_text() for n in (".profile", ".bashrc", ".zshrc")}
    again = run_installer(small.installer, "-y", "--modify-profile", env=env)
    assert again.returncode == 0, again.stderr
    assert {n: (home / n).read_text() for n in snapshot} == snapshot

    undo = run_installer(small.installer, "--unmodify-profile", env=env)
    assert undo.returncode == 0, undo.stderr
    # Byte for byte, the final newline a file lacked included.
    assert {p: p.read_text() for p in originals} == originals
    assert (home / ".profile").read_text() == ""
    assert (home / ".bashrc").is_symlink()


def test_the_plan_names_the_start_up_files_before_asking(small, world_dir: Path) -> None:
    home = world_dir / "home"
    home.mkdir()
    (home / ".zshrc").write_text("# mine\n")
    code, screen = _run_on_terminal(
        ["env", f"HOME={home}", "sh", str(small.installer), "--modify-profile"], b"n\n")
    assert code == 1 and "nothing was changed" in screen
    assert f"add a line sourcing {small.prefix}/etc/profile.d/nix.sh to {home}/.profile, " \
           f"{home}/.zshrc" in screen.replace("\r", "")
    assert f"Nothing else outside {small.prefix} is changed" in screen
    assert sorted(os.listdir(home)) == [".zshrc"]
    assert not small.prefix.exists()


def test_modify_and_no_modify_profile_exclude_each_other(small) -> None:
    proc = run_installer(small.installer, "-y", "--modify-profile", "--no-modify-profile")
    assert proc.returncode == 2
    assert "not allowed with" in proc.stderr
    assert not small.prefix.exists()


def test_default_leaves_start_up_files_alone(small, world_dir: Path) -> None:
    home = world_dir / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home))
    for flags in ((), ("--no-modify-profile",)):
        proc = run_installer(small.installer, "-y", *flags, env=env)
        assert proc.returncode == 0, proc.stderr
        assert os.listdir(home) == []

