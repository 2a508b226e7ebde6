"""builder/workers.py: the supervisor of ``serve --workers N``, with workers that are
small Python functions (no server, no Nix), in a process of its own."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

SCRIPT = r"""
import os, signal, sys, time
from nix_prefix.builder.workers import Supervisor

def work(slot, tell, reload_first):
    if sys.argv[1] == "fail":
        raise SystemExit("cannot start")
    signal.signal(signal.SIGHUP, lambda *a: tell(f"reloaded {slot + 10}"))
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    os.write(1, f"worker {slot} {os.getpid()} {reload_first}\n".encode())  # one write
    tell("ready")
    while True:
        time.sleep(0.05)

status = Supervisor(2, work, lambda line: print(line, flush=True)).run(
    lambda: print("all ready", flush=True))
print(f"status {status}", flush=True)
"""


class Lines:
    """The lines a process prints, read all along."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self._queue.put(x) for x in proc.stdout],
                         daemon=True).start()

    def until(self, test, seconds: float = 60) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + seconds
        while not any(test(x) for x in seen):
            seen.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
        return seen


def _start(mode: str) -> tuple[subprocess.Popen, Lines]:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, mode], stdout=subprocess.PIPE,
                            text=True)
    return proc, Lines(proc)


def test_restart_sighup_and_stop() -> None:
    proc, lines = _start("serve")
    try:
        seen = lines.until(lambda x: x == "all ready\n")
        pids = {int(x.split()[2]) for x in seen if x.startswith("worker ")}
        assert len(pids) == 2, seen
        # SIGHUP reaches both; the supervisor says so once.
        proc.send_signal(signal.SIGHUP)
        said = lines.until(lambda x: "in all 2 workers" in x)[-1]
        assert said.startswith("reloaded the master: 1") and "in all 2 workers" in said
        # A worker killed: another in its slot, told to read the master again.
        dead = min(pids)
        os.kill(dead, signal.SIGKILL)
        seen = lines.until(lambda x: x.startswith("worker ") and x.endswith(" True\n"))
        assert any(f"(pid {dead}) was killed by SIGKILL: starting another" in x for x in seen)
        new = int(seen[-1].split()[2])
        assert new not in pids and proc.poll() is None
        # SIGTERM: every worker stops, then the supervisor, with status 0.
        proc.send_signal(signal.SIGTERM)
        assert lines.until(lambda x: x.startswith("status "))[-1] == "status 0\n"
        assert proc.wait(30) == 0
        for pid in pids - {dead} | {new}:
            assert not os.path.exists(f"/proc/{pid}") or \
                open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] == "Z"
    finally:
        proc.kill()
        proc.wait()


def test_a_worker_that_cannot_start_stops_the_server() -> None:
    proc, lines = _start("fail")
    try:
        seen = lines.until(lambda x: x.startswith("status "))
        assert seen[-1] == "status 1\n"
        assert any("ended before it served; stopping" in x for x in seen)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
