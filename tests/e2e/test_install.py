"""The installer file on a small real closure: install, re-run, inspect, refuse bad input."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.localnix import prefix_env
from nix_prefix.builder.pack import BuildOptions, build_installer

from tests.conftest import NOBODY
from tests.support import build_small, run_installer, tree_snapshot


@pytest.fixture
def small(world_dir: Path):
    built = build_small(world_dir)
    built.move_build_away()
    return built


def machine_nix(prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The machine's own Nix pointed at an installed prefix, as a second opinion."""
    env = prefix_env(prefix, home=prefix / "var" / "nix-prefix" / "home")
    return subprocess.run(list(args), capture_output=True, text=True, env=env, check=False)


def one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("nix-prefix: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_install_verify_and_rerun(small) -> None:
    prefix = small.prefix
    proc = run_installer(small.installer, "-y")
    assert proc.returncode == 0, proc.stderr
    assert f". {prefix}/etc/profile.d/nix.sh" in proc.stderr

    verify = machine_nix(prefix, "nix-store", "--verify", "--check-contents")
    assert verify.returncode == 0 and "modified" not in verify.stderr, verify.stderr
    reg = small.closure_info.joinpath("registration").read_text().split("\n")
    i = 0
    while i < len(reg) - 1:
        path, n = reg[i], int(reg[i + 4])
        refs = machine_nix(prefix, "nix-store", "-q", "--references", path)
        assert sorted(refs.stdout.split()) == sorted(reg[i + 5:i + 5 + n])
        i += 5 + n

    # Nix's canonical metadata on every installed file.
    for path in (prefix / "store").iterdir():
        if path.name.startswith(".") or "user-environment" in path.name:
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            for name in [""] + dirnames + filenames:
                st = os.lstat(os.path.join(dirpath, name))
                assert st.st_mtime == 1
                if not stat.S_ISLNK(st.st_mode):
                    assert stat.S_IMODE(st.st_mode) in (0o444, 0o555)

    conf = (prefix / "etc/nix/nix.conf").read_text()
    for line in ("build-users-group =", "sandbox = false", "substituters ="):
        assert line in conf.splitlines()
    hello = subprocess.run(["sh", "-c", f". {prefix}/etc/profile.d/nix.sh && hello-nix-prefix"],
                           capture_output=True, text=True, check=True)
    assert hello.stdout == "hello from nix-prefix\n"
    assert os.path.islink(prefix / "var/nix/profiles/default")

    before = tree_snapshot(prefix / "store") | tree_snapshot(prefix / "etc")
    profiles = sorted(os.listdir(prefix / "var/nix/profiles"))
    again = run_installer(small.installer, "-y")
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr
    assert tree_snapshot(prefix / "store") | tree_snapshot(prefix / "etc") == before
    assert sorted(os.listdir(prefix / "var/nix/profiles")) == profiles


def test_check_list_info_write_nothing(small) -> None:
    check = run_installer(small.installer, "--check")
    assert check.returncode == 0, check.stderr
    assert "OK" in check.stderr
    listed = run_installer(small.installer, "--list")
    expected = small.closure_info.joinpath("store-paths").read_text().split()
    assert listed.stdout.split() == sorted(expected)
    info = run_installer(small.installer, "--info")
    assert f"store dir:     {small.prefix}/store" in info.stdout
    assert "system:        x86_64-linux" in info.stdout or "system:" in info.stdout
    helptext = run_installer(small.installer, "--help")
    assert helptext.returncode == 0 and "--prefix" in helptext.stdout
    assert not small.prefix.exists()


def test_runs_as_sh_dot_slash_and_python(small) -> None:
    for cmd in (["sh", str(small.installer)], [str(small.installer)],
                ["python3", str(small.installer)]):
        proc = subprocess.run(cmd + ["--list"], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, (cmd, proc.stderr)
        assert len(proc.stdout.split()) == len(small.closure_info.joinpath(
            "store-paths").read_text().split())


def test_keeps_a_users_nix_conf(small) -> None:
    conf = small.prefix / "etc" / "nix" / "nix.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("# mine\nbuild-users-group =\nsandbox = false\nkeep-outputs = true\n")
    proc = run_installer(small.installer, "-y")
    assert proc.returncode == 0, proc.stderr
    assert conf.read_text().startswith("# mine\n")
    assert "keeping your" in proc.stderr


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x55
    path.write_bytes(bytes(data))


def payload_offset(installer: Path) -> int:
    import zipfile

    with zipfile.ZipFile(installer) as zf:
        info = next(i for i in zf.infolist() if i.filename.startswith("payload/"))
        return info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2


def test_corrupt_installer_is_refused_and_nothing_written(small) -> None:
    flip_byte(small.installer, payload_offset(small.installer))
    check = run_installer(small.installer, "--check")
    one_error_line(check, "download")
    assert check.returncode == 3
    proc = run_installer(small.installer, "-y")
    one_error_line(proc, "download")
    assert not small.prefix.exists()


def test_truncated_installer_is_refused(small) -> None:
    data = small.installer.read_bytes()
    small.installer.write_bytes(data[: len(data) * 2 // 3])
    proc = run_installer(small.installer, "-y")
    one_error_line(proc, "damaged")
    assert not small.prefix.exists()


def test_longer_prefix_is_refused(small, world_dir: Path) -> None:
    other = world_dir / "elsewhere"  # longer than the build prefix: no relocation possible
    proc = run_installer(small.installer, "-y", "--prefix", str(other))
    one_error_line(proc, "too long", "at most")
    assert proc.returncode == 4
    assert not other.exists()


def test_prefix_with_characters_nix_rejects(small, world_dir: Path) -> None:
    proc = run_installer(small.installer, "-y", "--prefix", str(world_dir / "a b"))
    one_error_line(proc, "characters")
    assert not (world_dir / "a b").exists()


@pytest.mark.parametrize("given, code, words", [
    ("", 2, ("empty", "unset variable")),  # -p "$PREFIX" with PREFIX unset
    ("  ", 2, ("empty",)),
    ("/", 4, ("cannot be /",)),
])
def test_an_empty_or_root_prefix_is_named(small, given: str, code: int,
                                          words: tuple[str, ...]) -> None:
    proc = run_installer(small.installer, "-y", "-p", given)
    one_error_line(proc, *words)
    assert proc.returncode == code
    assert not small.prefix.exists()  # never the default prefix instead


def test_a_bad_nix_prefix_jobs_is_named_unless_j_overrides_it(small) -> None:
    env = dict(os.environ, NIX_PREFIX_JOBS="two")
    proc = run_installer(small.installer, "-y", "-q", env=env)
    one_error_line(proc, "NIX_PREFIX_JOBS", "'two'", "positive number")
    assert proc.returncode == 2
    assert not small.prefix.exists()
    given = run_installer(small.installer, "-y", "-q", "-j", "2", env=env)
    assert given.returncode == 0, given.stderr


def test_umask_000_leaves_nothing_writable_by_others(small) -> None:
    """A umask of 000 (some shared accounts have one): no file or dir of the prefix
    becomes writable by group or others, the receipt (which uninstall acts on) included."""
    proc = subprocess.run(["/bin/sh", "-c", f"umask 000; exec /bin/sh {small.installer} -y -q"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    writable = [os.path.join(d, n) for d, dirs, files in os.walk(small.prefix)
                for n in dirs + files
                if not os.path.islink(os.path.join(d, n))
                and os.lstat(os.path.join(d, n)).st_mode & 0o022]
    assert writable == []
    assert list((small.prefix / "var/nix-prefix/receipts").glob("*.json"))


def test_wrong_architecture(world_dir: Path) -> None:
    built = build_small(world_dir)
    out = world_dir / "arm.sh"
    build_installer(read_closure(built.closure_info), out,
                    BuildOptions(system="aarch64-linux"))
    built.move_build_away()
    proc = run_installer(out, "-y")
    one_error_line(proc, "aarch64-linux", "x86_64-linux")
    assert not built.prefix.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
def test_unwritable_prefix(small) -> None:
    small.prefix.mkdir(mode=0o755)
    proc = run_installer(small.installer, "-y", user=NOBODY)
    one_error_line(proc, "not writable")
    assert os.listdir(small.prefix) == []


def test_no_python_found(small, world_dir: Path) -> None:
    empty = world_dir / "empty-bin"
    empty.mkdir()
    proc = subprocess.run(["/bin/sh", str(small.installer), "--list"], capture_output=True,
                          text=True, env={"PATH": str(empty)}, check=False)
    assert proc.returncode == 127
    assert "needs CPython 3.6 or newer" in proc.stderr
    assert "python3.6 and python" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_full_disk_is_refused(small) -> None:
    small.prefix.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs",
                              str(small.prefix)], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {mounted.stderr!r}")
    try:
        proc = run_installer(small.installer, "-y")
        one_error_line(proc, "not enough free space")
        assert os.listdir(small.prefix) == []
    finally:
        subprocess.run(["umount", str(small.prefix)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
def test_user_without_a_name(small) -> None:
    small.prefix.mkdir()
    os.chown(small.prefix, 12345, 12345)
    env = {"PATH": "/usr/bin:/bin"}
    proc = run_installer(small.installer, "-y", env=env, user=12345)
    one_error_line(proc, "set USER")


def _run_on_terminal(cmd: list[str], answer: bytes) -> tuple[int, str]:
    """Run ``cmd`` with a pseudo-terminal as stdin/stderr and type ``answer``."""
    import pty
    import select

    leader, follower = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=follower, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    seen = b""
    answered = False
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(leader, 4096)
        except OSError:
            break
        if not data:
            break
        seen += data
        if not answered and b"Proceed?" in seen:
            os.write(leader, answer)
            answered = True
    proc.wait(timeout=60)
    os.close(leader)
    return proc.returncode, seen.decode(errors="replace")


def test_asks_once_on_a_terminal(small) -> None:
    code, screen = _run_on_terminal(["sh", str(small.installer)], b"n\n")
    assert "Install " in screen and "Proceed? [y/N]" in screen
    assert screen.count("Proceed?") == 1
    assert code == 1 and "nothing was changed" in screen
    assert not small.prefix.exists()
    code, screen = _run_on_terminal(["sh", str(small.installer)], b"y\n")
    assert code == 0, screen
    assert (small.prefix / "var/nix/profiles/default").is_symlink()


def test_store_paths_over_the_path_limit_are_refused(world_dir: Path) -> None:
    from nix_prefix.installer import preflight
    from nix_prefix.installer.errors import EnvironmentProblem
    from nix_prefix.installer.prefix import Prefix
    from nix_prefix.payload.manifest import Manifest

    manifest = Manifest(f"{world_dir}/p/store", "x86_64-linux", "xz", [], [], [],
                        longest_path=4090)
    with pytest.raises(EnvironmentProblem, match="over Linux's limit of 4096"):
        preflight.check_path_length(manifest, Prefix(f"{world_dir}/p"))
    manifest.longest_path = 200
    preflight.check_path_length(manifest, Prefix(f"{world_dir}/p"))


def test_home_and_user_unset(small) -> None:
    """Nix runs with the prefix's own HOME and the user's name from the password database."""
    proc = run_installer(small.installer, "-y", env={"PATH": os.environ["PATH"]})
    assert proc.returncode == 0, proc.stderr
    hello = small.prefix / "var/nix/profiles/default/bin/hello-nix-prefix"
    assert subprocess.run([hello], capture_output=True, text=True,
                          check=True).stdout == "hello from nix-prefix\n"


def test_the_plan_shown_is_the_plan_run(small) -> None:
    """The numbered steps shown before the question are the steps the receipt records,
    in that order, each done: the plan printed is the plan executed."""
    import json
    import re

    code, screen = _run_on_terminal(["sh", str(small.installer)], b"y\n")
    assert code == 0, screen
    shown = re.findall(r"^ +(\d+)\. (.+?)\r?$", screen.split("Proceed?")[0], re.M)
    assert [int(n) for n, _ in shown] == list(range(1, len(shown) + 1))
    (path,) = (small.prefix / "var/nix-prefix/receipts").glob("*.json")
    steps = json.loads(path.read_text())["steps"]
    assert len(steps) == len(shown) >= 7
    first_words = {"make-dirs": "create ", "place-paths": "unpack, verify",
                   "write-file": "write ", "register": "register them",
                   "profile": "make a new generation"}
    for step, (_, line) in zip(steps, shown, strict=True):
        assert step["state"] == "done", step
        assert line.startswith(first_words[step["kind"]]), (step["kind"], line)
        if step["kind"] == "write-file":
            assert line.startswith(f"write {step['params']['path']} "), line


def test_uninstall_asks_with_what_each_revert_does(small) -> None:
    """--uninstall without -y lists what undoing each step of the receipt will do, newest
    first, before it asks; "n" changes nothing."""
    import re

    assert run_installer(small.installer, "-y").returncode == 0
    before = tree_snapshot(small.prefix)
    code, screen = _run_on_terminal(["sh", str(small.installer), "--uninstall"], b"n\n")
    assert code == 1 and "nothing was changed" in screen, screen
    assert tree_snapshot(small.prefix) == before
    shown = re.findall(r"^ +\d+\. (.+?)\r?$", screen.split("Proceed?")[0], re.M)
    assert shown[0].startswith("remove generation 1 of the profile "), shown
    assert shown[1].startswith("delete the "), shown
    assert any(line.startswith(f"remove {small.prefix}/etc/nix/nix.conf if it is as")
               for line in shown), shown
    assert shown[-1].startswith(f"remove the directories the installs created in "
                                f"{small.prefix}"), shown
