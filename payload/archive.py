"""The payload's archive layout: canonical tar streams of whole store paths.

Each payload chunk is a tar (GNU format, UTF-8 names with surrogate escapes
for non-UTF-8 bytes) holding complete store paths, named ``<hash>-<name>``
and ``<hash>-<name>/<rel>``.  Entries come in exactly NAR order (a directory
before its entries, entries sorted by name as bytes, depth first; see
archive.cc ``dump``), so the installer can compute each path's NAR hash
while it unpacks, and any reordering, duplicate or stray entry is an error.

Every entry carries Nix's canonical metadata (src/libstore/local-store.cc,
``canonicaliseTimestampAndPermissions``): mode 0444, or 0555 for executables
and directories, mtime 1, owner and group 0 with empty names.  Only regular
files, directories and symlinks exist in a store; anything else is refused.
"""

import collections
import stat
import tarfile

from . import nar

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


class TarWriter(object):
    """A tree visitor (see ``nar.dump_path``) that writes canonical tar entries.

    ``sink`` receives the tar bytes; ``top`` is the store path's base name.
    Call ``close`` once after the last store path to write the end marker.
    """

    def __init__(self, sink):
        # type: (Callable[[bytes], object]) -> None
        self._sink = sink
        self.top = ""
        self._pending = 0
        self.longest = 0  # longest member name in bytes, for the prefix length check

    def _name(self, rel):
        # type: (bytes) -> str
        name = _member_name(self.top, rel)
        self.longest = max(self.longest, len(name.encode(ENCODING, ERRORS)))
        return name

    def raw(self, data):
        # type: (bytes) -> None
        """Write bytes as they are: the low level for crafted (e.g. hostile) test payloads."""
        self._sink(data)

    def begin_directory(self, rel=b""):
        self._sink(_header(self._name(rel), tarfile.DIRTYPE, 0o555))

    def regular(self, rel, executable, size):
        self._sink(_header(self._name(rel), tarfile.REGTYPE, 0o555 if executable else 0o444,
                           size))
        self._pending = size

    def contents(self, data):
        self._sink(data)

    def end_regular(self):
        if self._pending % BLOCK:
            self._sink(b"\0" * (BLOCK - self._pending % BLOCK))
        self._pending = 0

    def symlink(self, rel, target):
        self._sink(_header(self._name(rel), tarfile.SYMTYPE, 0o777, 0,
                           target.decode(ENCODING, ERRORS)))

    def begin_entry(self, name):
        pass

    def end_entry(self):
        pass

    def end_directory(self):
        pass

    def close(self):
        self._sink(b"\0" * (2 * BLOCK))


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
_FOREIGN = {tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a character device",
            tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a FIFO",
            tarfile.CONTTYPE: "a contiguous file"}


def unpack(fileobj, expected, open_path):
    # type: (BinaryIO, Sequence[str], Callable[[str], object]) -> None
    """Read a chunk's tar stream and replay it as tree events.

    ``expected`` lists the store path base names the chunk must hold, in
    order.  For each of them ``open_path(name)`` returns a visitor that gets
    the path's events (as from ``nar.dump_path``) and then ``finish()``.
    Raises ArchiveError for anything that a canonical payload never holds.
    """
    reader = _TailReader(fileobj)
    try:
        tar = tarfile.open(fileobj=reader, mode="r|", encoding=ENCODING, errors=ERRORS)
    except tarfile.TarError as e:
        raise ArchiveError("payload chunk is not a tar stream (%s)" % e)
    remaining = list(expected)
    visitor = None
    stack = []  # open directories: [parts, name of the last entry seen in it]
    try:
        for member in tar:
            kind = _KIND.get(member.type)
            if kind is None:
                what = _FOREIGN.get(member.type, "an entry of unknown type %r" % member.type)
                raise ArchiveError("entry %r is %s; store paths hold only files, directories "
                                   "and symlinks" % (member.name, what))
            parts = _split_name(member.name)
            _check_mode(member, kind)
            # Close the directories this entry is not inside of.
            while stack and stack[-1][0] != parts[:-1]:
                stack.pop()
                visitor.end_directory()
                if stack:
                    visitor.end_entry()
            if len(parts) == 1:
                if stack:
                    raise ArchiveError("entry %r is out of order" % member.name)
                if visitor is not None:
                    visitor.finish()
                top = parts[0].decode(ENCODING, ERRORS)
                if not remaining or remaining[0] != top:
                    raise ArchiveError("entry %r is not the next store path of this chunk "
                                       "(expected %s)" % (member.name,
                                                          remaining[0] if remaining else "none"))
                remaining.pop(0)
                visitor = open_path(top)
            else:
                if not stack:
                    raise ArchiveError("entry %r is not inside a directory of the payload"
                                       % member.name)
                last = stack[-1][1]
                if last is not None and parts[-1] <= last:
                    raise ArchiveError("entry %r is duplicated or out of order" % member.name)
                stack[-1][1] = parts[-1]
                visitor.begin_entry(parts[-1])
            rel = b"/".join(parts[1:])
            if kind == "directory":
                visitor.begin_directory(rel)
                stack.append([parts, None])
                continue
            if kind == "symlink":
                visitor.symlink(rel, member.linkname.encode(ENCODING, ERRORS))
            else:
                _copy_contents(tar, member, rel, visitor)
            if len(parts) > 1:
                visitor.end_entry()
        while stack:
            stack.pop()
            visitor.end_directory()
            if stack:
                visitor.end_entry()
        # tarfile ends its iteration silently on a truncated or corrupt header
        # and on a missing end marker; only a clean end lets the last path finish.
        _check_clean_end(reader, tar.offset)
        if visitor is not None:
            visitor.finish()
    except (tarfile.TarError, EOFError) as e:
        raise ArchiveError("payload chunk is truncated or corrupt (%s)" % e)
    except nar.NarError as e:
        raise ArchiveError(str(e))
    if remaining:
        raise ArchiveError("payload chunk lacks store path %s" % remaining[0])


class _TailReader(object):
    """A read-only file that remembers its position and the last bytes it gave out."""

    KEEP = 4 * tarfile.RECORDSIZE  # more than tarfile's stream read-ahead

    def __init__(self, raw):
        self._raw = raw
        self.pos = 0
        self._tail = collections.deque()  # type: Deque[bytes]
        self._tail_size = 0

    def read(self, size=-1):
        data = self._raw.read(size)
        if data:
            self.pos += len(data)
            self._tail.append(data)
            self._tail_size += len(data)
            while self._tail_size - len(self._tail[0]) >= self.KEEP:
                self._tail_size -= len(self._tail.popleft())
        return data

    def since(self, offset):
        # type: (int) -> Optional[bytes]
        """The bytes read from ``offset`` on, or None if they are no longer kept."""
        start = self.pos - self._tail_size
        if offset < start:
            return None
        return b"".join(self._tail)[offset - start:]


def _check_clean_end(reader, offset):
    # type: (_TailReader, int) -> None
    """Everything after the last member must be zeros, at least the two end blocks."""
    rest = reader.since(offset)
    zeros = len(rest) if rest is not None and not rest.strip(b"\0") else -1
    while zeros >= 0:
        data = reader.read(_READ_SIZE)
        if not data:
            break
        zeros = zeros + len(data) if not data.strip(b"\0") else -1
    if zeros < 2 * BLOCK:
        raise ArchiveError("payload chunk is truncated or corrupt (it does not end with a "
                           "clean end-of-archive marker after its last entry)")


def _check_mode(member, kind):
    # type: (tarfile.TarInfo, str) -> None
    if kind == "symlink":
        return
    allowed = (0o555,) if kind == "directory" else (0o444, 0o555)
    if member.mode not in allowed:
        raise ArchiveError("entry %r has mode %s, not Nix's canonical %s"
                           % (member.name, oct(member.mode),
                              " or ".join(oct(m) for m in allowed)))


def _copy_contents(tar, member, rel, visitor):
    # type: (tarfile.TarFile, tarfile.TarInfo, bytes, object) -> None
    visitor.regular(rel, bool(member.mode & stat.S_IXUSR), member.size)
    src = tar.extractfile(member)
    left = member.size
    while left > 0:
        data = src.read(min(_READ_SIZE, left))
        if not data:
            raise ArchiveError("entry %r is truncated" % member.name)
        left -= len(data)
        visitor.contents(data)
    visitor.end_regular()
