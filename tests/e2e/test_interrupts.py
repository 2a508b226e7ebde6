"""A Ctrl-C between any two lines of the installer leaves the prefix as it was.

A signal sent from outside lands wherever the installer happens to be, so a
test that sleeps and sends one samples a few moments at random (and fails at
random when one of them is wrong).  Here the KeyboardInterrupt a Ctrl-C
raises is raised by a trace function at the N-th line the installer's own
code runs (after main() took over, and only while SIGINT would raise it),
for lines spread evenly over a whole install: each run must end with exit
130, one line, no prefix and nothing left in TMPDIR.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import Built, build_small

# Runs INSTALLER ARGS as `python3 INSTALLER ARGS` would, raising KeyboardInterrupt
# at the INTERRUPT_AT-th line run in installer/; a run that ends before (0: always)
# says how many lines it had.
TRACER = r"""
import os, runpy, signal, sys
at = int(os.environ["INTERRUPT_AT"])
state = {"armed": False, "count": 0}

def lines(frame, event, arg):
    if event == "line" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        state["count"] += 1
        if state["count"] == at:
            sys.settrace(None)
            raise KeyboardInterrupt()
    return lines

def calls(frame, event, arg):
    code = frame.f_code
    if not state["armed"]:
        # From the argument parsing on: main has put its handlers in place.
        state["armed"] = code.co_name == "_parser" and code.co_filename.endswith(
            "/installer/main.py")
    if state["armed"] and "/installer/" in code.co_filename:
        return lines
    return None

def said():
    if state["count"] < at or at == 0:  # a whole run: how many lines it had
        sys.stderr.write("lines: %d\n" % state["count"])

import atexit
atexit.register(said)
installer = sys.argv[1]
sys.argv = sys.argv[1:]
sys.settrace(calls)
runpy.run_path(installer, run_name="__main__")
"""

RUNS = 200  # lines tried, spread evenly over the whole install


@pytest.fixture(scope="module")
def small(module_dir: Path) -> Built:
    built = build_small(module_dir, name="a-long-enough-build-prefix")
    built.move_build_away()
    (module_dir / "tracer.py").write_text(TRACER)
    return built


def _install(small: Built, at: int, prefix: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    python = shutil.which("python3") or "/usr/bin/python3"
    tracer = small.installer.parent / "tracer.py"
    return subprocess.run([python, str(tracer), str(small.installer), "-y", "-q", "-p",
                           str(prefix)], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL,
                          env=dict(os.environ, INTERRUPT_AT=str(at), TMPDIR=str(tmp)))


def _fresh(path: Path) -> Path:
    subprocess.run(["chmod", "-R", "u+w", str(path)], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)
    return path


@pytest.mark.slow
def test_ctrl_c_at_any_line_of_an_install_leaves_no_prefix(small: Built,
                                                           module_dir: Path) -> None:
    tmp = module_dir / "tmp"
    tmp.mkdir()
    whole = _install(small, 0, module_dir / "counted", tmp)
    assert whole.returncode == 0, whole.stderr
    total = int(whole.stderr.rpartition("lines: ")[2])
    assert total > RUNS
    wrong, tried = [], 0
    for at in range(1, total + 1, total // RUNS):
        prefix = _fresh(module_dir / "p")
        tmp = _fresh(module_dir / "tmp")
        tmp.mkdir()
        proc = _install(small, at, prefix, tmp)
        if proc.returncode == 0 and "lines: " in proc.stderr:
            continue  # this run had fewer lines than the counted one: not interrupted
        tried += 1
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        left = sorted(str(p.relative_to(prefix)) for p in prefix.rglob("*")) \
            if prefix.exists() else None
        if (proc.returncode, len(lines), left, os.listdir(tmp)) != (130, 1, None, []) or \
                "interrupted" not in proc.stderr:
            wrong.append((at, proc.returncode, proc.stderr[-500:], left, os.listdir(tmp)))
    assert wrong == [], f"{len(wrong)} of {tried} interrupted installs: {wrong[:3]}"
    assert tried >= RUNS * 0.9
