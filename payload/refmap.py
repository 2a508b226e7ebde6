"""The reference map: where each file of a payload names the store dir or a hash part.

Made once, when the payload is written (``Recorder``, a tree sink after the
build's own rewrite), it lets every later retarget patch bytes at known
offsets instead of scanning them: no regular expression, no text classifier,
no per-piece work but a few comparisons (``FilePatch``).  For each store path
(``PathRefs``), for each regular file and symlink in NAR order that names
anything (files that name nothing are left out: any rewrite leaves them as
they are), it records whether the file is text (textfile.py's verdict, so the
classifier never runs again) and the offsets, in order, of

* the store dir as it is embedded in the payload (``EMBEDDED``), and in text
  files and symlink targets its canonical form too (``CANONICAL``), exactly
  where rewrite.Rewriter replaces them (leftmost, longest first, never
  overlapping);
* every 32-character window of nix32 characters that is one of the closure's
  hash parts (``HASH``), overlapping ones too, found as Nix's reference
  scanner finds them (``search`` in src/libstore/references.cc).  Which of
  them a rewrite replaces depends on its renaming; ``FilePatch`` picks them
  as Rewriter does (left to right, none overlapping the one before).

The hash parts looked for (``candidates``) are those of the closure's paths
and ``extra`` ones (the outputs its ``.drv`` files name that it does not
ship: exact.py renames those too).  A renaming with a hash part outside them
cannot use the map (``covers``): its caller scans as before.

A map is trusted as far as what carries it (an installer's codeSha256 and
manifest, signed; a sidecar the server wrote itself), and still checked
where it is cheap: every offset must lie inside its file and every occurrence
must be the bytes it says, or the rewrite stops with ``RefMapError`` (one
line, exit 3).  A map that leaves an occurrence out is not caught: that would
take the scan the map exists to save.

The serialisation (``to_bytes``, ``from_bytes``) is varints, offsets as
deltas, with a sha256 at the end: a few bytes an occurrence.
"""

import hashlib
import os
import re

from . import nix32
from .errors import OneLineError
from .storepath import HASH_LENGTH
from .textfile import Classifier
from .tree import Sink

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import (  # noqa: F401, E501
        Any,
        Callable,
        Dict,
        FrozenSet,
        Iterable,
        Iterator,
        List,
        Optional,
        Sequence,
        Tuple,
    )

EMBEDDED, CANONICAL, HASH = 0, 1, 2
MAGIC = b"nix-prefix-refmap 1\n"
# The zip member of an installer (format 4) and the sidecar of a tree or cache master.
MEMBER = "refmap.bin"
SIDECAR_SUFFIX = ".nix-prefix-refmap"
# Larger maps are not embedded (an installer's code members, which include the
# map, are read whole before anything runs: trust.MAX_CODE): the scan still works.
MAX_SIZE = 8 << 20
# A sidecar is read whole: bounded all the same (some 10 million occurrences).
MAX_SIDECAR = 64 << 20
_SLASHES = re.compile(b"//+")


class RefMapError(OneLineError):
    """A reference map that is damaged or does not fit the bytes it describes (exit 3)."""

    exit_code = 3

    def __init__(self, message, hint="the installer is damaged, or the master's "
                                     "%s sidecar: get the installer again, or delete the "
                                     "sidecar (it is made again)" % SIDECAR_SUFFIX):
        # type: (str, str) -> None
        OneLineError.__init__(self, "reference map: " + message, hint)


class FileRefs(object):
    """One file's (or symlink's) occurrences: ``offsets`` in increasing order, ``kinds``."""

    __slots__ = ("ordinal", "symlink", "text", "offsets", "kinds")

    def __init__(self, ordinal, symlink, text, offsets, kinds):
        # type: (int, bool, bool, List[int], List[int]) -> None
        self.ordinal = ordinal  # its place among the path's regular files and symlinks
        self.symlink = symlink
        self.text = text
        self.offsets = offsets
        self.kinds = kinds


class PathRefs(object):
    """One store path's files that name something, by ordinal; ``nar_hash`` (32 bytes)
    is the sha256 of the NAR the map describes."""

    __slots__ = ("name", "nar_hash", "files")

    def __init__(self, name, nar_hash, files):
        # type: (str, bytes, Dict[int, FileRefs]) -> None
        self.name = name
        self.nar_hash = nar_hash
        self.files = files


class RefMap(object):
    """The map of a whole payload whose store dir is embedded as ``store_dir``."""

    def __init__(self, store_dir, paths, extra=()):
        # type: (bytes, Sequence[PathRefs], Iterable[bytes]) -> None
        self.store_dir = store_dir
        self.paths = dict((p.name, p) for p in paths)
        self.order = [p.name for p in paths]
        # The closure's own hash parts are implied by its names: not stored twice.
        self.extra = sorted(set(extra) - candidates(self.order))
        self.candidates = candidates(self.order, self.extra)

    def covers(self, hashes):
        # type: (Iterable[bytes]) -> bool
        """Whether every hash part of a renaming is one the map looked for."""
        return self.candidates.issuperset(hashes)

    def to_bytes(self):
        # type: () -> bytes
        out = bytearray(MAGIC)
        _blob(out, self.store_dir)
        put_varint(out, len(self.extra))
        for h in self.extra:
            out += _hash_part(h)
        put_varint(out, len(self.order))
        for name in self.order:
            p = self.paths[name]
            _blob(out, name.encode())
            out += p.nar_hash
            put_varint(out, len(p.files))
            last = -1
            for ordinal in sorted(p.files):
                f = p.files[ordinal]
                put_varint(out, ordinal - last - 1)
                last = ordinal
                out.append(int(f.symlink) | int(f.text) << 1)
                put_varint(out, len(f.offsets))
                prev = -1
                for i, off in enumerate(f.offsets):
                    put_varint(out, (off - prev - 1) << 2 | f.kinds[i])
                    prev = off
        out += hashlib.sha256(bytes(out)).digest()
        return bytes(out)


def candidates(names, extra=()):
    # type: (Iterable[str], Iterable[bytes]) -> FrozenSet[bytes]
    """The hash parts a map of the closure ``names`` looks for."""
    return frozenset([n[:HASH_LENGTH].encode() for n in names] + list(extra))


def canonical(store_dir):
    # type: (bytes) -> bytes
    """The store dir as Nix sees it (rewrite.canonical's rule: repeated slashes are one)."""
    return _SLASHES.sub(b"/", store_dir)


# -- making a map ------------------------------------------------------------------------------


_CLASS_TABLE = bytes(1 if chr(c) in nix32.ALPHABET else 0 for c in range(256))
_RUN_START = b"\x01" * HASH_LENGTH


class _Match(object):
    """One occurrence ``Finder`` found, as much of ``re.Match`` as its callers use."""

    __slots__ = ("_buf", "_start", "_end")

    def __init__(self, buf, start, end):
        # type: (bytes, int, int) -> None
        self._buf = buf
        self._start = start
        self._end = end

    def start(self):
        # type: () -> int
        return self._start

    def end(self):
        # type: () -> int
        return self._end

    def group(self, n=0):
        # type: (int) -> bytes
        return self._buf[self._start:self._end]


class Finder(object):
    """What ``re.compile(b"|".join(spellings) + b"|[nix32]{32,}")`` finds in a buffer,
    match for match (the leftmost; at one place the longest spelling, then a run; a
    run as long as it goes), at memory speed: ``bytes.find`` for each spelling, and
    for runs ``bytes.find`` of 32 class bytes in the buffer translated to one byte a
    class.  The regular expression retries its run at every byte of every shorter
    run of letters and digits: 42 MB/s on compiled binaries, where this goes at
    several hundred.  ``runs``: look for runs at all (a same-length rewrite needs
    only the store dir)."""

    def __init__(self, spellings, runs=True):
        # type: (Iterable[bytes], bool) -> None
        self._spellings = sorted(set(spellings), key=len, reverse=True)
        self._runs = runs

    def finditer(self, buf):
        # type: (bytes) -> Iterator[_Match]
        spellings = self._spellings
        nexts = [buf.find(s) for s in spellings]
        classes = buf.translate(_CLASS_TABLE) if self._runs else b""
        run = classes.find(_RUN_START) if self._runs else -1
        pos = 0
        while True:
            best = best_len = -1
            for i, s in enumerate(spellings):  # longest first: it wins a tie
                at = nexts[i]
                if 0 <= at < pos:
                    at = nexts[i] = buf.find(s, pos)
                if at >= 0 and (best < 0 or at < best):
                    best, best_len = at, len(s)
            if 0 <= run < pos:
                run = classes.find(_RUN_START, pos)
            if run >= 0 and (best < 0 or run < best):
                end = classes.find(b"\x00", run + HASH_LENGTH)
                pos = len(buf) if end < 0 else end
                yield _Match(buf, run, pos)
            elif best >= 0:
                pos = best + best_len
                yield _Match(buf, best, pos)
            else:
                return


def final_matches(pattern, buf, keep, final):
    # type: (Any, bytes, int, bool) -> Tuple[List[Any], int]
    """The matches of ``pattern`` in ``buf`` that no later piece can change, and where
    the bytes to hold back start: a match that may go on, or start within the last
    ``keep`` bytes, waits for the next piece (all are final at the ``final`` piece)."""
    limit = len(buf) - keep
    found = []  # type: List[Any]
    pos = 0
    for m in pattern.finditer(buf):
        if not final and (m.end() >= len(buf) or m.start() >= limit):
            return found, max(pos, min(limit, m.start()))
        found.append(m)
        pos = m.end()
    return found, len(buf) if final else max(pos, limit)


class _Scan(object):
    """Occurrences in a stream fed in pieces, as rewrite.Rewriter finds them.

    ``olds`` are the store dir's spellings (kind by index); ``found`` gets
    (offset, kind) in order.  A match that may go on in the next piece is held
    back, as Rewriter holds it back.
    """

    def __init__(self, olds, hashes):
        # type: (Sequence[bytes], FrozenSet[bytes]) -> None
        spellings = sorted(set(olds), key=len, reverse=True)  # longest first, as Rewriter
        self._kind = dict((o, olds.index(o)) for o in spellings)
        self._re = Finder(spellings)
        self._hashes = hashes
        self._keep = max(max(len(o) for o in spellings), HASH_LENGTH) - 1
        self._tail = b""
        self._base = 0
        self.found = []  # type: List[Tuple[int, int]]

    def feed(self, data, final=False):
        # type: (bytes, bool) -> None
        buf = self._tail + data if self._tail else data
        matches, cut = final_matches(self._re, buf, self._keep, final)
        for m in matches:
            self._record(m.group(0), self._base + m.start())
        self._tail = buf[cut:]
        self._base += cut

    def _record(self, s, at):
        # type: (bytes, int) -> None
        kind = self._kind.get(s)
        if kind is not None:
            self.found.append((at, kind))
            return
        for i in range(len(s) - HASH_LENGTH + 1):  # every window (references.cc ``search``)
            if s[i:i + HASH_LENGTH] in self._hashes:
                self.found.append((at + i, HASH))


class Recorder(Sink):
    """Records the map of one store path from its events (the bytes as the payload holds
    them); ``result(nar_hash)`` gives its ``PathRefs``."""

    def __init__(self, name, store_dir, hashes):
        # type: (str, bytes, FrozenSet[bytes]) -> None
        self._name = name
        self._olds = (store_dir, canonical(store_dir))
        self._hashes = hashes
        self._ordinal = -1
        self._files = {}  # type: Dict[int, FileRefs]
        self._scans = ()  # type: Tuple[_Scan, ...]
        self._classifier = Classifier()

    def regular(self, rel, executable, size):
        # type: (bytes, bool, int) -> None
        self._ordinal += 1
        self._classifier = Classifier()
        # Text gets both spellings replaced, a binary the embedded one only: the two
        # scans differ only when the payload was retargeted before.
        text = _Scan(self._olds, self._hashes)
        same = self._olds[0] == self._olds[1]
        self._scans = (text,) if same else (text, _Scan(self._olds[:1], self._hashes))

    def contents(self, data):
        # type: (bytes) -> None
        self._classifier.feed(data)
        for scan in self._scans:
            scan.feed(data)

    def end_regular(self):
        # type: () -> None
        for scan in self._scans:
            scan.feed(b"", True)
        text = self._classifier.finish()
        self._add(False, text, self._scans[0 if text else -1].found)
        self._scans = ()

    def symlink(self, rel, target):
        # type: (bytes, bytes) -> None
        self._ordinal += 1
        scan = _Scan(self._olds, self._hashes)
        scan.feed(target, True)
        self._add(True, True, scan.found)

    def _add(self, symlink, text, found):
        # type: (bool, bool, List[Tuple[int, int]]) -> None
        if found:
            self._files[self._ordinal] = FileRefs(self._ordinal, symlink, text,
                                                  [f[0] for f in found], [f[1] for f in found])

    def result(self, nar_hash):
        # type: (bytes) -> PathRefs
        return PathRefs(self._name, nar_hash, self._files)


# -- reading a map -----------------------------------------------------------------------------


class _Reader(object):
    def __init__(self, data):
        # type: (bytes) -> None
        self.data = data
        self.pos = 0

    def varint(self):
        # type: () -> int
        n = shift = 0
        while True:
            if self.pos >= len(self.data) or shift > 63:
                raise RefMapError("it ends in the middle of a number")
            b = self.data[self.pos]
            self.pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                return n
            shift += 7

    def take(self, n):
        # type: (int) -> bytes
        if self.pos + n > len(self.data):
            raise RefMapError("it is truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out


def from_bytes(data):
    # type: (bytes) -> RefMap
    """Decode a map; RefMapError names the first problem."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 32:
        raise RefMapError("it is not a nix-prefix reference map")
    if hashlib.sha256(data[:-32]).digest() != data[-32:]:
        raise RefMapError("it does not match its own sha256 (damaged)")
    r = _Reader(data[:-32])
    r.pos = len(MAGIC)
    store_dir = r.take(r.varint())
    extra = [r.take(HASH_LENGTH) for _ in range(r.varint())]
    paths = []
    for _ in range(r.varint()):
        name = r.take(r.varint()).decode("utf-8", "replace")
        nar_hash = r.take(32)
        files = {}  # type: Dict[int, FileRefs]
        ordinal = -1
        for _ in range(r.varint()):
            ordinal += r.varint() + 1
            flags = r.take(1)[0]
            offsets = []  # type: List[int]
            kinds = []  # type: List[int]
            off = -1
            for _ in range(r.varint()):
                v = r.varint()
                off += (v >> 2) + 1
                if v & 3 > HASH:
                    raise RefMapError("%s: an occurrence of an unknown kind" % name)
                offsets.append(off)
                kinds.append(v & 3)
            files[ordinal] = FileRefs(ordinal, bool(flags & 1), bool(flags & 2), offsets, kinds)
        paths.append(PathRefs(name, nar_hash, files))
    if r.pos != len(r.data):
        raise RefMapError("it has bytes after its end")
    return RefMap(store_dir, paths, extra)


def put_varint(out, n):
    # type: (bytearray, int) -> None
    """Append ``n`` to ``out`` as a little-endian base-128 varint, 7 bits a byte (also
    xz's multibyte integer: xz-file-format 1.2.0, 1.2, which builder/compress.py
    writes)."""
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)


def _blob(out, data):
    # type: (bytearray, bytes) -> None
    put_varint(out, len(data))
    out += data


def _hash_part(h):
    # type: (bytes) -> bytes
    if len(h) != HASH_LENGTH:
        raise ValueError("a hash part is %d characters, not %d" % (len(h), HASH_LENGTH))
    return h


# -- rewriting with a map ----------------------------------------------------------------------


class Rewrite(object):
    """What a retarget replaces: the embedded store dir ``old_dir`` by ``new_dir``
    (same length) in binaries, either spelling by the canonical ``new_dir`` in text,
    and the hash parts of ``hashes``; ``hashes_ok``: the map's candidates."""

    def __init__(self, old_dir, new_dir, hashes, hashes_ok):
        # type: (bytes, bytes, Dict[bytes, bytes], FrozenSet[bytes]) -> None
        self.olds = (old_dir, canonical(old_dir), b"")
        canon = canonical(new_dir)
        # By kind: what a text file gets, what a binary gets (None: a lie).
        self.text_news = (canon, canon, b"")
        self.binary_news = (new_dir, None, b"")  # type: Tuple[Optional[bytes], Optional[bytes], bytes]
        self.lengths = (len(old_dir), len(canonical(old_dir)), HASH_LENGTH)
        self.hashes = hashes
        self.hashes_ok = hashes_ok


class FilePatch(object):
    """One file's bytes rewritten at the offsets of its ``FileRefs``, fed in pieces.

    ``size`` is the file's size; ``new_size`` what the rewrite makes of it
    (known before its bytes: text changes length only where the store dir is).
    ``feed(data)`` returns the rewritten bytes that are final so far (a piece
    without an occurrence comes back as it is); ``count`` the replacements.
    ``where`` names the file in errors.
    """

    def __init__(self, refs, size, rewrite, where):
        # type: (FileRefs, int, Rewrite, str) -> None
        self._offs = refs.offsets
        self._kinds = refs.kinds
        self._rw = rewrite
        self._news = rewrite.text_news if refs.text else rewrite.binary_news
        self._where = where
        self._k = 0
        self._base = 0  # the file offset of what is held back, or of the next piece
        self._carry = b""
        self._last = 0  # where the last replacement ended
        self.count = 0
        grow = 0
        end = 0
        lengths = rewrite.lengths
        for i, off in enumerate(self._offs):
            kind = self._kinds[i]
            if off + lengths[kind] > size:
                self._lie("points past the end of the file (byte %d of %d)" % (off, size))
            if kind != HASH:
                if off < end:
                    self._lie("has overlapping store dirs at byte %d" % off)
                end = off + lengths[kind]
                new = self._news[kind]
                if new is None:
                    self._lie("has the canonical store dir in a binary at byte %d" % off)
                else:
                    grow += len(new) - lengths[kind]
        self.new_size = size + grow

    def _lie(self, what):
        # type: (str) -> None
        raise RefMapError("%s: the map %s" % (self._where, what))

    def feed(self, data):
        # type: (bytes) -> bytes
        offs = self._offs
        k = self._k
        if self._carry:
            data = self._carry + data
            self._carry = b""
        base = self._base
        end = base + len(data)
        if k >= len(offs) or offs[k] >= end:  # the common case: nothing in this piece
            self._base = end
            return data
        out = []
        cur = 0
        kinds = self._kinds
        lengths = self._rw.lengths
        last = self._last
        n = len(offs)
        while k < n:
            off = offs[k]
            if off >= end:
                break
            kind = kinds[k]
            if off < last:
                if kind != HASH:
                    self._lie("has a store dir at byte %d inside a hash part" % off)
                k += 1  # a window overlapping one replaced: Rewriter skips it too
                continue
            length = lengths[kind]
            if off + length > end:
                break  # goes on in the next piece: held back
            o = off - base
            new = self._new(kind, off, data[o:o + length])
            if new is None:
                k += 1
                continue
            out.append(data[cur:o])
            out.append(new)
            cur = o + length
            last = off + length
            self.count += 1
            k += 1
        hold = len(data)
        if k < n and offs[k] < end:
            hold = offs[k] - base
            self._carry = data[hold:]
        out.append(data[cur:hold])
        self._k = k
        self._last = last
        self._base = base + hold
        return b"".join(out)

    def _new(self, kind, off, old):
        # type: (int, int, bytes) -> Optional[bytes]
        """What replaces ``old``, an occurrence of ``kind`` at ``off``: None to leave it
        (a hash part the renaming keeps); RefMapError when it is not what the map says."""
        if kind == HASH:
            if old not in self._rw.hashes_ok:
                self._lie("points at %r at byte %d, not a hash part" % (old, off))
            return self._rw.hashes.get(old)
        if old != self._rw.olds[kind]:
            self._lie("points at %r at byte %d, not the store dir" % (old, off))
        return self._news[kind]

    def whole(self, read_at):
        # type: (Callable[[int, int], bytes]) -> List[Tuple[int, int, bytes]]
        """The replacements of the whole file at once, as (offset, length, new bytes) in
        order, by the rules of ``feed``, reading only the bytes of each occurrence
        (``read_at(offset, length)``): for a file whose bytes need not pass through."""
        found = []  # type: List[Tuple[int, int, bytes]]
        lengths = self._rw.lengths
        last = 0
        for k, off in enumerate(self._offs):
            kind = self._kinds[k]
            if off < last:
                if kind != HASH:
                    self._lie("has a store dir at byte %d inside a hash part" % off)
                continue  # a window overlapping one replaced: Rewriter skips it too
            length = lengths[kind]
            new = self._new(kind, off, read_at(off, length))
            if new is not None:
                found.append((off, length, new))
                last = off + length
                self.count += 1
        self._k = len(self._offs)
        return found

    def finish(self):
        # type: () -> bytes
        """The end of the file: nothing may be left."""
        if self._carry or self._k != len(self._offs):
            self._lie("names bytes the file does not have")
        return b""


# -- the sidecar of a master on disk -----------------------------------------------------------


def read_sidecar(path):
    # type: (str) -> Optional[RefMap]
    """The map in the sidecar file ``path``, or None if there is none;
    RefMapError if it is damaged.  Bounded: a larger file is no map of ours."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SIDECAR + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RefMapError("cannot read %s (%s)" % (path, e.strerror))
    if len(data) > MAX_SIDECAR:
        raise RefMapError("%s is larger than a map may be" % path)
    return from_bytes(data)


def write_sidecar(path, refs):
    # type: (str, RefMap) -> bool
    """Write ``refs`` to ``path`` atomically (a temporary name, then a rename); False
    when that cannot be done (a read-only place: the map then lives in memory only)."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            f.write(refs.to_bytes())
        os.replace(tmp, path)
        return True
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False
