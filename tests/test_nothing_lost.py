"""Nothing of the user's is ever lost: what the installer did not create, it never deletes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.localnix import prefix_env
from nix_prefix.builder.pack import BuildOptions, build_installer

from .support import Built, build_small, run_installer, tree_snapshot


@pytest.fixture
def small(world_dir: Path) -> Built:
    built = build_small(world_dir, name="a-long-enough-build-prefix")
    built.move_build_away()
    return built


def one_line(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert proc.returncode == code, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nix-prefix: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def nix_store(prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = prefix_env(prefix, home=prefix / "var/nix-prefix/home")
    return subprocess.run(["nix-store", *args], env=env, capture_output=True, text=True,
                          check=False)


def installed_paths(built: Built, prefix: Path) -> list[str]:
    """The installer's store paths at ``prefix`` (a plain relocation keeps their names)."""
    return [str(prefix / "store" / Path(p).name)
            for p in run_installer(built.installer, "--list").stdout.split()]


def assert_whole(prefix: Path) -> None:
    """The install in ``prefix`` is intact: Nix verifies it and its program runs."""
    verify = nix_store(prefix, "--verify", "--check-contents")
    assert verify.returncode == 0 and "modified" not in verify.stderr, verify.stderr
    hello = prefix / "var/nix/profiles/default/bin/hello-nix-prefix"
    assert subprocess.run([hello], capture_output=True, text=True,
                          check=True).stdout == "hello from nix-prefix\n"


@pytest.mark.parametrize("layout", ["prefix", "home"])
def test_a_store_dir_holding_the_users_files_is_refused(small: Built, world_dir: Path,
                                                        layout: str) -> None:
    """Issue 13, 1: `P/store/docs/thesis.tex` (or `-p ~` with a `~/store/`) is not a
    Nix store; installing there would hand the user's files to Nix's collector."""
    prefix = world_dir / ("p" if layout == "prefix" else "home")
    (prefix / "store" / "docs").mkdir(parents=True)
    (prefix / "store" / "docs" / "thesis.tex").write_text("four years of work\n")
    (prefix / "notes.txt").write_text("mine\n")
    before = tree_snapshot(prefix)
    proc = run_installer(small.installer, "-y", "-p", str(prefix))
    one_line(proc, 4, f"{prefix}/store is not a Nix store", "docs", "move your files")
    assert tree_snapshot(prefix) == before
    # Uninstalling there refuses too, and deletes nothing.
    proc = run_installer(small.installer, "-y", "--uninstall", "-p", str(prefix))
    assert proc.returncode != 0
    assert tree_snapshot(prefix) == before


def test_uninstall_removes_no_path_that_was_valid_before(small: Built, world_dir: Path) -> None:
    """Issue 13, 2: installed into a store where its paths were already valid (put there
    by the user's Nix, here: an earlier install whose profile and receipt are gone), the
    uninstall removes what it made (the profile) and none of those paths."""
    import shutil

    prefix = world_dir / "p"
    assert run_installer(small.installer, "-y", "-p", str(prefix)).returncode == 0
    shutil.rmtree(prefix / "var/nix-prefix/receipts")
    for link in (prefix / "var/nix/profiles").glob("default*"):
        link.unlink()
    listed = installed_paths(small, prefix)
    assert nix_store(prefix, "--check-validity", *listed).returncode == 0
    other = world_dir / "same-closure-other-payload.sh"
    moved = small.prefix.with_name(small.prefix.name + ".build")
    build_installer(read_closure(small.closure_info), other,
                    BuildOptions(level=0, store_root=moved / "store"))
    proc = run_installer(other, "-y", "-p", str(prefix))
    assert proc.returncode == 0, proc.stderr
    assert_whole(prefix)
    gone = run_installer(other, "-y", "--uninstall", "-p", str(prefix))
    assert gone.returncode == 0, gone.stderr
    assert nix_store(prefix, "--check-validity", *listed).returncode == 0
    for path in listed:
        assert f"- {path}" not in gone.stderr, gone.stderr
    verify = nix_store(prefix, "--verify", "--check-contents")
    assert verify.returncode == 0 and "modified" not in verify.stderr, verify.stderr


def test_uninstall_keeps_the_users_entries_and_paths(small: Built, world_dir: Path) -> None:
    """Things the user put in the store after the install (a path of their own, a file
    dropped into the store dir) survive the uninstall; only the installer's paths go."""
    prefix = world_dir / "p"
    assert run_installer(small.installer, "-y", "-p", str(prefix)).returncode == 0
    mine = world_dir / "mine.txt"
    mine.write_text("the user's own\n")
    added = nix_store(prefix, "--add", str(mine)).stdout.strip()
    stray = prefix / "store" / "README"
    stray.write_text("dropped here by the user\n")
    listed = installed_paths(small, prefix)
    gone = run_installer(small.installer, "-y", "--uninstall", "-p", str(prefix))
    assert gone.returncode == 0, gone.stderr
    assert stray.read_text() == "dropped here by the user\n"
    assert Path(added).read_text() == "the user's own\n"
    assert nix_store(prefix, "--check-validity", added).returncode == 0
    assert not [p for p in listed if os.path.lexists(p)]
