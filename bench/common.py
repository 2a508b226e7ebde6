"""What the benchmark scripts share: timed child processes, clean-up, this checkout's code.

Importing this module makes ``nix_prefix`` the code of the checkout the
script lives in (``REPO/builder``, ``REPO/payload``, ``REPO/installer``),
whatever an editable install elsewhere points at, and ``CLI`` runs that same
code's ``nix-prefix`` command.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
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


def _tests_measure() -> types.ModuleType:
    # tests/measure.py, loaded by its path: the tests' own measure, one for both (and
    # no "tests" package of some installed distribution found instead).
    spec = importlib.util.spec_from_file_location("np_tests_measure",
                                                  REPO / "tests" / "measure.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


measured = _tests_measure().measured

# `nix-prefix` from this checkout, run by this Python.
CLI = [sys.executable, "-c",
       "import sys, types; p = types.ModuleType('nix_prefix'); "
       f"p.__path__ = [{str(REPO)!r}]; sys.modules['nix_prefix'] = p; "
       "sys.argv[0] = 'nix-prefix'; from nix_prefix.builder.cli import main; main()"]


class Run:
    """One timed child process, with its peak RSS: measured by tests/measure.py's small
    process, so that neither figure counts this script (its start, its RSS)."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None,
                 cwd: Path | None = None, stdin: bytes | None = None,
                 timeout: float = 6 * 3600) -> None:
        m = measured(cmd, env=env, cwd=cwd, input=stdin if stdin is not None else b"",
                     timeout=timeout)
        self.seconds = m.seconds
        self.started_at = m.started_at  # time.time() just before the command started
        self.rss_mb = m.max_rss / 2**20
        self.stdout = m.stdout
        self.stderr = m.stderr
        if m.returncode != 0:
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


def load() -> dict[str, float]:
    """The load averages over 1, 5 and 15 minutes, as ``uptime`` prints them."""
    one, five, fifteen = os.getloadavg()
    return {"1min": one, "5min": five, "15min": fifteen}


def load_text(value: dict[str, float]) -> str:
    return f"{value['1min']:.2f}, {value['5min']:.2f}, {value['15min']:.2f}"


class Target:
    """One figure a target is stated in: ``value`` is at most (or at least) ``bound``."""

    def __init__(self, figure: str, value: float | None, bound: float, at_most: bool = True,
                 note: str = "") -> None:
        self.figure, self.value, self.bound, self.at_most = figure, value, bound, at_most
        self.note = note

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value <= self.bound if self.at_most else self.value >= self.bound

    def to_dict(self) -> dict:
        return {"figure": self.figure, "value": self.value, "target": self.bound,
                "at_most": self.at_most, "met": self.met, "note": self.note}


def targets_block(targets: list[Target], load_start: dict[str, float],
                  load_end: dict[str, float]) -> tuple[str, dict]:
    """The "targets" block every bench prints and writes in its JSON: each figure, its
    target, met or missed (n/a when the figure cannot be measured here), and the load
    average (``uptime``) at the start and the end, without which no ratio means much on
    a shared machine."""
    lines = ["targets (one run; load average 1/5/15 min: "
             f"{load_text(load_start)} at the start, {load_text(load_end)} at the end)",
             f"  {'figure':52}{'measured':>10}  {'target':14}met"]
    for t in targets:
        value = "n/a" if t.value is None else f"{t.value:.2f}"
        verdict = {None: "n/a", True: "met", False: "MISSED"}[t.met]
        bound = f"{'<=' if t.at_most else '>='} {t.bound:g}"
        lines.append(f"  {t.figure:52}{value:>10}  {bound:14}{verdict}"
                     + (f"  ({t.note})" if t.note else ""))
    block = {"load_start": load_start, "load_end": load_end,
             "figures": {t.figure: t.to_dict() for t in targets}}
    return "\n".join(lines), block
