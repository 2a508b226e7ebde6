"""Nothing of the user's is ever lost: what the installer did not create, it never deletes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.localnix import prefix_env
from nix_prefix.builder.pack import BuildOptions, build_installer

from tests.support import Built, build_small, run_installer, script_package, tree_snapshot


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


# A package of the user's with the name of the sample's root: an update replaces it.
USERS_HELLO = script_package("hello-nix-prefix-0.9", "hello-nix-prefix", "old")


@pytest.mark.parametrize("fmt, killed", [
    ("nix profile", False),
    pytest.param("nix-env", False, marks=pytest.mark.slow),
    pytest.param("nix profile", True, marks=pytest.mark.slow),
    pytest.param("nix-env", True, marks=pytest.mark.slow)])
def test_update_replacing_a_users_package_is_taken_back_whole(small: Built, world_dir: Path,
                                                              fmt: str, killed: bool) -> None:
    """The user's own prefix, its profile made by `nix profile install` (manifest.json)
    or `nix-env -i`, holding a package the installer's root replaces: -u removes it
    first (a generation in between, deleted again), then adds the roots.  The
    uninstall, the last, leaves the prefix as it was: store, rows and profile, the
    in-between generation's user environment included; also when the install was
    killed (-9) in between, before that generation was deleted."""
    from nix_prefix.builder.localnix import LocalNix

    from .test_faults import prefix_state

    prefix = world_dir / "users"
    nix = LocalNix(prefix)
    (mine,) = nix.build_expr(USERS_HELLO)
    profile = prefix / "var/nix/profiles/default"
    if fmt == "nix profile":
        nix.run("nix", ["profile", "install", "--extra-experimental-features", "nix-command",
                        "--profile", str(profile), mine])
        assert (profile / "manifest.json").exists()
    else:
        nix.run("nix-env", ["-p", str(profile), "-i", mine])
        assert (profile / "manifest.nix").exists()
    # nix-build -E leaves an auto root to a result in /tmp, gone at once: Nix itself
    # removes such a stale link whenever it lists the roots (src/libstore/gc.cc).
    for link in (prefix / "var/nix/gcroots/auto").iterdir():
        if not link.exists():
            link.unlink()
    before = prefix_state(prefix)
    store_before = sorted(os.listdir(prefix / "store"))

    if killed:
        env = dict(os.environ, NIX_PREFIX_TEST_CRASH_AT="between-generations:1")
        proc = run_installer(small.installer, "-y", "-u", "-p", str(prefix), env=env)
        assert proc.returncode == -9, proc.stderr
        assert len(list(profile.parent.glob("default-*-link"))) == 3
    else:
        proc = run_installer(small.installer, "-y", "-u", "-p", str(prefix))
        assert proc.returncode == 0, proc.stderr
        assert_whole(prefix)
        assert (profile / "manifest.json").exists() == (fmt == "nix profile")
        # The generation in between is gone again.
        assert len(list(profile.parent.glob("default-*-link"))) == 2

    gone = run_installer(small.installer, "-y", "--uninstall", "-p", str(prefix))
    assert gone.returncode == 0, gone.stderr
    assert sorted(os.listdir(prefix / "store")) == store_before
    after = prefix_state(prefix)
    # Switching back re-makes the profile's link: same target, a new mtime.
    for state in (before, after):
        mode, uid, size, _, link, data = state["var/nix/profiles/default"]
        state["var/nix/profiles/default"] = (mode, uid, size, None, link, data)
    assert after == before
    assert subprocess.run([profile / "bin/hello-nix-prefix"], capture_output=True,
                          text=True).stdout == "old\n"


def test_a_receipt_naming_what_is_not_a_store_path_deletes_none_of_it(
        small: Built, world_dir: Path) -> None:
    """A receipt is data (damaged, or edited by hand): an entry of it that is not a
    store path of the prefix's store (a dir the user made in the store dir, a file
    beside the store, a file outside the prefix) is never deleted by the uninstall."""
    import json

    prefix = world_dir / "p"
    assert run_installer(small.installer, "-y", "-p", str(prefix)).returncode == 0
    docs = prefix / "store" / "docs"
    docs.mkdir()
    (docs / "thesis.tex").write_text("four years of work\n")
    notes = prefix / "notes.txt"
    notes.write_text("mine\n")
    outside = world_dir / "outside.txt"
    outside.write_text("not the installer's\n")
    (path,) = (prefix / "var/nix-prefix/receipts").glob("*.json")
    doc = json.loads(path.read_text())
    strangers = [str(docs), str(notes), str(outside), f"{prefix}/store/../notes.txt"]
    for step in doc["steps"]:
        if step["kind"] == "register":
            step["owned"]["registered"] += strangers
        if step["kind"] == "place-paths":
            step["owned"]["placed"].update({p: ["sha256:0", 1] for p in strangers})
    path.write_text(json.dumps(doc))
    listed = installed_paths(small, prefix)
    gone = run_installer(small.installer, "-y", "--uninstall", "-p", str(prefix))
    assert gone.returncode == 0, gone.stderr
    assert (docs / "thesis.tex").read_text() == "four years of work\n"
    assert notes.read_text() == "mine\n" and outside.read_text() == "not the installer's\n"
    assert not [p for p in listed if os.path.lexists(p)]
