"""Crash safety: kill -9 at any moment of an install, run again, and all is well.

The installer dies (SIGKILL, as from the OOM killer or a power cut) at named
moments spread over unpacking, placing, configuring, registering and making
the profile (installer/crashpoints.py).  A second run must finish; then Nix
itself finds every registered path present and intact, nothing unregistered
is left half-written, and no staging dir remains.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nix_prefix.payload import hashes, nar, registration

from tests.support import Built, build_small, nix_store, run_installer

# (moment, n): die the n-th time the installer reaches the moment.  The sample's
# retargeting install writes its files in 14 pieces (with its reference map a file is
# patched and written in fewer pieces than a scan cut it into): 14 is the last write.
KILL_POINTS = [
    ("write", 1), ("write", 4), ("write", 8), ("write", 12), ("write", 14),
    ("unpacked", 1), ("unpacked", 2), ("unpacked", 3),
    ("renamed", 1), ("renamed", 2), ("renamed", 3),
    ("placed", 1), ("placed", 2), ("placed", 3),
    ("env-file", 1), ("env-file", 2), ("env-file", 3),
    ("before-load-db", 1), ("after-load-db", 1),
    ("before-profile", 1), ("after-profile", 1),
]


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    base = Path(tempfile.mkdtemp(prefix="np-crash-", dir="/tmp"))
    try:
        b = build_small(base, name="a-long-enough-build-prefix")
        b.move_build_away()
        yield b
    finally:
        shutil.rmtree(base, ignore_errors=True)


def assert_sound(prefix: Path) -> None:
    """Nix's view of the prefix is complete and true, and no debris is left."""
    verify = nix_store(prefix, "--verify", "--check-contents")
    assert verify.returncode == 0 and "modified" not in verify.stderr, verify.stderr
    store = prefix / "store"
    assert not [p for p in os.listdir(store) if p.startswith(".nix-prefix-staging")]
    valid = nix_store(prefix, "-q", "--requisites",
                      str(prefix / "var/nix/profiles/default")).stdout.split()
    assert len(valid) >= 3
    for info in registration.parse(nix_store(prefix, "--dump-db", *valid).stdout):
        digest, size = nar.hash_path(os.fsencode(info.path))
        assert (hashes.format_sha256(digest), size) == (info.nar_hash, info.nar_size)
    hello = prefix / "var/nix/profiles/default/bin/hello-nix-prefix"
    out = subprocess.run([hello], capture_output=True, text=True, check=True).stdout
    assert out == "hello from nix-prefix\n"


@pytest.mark.slow
@pytest.mark.parametrize("moment, n", KILL_POINTS, ids=[f"{m}-{n}" for m, n in KILL_POINTS])
def test_rerun_after_kill_9_finishes_clean(built: Built, moment: str, n: int) -> None:
    prefix = built.prefix.parent / f"k{KILL_POINTS.index((moment, n))}"
    env = dict(os.environ, NIX_PREFIX_TEST_CRASH_AT=f"{moment}:{n}")
    killed = run_installer(built.installer, "-y", "-p", str(prefix), env=env)
    assert killed.returncode == -9, f"never reached {moment}:{n}: {killed.stderr}"
    again = run_installer(built.installer, "-y", "-p", str(prefix))
    assert again.returncode == 0, again.stderr
    assert_sound(prefix)
    shutil.rmtree(prefix, ignore_errors=True)  # modes 0555: best effort, /tmp is cleaned


@pytest.mark.slow
@pytest.mark.parametrize("moment, n", KILL_POINTS, ids=[f"{m}-{n}" for m, n in KILL_POINTS])
def test_uninstall_after_kill_9_leaves_nothing(built: Built, moment: str, n: int) -> None:
    """The other way out of a killed install: --uninstall takes back whatever the
    receipt says it had done, and the prefix, which did not exist, is gone again."""
    prefix = built.prefix.parent / f"u{KILL_POINTS.index((moment, n))}"
    env = dict(os.environ, NIX_PREFIX_TEST_CRASH_AT=f"{moment}:{n}")
    killed = run_installer(built.installer, "-y", "-p", str(prefix), env=env)
    assert killed.returncode == -9, f"never reached {moment}:{n}: {killed.stderr}"
    gone = run_installer(built.installer, "-y", "--uninstall", "-p", str(prefix))
    assert gone.returncode == 0, gone.stderr
    assert not prefix.exists(), sorted(str(p.relative_to(prefix)) for p in prefix.rglob("*"))


def test_two_installers_on_one_prefix_do_not_interleave(built: Built) -> None:
    prefix = built.prefix.parent / "two"
    procs = [subprocess.Popen(["/bin/sh", str(built.installer), "-y", "-p", str(prefix)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate() + (p.returncode,) for p in procs]
    assert all(code == 0 for _, _, code in results), results
    assert_sound(prefix)


# Moments while the prefix's directories are made, for a prefix two of whose parents
# are missing: the 1st and 6th directory made under the temporary name (the
# parents, the prefix, var, var/nix-prefix, its receipts dir), just after they
# are renamed into place with the first receipt and before the lock is taken,
# and the 1st and 8th of the rest (store ... the installer's home), each claimed
# in the receipt before it is made.
DIR_POINTS = [("mkdir", 1), ("mkdir", 6), ("receipts-dir", 1), ("mkdir", 7), ("mkdir", 14)]


@pytest.mark.parametrize("then", ["rerun", "uninstall"])
@pytest.mark.parametrize("moment, n", [
    pytest.param(m, n, marks=[] if (m, n) == ("receipts-dir", 1) else [pytest.mark.slow])
    for m, n in DIR_POINTS], ids=[f"{m}-{n}" for m, n in DIR_POINTS])
def test_kill_9_while_making_the_directories_leaves_none_behind(
        built: Built, moment: str, n: int, then: str) -> None:
    """No moment leaves a directory that no receipt claims: after the kill, a re-run
    and the uninstall, or the uninstall alone, leave the parents as they were."""
    top = built.prefix.parent / f"d{DIR_POINTS.index((moment, n))}{then[0]}"
    prefix = top / "a" / "nix"
    env = dict(os.environ, NIX_PREFIX_TEST_CRASH_AT=f"{moment}:{n}")
    killed = run_installer(built.installer, "-y", "-p", str(prefix), env=env)
    assert killed.returncode == -9, f"never reached {moment}:{n}: {killed.stderr}"
    if then == "rerun":
        again = run_installer(built.installer, "-y", "-p", str(prefix))
        assert again.returncode == 0, again.stderr
        assert_sound(prefix)
    gone = run_installer(built.installer, "-y", "--uninstall", "-p", str(prefix))
    assert gone.returncode == 0, gone.stderr
    assert not top.exists(), sorted(str(p) for p in top.rglob("*"))
    assert not [p for p in os.listdir(built.prefix.parent) if p.startswith(".nix-prefix-new")]


def test_a_temporary_dir_left_beside_a_directory_made_since_goes_too(built: Built) -> None:
    """Killed while its first directories were under their temporary name; then the
    user made the outermost one themselves: the next install still removes what the
    killed one left, and the uninstall leaves the user's directory, empty, as it was."""
    top = built.prefix.parent / "made-since"
    prefix = top / "a" / "nix"
    env = dict(os.environ, NIX_PREFIX_TEST_CRASH_AT="mkdir:2")
    assert run_installer(built.installer, "-y", "-p", str(prefix), env=env).returncode == -9
    assert [p for p in os.listdir(built.prefix.parent) if p.startswith(".nix-prefix-new")]
    top.mkdir()
    again = run_installer(built.installer, "-y", "-p", str(prefix))
    assert again.returncode == 0, again.stderr
    assert not [p for p in os.listdir(built.prefix.parent) if p.startswith(".nix-prefix-new")]
    gone = run_installer(built.installer, "-y", "--uninstall", "-p", str(prefix))
    assert gone.returncode == 0, gone.stderr
    assert os.listdir(top) == []
