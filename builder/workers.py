"""``nix-prefix serve --workers N``: N worker processes answering on one socket.

Why processes: rewriting, hashing and NAR serialisation are Python, one core a
process however many threads (the GIL); zstd and sha256 release it, the rest
does not.  Why these (docs/serving.md, "All the cores", has the figures): each
worker is the whole one-process server (builder/serve.py) with its own event
loop, limits and fair cold scheduler, so nothing a request does crosses a
process boundary; a pool behind one event loop would send every NAR byte
through a pipe and leave the HTTP work on one core.

The supervisor reads the master once, opens the listening socket, then forks
the workers: they share the master's memory (copy-on-write) and what it keeps
on disk, and the socket itself, one accept queue for all.  So a worker that
dies loses only the requests it had in hand: connections not yet accepted
wait in the queue for the others, and the supervisor starts another worker in
its place.  It forwards SIGHUP (each worker reads the master again; the
supervisor says "reloaded" once all have) and SIGTERM/SIGINT (each finishes
what it serves, as the one-process server does), and stops when all have.
A worker also stops when its supervisor dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM}
RESTART_PAUSE = 1.0  # seconds: a worker that lived less is restarted after this pause
STOP_WAIT = 90.0  # seconds a stopping worker may take before it is killed
_PR_SET_PDEATHSIG = 1

# What a worker runs: (its slot, a way to tell the supervisor a line, whether to read
# the master again first (a SIGHUP came since the supervisor read it)).
Work = Callable[[int, Callable[[str], None], bool], None]


def listening_socket(host: str, port: int) -> socket.socket:
    """The socket every worker accepts on (OSError if it cannot be had)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family, backlog=256)


def _die_with_parent() -> None:
    """Ask the kernel to send SIGTERM to this process when its parent dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


@dataclass
class _Worker:
    slot: int
    pid: int
    pipe: int  # the read end of what the worker tells
    started: float
    ready: bool = False
    unread: bytes = b""


class Supervisor:
    """Starts ``count`` workers running ``work``, keeps them running, passes signals on.
    ``log`` says one line (stderr)."""

    def __init__(self, count: int, work: Work, log: Callable[[str], None]) -> None:
        self.count = count
        self._work = work
        self._log = log
        self.workers: dict[int, _Worker] = {}  # by pid
        self.restarts = 0
        self._reloads = 0  # SIGHUPs passed on
        self._reloading: dict[int, str] = {}  # slot -> what it said, of the last SIGHUP
        self._stopping: float | None = None  # when the stop began
        self._announced = False

    def run(self, ready: Callable[[], None]) -> int:
        """Serve until SIGINT or SIGTERM and every worker stopped; the exit status
        (1 if a worker could not start)."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            for slot in range(self.count):
                self._start(slot, reload_first=False, mask=old)
            status = 0
            while self.workers:
                self._read(0.2, ready)
                while (info := signal.sigtimedwait(SIGNALS, 0)) is not None:
                    self._signal(info.si_signo)
                status |= self._reap(old)
                if self._stopping is not None and \
                        time.monotonic() - self._stopping > STOP_WAIT:
                    for pid in self.workers:
                        _kill(pid, signal.SIGKILL)
            return status
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _start(self, slot: int, reload_first: bool, mask: set[int | signal.Signals]) -> None:
        r, w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                os.close(r)
                for other in self.workers.values():
                    os.close(other.pipe)
                _die_with_parent()
                if os.getppid() != parent:  # it died before the line above
                    raise SystemExit(0)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                def tell(line: str) -> None:
                    os.write(w, line.encode() + b"\n")
                self._work(slot, tell, reload_first)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            except BaseException:  # noqa: BLE001 - a worker ends here, whatever happened
                traceback.print_exc()
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        os.close(w)
        os.set_blocking(r, False)
        self.workers[pid] = _Worker(slot, pid, r, time.monotonic())

    def _read(self, timeout: float, ready: Callable[[], None]) -> None:
        """What the workers told (``ready``, ``reloaded N``, ``unchanged``)."""
        pipes = {w.pipe: w for w in self.workers.values()}
        readable, _, _ = select.select(list(pipes), [], [], timeout)
        for fd in readable:
            worker = pipes[fd]
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                continue
            worker.unread += data
            *lines, worker.unread = worker.unread.split(b"\n")
            for line in lines:
                self._told(worker, line.decode())
        if not self._announced and len(self.workers) == self.count and \
                all(w.ready for w in self.workers.values()):
            self._announced = True
            ready()

    def _told(self, worker: _Worker, line: str) -> None:
        if line == "ready":
            worker.ready = True
            return
        if worker.slot not in self._reloading:
            self._reloading[worker.slot] = line
            if len(self._reloading) == self.count:
                said = list(self._reloading.values())
                failed = sum(1 for s in said if s == "unchanged")
                paths = next((s.split()[1] for s in said if s.startswith("reloaded ")), "0")
                if failed:
                    self._log(f"reloading the master failed in {failed} of {self.count} "
                              f"workers (their log says why); those serve the old one")
                else:
                    self._log(f"reloaded the master: {paths} paths, in all "
                              f"{self.count} workers")

    def _signal(self, signo: int) -> None:
        if signo == signal.SIGHUP and self._stopping is None:
            self._reloads += 1
            self._reloading = {}
            for pid in self.workers:
                _kill(pid, signal.SIGHUP)
        elif signo in (signal.SIGINT, signal.SIGTERM) and self._stopping is None:
            self._stopping = time.monotonic()
            for pid in self.workers:
                _kill(pid, signal.SIGTERM)

    def _reap(self, mask: set[int | signal.Signals]) -> int:
        """Collect workers that ended; start others in their place unless stopping.
        1 if one ended before it was ever ready (it cannot start: stop them all)."""
        status = 0
        while self.workers:
            try:
                pid, how = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return status
            if pid == 0:
                return status
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            self._read_rest(worker)
            os.close(worker.pipe)
            if self._stopping is not None:
                continue
            if not self._announced:
                self._log(f"worker {worker.slot} ended before it served; stopping")
                status = 1
                self._signal(signal.SIGTERM)
                continue
            self.restarts += 1
            self._log(f"worker {worker.slot} (pid {pid}) {_ended(how)}: starting another")
            if time.monotonic() - worker.started < RESTART_PAUSE:
                time.sleep(RESTART_PAUSE)  # one that dies at once: not in a busy loop
            self._start(worker.slot, self._reloads > 0, mask)
        return status

    def _read_rest(self, worker: _Worker) -> None:
        try:
            worker.unread += os.read(worker.pipe, 4096)
        except (BlockingIOError, OSError):
            pass


def _kill(pid: int, signo: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # ended: reaped at the next turn
        os.kill(pid, signo)


def _ended(how: int) -> str:
    if os.WIFSIGNALED(how):
        return f"was killed by {signal.Signals(os.WTERMSIG(how)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(how)}"
