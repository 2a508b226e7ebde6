"""Tree sinks: what receives the events of a store path's tree, in NAR order.

One walk of a tree (``nar.dump_path`` over a directory on disk, or
``archive.unpack`` over a payload chunk) sends its events to one ``Sink``;
everything that writes, hashes, rewrites, counts or checks a tree is one, so
one pass over the bytes does all of it.  Like Nix's ``ParseSink``
(src/libutil/archive.hh), the base class does nothing for every event, and a
sink overrides only the events it cares about.  ``Filter`` passes every event
on to the sink after it, for sinks that change or watch some of them.

The events, for one store path (``rel`` is the path inside it, b"" for its top):

    begin_directory(rel)  { begin_entry(name) <node> end_entry() }  end_directory()
    regular(rel, executable, size)  { contents(data) }  end_regular()
    symlink(rel, target)
    finish()                   -- the whole store path has been sent (archive.unpack)
    end_part()                 -- instead of finish(): the chunk ends inside the store
                                  path, whose events go on in the next chunk (split.py)
"""

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Callable, List, Optional  # noqa: F401


class Sink(object):
    """Receives tree events; every method does nothing (override what you need)."""

    def begin_directory(self, rel=b""):
        # type: (bytes) -> None
        pass

    def begin_entry(self, name):
        # type: (bytes) -> None
        pass

    def end_entry(self):
        # type: () -> None
        pass

    def end_directory(self):
        # type: () -> None
        pass

    def regular(self, rel, executable, size):
        # type: (bytes, bool, int) -> None
        pass

    def contents(self, data):
        # type: (bytes) -> None
        pass

    def end_regular(self):
        # type: () -> None
        pass

    def symlink(self, rel, target):
        # type: (bytes, bytes) -> None
        pass

    def finish(self):
        # type: () -> None
        pass

    def end_part(self):
        # type: () -> None
        pass


class Filter(Sink):
    """Passes every event on to ``inner``; subclasses change or watch some of them."""

    def __init__(self, inner):
        # type: (Sink) -> None
        self.inner = inner

    def begin_directory(self, rel=b""):
        # type: (bytes) -> None
        self.inner.begin_directory(rel)

    def begin_entry(self, name):
        # type: (bytes) -> None
        self.inner.begin_entry(name)

    def end_entry(self):
        # type: () -> None
        self.inner.end_entry()

    def end_directory(self):
        # type: () -> None
        self.inner.end_directory()

    def regular(self, rel, executable, size):
        # type: (bytes, bool, int) -> None
        self.inner.regular(rel, executable, size)

    def contents(self, data):
        # type: (bytes) -> None
        self.inner.contents(data)

    def end_regular(self):
        # type: () -> None
        self.inner.end_regular()

    def symlink(self, rel, target):
        # type: (bytes, bytes) -> None
        self.inner.symlink(rel, target)

    def finish(self):
        # type: () -> None
        self.inner.finish()

    def end_part(self):
        # type: () -> None
        self.inner.end_part()


class Tee(Sink):
    """Sends every event to several sinks, in order (e.g. a tar writer and a hasher)."""

    def __init__(self, *sinks):
        # type: (*Optional[Sink]) -> None
        self.sinks = [s for s in sinks if s is not None]  # type: List[Sink]

    def begin_directory(self, rel=b""):
        # type: (bytes) -> None
        for s in self.sinks:
            s.begin_directory(rel)

    def begin_entry(self, name):
        # type: (bytes) -> None
        for s in self.sinks:
            s.begin_entry(name)

    def end_entry(self):
        # type: () -> None
        for s in self.sinks:
            s.end_entry()

    def end_directory(self):
        # type: () -> None
        for s in self.sinks:
            s.end_directory()

    def regular(self, rel, executable, size):
        # type: (bytes, bool, int) -> None
        for s in self.sinks:
            s.regular(rel, executable, size)

    def contents(self, data):
        # type: (bytes) -> None
        for s in self.sinks:
            s.contents(data)

    def end_regular(self):
        # type: () -> None
        for s in self.sinks:
            s.end_regular()

    def symlink(self, rel, target):
        # type: (bytes, bytes) -> None
        for s in self.sinks:
            s.symlink(rel, target)

    def finish(self):
        # type: () -> None
        for s in self.sinks:
            s.finish()

    def end_part(self):
        # type: () -> None
        for s in self.sinks:
            s.end_part()


class Count(Sink):
    """Reports the contents bytes it sees to ``progress`` (a callable, or None):
    a progress bar's view of a tree, and the whole sink of a path only verified."""

    def __init__(self, progress):
        # type: (Optional[Callable[[int], object]]) -> None
        self._progress = progress

    def contents(self, data):
        # type: (bytes) -> None
        if self._progress is not None:
            self._progress(len(data))
