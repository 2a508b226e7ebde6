"""Existing prefixes are sacred; updates make generations; uninstall takes only its own."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.localnix import LocalNix, prefix_env
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.payload import registration

from tests.support import build_and_install, run_installer, tree_snapshot


def nix(prefix: Path, tool: str, *args: str) -> str:
    env = prefix_env(prefix, home=prefix / "var/nix-prefix/home")
    return subprocess.run([tool, *args], env=env, capture_output=True, text=True,
                          check=True).stdout


def second_installer(world_dir: Path) -> Path:
    """An installer of another closure (a file made by Nix) for the same store dir."""
    other = LocalNix(world_dir / "b")
    expr = ('derivation { name = "second-tool"; system = builtins.currentSystem; '
            'builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" "mkdir -p $out/bin; '
            "printf '#!/bin/sh\\\\necho second\\\\n' > $out/bin/second-tool; "
            'chmod +x $out/bin/second-tool" ]; }')
    root = other.build_expr(expr)[0]
    info = other.write_closure_info([root], world_dir / "b-info")
    out = world_dir / "second.sh"
    build_installer(read_closure(info), out, BuildOptions(level=0))
    return out


@pytest.fixture
def installed(world_dir: Path):
    prefix = world_dir / "p"
    return build_and_install(world_dir, prefix), prefix


def test_a_prefix_with_its_own_store_keeps_everything(installed, world_dir: Path) -> None:
    built, prefix = installed
    # The user's own things: a path added by hand, another profile, an edited nix.conf.
    mine = world_dir / "mine.txt"
    mine.write_text("the user's file\n")
    added = nix(prefix, "nix-store", "--add", str(mine)).strip()
    nix(prefix, "nix-env", "-p", str(prefix / "var/nix/profiles/mine"), "-i", added)
    conf = prefix / "etc/nix/nix.conf"
    conf.write_text(conf.read_text() + "keep-outputs = true\n")
    db_before = nix(prefix, "nix-store", "--dump-db")
    # What must stay byte-for-byte: every store path and file in it, the user's profile
    # links, nix.conf and the env scripts (directories may gain entries, so their
    # own mtimes may change).
    kept = ("store/", "etc/", "var/nix/profiles/mine")
    other_paths = {k: v for k, v in tree_snapshot(prefix).items()
                   if k.startswith(kept) and not k.startswith("store/.links")
                   and not os.path.isdir(prefix / k)}
    second = second_installer(world_dir)
    refused = run_installer(second, "-y", "-p", str(prefix))
    assert refused.returncode != 0 and "-u" in refused.stderr, refused.stderr
    update = run_installer(second, "-y", "-u", "-p", str(prefix))
    assert update.returncode == 0, update.stderr

    after = tree_snapshot(prefix)
    for key, value in other_paths.items():
        assert after.get(key) == value, key
    assert conf.read_text().endswith("keep-outputs = true\n")
    db_after = set(registration.parse(nix(prefix, "nix-store", "--dump-db")))
    assert set(registration.parse(db_before)) <= db_after
    bin_dir = prefix / "var/nix/profiles/default/bin"
    assert (bin_dir / "second-tool").exists() and (bin_dir / "hello-nix-prefix").exists()

    # Rollback returns to the first installer's generation.
    back = run_installer(second, "--rollback", "-p", str(prefix))
    assert back.returncode == 0, back.stderr
    assert not (bin_dir / "second-tool").exists() and (bin_dir / "hello-nix-prefix").exists()


def test_uninstall_removes_only_its_own(installed, world_dir: Path) -> None:
    built, prefix = installed
    second = second_installer(world_dir)
    assert run_installer(second, "-y", "-u", "-p", str(prefix)).returncode == 0
    second_paths = run_installer(second, "--list").stdout.split()
    hello_paths = run_installer(built.installer, "--list", "-p", str(prefix)).stdout.split()

    gone = run_installer(second, "--uninstall", "-y", "-p", str(prefix))
    assert gone.returncode == 0, gone.stderr
    assert "removed" in gone.stderr
    store = prefix / "store"
    for p in second_paths:
        assert not os.path.lexists(store / Path(p).name), p
    # The first install is whole: its paths valid and intact, its program on the profile.
    verify = subprocess.run(["nix-store", "--verify", "--check-contents"],
                            env=prefix_env(prefix, home=prefix / "var/nix-prefix/home"),
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and "modified" not in verify.stderr, verify.stderr
    hello = prefix / "var/nix/profiles/default/bin/hello-nix-prefix"
    assert subprocess.run([hello], capture_output=True, text=True,
                          check=True).stdout == "hello from nix-prefix\n"
    assert len(hello_paths) == 3
    # Uninstalling it again says there is nothing of it left.
    again = run_installer(second, "--uninstall", "-y", "-p", str(prefix))
    assert again.returncode != 0 and "no record" in again.stderr


def test_uninstalling_the_last_install_empties_the_prefix(installed) -> None:
    built, prefix = installed
    gone = run_installer(built.installer, "--uninstall", "-y", "-p", str(prefix))
    assert gone.returncode == 0, gone.stderr
    # The prefix did not exist before the install: it is gone, store, database and all.
    assert not prefix.exists(), sorted(os.listdir(prefix))
