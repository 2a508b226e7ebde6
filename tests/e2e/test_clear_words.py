"""Clear words for every mistake (issue 23, items 7, 8 and 9): out of memory said as
memory, a prefix that is not there, files that are not installers or not there, two
modes at once, an output that is an input, too few open files.  Each one line, the
right exit code, nothing changed."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nix_prefix.payload import seal

from .test_install import one_error_line
from tests.conftest import NOBODY
from tests.support import build_small, run_installer

NIX_PREFIX = str(Path(sys.executable).with_name("nix-prefix"))


@pytest.fixture(scope="module")
def small(module_dir: Path):
    built = build_small(module_dir)
    built.move_build_away()
    return built


def builder(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NIX_PREFIX, *args], capture_output=True, text=True, check=False,
                          timeout=timeout, env={**os.environ, "NO_COLOR": "1"})


def limited(limit: str, installer: Path, *args: str,
            shell: str = "sh") -> subprocess.CompletedProcess[str]:
    """``shell INSTALLER ARGS`` under the sh ``ulimit`` options LIMIT."""
    command = f"ulimit {limit} && exec {shell} {shlex.quote(str(installer))} " + " ".join(
        shlex.quote(a) for a in args)
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True,
                          errors="replace", check=False, timeout=300)


# Item 7 ------------------------------------------------------------------------------

def test_out_of_memory_is_said_as_memory(small) -> None:
    """Python, the seal checker, the installer's code, its threads and the Nix it runs
    each fail at some limit on the way up; every failure names memory and what is
    needed, none says "damaged" or "internal error", and nothing is left."""
    prefix = small.prefix
    failed = {}
    for kib in (8000, 15000, 20000, 25000, 30000, 40000, 60000):
        proc = limited(f"-v {kib}", small.installer, "-y")
        assert not prefix.exists(), kib
        if proc.returncode == 0:
            continue
        last = proc.stderr.strip().splitlines()[-1]
        failed[kib] = last
        assert proc.returncode in (1, 4), (kib, proc.stderr)
        assert "Traceback" not in proc.stderr, (kib, proc.stderr)
        assert "memory" in last and f"{seal.MEMORY_NEEDED_MIB} MiB" in last, (kib, last)
        assert "damaged" not in last and "internal error" not in last, (kib, last)
    print(f"{len(failed)} of 7 limits failed, each with its memory line: {sorted(failed)}")
    assert len(failed) >= 4, failed


def test_a_python_2_under_a_memory_limit_is_not_called_memory(small, tmp_path: Path) -> None:
    """Only a Python that fails as memory fails (Fatal Python error, MemoryError) makes
    the preamble blame the limit: a Python 2 (no -I) is named as what it is."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"
    fake.write_text("#!/bin/sh\necho 'Unknown option: -I' >&2\nexit 2\n")
    fake.chmod(0o755)
    for tool in ("head", "cut", "printf"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    command = (f"ulimit -v 4000000 && PATH={bin_dir} exec /bin/sh "
               f"{shlex.quote(str(small.installer))} --check")
    proc = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True,
                          check=False)
    line = one_error_line(proc, "needs CPython 3.6 or newer", "Unknown option: -I")
    assert "memory" not in line
    assert proc.returncode == 127


def test_the_preamble_says_the_memory_the_seal_checker_says() -> None:
    from nix_prefix.builder.pack import preamble

    text = preamble().decode()
    assert f"about {seal.MEMORY_NEEDED_MIB} MiB" in text
    assert f"ulimit -v {seal.MEMORY_NEEDED_MIB << 10}" in text


# Item 8 ------------------------------------------------------------------------------

def test_uninstall_and_rollback_where_there_is_no_prefix(small, module_dir: Path) -> None:
    nowhere = module_dir / "nowhere"
    for mode in ("--uninstall", "--rollback"):
        proc = run_installer(small.installer, mode, "-y", "-p", str(nowhere))
        one_error_line(proc, f"there is no prefix at {nowhere}")
        assert proc.returncode == 2
        assert not nowhere.exists()
    empty = module_dir / "empty"
    empty.mkdir()
    proc = run_installer(small.installer, "--rollback", "-p", str(empty))
    one_error_line(proc, f"{empty} has no profile to roll back")
    assert os.listdir(empty) == []


def test_a_prefix_in_roots_directory_suggests_one_of_your_own(small) -> None:
    proc = run_installer(small.installer, "-y", "-p", "/tmp", user=NOBODY)
    line = one_error_line(proc, "/tmp belongs to root", "--prefix /tmp/nix-nobody")
    assert "run the installer as root" not in line
    assert proc.returncode == 4


def test_the_symlink_hint_is_a_clean_path(small, module_dir: Path) -> None:
    real = module_dir / "r"  # one letter, as the build prefix "p": short enough
    real.mkdir()
    link = module_dir / "l"
    link.symlink_to(real)
    proc = run_installer(small.installer, "-y", "-p", str(link))
    line = one_error_line(proc, "reached through a symlink")
    assert line.endswith(f"--prefix {real}"), line
    assert os.listdir(real) == []


@pytest.mark.parametrize("at", [seal.SIZE_AT, seal.SIZE_AT + 9, seal.SEAL_END - 1,
                                seal.DIGEST_AT + 5])
@pytest.mark.parametrize("byte", [b"#", b"A", b"x", b"\x80", b" "])
def test_a_damaged_seal_is_not_called_crlf(small, tmp_path: Path, at: int,
                                           byte: bytes) -> None:
    data = small.installer.read_bytes()
    bad = tmp_path / "bad.sh"
    bad.write_bytes(data[:at] + byte + data[at + 1:])
    proc = run_installer(bad, "--check")
    line = one_error_line(proc, "is damaged", "download it again")
    assert "CRLF" not in line and "format 1" not in line
    assert proc.returncode == 3


def test_crlf_is_still_called_crlf(small, tmp_path: Path) -> None:
    data = small.installer.read_bytes()
    crlf = tmp_path / "crlf.sh"
    crlf.write_bytes(data[:seal.HEAD_SIZE].replace(b"\n", b"\r\n") + data[seal.HEAD_SIZE:])
    proc = run_installer(crlf, "--check")
    one_error_line(proc, "line endings were changed (CRLF)")
    assert proc.returncode == 3


def test_inspect_and_verify_of_no_file_is_usage(tmp_path: Path) -> None:
    for command in ("inspect", "verify"):
        proc = builder(command, str(tmp_path / "nope.sh"))
        line = one_error_line(proc, "no such file")
        assert "download" not in line
        assert proc.returncode == 2


def test_build_of_an_installer_says_use_retarget(small, tmp_path: Path) -> None:
    out = tmp_path / "out.sh"
    proc = builder("build", str(small.installer), "-o", str(out))
    line = one_error_line(proc, "is an installer, not a closureInfo dir", "retarget")
    assert "UTF-8" not in line
    assert proc.returncode == 2 and not out.exists()


# Item 9 ------------------------------------------------------------------------------

@pytest.mark.parametrize("modes", [("--check", "--uninstall"), ("--uninstall", "--rollback"),
                                   ("--list", "--info"), ("-u", "--rollback"),
                                   ("--check", "--unmodify-profile")])
def test_two_modes_at_once_are_refused_naming_both(small, modes: tuple[str, str]) -> None:
    proc = run_installer(small.installer, *modes, "-y")
    line = one_error_line(proc, *modes, "do not go together")
    assert line
    assert proc.returncode == 2
    assert not small.prefix.exists()


def test_retarget_to_root_is_refused_at_retarget(small, tmp_path: Path) -> None:
    out = tmp_path / "root.sh"
    proc = builder("retarget", str(small.installer), "--prefix", "/", "-o", str(out))
    one_error_line(proc, "the prefix cannot be /")
    assert proc.returncode == 2 and not out.exists()


def test_build_never_overwrites_its_own_input(small, tmp_path: Path) -> None:
    info = tmp_path / "closure-info"
    info.mkdir()
    for f in small.closure_info.iterdir():
        (info / f.name).write_bytes(f.read_bytes())
    before = {f.name: f.read_bytes() for f in info.iterdir()}
    for out in (info / "registration", info / "new.sh"):
        proc = builder("build", str(info), "-o", str(out))
        one_error_line(proc, "would overwrite the input")
        assert proc.returncode == 2
        assert {f.name: f.read_bytes() for f in info.iterdir()} == before


def test_verify_and_build_of_a_fifo_refuse_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args in (("verify", str(fifo)), ("build", str(fifo), "-o", str(tmp_path / "o.sh"))):
        proc = builder(*args, timeout=60)  # before: blocked for ever on the open
        one_error_line(proc, "is not a regular file")
        assert proc.returncode == 2


@pytest.mark.parametrize("limit, shell", [("-n 13", "sh"), ("-n 15", "sh"), ("-n 8", "bash")])
def test_too_few_open_files_is_one_line(small, limit: str, shell: str) -> None:
    proc = limited(limit, small.installer, "-y", shell=shell)
    line = one_error_line(proc, "too few files may be open at once", "ulimit -n 64")
    assert line
    assert proc.returncode == 4
    assert not small.prefix.exists()


def test_a_low_soft_limit_on_open_files_is_raised(small, module_dir: Path) -> None:
    prefix = small.prefix
    proc = limited("-S -n 12", small.installer, "-y")
    assert proc.returncode == 0, proc.stderr
    assert (prefix / "var/nix/profiles/default").exists()
    assert run_installer(small.installer, "--uninstall", "-y").returncode == 0
