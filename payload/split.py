"""Store paths cut across payload chunks: each path's parts replayed in order.

The payload is one tar stream (archive.py) cut into chunks of about the same
size wherever that size is reached: between two store paths, between two
entries of one, or inside a file's contents.  So a big store path is spread
over several chunks, and the chunks are decoded at once, in threads.  But a
store path's tree events must reach its sink (the NAR hasher that checks
it, the writer that stages it) whole and in order, as if it had been read in
one piece: the NAR hash is one sha256 over the path's bytes in order.

``SplitPath`` sees to that.  The part of a path that comes first in line
goes straight to the sink; a later part, decoded while an earlier one is
still being read, records its events, and the recording is replayed as soon
as the parts before it are done (by whichever thread finished the last of
them), or by its own thread once its turn comes.  A part that holds more than
``HOLD_LIMIT`` bytes of contents waits for its turn instead, which bounds the
memory.  The chunks must be handed to the threads in order (a chunk is
started only after every earlier one): then the part whose turn it is is
always being read by a thread that is not waiting, so nothing deadlocks.
"""

import threading

from .tree import Sink

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Any, Callable, Dict, List, Optional, Tuple  # noqa: F401

    Events = List[Tuple[str, Tuple[Any, ...]]]

# Contents bytes a part may hold while it waits for its turn (about one chunk).
HOLD_LIMIT = 64 << 20


class SplitPath(object):
    """One store path whose parts are in chunks ``first`` .. ``last``.

    ``open_sink()`` makes the path's sink (once, for the first part);
    ``check_stop()`` is called while a part waits, and raises to abandon it
    (another thread failed).
    """

    def __init__(self, first, last, open_sink, check_stop=None):
        # type: (int, int, Callable[[], Sink], Optional[Callable[[], None]]) -> None
        self.first = first
        self.last = last
        self._open_sink = open_sink
        self._check_stop = check_stop
        self._sink = Sink()  # the path's own, from open_sink() at the first part
        self._turn = first  # the chunk whose part goes to the sink next
        self._parked = {}  # type: Dict[int, Events]
        self._cond = threading.Condition()

    def part(self, chunk):
        # type: (int) -> PathPart
        """The sink for this path's part in ``chunk``."""
        if not self.first <= chunk <= self.last:
            raise ValueError("chunk %d holds no part of this path" % chunk)
        if chunk == self.first:
            self._sink = self._open_sink()
        return PathPart(self, chunk)

    def _my_turn(self, chunk):
        # type: (int) -> bool
        return self._turn == chunk

    def _wait_turn(self, chunk):
        # type: (int) -> None
        with self._cond:
            while self._turn != chunk:
                if self._check_stop is not None:
                    self._check_stop()
                self._cond.wait(0.2)

    def _park(self, chunk, events):
        # type: (int, Events) -> bool
        """Leave a finished part's events for later; False if its turn has come."""
        with self._cond:
            if self._turn == chunk:
                return False
            self._parked[chunk] = events
            return True

    def _done(self, chunk):
        # type: (int) -> None
        """Part ``chunk`` is delivered: replay the parked parts that follow it."""
        while True:
            with self._cond:
                self._turn = chunk + 1
                events = self._parked.pop(self._turn, None)
                self._cond.notify_all()
            if events is None:
                return
            _replay(events, self._sink)
            chunk += 1


def _replay(events, sink):
    # type: (Events, Sink) -> None
    for name, args in events:
        getattr(sink, name)(*args)


class PathPart(Sink):
    """The tree sink for one part of a ``SplitPath``: forwards its events to
    the path's sink when its turn has come, and records them until then.

    The archive reader ends a part with ``finish()`` when the path ends in this
    chunk, or with ``end_part()`` when the chunk ends inside the path.
    """

    def __init__(self, split, chunk):
        # type: (SplitPath, int) -> None
        self._split = split
        self._chunk = chunk
        self._events = []  # type: Events
        self._held = 0
        self._direct = split._my_turn(chunk)

    def _event(self, name, *args):
        # type: (str, *Any) -> None
        if not self._direct and self._split._my_turn(self._chunk):
            self._go_direct()
        if self._direct:
            getattr(self._split._sink, name)(*args)
            return
        self._events.append((name, args))
        if name == "contents":
            self._held += len(args[0])
            if self._held > HOLD_LIMIT:
                self._split._wait_turn(self._chunk)
                self._go_direct()

    def _go_direct(self):
        # type: () -> None
        events, self._events = self._events, []
        _replay(events, self._split._sink)
        self._direct = True

    def begin_directory(self, rel=b""):
        # type: (bytes) -> None
        self._event("begin_directory", rel)

    def begin_entry(self, name):
        # type: (bytes) -> None
        self._event("begin_entry", name)

    def end_entry(self):
        # type: () -> None
        self._event("end_entry")

    def end_directory(self):
        # type: () -> None
        self._event("end_directory")

    def regular(self, rel, executable, size):
        # type: (bytes, bool, int) -> None
        self._event("regular", rel, executable, size)

    def contents(self, data):
        # type: (bytes) -> None
        self._event("contents", data)

    def end_regular(self):
        # type: () -> None
        self._event("end_regular")

    def symlink(self, rel, target):
        # type: (bytes, bytes) -> None
        self._event("symlink", rel, target)

    def finish(self):
        # type: () -> None
        """The path ends in this part: its sink's ``finish`` runs in turn."""
        self._event("finish")
        self.end_part()

    def end_part(self):
        # type: () -> None
        """This part is complete (the chunk ends inside the path, or the path ends)."""
        if not self._direct and self._split._park(self._chunk, self._events):
            self._events = []
            return
        if not self._direct:
            self._go_direct()
        self._split._done(self._chunk)
