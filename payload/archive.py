"""The payload's archive layout: one canonical tar stream, cut into chunks.

The payload is a tar (GNU format, UTF-8 names with surrogate escapes for
non-UTF-8 bytes) of every store path, named ``<hash>-<name>`` and
``<hash>-<name>/<rel>``.  Entries come in exactly NAR order (a directory
before its entries, entries sorted by name as bytes, depth first; see
archive.cc ``dump``), so the installer can compute each path's NAR hash
while it unpacks, and any reordering, duplicate or stray entry is an error.

The stream is cut into chunks of about the same size wherever that size is
reached (``TarWriter(chunk_size=...)``): between store paths, between two
entries of a path, or inside a file's contents, never inside a header or a
padding.  A ``Cut`` says where; the manifest records it as the next chunk's
``start``, and the reader (``unpack``) resumes a chunk from it and checks that
the chunk before ends exactly there.  Only the last chunk has the end marker.

Every entry carries Nix's canonical metadata (src/libstore/local-store.cc,
``canonicaliseTimestampAndPermissions``): mode 0444, or 0555 for executables
and directories, mtime 1, owner and group 0 with empty names.  Only regular
files, directories and symlinks exist in a store; anything else is refused.
"""

import stat
import tarfile

from . import nar
from .tree import Sink

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import (  # noqa: F401
        Any,
        BinaryIO,
        Callable,
        Iterator,
        List,
        Optional,
        Sequence,
        Tuple,
    )

ENCODING = "utf-8"
ERRORS = "surrogateescape"
BLOCK = tarfile.BLOCKSIZE
_READ_SIZE = 1 << 20


class ArchiveError(Exception):
    """The payload's tar stream is malformed, out of order or hostile."""


def _member_name(top, rel):
    # type: (str, bytes) -> str
    if not rel:
        return top
    return top + "/" + rel.decode(ENCODING, ERRORS)


class Cut(object):
    """A point inside store path ``path`` where one chunk ends and the next starts.

    ``entry`` is the last entry begun before the cut (its name inside the
    path, "" for the path itself) and ``kind`` its type (``directory``,
    ``regular`` or ``symlink``).  For a cut inside a regular file's contents,
    ``offset`` of its ``size`` bytes come before the cut (0 <= offset < size);
    otherwise both are None and the entry is complete (a directory: open).
    """

    __slots__ = ("path", "entry", "kind", "offset", "size")

    def __init__(self, path, entry, kind, offset=None, size=None):
        # type: (str, str, str, Optional[int], Optional[int]) -> None
        self.path = path
        self.entry = entry
        self.kind = kind
        self.offset = offset
        self.size = size

    def __eq__(self, other):
        return isinstance(other, Cut) and all(
            getattr(self, a) == getattr(other, a) for a in self.__slots__)

    def __ne__(self, other):
        return not self == other

    def __repr__(self):
        where = "%s/%s" % (self.path, self.entry) if self.entry else self.path
        if self.offset is None:
            return "after %s %s" % (self.kind, where)
        return "inside %s at byte %s of %s" % (where, self.offset, self.size)


def _header(name, kind, mode, size=0, linkname=""):
    # type: (str, bytes, int, int, str) -> bytes
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = linkname
    info.mtime = 1
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.GNU_FORMAT, ENCODING, ERRORS)


class TarWriter(Sink):
    """A tree sink (see tree.py) that writes canonical tar entries.

    ``write`` receives the tar bytes; ``top`` is the store path's base name.
    Call ``close`` once after the last store path to write the end marker.

    With a ``chunk_size``, the stream is cut once a chunk holds that many
    bytes, at the next point a cut may be (before a header, or right there
    inside a file's contents): ``on_cut(cut, paths)`` is called with the
    ``Cut`` (None between two store paths) and the names of the paths the
    finished chunk holds, and the bytes after it belong to the next chunk.
    """

    def __init__(self, write, chunk_size=0, on_cut=None):
        # type: (Callable[[bytes], object], int, Optional[Callable[[Optional[Cut], List[str]], object]]) -> None
        self._write = write
        self.top = ""
        self._pending = 0
        self.longest = 0  # longest member name in bytes, for the prefix length check
        self._chunk_size = chunk_size
        self._on_cut = on_cut
        self._filled = 0  # bytes in the current chunk
        self.paths = []  # type: List[str]  # store paths with bytes in the current chunk
        self._entry = ("", "")  # (name inside the path, kind) of the last entry begun
        self._offset = 0  # contents bytes of the current regular file written so far

    def _name(self, rel):
        # type: (bytes) -> str
        name = _member_name(self.top, rel)
        self.longest = max(self.longest, len(name.encode(ENCODING, ERRORS)))
        return name

    def _emit(self, data):
        # type: (bytes) -> None
        self._filled += len(data)
        self._write(data)

    def _cut(self, cut):
        # type: (Optional[Cut]) -> None
        if self._on_cut is not None:
            self._on_cut(cut, self.paths)
        self.paths = [cut.path] if cut is not None else []
        self._filled = 0

    def _entry_header(self, rel, kind, data):
        # type: (bytes, str, bytes) -> None
        """Write one entry's header (GNU long-name records included): a cut may come first."""
        if self._chunk_size and self._filled >= self._chunk_size:
            self._cut(None if not rel else Cut(self.top, *self._entry))
        if not rel:
            self.paths.append(self.top)
        self._entry = (rel.decode(ENCODING, ERRORS), kind)
        self._emit(data)

    def begin_directory(self, rel=b""):
        # type: (bytes) -> None
        self._entry_header(rel, "directory", _header(self._name(rel), tarfile.DIRTYPE, 0o555))

    def regular(self, rel, executable, size):
        # type: (bytes, bool, int) -> None
        self._entry_header(rel, "regular", _header(
            self._name(rel), tarfile.REGTYPE, 0o555 if executable else 0o444, size))
        self._pending = size
        self._offset = 0

    def contents(self, data):
        # type: (bytes) -> None
        while self._chunk_size and data:
            # Cut inside the contents where the chunk is full, if bytes of the file
            # remain after that point (a cut never falls in the padding).
            take = max(0, self._chunk_size - self._filled)
            if take >= len(data) or self._offset + take >= self._pending:
                break
            if take:
                self._emit(data[:take])
                self._offset += take
                data = data[take:]
            self._cut(Cut(self.top, self._entry[0], "regular", self._offset, self._pending))
        if data:
            self._emit(data)
            self._offset += len(data)

    def end_regular(self):
        # type: () -> None
        if self._pending % BLOCK:
            self._emit(b"\0" * (BLOCK - self._pending % BLOCK))
        self._pending = 0

    def symlink(self, rel, target):
        # type: (bytes, bytes) -> None
        self._entry_header(rel, "symlink", _header(self._name(rel), tarfile.SYMTYPE, 0o777, 0,
                                                   target.decode(ENCODING, ERRORS)))

    def close(self):
        # type: () -> None
        """Write the end-of-archive marker (in the last chunk)."""
        self._emit(b"\0" * (2 * BLOCK))


def _split_name(name):
    # type: (str) -> List[bytes]
    raw = name.encode(ENCODING, ERRORS)
    if raw.startswith(b"/"):
        raise ArchiveError("entry %r has an absolute name" % name)
    parts = raw.split(b"/")
    for part in parts:
        if part in (b"", b".", b".."):
            raise ArchiveError("entry %r has an empty, '.' or '..' component" % name)
        if b"\0" in part or b"\n" in part:
            raise ArchiveError("entry %r has a NUL or newline in its name" % name)
    return parts


_KIND = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "directory",
         tarfile.SYMTYPE: "symlink"}
_CUT_KIND = {"file": "regular", "directory": "directory", "symlink": "symlink"}
_FOREIGN = {tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a character device",
            tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a FIFO",
            tarfile.CONTTYPE: "a contiguous file"}


def unpack(fileobj, expected, open_path, start=None, end=None, last=True):
    # type: (BinaryIO, Sequence[str], Callable[[str], Sink], Optional[Cut], Optional[Cut], bool) -> None
    """Read a chunk's tar stream and replay it as tree events.

    ``expected`` lists the store path base names the chunk holds bytes of,
    in order.  For each of them ``open_path(name)`` returns a tree sink that
    gets the path's events (as from ``nar.dump_path``) and then ``finish()``,
    or ``end_part()`` when the chunk ends inside the path (``end``, the next
    chunk's start).  With ``start`` the chunk begins inside the first path, at
    that cut.  Only the ``last`` chunk ends with the end-of-archive marker.
    Raises ArchiveError for anything that a canonical payload never holds.
    """
    try:
        _Reader(_Input(fileobj), expected, open_path, end, last).read(start)
    except nar.NarError as e:
        raise ArchiveError(str(e))


class _Reader(object):
    """One chunk's tar stream replayed as tree events (``unpack``).

    ``read`` takes the headers one by one and hands each to the method for
    its type (``_directory``, ``_file``, ``_symlink``), as CPython's tarfile
    ``_proc_member`` does.  Between two entries the reader knows where it
    stands: the paths still to come, the sink of the current one, the
    directories open in it and the last entry begun (what a cut names).
    """

    def __init__(self, stream, expected, open_path, end, last):
        # type: (_Input, Sequence[str], Callable[[str], Sink], Optional[Cut], bool) -> None
        self._stream = stream
        self._expected = list(expected)
        self._remaining = list(expected)
        self._open_path = open_path
        self._end = end
        self._last = last
        self._sink = Sink()  # replaced by open_path(top) at each store path's first entry
        self._opened = False
        self._stack = []  # type: List[List[Any]]  # open directories: [parts, last entry name]
        self._entry = ("", "")  # (name inside the path, kind) of the last entry begun

    def read(self, start):
        # type: (Optional[Cut]) -> None
        """Replay the chunk, from ``start`` inside its first path if given."""
        if start is not None and self._resume(start):
            return
        for member in _members(self._stream, self._last):
            kind = _KIND.get(member.type)
            if kind is None:
                what = _FOREIGN.get(member.type, "an entry of unknown type %r" % member.type)
                raise ArchiveError("entry %r is %s; store paths hold only files, directories "
                                   "and symlinks" % (member.name, what))
            parts = _split_name(member.name)
            _check_mode(member, kind)
            self._close_directories(parts[:-1])
            self._begin(member.name, parts)
            rel = b"/".join(parts[1:])
            self._entry = (rel.decode(ENCODING, ERRORS), _CUT_KIND[kind])
            if kind == "directory":
                self._directory(rel, parts)
            elif kind == "symlink":
                self._symlink(member, rel, parts)
            elif self._file(member, rel, parts):
                return  # the chunk ends inside this file
        self._stop()

    def _resume(self, start):
        # type: (Cut) -> bool
        """Open the first path where ``start`` left it; True if the whole chunk is a
        piece from inside one file (and has been read)."""
        if not self._remaining or self._remaining[0] != start.path:
            raise ArchiveError("the chunk starts inside %s, which it does not list first"
                               % start.path)
        self._remaining.pop(0)
        self._sink = self._open_path(start.path)
        self._opened = True
        end = self._end
        if end is not None and start.offset is not None and start.size is not None \
                and end.offset is not None and (start.path, start.entry) == (end.path,
                                                                              end.entry):
            _cut_inside(self._stream, start, end, self._sink, start.size, start.offset)
            return True
        self._entry = _resume(self._stream, start, self._sink, self._stack)
        return False

    def _close_directories(self, parent):
        # type: (List[bytes]) -> None
        """End the open directories the next entry (inside ``parent``) is not inside of."""
        while self._stack and self._stack[-1][0] != parent:
            self._close_directory()

    def _close_directory(self):
        # type: () -> None
        self._stack.pop()
        self._sink.end_directory()
        if self._stack:
            self._sink.end_entry()

    def _begin(self, name, parts):
        # type: (str, List[bytes]) -> None
        """An entry begins: a store path's top (the next one expected), or an entry
        of the open directory, after the one before it in NAR order."""
        if len(parts) == 1:
            if self._stack:
                raise ArchiveError("entry %r is out of order" % name)
            if self._opened:
                self._sink.finish()
            top = parts[0].decode(ENCODING, ERRORS)
            if not self._remaining or self._remaining[0] != top:
                raise ArchiveError("entry %r is not the next store path of this chunk "
                                   "(expected %s)" % (name, self._remaining[0]
                                                      if self._remaining else "none"))
            self._remaining.pop(0)
            self._sink = self._open_path(top)
            self._opened = True
            return
        if not self._stack:
            raise ArchiveError("entry %r is not inside a directory of the payload" % name)
        last_name = self._stack[-1][1]
        if last_name is not None and parts[-1] <= last_name:
            raise ArchiveError("entry %r is duplicated or out of order" % name)
        self._stack[-1][1] = parts[-1]
        self._sink.begin_entry(parts[-1])

    def _end_entry(self, parts):
        # type: (List[bytes]) -> None
        if len(parts) > 1:
            self._sink.end_entry()

    def _directory(self, rel, parts):
        # type: (bytes, List[bytes]) -> None
        """A directory stays open until an entry outside it (``_close_directories``)."""
        self._sink.begin_directory(rel)
        self._stack.append([parts, None])

    def _symlink(self, member, rel, parts):
        # type: (tarfile.TarInfo, bytes, List[bytes]) -> None
        self._sink.symlink(rel, member.linkname.encode(ENCODING, ERRORS))
        self._end_entry(parts)

    def _file(self, member, rel, parts):
        # type: (tarfile.TarInfo, bytes, List[bytes]) -> bool
        """A regular file, its contents and padding; True if the chunk ends inside it."""
        self._sink.regular(rel, bool(member.mode & stat.S_IXUSR), member.size)
        end = self._end
        if end is not None and end.offset is not None and not self._remaining and \
                end.path == _top_name(parts) and end.entry == self._entry[0]:
            # The chunk ends inside this file: its first end.offset bytes are here.
            _cut_inside(self._stream, Cut(end.path, self._entry[0], "regular"), end,
                        self._sink, member.size)
            return True
        for data in self._stream.pieces(member.size, member.name):
            self._sink.contents(data)
        self._sink.end_regular()
        self._stream.skip(-member.size % BLOCK, member.name)
        self._end_entry(parts)
        return False

    def _stop(self):
        # type: () -> None
        """The stream has ended between two entries: where the next chunk goes on
        (``end``), or, in the last chunk, after the last path, which finishes."""
        end = self._end
        if end is not None:
            if not self._opened or self._remaining or end.offset is not None or \
                    (end.path, end.entry, end.kind) != (self._current(),) + self._entry:
                raise ArchiveError("the chunk ends %s, but the next chunk starts %r"
                                   % (self._where(), end))
            self._sink.end_part()
            return
        while self._stack:
            self._close_directory()
        # Only a clean end (see _members) lets the last path finish.
        if self._opened:
            self._sink.finish()
        if self._remaining:
            raise ArchiveError("payload chunk lacks store path %s" % self._remaining[0])

    def _current(self):
        # type: () -> str
        return self._expected[-1] if self._expected and self._opened else ""

    def _where(self):
        # type: () -> str
        if not self._opened:
            return "before any store path"
        return "after %s %s/%s" % (self._entry[1], self._current(), self._entry[0])


def _top_name(parts):
    # type: (List[bytes]) -> str
    return parts[0].decode(ENCODING, ERRORS)


def _resume(stream, start, sink, stack):
    # type: (_Input, Cut, Sink, List[List[Any]]) -> Tuple[str, str]
    """Set the reader where ``start`` left the path: its open directories on
    ``stack``, and the rest of a file cut inside its contents sent on."""
    top = start.path.encode(ENCODING, ERRORS)
    rel = start.entry.encode(ENCODING, ERRORS)
    names = _split_name(start.path + "/" + start.entry)[1:] if rel else []
    parts = [top]
    for name in names:
        stack.append([list(parts), name])
        parts.append(name)
    if start.kind == "directory":
        stack.append([parts, None])
    elif start.offset is not None and start.size is not None:
        for data in stream.pieces(start.size - start.offset, "%s/%s" % (start.path, start.entry)):
            sink.contents(data)
        sink.end_regular()
        stream.skip(-start.size % BLOCK, start.path)
        if names:
            sink.end_entry()
    return (start.entry, start.kind)


def _cut_inside(stream, here, end, sink, size, offset=0):
    # type: (_Input, Cut, Cut, Sink, int, int) -> None
    """The chunk's last bytes: those of file ``here`` (``size`` bytes, this chunk
    holding them from ``offset``) up to where the next chunk starts (``end``)."""
    name = "%s/%s" % (here.path, here.entry) if here.entry else here.path
    end_offset, end_size = end.offset, end.size
    if end_offset is None or end_size is None:
        raise ArchiveError("entry %r: the next chunk does not go on inside it" % name)
    if size != end_size:
        raise ArchiveError("entry %r is %d bytes here, but the next chunk goes on with it as "
                           "%d bytes" % (name, size, end_size))
    if end_offset < offset:
        raise ArchiveError("entry %r: the next chunk starts at byte %d, before this one (%d)"
                           % (name, end_offset, offset))
    for data in stream.pieces(end_offset - offset, name):
        sink.contents(data)
    if not stream.at_eof():
        raise ArchiveError("entry %r goes on past the point where the next chunk starts "
                           "(byte %d)" % (name, end_offset))
    sink.end_part()


def _truncated(what):
    # type: (str) -> ArchiveError
    return ArchiveError("payload chunk is truncated or corrupt (%s)" % what)


class _Input(object):
    """The decompressed stream, read in large pieces and handed out by exact sizes.

    The archive is read here rather than by tarfile's stream mode, which pulls
    10 KiB at a time through every layer below and stops silently on a bad
    header; one 1 MiB read per MiB keeps the per-byte cost in C (decoder,
    sha256, write), and every short read is an error.
    """

    def __init__(self, raw):
        self._raw = raw
        self._buf = b""
        self._pos = 0

    def _fill(self):
        # type: () -> bool
        data = self._raw.read(_READ_SIZE)
        if not data:
            return False
        self._buf = data if self._pos >= len(self._buf) else self._buf[self._pos:] + data
        self._pos = 0
        return True

    def read(self, n, what):
        # type: (int, str) -> bytes
        """Exactly ``n`` bytes; a short stream is a truncated archive."""
        while len(self._buf) - self._pos < n:
            if not self._fill():
                raise _truncated(what)
        data = self._buf[self._pos:self._pos + n]
        self._pos += n
        return data

    def pieces(self, n, name):
        # type: (int, str) -> Iterator[bytes]
        """``n`` bytes as a few large pieces (file contents)."""
        while n > 0:
            if self._pos >= len(self._buf) and not self._fill():
                raise _truncated("entry %r is cut short" % name)
            take = min(n, len(self._buf) - self._pos)
            yield self._buf[self._pos:self._pos + take]
            self._pos += take
            n -= take

    def skip(self, n, name):
        # type: (int, str) -> None
        for _ in self.pieces(n, name):
            pass

    def at_eof(self):
        # type: () -> bool
        return self._pos >= len(self._buf) and not self._fill()

    def zeros_to_end(self):
        # type: () -> int
        """How many bytes are left, all of them zero; -1 if any is not zero."""
        count = 0
        while True:
            rest = self._buf[self._pos:]
            if rest.strip(b"\0"):
                return -1
            count += len(rest)
            self._pos = len(self._buf)
            if not self._fill():
                return count


# Longest GNU long name or link target accepted (Linux's PATH_MAX is 4096).
_MAX_LONG_NAME = 1 << 16


def _members(stream, last=True):
    # type: (_Input, bool) -> Iterator[tarfile.TarInfo]
    """The tar headers of the stream, GNU long names applied, up to a clean end.

    The end of the ``last`` chunk is a zero block followed by nothing but
    zeros, two blocks at least; any other chunk ends right after an entry (or
    inside one: see ``unpack``) and holds no zero block.  Anything else (a cut
    header, a missing end marker, trailing garbage) is an error, so a damaged
    chunk never looks complete.
    """
    long_name = long_link = None
    while True:
        if stream.at_eof():
            if long_name is not None or long_link is not None:
                raise _truncated("a long name record has no entry after it")
            if not last:
                return
            raise _truncated("it ends without an end-of-archive marker")
        block = stream.read(BLOCK, "it ends inside an entry header")
        if not block.strip(b"\0"):
            if not last:
                raise ArchiveError("an end-of-archive marker before the last chunk")
            if long_name is not None or long_link is not None:
                raise _truncated("a long name record has no entry after it")
            zeros = stream.zeros_to_end()
            if zeros < BLOCK:
                raise _truncated("its end-of-archive marker is %s"
                                 % ("followed by other data" if zeros < 0 else "cut short"))
            return
        try:
            info = tarfile.TarInfo.frombuf(block, ENCODING, ERRORS)
        except tarfile.HeaderError as e:
            raise _truncated("bad entry header: %s" % e)
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            if info.size > _MAX_LONG_NAME:
                raise ArchiveError("a long name record claims %d bytes" % info.size)
            data = stream.read(info.size + (-info.size % BLOCK), "a long name is cut short")
            value = data[:info.size].partition(b"\0")[0].decode(ENCODING, ERRORS)
            if info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = value
            else:
                long_link = value
            continue
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE):
            raise ArchiveError("entry %r carries a pax header, which a canonical payload "
                               "never has" % info.name)
        if long_name is not None:
            info.name = long_name[:-1] if long_name.endswith("/") and info.isdir() \
                else long_name
        if long_link is not None:
            info.linkname = long_link
        long_name = long_link = None
        if info.type in (tarfile.DIRTYPE, tarfile.SYMTYPE) and info.size:
            # tarfile would skip no data here and read it as the next header.
            raise ArchiveError("entry %r is not a regular file but claims %d bytes of data"
                               % (info.name, info.size))
        yield info


def _check_mode(member, kind):
    # type: (tarfile.TarInfo, str) -> None
    if kind == "symlink":
        return
    allowed = (0o555,) if kind == "directory" else (0o444, 0o555)
    if member.mode not in allowed:
        raise ArchiveError("entry %r has mode %s, not Nix's canonical %s"
                           % (member.name, oct(member.mode),
                              " or ".join(oct(m) for m in allowed)))
