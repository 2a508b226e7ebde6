"""Installers run the way people run them: piped, redirected, by process
substitution, in strange environments, and refuse what they cannot trust.

``curl URL | sh -s -- ARGS`` and its kin hand the file to sh on standard input;
the preamble's Python takes the rest of it from the pipe into a private file,
puts back what sh had read, and checks the seal over exactly those bytes
(payload/seal.py).  curl fetches from a server on 127.0.0.1.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nix_prefix.payload import seal

from tests.support import Built, build_small, nix_store, run_installer, tmpfs

SHELLS = ["dash", "bash"]


@pytest.fixture(scope="module")
def built(module_dir: Path) -> Built:
    built = build_small(module_dir, name="a-long-enough-build-prefix-for-pipes")
    built.move_build_away()
    return built


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def url(built: Built) -> Iterator[str]:
    """The installer served over HTTP on 127.0.0.1 (for curl)."""
    handler = functools.partial(_QuietHandler, directory=str(built.installer.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{built.installer.name}"
    finally:
        server.shutdown()
        server.server_close()


def env(**extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", **extra}


def shell(command: str, cwd: Path | None = None, **extra: str) -> subprocess.CompletedProcess:
    """Run ``command`` with bash (for <(...)); the installer runs in whatever it names."""
    return subprocess.run(["/bin/bash", "-c", command], capture_output=True, text=True,
                          cwd=cwd, env=env(**extra), check=False)


@pytest.mark.parametrize("form", [
    "curl -fsS {url} | {sh} -s -- {args}",
    "{sh} -s -- {args} < {file}",
    "{sh} <(curl -fsS {url}) {args}",
])
@pytest.mark.parametrize("sh", SHELLS)
def test_every_piped_form_checks_and_runs(built: Built, url: str, form: str, sh: str) -> None:
    command = form.format(url=url, sh=sh, file=built.installer, args="--check")
    proc = shell(command)
    assert proc.returncode == 0, proc.stderr
    assert "is intact" in proc.stderr and "3 store paths" in proc.stderr, proc.stderr


@pytest.mark.parametrize("sh", SHELLS)
def test_curl_pipe_installs(built: Built, url: str, sh: str) -> None:
    prefix = built.installer.with_name(f"piped-{sh}")
    proc = shell(f"curl -fsS {url} | {sh} -s -- -y -p {prefix}")
    assert proc.returncode == 0, proc.stderr
    assert "Uninstall:     sh INSTALLER" in proc.stderr, proc.stderr
    verify = nix_store(prefix, "--verify", "--check-contents")
    assert verify.returncode == 0 and "modified" not in verify.stderr, verify.stderr


@pytest.mark.parametrize("sh", SHELLS)
def test_a_planted_sh_in_the_current_directory_is_never_run(built: Built, module_dir: Path,
                                                            sh: str) -> None:
    """In a world-writable directory holding someone else's ./sh and ./bash (a real,
    sealed installer of another closure), the piped installer runs itself."""
    other = build_small(module_dir, compression="zstd", name=f"someone-else-{sh}")
    shared = module_dir / f"shared-{sh}"
    shared.mkdir()
    shared.chmod(0o777)
    for name in ("sh", "bash"):
        shutil.copy(other.installer, shared / name)
        (shared / name).chmod(0o755)
    proc = shell(f"cat {built.installer} | {sh} -s -- --info", cwd=shared)
    assert proc.returncode == 0, proc.stderr
    assert "payload:       xz," in proc.stdout and "zstd" not in proc.stdout, proc.stdout
    assert str(built.prefix) in proc.stdout and str(other.prefix) not in proc.stdout


@pytest.mark.parametrize("sh", SHELLS)
@pytest.mark.parametrize("length", [12, 5000, 40000, 100000, (128 << 10) + 100, -1])
def test_a_cut_pipe_is_refused(built: Built, sh: str, length: int) -> None:
    data = built.installer.read_bytes()
    sh_text_end = data.index(b'eval "$h"; exit 3; } #\n') + 24
    cut = built.installer.with_name(f"cut-{sh}-{length}.sh")
    cut.write_bytes(data[:length])
    target = built.installer.with_name(f"cut-{sh}-{length}")
    proc = shell(f"cat {cut} | {sh} -s -- -y -p {target}")
    assert proc.returncode != 0 and not target.exists(), proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    if length > sh_text_end or length < 0:  # the seal says how much is missing
        assert proc.returncode == 3 and "truncated" in proc.stderr, proc.stderr


def test_crlf_conversion_is_named(built: Built) -> None:
    crlf = built.installer.with_name("crlf.sh")
    crlf.write_bytes(built.installer.read_bytes().replace(b"\n", b"\r\n"))
    for command in (f"sh {crlf} --check", f"cat {crlf} | bash -s -- --check"):
        proc = shell(command)
        assert proc.returncode == 3, proc.stderr
        assert proc.stderr.count("\n") == 1 and "line endings were changed" in proc.stderr


@pytest.mark.parametrize("fake", ["/bin/true", "/bin/false", "/bin/echo", "/nonexistent/python3"])
def test_a_python_that_is_not_one_is_named(built: Built, fake: str) -> None:
    proc = run_installer(built.installer, "--check", env=env(NIX_PREFIX_PYTHON=fake))
    assert proc.returncode == 127, proc.stderr
    assert f"NIX_PREFIX_PYTHON={fake} cannot run this installer" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "damaged" not in proc.stderr
    if fake.startswith("/nonexistent"):  # a sentence, not "it not found"
        assert "cannot run this installer: it is not found, or not executable by you;" \
            in proc.stderr, proc.stderr


def test_python2_is_named_as_too_old(built: Built) -> None:
    python2 = Path(os.popen("pyenv root").read().strip()) / "versions/2.7.18/bin/python2"
    if not python2.exists():
        pytest.skip("no pyenv Python 2.7 here")
    proc = run_installer(built.installer, "--check", env=env(NIX_PREFIX_PYTHON=str(python2)))
    assert proc.returncode == 127 and str(python2) in proc.stderr, proc.stderr


def test_a_hostile_python_environment_changes_nothing(built: Built, module_dir: Path) -> None:
    """PYTHONPATH with a broken enum.py (as `module load` leaves), PYTHONHOME that
    does not exist, PYTHONSTARTUP and an enum.py in the current directory."""
    evil = module_dir / "evil"
    evil.mkdir(exist_ok=True)
    for name in ("enum.py", "hashlib.py", "zipfile.py"):
        (evil / name).write_text("raise SystemExit('hijacked by %s' % __file__)\n")
    (evil / "startup.py").write_text("raise SystemExit('hijacked by PYTHONSTARTUP')\n")
    prefix = module_dir / "hostile"
    proc = subprocess.run(["/bin/sh", str(built.installer), "-y", "-p", str(prefix)],
                          capture_output=True, text=True, cwd=evil, check=False,
                          env=env(PYTHONPATH=str(evil), PYTHONHOME="/nonexistent",
                                  PYTHONSTARTUP=str(evil / "startup.py"),
                                  PYTHONSAFEPATH="", PYTHONINSPECT="1"))
    assert proc.returncode == 0 and "hijacked" not in proc.stderr + proc.stdout, proc.stderr
    assert (prefix / "var/nix/profiles/default").exists()


def test_the_private_copy_is_the_users_alone(built: Built) -> None:
    data = [b"#!/bin/sh\n", b"not an installer\n"]
    with pytest.raises(SystemExit):  # not sealed: refused after the copy
        seal.private_copy(iter(data), "test")
    # The copies made (and refused) above are removed at exit; make one that passes.
    src = built.installer
    path = seal.private_copy(iter([src.read_bytes()]), "test")
    st, dst = os.stat(path), os.stat(os.path.dirname(path))
    assert stat.S_IMODE(st.st_mode) == 0o600 and stat.S_IMODE(dst.st_mode) == 0o700
    assert st.st_uid == dst.st_uid == os.getuid()
    assert Path(path).read_bytes() == src.read_bytes()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to mount a tmpfs)")
def test_a_noexec_tmpdir_is_fine(built: Built, module_dir: Path) -> None:
    """Many clusters mount /tmp noexec: the piped copy is only read by Python, and
    nix-env's profile build runs nothing from TMPDIR, so the install works."""
    tmp = module_dir / "noexec-tmp"
    tmp.mkdir()
    with tmpfs(tmp, "noexec,size=64m"):
        shutil.copy("/bin/true", tmp / "true")
        with pytest.raises(PermissionError):  # the mount really is noexec
            subprocess.run([str(tmp / "true")], check=False)
        prefix = module_dir / "noexec-prefix"
        with open(built.installer, "rb") as stdin:
            proc = subprocess.run(["sh", "-s", "--", "-y", "-q", "-p", str(prefix)], stdin=stdin,
                                  capture_output=True, text=True, check=False,
                                  env=env(TMPDIR=str(tmp)))
        assert proc.returncode == 0, proc.stderr
        assert (prefix / "var/nix/profiles/default").exists()
        assert sorted(os.listdir(tmp)) == ["true"]  # the private copy is gone
