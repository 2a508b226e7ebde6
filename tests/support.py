"""Helpers for tests that build real closures and run real installers."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.localnix import LocalNix, prefix_env
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.builder.samples import build_small_closure

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Built:
    """A closure built by real Nix at ``prefix``, its closureInfo and an installer."""

    prefix: Path
    closure_info: Path
    installer: Path
    roots: list[str]
    nix: LocalNix

    def move_build_away(self) -> Path:
        """Move the build prefix (store and DB) aside so the install stands alone."""
        moved = self.prefix.with_name(self.prefix.name + ".build")
        os.rename(self.prefix, moved)
        return moved


def build_small(base: Path, *, compression: str = "xz", name: str = "p") -> Built:
    """Build the small sample closure at BASE/NAME and an installer for it."""
    nix = LocalNix(base / name)
    roots = build_small_closure(nix)
    info = nix.write_closure_info(roots, base / f"{name}-closure-info")
    out = base / f"{name}-installer.sh"
    build_installer(read_closure(info), out, BuildOptions(compression=compression))
    return Built(base / name, info, out, roots, nix)


def build_and_install(base: Path, prefix: Path) -> Built:
    """Build the small closure at a long prefix under BASE, move the build away and
    install it into PREFIX (shorter, so by relocation): a prefix to test against."""
    built = build_small(base, name="a-long-enough-build-prefix")
    built.move_build_away()
    proc = run_installer(built.installer, "-y", "-p", str(prefix))
    assert proc.returncode == 0, proc.stderr
    return built


def script_package(name: str, program: str, says: str) -> str:
    """A Nix expression for the package NAME whose ``bin/PROGRAM`` prints SAYS (a plain
    derivation built by /bin/sh: the machine's Nix builds it without nixpkgs)."""
    return f"""derivation {{
  name = "{name}"; system = builtins.currentSystem; builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  args = [ "-c" ("mkdir -p $out/bin; printf '#!/bin/sh\\necho {says}\\n' > $out/bin/{program}; "
                 + "chmod +x $out/bin/{program}") ];
}}"""


def as_user(uid: int) -> list[str]:
    """Command prefix that runs the rest as ``uid`` (its own group, no others).

    setpriv is looked up here, not by the child: tests run with minimal PATHs.
    """
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def run_installer(installer: Path, *args: str, env: dict[str, str] | None = None,
                  user: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``sh INSTALLER ARGS`` (optionally as another uid) and capture its output."""
    cmd = ["/bin/sh", str(installer), *args]
    if user is not None:
        cmd = [*as_user(user), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env,
                          check=False)


def installed_nix(prefix: Path, tool: str, *args: str,
                  user: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run a Nix tool from the prefix's default profile against the prefix."""
    env = prefix_env(prefix, home=prefix / "var" / "nix-prefix" / "home")
    env["PATH"] = "/usr/bin:/bin"
    cmd = [str(prefix / "var/nix/profiles/default/bin" / tool), *args]
    if user is not None:
        cmd = [*as_user(user), *cmd]
        env["USER"] = "nobody"
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env,
                          check=False)


def nix_store(prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the machine's nix-store against the store of ``prefix``."""
    env = prefix_env(prefix, home=prefix / "var/nix-prefix/home")
    return subprocess.run(["nix-store", *args], env=env, capture_output=True, text=True,
                          check=False)


def tree_snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` with its type, mode, size, mtime and link target."""
    snap: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            target = os.readlink(full) if os.path.islink(full) else None
            content = None
            if os.path.isfile(full) and not os.path.islink(full) and st.st_size < 1 << 20:
                with open(full, "rb") as f:
                    content = f.read()
            snap[os.path.relpath(full, root)] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                                 target, content)
    return snap


def feed_in_pieces(rewriter, data: bytes, cuts: list[int]) -> bytes:
    """Feed ``data`` to a stream rewriter in pieces of the sizes ``cuts`` (cycled), then flush."""
    out, pos, i = [], 0, 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        out.append(rewriter.feed(data[pos:pos + step]))
        pos += step
        i += 1
    out.append(rewriter.flush())
    return b"".join(out)


@contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at the existing dir ``path`` with mount ``options`` (a small
    size for a full disk, noexec), unmounted afterwards; the test is skipped where
    mounting is not allowed (it needs root)."""
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


# The child that measures: started by the test process, it starts the command itself,
# waits for it to exit, reads what the kernel counted (/proc/PID/io of the exited child
# before it is reaped: WNOWAIT; then wait4's ru_maxrss), and reports it.  Linux counts in
# a process's peak RSS the RSS of the memory it had before its exec, i.e. of the process
# it was forked (or vforked) from: measured straight from pytest, whose RSS grows over a
# session to hundreds of MiB, any child would seem that large (a ``python -c pass`` of a
# 400 MiB parent read 411 MiB).  Forked from this small process, a command's figure is
# its own (11 MiB).
_MEASURER = """
import json, os, subprocess, sys, time
report, seconds, cmd = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
proc = subprocess.Popen(cmd)
deadline = time.monotonic() + seconds
timed_out = False
while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
    if time.monotonic() > deadline:
        timed_out = True
        proc.kill()
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        break
    time.sleep(0.02)
counts = {}
with open("/proc/%d/io" % proc.pid) as f:
    for line in f:
        key, _, value = line.partition(":")
        counts[key] = int(value)
_, status, usage = os.wait4(proc.pid, 0)
with open(report, "w") as f:
    json.dump({"max_rss": usage.ru_maxrss * 1024, "written": counts["wchar"],
               "read": counts["rchar"], "timed_out": timed_out}, f)
code = os.waitstatus_to_exitcode(status)
sys.exit(128 - code if code < 0 else code)
"""


@dataclass
class Measured:
    """How a process ended, and what the kernel counted for it."""

    returncode: int
    stdout: str
    stderr: str
    max_rss: int  # bytes, the peak resident set (its reaped children included)
    written: int  # bytes passed to write(2) and the like (/proc/PID/io wchar)
    read: int  # bytes read (rchar)
    timed_out: bool

    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def measured(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 120,
             stdin: int | None = subprocess.DEVNULL) -> Measured:
    """Run ``cmd``, killed after ``timeout`` seconds (exit 137, ``timed_out``), and
    measure it for real (see _MEASURER)."""
    import json
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="np-measured-") as report:
        proc = subprocess.run([sys.executable, "-I", "-c", _MEASURER, report.name,
                               str(timeout), *cmd],
                              capture_output=True, env=env, stdin=stdin,
                              timeout=timeout + 120, check=False)
        with open(report.name) as f:
            text = f.read()
    assert text, f"nothing was measured: {proc.stderr!r}"
    counts = json.loads(text)
    return Measured(proc.returncode, proc.stdout.decode(errors="replace"),
                    proc.stderr.decode(errors="replace"), counts["max_rss"],
                    counts["written"], counts["read"], counts["timed_out"])
