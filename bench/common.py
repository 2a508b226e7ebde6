"""What the benchmark scripts share: timed child processes, clean-up, this checkout's code.

Importing this module makes ``nix_prefix`` the code of the checkout the
script lives in (``REPO/builder``, ``REPO/payload``, ``REPO/installer``),
whatever an editable install elsewhere points at, and ``CLI`` runs that same
code's ``nix-prefix`` command.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _use_this_checkout() -> None:
    # nix_prefix is an implicit namespace over the three top-level folders
    # (pyproject.toml); a package whose __path__ is the repo finds them here.
    if "nix_prefix" in sys.modules:
        return
    pkg = types.ModuleType("nix_prefix")
    pkg.__path__ = [str(REPO)]
    sys.modules["nix_prefix"] = pkg


_use_this_checkout()

# `nix-prefix` from this checkout, run by this Python.
CLI = [sys.executable, "-c",
       "import sys, types; p = types.ModuleType('nix_prefix'); "
       f"p.__path__ = [{str(REPO)!r}]; sys.modules['nix_prefix'] = p; "
       "sys.argv[0] = 'nix-prefix'; from nix_prefix.builder.cli import main; main()"]


class Run:
    """One timed child process, with its peak RSS (from wait4)."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None,
                 cwd: Path | None = None, stdin: bytes | None = None) -> None:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if stdin is not None:
            proc.stdin.write(stdin)
        proc.stdin.close()
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        self.seconds = time.perf_counter() - started
        self.rss_mb = usage.ru_maxrss / 1024
        self.stderr = err.decode(errors="replace")
        if proc.returncode != 0:
            raise SystemExit(f"bench: {' '.join(cmd[:4])} failed: "
                             f"{self.stderr.strip()[-400:]}")


def sh(script: str, **kw) -> Run:
    return Run(["/bin/sh", "-ec", script], **kw)


def remove(path: Path) -> None:
    if path.exists():
        subprocess.run(["chmod", "-R", "u+w", str(path)], check=True)
        shutil.rmtree(path)


@contextmanager
def work_dir(given: Path | None, keep: bool, prefix: str) -> Iterator[Path]:
    """``given`` or a new dir under /tmp; emptied (and a new one removed) at the end
    unless ``keep``."""
    base = Path(given or tempfile.mkdtemp(prefix=prefix, dir="/tmp")).resolve()
    base.mkdir(parents=True, exist_ok=True)
    try:
        yield base
    finally:
        if not keep:
            for p in base.iterdir():
                remove(p) if p.is_dir() else p.unlink()
            base.rmdir()


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}"}
