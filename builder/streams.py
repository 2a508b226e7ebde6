"""Sending a produced NAR to one client: a bounded buffer, and a producer that parks.

A NAR is produced (read, rewritten, compressed) by a function run in a thread,
``produce(emit, start)``, which hands successive pieces of the response to
``emit`` from byte ``start`` on, the same bytes on every run.  (A producer
that can only begin at the first byte, a compressor's, is made one by
``FromStart``: it makes the bytes before ``start`` again and checks their
SHA-256 against what it handed on before.)  The producer runs ahead
of the client by at most ``stream_buffer`` bytes, each taken from the global
MemoryBudget (builder/limits.py) until it is written out.  When the client
takes nothing, the producer *parks*: its ``emit`` raises, the run unwinds and
frees its thread, its producer slot and everything it held (decoders,
compressor); only the bytes already buffered stay.  It parks after
``park_after`` seconds when other responses wait for a producer or memory is
short, after ``park_idle`` seconds in any case.  Once the client has taken half
of the buffer the producer runs again from where it stopped (a ``FromStart``
one skips what it already sent, checked: the same bytes or the client is
dropped).  So a client that does
not read holds a buffer and a socket, nothing else; the CPU a resumed stream
spends again is spent on that client's own turn.

Writes are timed: one that makes no progress for ``send_timeout`` drops the
client, and so does a client that, counting only the time spent waiting for it,
takes less than ``min_rate`` bytes per second after its first ``send_timeout``
seconds (a server that is slow itself does not count against it).

Nothing here knows how a NAR is made: ``produce`` may as well read a pipe
from a worker process.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

from aiohttp import web

from .limits import Busy, Limits, MemoryBudget

Emit = Callable[[bytes], None]
Produce = Callable[[Emit, int], None]  # (emit, start): the bytes from ``start`` on


class Diverged(Exception):
    """A producer run again made other bytes than before: the client is dropped."""


class FromStart:
    """A producer that can only begin at the first byte (``make(emit)``), as one that
    starts anywhere: a run from ``start`` makes the bytes before it again, checks
    their SHA-256 against what earlier runs handed on, and skips them."""

    def __init__(self, make: Callable[[Emit], None]) -> None:
        self._make = make
        self._digest = hashlib.sha256()  # of the bytes handed on so far
        self._made = 0

    def __call__(self, emit: Emit, start: int) -> None:
        if start != self._made:
            raise Diverged(f"asked to start at {start}, {self._made} bytes were made")
        expected = self._digest.copy().digest()
        check = hashlib.sha256()
        position = 0

        def skipping(data: bytes) -> None:
            nonlocal position
            if position < start:
                head = data[:start - position]
                check.update(head)
                position += len(head)
                data = data[len(head):]
                if position == start and check.digest() != expected:
                    raise Diverged("a resumed producer made other bytes")
                if not data:
                    return
            emit(data)  # raises when the pipe takes nothing more: not made, then
            self._digest.update(data)
            self._made += len(data)
            position += len(data)

        self._make(skipping)
        if position < start:
            raise Diverged("a resumed producer made fewer bytes")


class _Park(Exception):
    """The client takes nothing: the producer stops and frees what it holds."""


class _Stop(Exception):
    """The response is over (the client left or was dropped): the producer stops."""


class Dropped(Exception):
    """A client too slow or stalled for the limits: its connection was closed."""


class Streams:
    """The NAR streams of one server: producer slots, counts for /metrics."""

    def __init__(self, limits: Limits, budget: MemoryBudget, executor: Executor) -> None:
        self.limits = limits
        self.budget = budget
        self._executor = executor
        self._slots = asyncio.Semaphore(limits.producers)
        self.active = 0  # responses with a NAR in progress
        self.producing = 0  # producers running
        self.waiting = 0  # responses waiting for a producer
        self.parked = 0  # responses whose producer is parked (their client stalls)
        self.parks = 0
        self.resumes = 0
        self.dropped: dict[str, int] = {"slow": 0, "stalled": 0, "diverged": 0}
        self.refused = 0  # NAR requests answered 503
        self._by_client: dict[str, int] = {}  # responses under way (or waiting) by address

    async def admit(self) -> None:
        """Room for one more response with a producer, or Busy (a 503) after a wait."""
        if self.active >= self.limits.max_responses:
            raise Busy()
        if not await self._take_slot(self.limits.send_timeout):
            raise Busy()

    def _contended(self) -> bool:
        """Others wait for a producer, or memory is short (read from producer threads)."""
        return self.waiting > 0 or self.budget.used > self.budget.limit * 0.9

    async def _take_slot(self, timeout: float | None) -> bool:
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout)
        except TimeoutError:
            return False
        finally:
            self.waiting -= 1
        if await self.budget.take_async(self.limits.producer_memory,
                                        timeout if timeout is not None else 3600):
            return True
        self._slots.release()
        return False

    def _free_slot(self) -> None:
        self.budget.give(self.limits.producer_memory)
        self._slots.release()

    async def send(self, request: web.Request, response: web.StreamResponse,
                   produce: Produce, client: str = "") -> int:
        """Prepare ``response`` and send it what ``produce`` makes; the bytes sent.
        Raises Busy (nothing sent yet: answer 503) when ``client`` (an address) has
        ``streams_per_client`` NAR responses under way already or no producer is
        free after a wait, Dropped when the client was dropped."""
        mine = self._by_client.get(client, 0)
        if mine >= self.limits.streams_per_client:
            self.refused += 1
            raise Busy()
        self._by_client[client] = mine + 1
        try:
            return await self._send(request, response, produce)
        finally:
            left = self._by_client[client] - 1
            if left:
                self._by_client[client] = left
            else:
                del self._by_client[client]

    async def _send(self, request: web.Request, response: web.StreamResponse,
                    produce: Produce) -> int:
        try:
            await self.admit()
        except Busy:
            self.refused += 1
            raise
        try:
            await response.prepare(request)
        except BaseException:
            self._free_slot()
            raise
        pipe = _Pipe(asyncio.get_running_loop(), self.limits, self.budget, self._contended)
        self.active += 1
        running = self._run(pipe, produce)
        pacer = self.pacer(request, response)
        try:
            while True:
                piece = pipe.pop()
                if piece is None:
                    if pipe.error is not None:
                        raise pipe.error
                    if pipe.finished or pipe.diverged:
                        break
                    if running.done():  # parked, and all it made is sent
                        running = await self._resume(pipe, produce)
                    pipe.ready.clear()
                    if not pipe.pieces and not running.done():
                        await pipe.ready.wait()
                    continue
                await pacer.write(piece)
                self.budget.give(pipe.release(len(piece)))
                if running.done() and not (pipe.finished or pipe.diverged) and \
                        pipe.error is None and pipe.queued <= self.limits.stream_buffer // 2:
                    running = await self._resume(pipe, produce)
            if pipe.diverged:
                self.dropped["diverged"] += 1
                if request.transport is not None:
                    request.transport.abort()
                raise Dropped("a resumed producer made other bytes")
            await response.write_eof()
            return pacer.written
        finally:
            pipe.close()
            await asyncio.shield(running)  # its thread stops at its next piece
            self.budget.give(pipe.drain())  # all it holds, sent or not
            if pipe.parked_now:
                self.parked -= 1
            self.active -= 1

    def _run(self, pipe: _Pipe, produce: Produce) -> asyncio.Future[None]:
        """Start a producer run (its slot taken); the future is done when the run
        ends, finished, parked or failed; the slot is free by then."""
        self.producing += 1
        if pipe.parked_now:
            pipe.parked_now = False
            self.parked -= 1
        loop = asyncio.get_running_loop()
        over: asyncio.Future[None] = loop.create_future()

        def ended(_: asyncio.Future[None]) -> None:
            self.producing -= 1
            self._free_slot()
            if pipe.parked_run:
                self.parks += 1
                self.parked += 1
                pipe.parked_now = True
            over.set_result(None)  # only now: the counts above are right
            pipe.ready.set()
        loop.run_in_executor(self._executor, pipe.run, produce).add_done_callback(ended)
        return over

    async def _resume(self, pipe: _Pipe, produce: Produce) -> asyncio.Future[None]:
        while not await self._take_slot(None):  # memory short for an hour: wait on
            pass
        self.resumes += 1
        return self._run(pipe, produce)

    def pacer(self, request: web.Request, response: web.StreamResponse) -> Pacer:
        """Timed writes for one response (``send``'s, or any other streamed one)."""
        return Pacer(self, request, response)


class Pacer:
    """The writes of one response, timed: ``--send-timeout`` for each, and
    ``--min-rate`` over the time spent waiting for the client."""

    def __init__(self, streams: Streams, request: web.Request,
                 response: web.StreamResponse) -> None:
        self._streams = streams
        self._request = request
        self._response = response
        self.written = 0
        self._waited = 0.0  # seconds spent waiting for the client

    async def write(self, piece: bytes) -> None:
        """Write ``piece``; Dropped (the connection closed) if the client is too slow."""
        limits = self._streams.limits
        allowed = min(limits.send_timeout, limits.send_timeout
                      + (self.written + len(piece)) / limits.min_rate - self._waited)
        reason = "stalled" if allowed == limits.send_timeout else "slow"
        started = time.monotonic()
        try:
            if allowed <= 0:
                raise TimeoutError
            await asyncio.wait_for(self._response.write(piece), allowed)
        except TimeoutError:
            self._streams.dropped[reason] += 1
            if self._request.transport is not None:
                self._request.transport.abort()
            raise Dropped(reason) from None
        self._waited += time.monotonic() - started
        self.written += len(piece)


def _let_go(e: BaseException) -> None:
    """Free what the frames a producer left by ``e`` hold (read buffers, pieces): the
    traceback keeps them, and a reference cycle through it (an exception kept in a
    frame on the way) would keep them until a full garbage collection, which
    allocations of big buffers rarely cause."""
    traceback.clear_frames(e.__traceback__)
    e.__traceback__ = None


class _Pipe:
    """The pieces between one producer (a thread) and one response (the event loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: Limits,
                 budget: MemoryBudget, contended: Callable[[], bool]) -> None:
        self._loop = loop
        self._contended = contended
        self.last_taken = 0.0  # when the client last took a piece
        self._limits = limits
        self._budget = budget
        self._cond = threading.Condition()
        self.pieces: deque[bytes] = deque()
        self.queued = 0  # bytes in pieces
        self.held = 0  # bytes taken from the budget: queued, or being written
        self.produced = 0  # bytes of the response produced so far
        self.finished = False
        self.diverged = False
        self.error: BaseException | None = None
        self.parked_run = False  # the last run parked
        self.parked_now = False  # counted in Streams.parked
        self._over = threading.Event()
        self.ready = asyncio.Event()

    def pop(self) -> bytes | None:
        with self._cond:
            if not self.pieces:
                return None
            self.last_taken = time.monotonic()
            piece = self.pieces.popleft()
            self.queued -= len(piece)
            self._cond.notify_all()
            return piece

    def close(self) -> None:
        self._over.set()
        with self._cond:
            self._cond.notify_all()

    def release(self, n: int) -> int:
        """``n`` bytes were written out: they go back to the budget."""
        with self._cond:
            self.held -= n
            return n

    def drain(self) -> int:
        """Drop what is left; the bytes to give back to the budget."""
        with self._cond:
            n, self.held, self.queued = self.held, 0, 0
            self.pieces.clear()
            return n

    def _wake(self) -> None:
        self._loop.call_soon_threadsafe(self.ready.set)

    def run(self, produce: Produce) -> None:
        """One producer run, in a thread: from the first byte not produced yet until the
        end, a park, or the end of the response."""
        self.parked_run = False

        def emit(data: bytes) -> None:
            if self._over.is_set():
                raise _Stop()
            self._wait_for_room(len(data))
            with self._cond:
                self.pieces.append(data)
                self.queued += len(data)
                self.held += len(data)
                self.produced += len(data)
            self._wake()

        try:
            produce(emit, self.produced)
            self.finished = True
        except Diverged as e:
            self.diverged = True
            _let_go(e)
        except _Park as e:
            self.parked_run = True
            _let_go(e)
        except _Stop as e:
            _let_go(e)
        except BaseException as e:  # noqa: BLE001 - raised on the event loop instead
            self.error = e
            _let_go(e)
        finally:
            self._wake()

    def _wait_for_room(self, n: int) -> None:
        """Wait until ``n`` more bytes fit in the buffer and the budget; park when the
        client has taken nothing for ``park_after`` s while others wait for a
        producer or memory, or for ``park_idle`` s in any case (a slow client
        that keeps taking keeps its producer: parking costs it a re-read)."""
        limits = self._limits
        since = time.monotonic()
        while True:
            with self._cond:
                if self._over.is_set():
                    raise _Stop()
                room = not self.queued or self.queued + n <= limits.stream_buffer
                if not room:
                    self._cond.wait(0.2)
            if room and self._budget.take(n, 0.2, self._over):
                return
            if self._over.is_set():
                raise _Stop()
            stalled = time.monotonic() - max(since, self.last_taken)
            if stalled >= limits.park_idle or (stalled >= limits.park_after
                                               and self._contended()):
                raise _Park()
