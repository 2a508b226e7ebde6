"""One honest measure of a command: its wall time, peak RSS and bytes, taken by a small process.

Standard library only (no pytest), so that the benchmark scripts (bench/common.py) use
the very same measure as the tests (tests/support.py re-exports it).

Why a small process: Linux counts in a process's peak RSS the RSS of the memory it had
before its exec, i.e. of the process it was forked (or vforked) from.  Measured straight
from pytest, whose RSS grows over a session to hundreds of MiB, or from a benchmark that
holds a closure's figures, any child would seem that large (a ``python -c pass`` of a
400 MiB parent read 411 MiB).  Forked from the small process below, a command's figure
is its own (11 MiB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# The child that measures: it starts the command itself, waits for it to exit (killed
# after the timeout), reads what the kernel counted (/proc/PID/io of the exited child
# before it is reaped: WNOWAIT; then wait4's ru_maxrss), and reports it with the wall
# time from just before the start to the exit.  It blocks in waitid (no polling, so the
# time is not rounded up to a poll's period); a timer thread does the killing.
_MEASURER = """
import json, os, subprocess, sys, threading, time
report, seconds, cmd = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
cwd = os.environ.pop("NP_MEASURED_CWD", None) or None
timed_out = []
started_at = time.time()
started = time.perf_counter()
proc = subprocess.Popen(cmd, cwd=cwd)
def kill():
    timed_out.append(True)
    proc.kill()
timer = threading.Timer(seconds, kill)
timer.daemon = True
timer.start()
os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
elapsed = time.perf_counter() - started
timer.cancel()
counts = {}
with open("/proc/%d/io" % proc.pid) as f:
    for line in f:
        key, _, value = line.partition(":")
        counts[key] = int(value)
_, status, usage = os.wait4(proc.pid, 0)
with open(report, "w") as f:
    json.dump({"max_rss": usage.ru_maxrss * 1024, "written": counts["wchar"],
               "read": counts["rchar"], "timed_out": bool(timed_out),
               "seconds": elapsed, "started_at": started_at}, f)
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
    seconds: float = 0.0  # wall time from just before its start to its exit
    started_at: float = 0.0  # time.time() just before its start

    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def measured(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 120,
             stdin: int | None = subprocess.DEVNULL, input: bytes | None = None,
             cwd: Path | str | None = None) -> Measured:
    """Run ``cmd`` (fed ``input`` if given, else ``stdin``; in ``cwd``), killed after
    ``timeout`` seconds (exit 137, ``timed_out``), and measure it for real (see
    _MEASURER)."""
    child_env = dict(os.environ if env is None else env)
    if cwd is not None:
        child_env["NP_MEASURED_CWD"] = str(cwd)
    with tempfile.NamedTemporaryFile(prefix="np-measured-") as report:
        proc = subprocess.run([sys.executable, "-I", "-c", _MEASURER, report.name,
                               str(timeout), *cmd],
                              capture_output=True, env=child_env, input=input,
                              stdin=None if input is not None else stdin,
                              timeout=timeout + 120, check=False)
        with open(report.name) as f:
            text = f.read()
    if not text:
        raise RuntimeError(f"nothing was measured: {proc.stderr!r}")
    counts = json.loads(text)
    return Measured(proc.returncode, proc.stdout.decode(errors="replace"),
                    proc.stderr.decode(errors="replace"), counts["max_rss"],
                    counts["written"], counts["read"], counts["timed_out"],
                    counts["seconds"], counts["started_at"])
