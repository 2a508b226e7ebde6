"""NAR serialisation ("Nix ARchive") and NAR hashing.

Follows NixOS/nix src/libutil/archive.cc (``dump``, ``dumpContents``) and
src/libutil/serialise.cc (``writeString``, ``writePadding``):

    str(s)   = u64le(len(s)) || s || zero padding to a multiple of 8
    nar      = str("nix-archive-1") node
    node     = str("(") str("type") ( regular | symlink | directory ) str(")")
    regular  = str("regular") [str("executable") str("")] str("contents") str(bytes)
    symlink  = str("symlink") str("target") str(target)
    directory= str("directory") { str("entry") str("(") str("name") str(name)
                                  str("node") node str(")") }   -- names in byte order

A NAR is produced from tree events (``NarWriter`` is a tree.Sink) so that the
same code hashes a tree on disk (builder), a tar stream (installer) and
anything in between.
"""

import hashlib
import os
import stat
import struct

from .tree import Sink

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Callable, List, Tuple  # noqa: F401

MAGIC = b"nix-archive-1"
_READ_SIZE = 1 << 20


class NarError(Exception):
    """A tree cannot be serialised as a NAR (unsupported file type, bad name...)."""


def _pad(n):
    # type: (int) -> bytes
    return b"\0" * ((8 - n % 8) % 8)


def _str(s):
    # type: (bytes) -> bytes
    return struct.pack("<Q", len(s)) + s + _pad(len(s))


# Token strings are constant; serialise them once.
_OPEN = _str(b"(")
_CLOSE = _str(b")")
_TYPE = _str(b"type")
_ENTRY_OPEN = _str(b"entry") + _OPEN + _str(b"name")
_NODE = _str(b"node")
_DIRECTORY = _OPEN + _TYPE + _str(b"directory")
_REGULAR = _OPEN + _TYPE + _str(b"regular")
_EXECUTABLE = _str(b"executable") + _str(b"")
_CONTENTS = _str(b"contents")
_SYMLINK = _OPEN + _TYPE + _str(b"symlink") + _str(b"target")


class NarWriter(Sink):
    """Turn tree events into NAR bytes passed to ``write``; counts the size.

    Events must come in NAR order: a directory's entries sorted by name as
    bytes, each entry's node complete before the next entry starts.  The
    callers (``dump_path`` and the archive reader) guarantee that order.
    """

    def __init__(self, write):
        # type: (Callable[[bytes], object]) -> None
        self._out = write
        self.size = 0
        # Where the u64 length of the last regular file's bytes (or symlink's target)
        # is in the NAR: the bytes follow it (builder/narimages.py).
        self.length_at = 0
        self._remaining = 0
        self._file_size = 0
        self._write(_str(MAGIC))

    def _write(self, data):
        # type: (bytes) -> None
        self.size += len(data)
        self._out(data)

    def begin_directory(self, rel=b""):
        # type: (bytes) -> None
        self._write(_DIRECTORY)

    def begin_entry(self, name):
        # type: (bytes) -> None
        self._write(_ENTRY_OPEN + _str(name) + _NODE)

    def end_entry(self):
        # type: () -> None
        self._write(_CLOSE)

    def end_directory(self):
        # type: () -> None
        self._write(_CLOSE)

    def regular(self, rel, executable, size):
        # type: (bytes, bool, int) -> None
        """Start a regular file of ``size`` bytes; feed them with ``contents``."""
        head = _REGULAR + (_EXECUTABLE if executable else b"") + _CONTENTS
        self.length_at = self.size + len(head)
        self._write(head + struct.pack("<Q", size))
        self._remaining = size
        self._file_size = size

    def contents(self, data):
        # type: (bytes) -> None
        self._remaining -= len(data)
        if self._remaining < 0:
            raise NarError("file contents longer than announced")
        self._write(data)

    def end_regular(self):
        # type: () -> None
        if self._remaining:
            raise NarError("file contents shorter than announced by %d bytes" % self._remaining)
        self._write(_pad(self._file_size) + _CLOSE)

    def symlink(self, rel, target):
        # type: (bytes, bytes) -> None
        self.length_at = self.size + len(_SYMLINK)
        self._write(_SYMLINK + _str(target) + _CLOSE)


class NarHasher(NarWriter):
    """A ``NarWriter`` that only keeps the sha256 and the size (narHash, narSize)."""

    def __init__(self):
        # type: () -> None
        self._hash = hashlib.sha256()
        NarWriter.__init__(self, self._hash.update)

    def digest(self):
        # type: () -> bytes
        return self._hash.digest()


# Limits for reading a NAR from elsewhere (a binary cache): a file name is at most
# 255 bytes on Linux, a symlink target at most PATH_MAX; deeper trees than this
# are not made by any build.
MAX_NAME = 255
MAX_TARGET = 4096
MAX_DEPTH = 512


class _Reader(object):
    """Reads a NAR's strings from ``read(n)`` and counts the bytes."""

    def __init__(self, read):
        # type: (Callable[[int], bytes]) -> None
        self._read = read
        self.size = 0

    def exact(self, n):
        # type: (int) -> bytes
        parts = []  # type: List[bytes]
        left = n
        while left > 0:
            data = self._read(min(left, _READ_SIZE))
            if not data:
                raise NarError("the NAR ends early (truncated)")
            parts.append(data)
            left -= len(data)
        self.size += n
        return b"".join(parts)

    def length(self):
        # type: () -> int
        return struct.unpack("<Q", self.exact(8))[0]

    def padding(self, n):
        # type: (int) -> None
        if self.exact((8 - n % 8) % 8).strip(b"\0"):
            raise NarError("non-zero padding in the NAR")

    def string(self, limit):
        # type: (int) -> bytes
        n = self.length()
        if n > limit:
            raise NarError("a string of %d bytes in the NAR, longer than the %d allowed"
                           % (n, limit))
        data = self.exact(n)
        self.padding(n)
        return data

    def expect(self, *tokens):
        # type: (*bytes) -> None
        for token in tokens:
            got = self.string(64)
            if got != token:
                raise NarError("the NAR has %r where %r belongs (not a canonical NAR)"
                               % (got, token))


def parse(read, sink):
    # type: (Callable[[int], bytes], Sink) -> int
    """Read one NAR from ``read(n)`` and send its events to ``sink``; return its size.

    The reverse of ``NarWriter`` (archive.cc ``parseDump``), but stricter: only
    the canonical form ``dump`` writes is accepted (fields in dump's order),
    names are checked as Nix checks them (not empty, ``.``, ``..``, no ``/``
    or NUL, strictly sorted), and strings, names and depth are bounded, so a
    hostile NAR is refused with NarError before it costs much.  Bytes after
    the NAR are left unread.
    """
    r = _Reader(read)
    r.expect(MAGIC)
    _parse_node(r, sink, b"", 0)
    return r.size


def _parse_node(r, sink, rel, depth):
    # type: (_Reader, Sink, bytes, int) -> None
    if depth > MAX_DEPTH:
        raise NarError("the NAR nests deeper than %d directories" % MAX_DEPTH)
    r.expect(b"(", b"type")
    kind = r.string(64)
    if kind == b"regular":
        token = r.string(64)
        executable = token == b"executable"
        if executable:
            r.expect(b"")
            token = r.string(64)
        if token != b"contents":
            raise NarError("the NAR has %r where 'contents' belongs" % token)
        size = r.length()
        sink.regular(rel, executable, size)
        left = size
        while left > 0:
            data = r.exact(min(left, _READ_SIZE))
            left -= len(data)
            sink.contents(data)
        r.padding(size)
        sink.end_regular()
        r.expect(b")")
    elif kind == b"symlink":
        r.expect(b"target")
        target = r.string(MAX_TARGET)
        if not target or b"\0" in target:
            raise NarError("the NAR has an empty symlink target or one with a NUL")
        sink.symlink(rel, target)
        r.expect(b")")
    elif kind == b"directory":
        sink.begin_directory(rel)
        previous = None
        while True:
            token = r.string(64)
            if token == b")":
                break
            if token != b"entry":
                raise NarError("the NAR has %r where 'entry' or ')' belongs" % token)
            r.expect(b"(", b"name")
            name = r.string(MAX_NAME)
            if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
                raise NarError("the NAR holds an invalid file name %r" % name)
            if previous is not None and name <= previous:
                raise NarError("the NAR's directory %r is not sorted" % rel)
            previous = name
            r.expect(b"node")
            sink.begin_entry(name)
            _parse_node(r, sink, rel + b"/" + name if rel else name, depth + 1)
            sink.end_entry()
            r.expect(b")")
        sink.end_directory()
    else:
        raise NarError("the NAR has an unknown file type %r" % kind)


def dump_path(fs_path, sink, rel=b""):
    # type: (bytes, Sink, bytes) -> None
    """Walk ``fs_path`` in NAR order and send its events to ``sink`` (see tree.py).

    Mirrors archive.cc ``dump``: only the owner's x bit counts, entries are
    sorted by raw bytes, and anything but files, directories and symlinks is
    refused (Nix says "unsupported type").
    """
    st = os.lstat(fs_path)
    if stat.S_ISREG(st.st_mode):
        sink.regular(rel, bool(st.st_mode & stat.S_IXUSR), st.st_size)
        with open(fs_path, "rb") as f:
            left = st.st_size
            while left > 0:
                data = f.read(min(_READ_SIZE, left))
                if not data:
                    raise NarError("file %r shrank while being read" % os.fsdecode(fs_path))
                left -= len(data)
                sink.contents(data)
        sink.end_regular()
    elif stat.S_ISLNK(st.st_mode):
        sink.symlink(rel, os.readlink(fs_path))
    elif stat.S_ISDIR(st.st_mode):
        sink.begin_directory(rel)
        for name in sorted(os.listdir(fs_path)):
            sink.begin_entry(name)
            dump_path(os.path.join(fs_path, name), sink, rel + b"/" + name if rel else name)
            sink.end_entry()
        sink.end_directory()
    else:
        raise NarError("%r has an unsupported file type (not a file, directory or symlink)"
                       % os.fsdecode(fs_path))


def hash_path(fs_path):
    # type: (str) -> Tuple[bytes, int]
    """(sha256 digest, size) of the NAR of ``fs_path``: Nix's narHash and narSize."""
    hasher = NarHasher()
    dump_path(os.fsencode(fs_path), hasher)
    return hasher.digest(), hasher.size
