"""What ``nix-prefix serve`` lets a client cost: the limits, the memory budget and the
fair scheduler for cold work.

Nothing here knows how a NAR is made: the scheduler runs any awaitable work and
the budget counts bytes, so the same limits hold when the rewriting moves to
worker processes.

* ``MemoryBudget``: every byte buffered for a client (pieces waiting to be sent)
  and every running NAR producer (its decoder and compressor, ``producer_memory``)
  is taken from one budget, derived from ``--max-memory``; a producer that finds it
  empty waits, and parks (builder/streams.py) when that lasts.
* ``ColdScheduler``: the first plan of a store dir and the first narinfo of a path
  (a full read and rewrite of the path) run at most ``cold`` at once, at most
  ``cold_per_client`` for one client address, the address that waited longest
  since its last job first; past ``cold_queue`` waiting (or ``cold_queue_per_client``
  for one address) the request is refused with ``Busy`` (the server answers 503
  with ``Retry-After``; Nix retries a 503, src/libstore/filetransfer.cc).
  Requests for the same key share one computation.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import BuildError

T = TypeVar("T")
MiB = 1 << 20


@dataclass
class Limits:
    """What one client, and all of them together, may cost (docs/serving.md)."""

    max_memory: int = 1536 * MiB  # the whole server process: leaves a 2 GB box room
    stream_buffer: int = 1 * MiB  # bytes buffered ahead for one response
    producer_memory: int = 24 * MiB  # what one running NAR producer holds (decoder, compressor)
    producers: int = 8  # NARs being produced at once (they park when their client stalls)
    park_after: float = 1.0  # a producer whose client takes nothing parks, if others wait
    park_idle: float = 10.0  # … and after this long in any case
    send_timeout: float = 30.0  # a write that makes no progress for this long drops the client
    min_rate: int = 4096  # bytes/s a response must average, after its first send_timeout
    max_responses: int = 512  # responses with a NAR in progress (parked or not)
    streams_per_client: int = 64  # … for one client address (a Nix opens up to 25)
    cold: int = 2  # cold jobs (new plans, first narinfos) at once
    cold_per_client: int = 1
    cold_queue: int = 256  # cold jobs waiting, in all
    cold_queue_per_client: int = 64  # a Nix asks up to http-connections (25) at once
    retry_after: int = 5  # seconds, in a 503
    workers: int = 1  # processes answering on the socket: max_memory is split among them


# A worker is started only if this much of its share of --max-memory is left for
# buffers and producers (five producers' worth): fewer workers serve better than
# many that each make one NAR at a time.
MIN_WORKER_BUDGET = 128 * MiB


RESERVE = 96 * MiB  # what else grows with use: plans, narinfos, connections, the heap


def rss() -> int:
    """This process's resident memory, in bytes (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    return 0


def buffer_budget(limits: Limits, resident: int | None = None) -> int:
    """The bytes one worker's buffers and producers may take: its share of
    ``max_memory`` (split evenly among ``limits.workers``) less what the process
    holds now (the master read) and RESERVE; BuildError if that is too little."""
    now = rss() if resident is None else resident
    budget = limits.max_memory // limits.workers - now - RESERVE
    least = limits.producer_memory + 2 * limits.stream_buffer
    if budget < least:
        each = f" for {limits.workers} workers" if limits.workers > 1 else ""
        raise BuildError(
            f"--max-memory {limits.max_memory >> 20}M is too little{each}: a worker holds "
            f"{now >> 20} MiB with its master read, and needs {(RESERVE + least) >> 20} MiB more",
            f"give at least --max-memory "
            f"{(now + RESERVE + least + MiB - 1) * limits.workers >> 20}M"
            + (" or fewer --workers" if limits.workers > 1 else ""))
    return budget


def default_workers(limits: Limits, cores: int, resident: int | None = None) -> int:
    """``--workers`` when not given: one a usable CPU, as many as ``max_memory`` gives
    each MIN_WORKER_BUDGET of buffers beyond what it holds (at least one)."""
    now = rss() if resident is None else resident
    fits = limits.max_memory // (now + RESERVE + MIN_WORKER_BUDGET)
    return max(1, min(cores, fits))


def per_worker(limits: Limits, workers: int) -> Limits:
    """What one of ``workers`` processes may cost: the server-wide bounds (producers,
    responses, cold jobs and queue) split among them, rounded up; memory is split by
    ``buffer_budget``; the per-client bounds hold in each worker."""
    def share(n: int) -> int:
        return max(1, -(-n // workers))
    return dataclasses.replace(
        limits, workers=workers, producers=share(limits.producers),
        max_responses=share(limits.max_responses), cold=share(limits.cold),
        cold_queue=share(limits.cold_queue) if limits.cold_queue else 0)


def tame_malloc() -> None:
    """Make glibc's malloc give freed buffers back: NAR pieces (up to about 1 MiB)
    would otherwise, once the first is freed, move its mmap threshold up and be
    carved from per-thread arenas that keep their peak (measured: 190 MiB
    resident for 78 MiB of buffers with 40 stalled clients, 130 MiB with this).
    Nothing on another libc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD: fixed, big buffers are mmap'd
        libc.mallopt(-8, 2)  # M_ARENA_MAX: two arenas, not eight per core
    except (OSError, AttributeError):
        pass


_SIZE = re.compile(r"^(\d+)([KMG]i?B?)?$", re.I)


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``65536``: bytes; BuildError naming the form otherwise."""
    m = _SIZE.match(text.strip())
    if not m:
        raise BuildError(f"{text!r} is not a size", "write it as 512M, 2G or a number of bytes")
    unit = (m.group(2) or "").upper()[:1]
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[unit]


class MemoryBudget:
    """A count of bytes, thread-safe, that ``take`` may not raise past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    def try_take(self, n: int) -> bool:
        with self._cond:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def take(self, n: int, timeout: float, stop: threading.Event | None = None) -> bool:
        """Take ``n`` bytes, waiting up to ``timeout`` s (in a thread); False if not."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.used + n > self.limit:
                left = deadline - time.monotonic()
                if left <= 0 or (stop is not None and stop.is_set()):
                    return False
                self._cond.wait(min(left, 0.2))
            self.used += n
            return True

    async def take_async(self, n: int, timeout: float) -> bool:
        """``take`` for the event loop: polls, never blocks the loop."""
        deadline = time.monotonic() + timeout
        while not self.try_take(n):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def give(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


class Busy(Exception):
    """Cold work is past its bound: answer 503 with Retry-After."""


class ColdScheduler:
    """Bounded, fair execution of cold work (see the module doc).  Lives on one event
    loop; ``run`` is called from coroutines of that loop only."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._started: dict[str, int] = {}  # when each address last started a job
        self._clock = 0
        self._running: dict[str, int] = {}
        self._shared: dict[Hashable, asyncio.Future[Any]] = {}
        self.running = 0
        self.waiting = 0
        self.refused = 0
        self.done = 0

    async def run(self, client: str, key: Hashable,
                  work: Callable[[], Awaitable[T]]) -> T:
        """The result of ``work()``, run when a slot is free; a computation of the same
        ``key`` already under way is shared.  Raises Busy past the bounds."""
        shared = self._shared.get(key)
        if shared is not None:
            return await asyncio.shield(shared)
        await self._enter(client)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._shared[key] = future
        try:
            result = await work()
            future.set_result(result)
            return result
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: no "never retrieved" warning if unshared
            raise
        finally:
            del self._shared[key]
            self._leave(client)

    async def _enter(self, client: str) -> None:
        limits = self._limits
        mine = self._waiting.get(client)
        if mine is None and self.running < limits.cold and \
                self._running.get(client, 0) < limits.cold_per_client:
            self._start(client)
            return
        if self.waiting >= limits.cold_queue or \
                (mine is not None and len(mine) >= limits.cold_queue_per_client):
            self.refused += 1
            raise Busy()
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if mine is None:
            mine = self._waiting[client] = deque()
        mine.append(turn)
        self.waiting += 1
        self._dispatch()
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._leave(client)  # granted as we were cancelled: give it on
            else:
                self._forget(client, turn)
            raise

    def _forget(self, client: str, turn: asyncio.Future[None]) -> None:
        mine = self._waiting.get(client)
        if mine is not None and turn in mine:
            mine.remove(turn)
            self.waiting -= 1
            if not mine:
                del self._waiting[client]

    def _start(self, client: str) -> None:
        self._clock += 1
        self._started[client] = self._clock
        self.running += 1
        self._running[client] = self._running.get(client, 0) + 1

    def _leave(self, client: str) -> None:
        self.running -= 1
        self.done += 1
        left = self._running[client] - 1
        if left:
            self._running[client] = left
        else:
            del self._running[client]
        self._dispatch()

    def _dispatch(self) -> None:
        """Give free slots to waiting addresses: first those running least, then the
        one whose last job started longest ago."""
        limits = self._limits
        while self.running < limits.cold:
            eligible = [c for c in self._waiting
                        if self._running.get(c, 0) < limits.cold_per_client]
            if not eligible:
                return
            client = min(eligible, key=lambda c: (self._running.get(c, 0),
                                                  self._started.get(c, 0)))
            mine = self._waiting[client]
            turn = mine.popleft()
            self.waiting -= 1
            if not mine:
                del self._waiting[client]
            self._start(client)
            turn.set_result(None)
