"""A prefix another local user could swap is refused (issue 22, item 1).

Two real unprivileged users, np-alice (who installs) and np-bob (who would
like alice to source his ``etc/profile.d/nix.sh``), made here with useradd if
the machine lacks them, and a group np-lab holding both (the HPC
``/scratch/group`` case).  Whoever can rename entries in a directory on the
way to the prefix can put a prefix of their own in its place: preflight
refuses such a prefix (exit 4, one line naming the directory), and so do
``--uninstall``, ``--rollback`` and ``-u``.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import reachable_dir
from tests.support import Built, build_small, tree_snapshot

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make and be users")

LAB = "np-lab"


@dataclass
class User:
    name: str
    uid: int
    gid: int  # the user private group, named as the user

    def cmd(self, *args: str) -> list[str]:
        """``args`` run as this user, with their groups (np-lab among them)."""
        return ["/usr/bin/setpriv", f"--reuid={self.uid}", f"--regid={self.gid}",
                "--init-groups", *args]


def _ensure_user(name: str) -> User:
    """The user ``name`` with a private group of the same name; made if absent (two
    test runs may race: whoever loses finds it made)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--user-group", "--no-create-home", "--home-dir",
                        "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                       capture_output=True, check=False)
        entry = pwd.getpwnam(name)
    assert grp.getgrgid(entry.pw_gid).gr_name == name, "not a user private group"
    return User(name, entry.pw_uid, entry.pw_gid)


@pytest.fixture(scope="module")
def users() -> tuple[User, User]:
    alice, bob = _ensure_user("np-alice"), _ensure_user("np-bob")
    try:
        grp.getgrnam(LAB)
    except KeyError:
        subprocess.run(["groupadd", LAB], capture_output=True, check=False)
    for user in (alice, bob):
        if user.name not in grp.getgrnam(LAB).gr_mem:
            subprocess.run(["usermod", "-a", "-G", LAB, user.name], check=True)
    return alice, bob


def mkdir(path: Path, owner: User | None, mode: int, group: str | None = None) -> Path:
    """``path`` made by root, given to ``owner`` (root if None) and ``group``, then
    chmod ``mode`` (after the chown, which clears set-id bits)."""
    path.mkdir()
    uid = owner.uid if owner else 0
    gid = grp.getgrnam(group).gr_gid if group else (owner.gid if owner else 0)
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def checked_as(user: User, prefix: Path) -> subprocess.CompletedProcess[str]:
    """The preflight check of ``prefix`` alone, run as ``user`` (no Nix, no install)."""
    code = ("import sys\n"
            "from nix_prefix.installer import preflight\n"
            "from nix_prefix.installer.prefix import Prefix\n"
            "from nix_prefix.installer.errors import InstallError\n"
            "try:\n"
            "    preflight.check_parents(Prefix(sys.argv[1]))\n"
            "except InstallError as e:\n"
            "    print(e); sys.exit(e.exit_code)\n")
    return subprocess.run(user.cmd(sys.executable, "-I", "-c", code, str(prefix)),
                          capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""}, cwd="/")


@pytest.fixture
def base() -> Iterator[Path]:
    with reachable_dir("np-parents-") as path:
        yield path


def refused(proc: subprocess.CompletedProcess[str], directory: Path, *needles: str) -> None:
    assert proc.returncode == 4, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    line = proc.stdout.strip()
    assert len(line.splitlines()) == 1 and line.startswith(f"{directory} "), line
    for needle in needles:
        assert needle in line, line


# --- the rule, one directory at a time --------------------------------------------------

def test_a_directory_another_user_made_world_writable(users, base: Path) -> None:
    """The issue's case: bob's /tmp/shared/u, mode 0777 without the sticky bit."""
    alice, bob = users
    shared = mkdir(base / "shared", bob, 0o777)
    mkdir(shared / "u", bob, 0o777)
    refused(checked_as(alice, shared / "u" / "nix"), shared, "belongs to np-bob")
    # The same directory, root's: still writable by bob.
    open_dir = mkdir(base / "open", None, 0o777)
    refused(checked_as(alice, open_dir / "nix"), open_dir,
            "writable by every user (mode 0777, no sticky bit)")


def test_a_directory_of_another_user(users, base: Path) -> None:
    alice, bob = users
    bobs = mkdir(base / "bobs", bob, 0o755)
    refused(checked_as(alice, bobs / "nix"), bobs, "belongs to np-bob")
    # The sticky bit protects entries from others, not from the directory's owner.
    sticky = mkdir(base / "bobs-sticky", bob, 0o1777)
    mine = mkdir(sticky / "alice", alice, 0o700)
    refused(checked_as(alice, mine / "nix"), sticky, "belongs to np-bob")


def test_a_group_writable_directory_of_a_shared_group(users, base: Path) -> None:
    """HPC's /scratch/group: bob, in the group, could rename alice's own dir away."""
    alice, _ = users
    lab = mkdir(base / "lab", None, 0o2775, group=LAB)
    mine = mkdir(lab / "alice", alice, 0o700)
    refused(checked_as(alice, mine / "nix"), lab,
            f"writable by the group {LAB}", "no sticky bit")


def test_the_prefix_itself_writable_by_others(users, base: Path) -> None:
    alice, _ = users
    prefix = mkdir(base / "nix", alice, 0o777)
    refused(checked_as(alice, prefix), prefix, "who could replace it")


def test_symlinks_on_the_way_are_followed_and_their_directories_checked(
        users, base: Path) -> None:
    alice, bob = users
    safe = mkdir(base / "safe", alice, 0o755)
    shared = mkdir(base / "shared", bob, 0o777)
    # A link of alice's, in a safe place, into bob's directory.
    os.symlink(shared, safe / "to-shared")
    refused(checked_as(alice, safe / "to-shared" / "nix"), shared)
    # A link to a safe place, sitting in a directory bob may write: he can re-point it.
    open_dir = mkdir(base / "open", None, 0o777)
    os.symlink(safe, open_dir / "to-safe")
    refused(checked_as(alice, open_dir / "to-safe" / "nix"), open_dir)


def test_what_stays_accepted(users, base: Path) -> None:
    """/tmp-like sticky directories, your own 0700 directory in them, and a directory
    writable by your user private group only (umask 002, RHEL's default for users)."""
    alice, _ = users
    sticky = mkdir(base / "scratch", None, 0o1777)
    own = mkdir(sticky / "alice", alice, 0o700)
    upg = mkdir(own / "umask-002", alice, 0o2775)
    for prefix in (own / "nix", upg / "nix", upg, sticky / "fresh" / "nix"):
        proc = checked_as(alice, prefix)
        assert proc.returncode == 0, (prefix, proc.stdout, proc.stderr)


# --- the installer, end to end ------------------------------------------------------------

@pytest.fixture(scope="module")
def built(module_dir: Path) -> Built:
    built = build_small(module_dir, name="a-long-enough-build-prefix-for-parents")
    built.move_build_away()
    return built


def run_as(user: User, installer: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "USER": user.name}
    return subprocess.run(user.cmd("/bin/sh", str(installer), *args), capture_output=True,
                          text=True, errors="replace", env=env, cwd="/", check=False)


def one_line(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.slow
def test_the_installer_refuses_a_prefix_under_a_shared_directory(users, built: Built,
                                                                  base: Path) -> None:
    alice, bob = users
    shared = mkdir(base / "shared", None, 0o777)
    u = mkdir(shared / "u", bob, 0o777)
    before = tree_snapshot(base)
    proc = run_as(alice, built.installer, "-y", "-p", str(u / "nix"))
    one_line(proc, 4, f"{shared} is writable by every user")
    assert tree_snapshot(base) == before


@pytest.mark.slow
def test_uninstall_rollback_and_update_refuse_a_prefix_that_became_swappable(
        users, built: Built, base: Path) -> None:
    alice, _ = users
    scratch = mkdir(base / "scratch", None, 0o1777)
    own = mkdir(scratch / "alice", alice, 0o700)
    prefix = own / "nix"
    proc = run_as(alice, built.installer, "-y", "-p", str(prefix))
    assert proc.returncode == 0, proc.stderr  # a sticky /tmp-like parent is fine
    own.chmod(0o777)  # later made writable for a colleague
    before = tree_snapshot(base)
    for args in (["--uninstall", "-y"], ["--rollback"], ["-u", "-y"]):
        proc = run_as(alice, built.installer, *args, "-p", str(prefix))
        one_line(proc, 4, f"{own} is writable by every user")
        assert tree_snapshot(base) == before
    own.chmod(0o700)
    proc = run_as(alice, built.installer, "--uninstall", "-y", "-p", str(prefix))
    assert proc.returncode == 0, proc.stderr
