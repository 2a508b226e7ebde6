"""Same-length relocation of a store to another store dir.

Store paths embed the store dir in file contents (RUNPATH, #! lines, scripts)
and symlink targets.  Replacing the old store dir S1 by a new one S2 of
*exactly the same length* moves no offset in any binary; a shorter S2 is
padded with extra slashes, which the kernel and libc read as one
(``/home/u/n/store`` for a 31-byte S1 becomes ``/home/u/n/////////////////store``).
Nix canonicalises NIX_STORE_DIR (``canonPath`` in src/libutil/util.cc) and
finds references by their hash part (src/libstore/references.cc), so the
hash parts, the references and the registration's paths in the canonical S2
all stay valid.  See ../shared/docs/confirmed-here.md.
"""


import bz2
import gzip
import io
import lzma
import zipfile
import zlib

from . import codecs

# Files whose bytes a same-length rewrite must not or cannot fix: archives
# keep CRCs of their members (rewriting would corrupt them, so they are left
# as they are), compressed files hide the store dir from a byte search, and a
# .pyc may be checked against its source's hash.  They are only reported.
ARCHIVE_SUFFIXES = (".zip", ".jar", ".whl", ".egg", ".war", ".apk")
COMPRESSED_SUFFIXES = {".gz": "gzip", ".tgz": "gzip", ".xz": "xz", ".txz": "xz",
                       ".lzma": "xz", ".bz2": "bzip2", ".tbz2": "bzip2", ".zst": "zstd"}
PYC_SUFFIX = ".pyc"
# Bigger suspect files are reported without being opened (bounded memory).
SCAN_LIMIT = 64 << 20


class RelocationError(ValueError):
    """The new store dir cannot replace the old one in place."""


def padded_store_dir(old, new):
    # type: (str, str) -> str
    """``new`` lengthened with slashes to the length of ``old``.

    The slashes go just before the last component, so the padded form keeps
    the visible shape ``<prefix>/…/store``.
    """
    if len(new) > len(old):
        raise RelocationError(
            "the store dir %s is %d bytes, longer than the %d bytes of %s this installer was "
            "built for" % (new, len(new), len(old), old))
    head, _, last = new.rpartition("/")
    return head + "/" * (1 + len(old) - len(new)) + last


class StreamRewriter(object):
    """Replace ``old`` by ``new`` (same length) in a byte stream fed in pieces.

    Occurrences may straddle two pieces: the last ``len(old) - 1`` bytes of
    each piece are held back until the next piece (or ``flush``) shows
    whether they start an occurrence.
    """

    def __init__(self, old, new):
        # type: (bytes, bytes) -> None
        if len(old) != len(new):
            raise RelocationError("old and new store dirs must have the same length")
        self._old = old
        self._new = new
        self._keep = len(old) - 1
        self._tail = b""
        self.count = 0

    def feed(self, data):
        # type: (bytes) -> bytes
        """Return the rewritten bytes that are final so far."""
        buf = self._tail + data
        out = []
        pos = 0
        while True:
            i = buf.find(self._old, pos)
            if i < 0:
                break
            out.append(buf[pos:i])
            out.append(self._new)
            pos = i + len(self._old)
            self.count += 1
        # The held-back tail stays unrewritten, so replaced bytes are never
        # scanned twice.
        rest = buf[pos:]
        split = max(len(rest) - self._keep, 0)
        out.append(rest[:split])
        self._tail = rest[split:]
        return b"".join(out)

    def flush(self):
        # type: () -> bytes
        tail, self._tail = self._tail, b""
        return tail


def rewrite(data, old, new):
    # type: (bytes, bytes, bytes) -> bytes
    """Replace every ``old`` by ``new`` in one piece of bytes (e.g. a symlink target)."""
    if len(old) != len(new):
        raise RelocationError("old and new store dirs must have the same length")
    return data.replace(old, new)


def is_archive(rel):
    # type: (bytes) -> bool
    """Whether a file is left byte-for-byte as it is by relocation (zip family)."""
    return rel.lower().endswith(tuple(x.encode() for x in ARCHIVE_SUFFIXES))


def _suspect_kind(rel):
    # type: (bytes) -> Optional[str]
    name = rel.lower().decode("utf-8", "replace")
    if name.endswith(ARCHIVE_SUFFIXES):
        return "archive"
    if name.endswith(PYC_SUFFIX):
        return "pyc"
    for suffix, codec in COMPRESSED_SUFFIXES.items():
        if name.endswith(suffix):
            return codec
    return None


def hidden_reference(kind, data, needle):
    # type: (str, bytes, bytes) -> Optional[str]
    """Why the store dir ``needle`` in a suspect file escapes a plain rewrite, or None."""
    if kind == "pyc":
        if needle in data:
            return "compiled Python with the store dir inside (rewritten in place; " \
                   "a hash-checked .pyc is recompiled from its source)"
        return None
    if kind == "archive":
        if needle in data:
            return "zip archive with the store dir in a stored member (left unchanged)"
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for info in zf.infolist():
                    if info.file_size <= SCAN_LIMIT and needle in zf.read(info):
                        return "zip archive with the store dir in member %s (left unchanged)" \
                               % info.filename
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError,
                ValueError, zlib.error):
            return None
        return None
    try:
        if kind == "gzip":
            plain = gzip.decompress(data)
        elif kind == "xz":
            plain = lzma.decompress(data)
        elif kind == "bzip2":
            plain = bz2.decompress(data)
        else:
            reader = codecs.open_reader("zstd", io.BytesIO(data))
            plain = reader.read()
    except codecs.CodecError:
        return "zstd-compressed file that could not be checked (no zstd decoder here)"
    except Exception:  # not really compressed, or damaged: nothing hidden to report
        return None
    if needle in plain:
        return "%s-compressed file with the store dir inside (left unchanged)" % kind
    return None


class Relocator(object):
    """Visitor that rewrites the store dir in contents and symlink targets.

    Sits in front of ``inner`` (a disk or tar writer, a hasher...): every
    regular file's bytes and every symlink target go through a same-length
    rewrite of ``old`` by ``new``, except archives (see ``is_archive``).
    ``count`` tells how many occurrences were rewritten.
    """

    def __init__(self, inner, old, new):
        # type: (object, bytes, bytes) -> None
        self._inner = inner
        self._old = old
        self._new = new
        self._rewriter = None  # type: Optional[StreamRewriter]
        self.count = 0

    def regular(self, rel, executable, size):
        # type: (bytes, bool, int) -> None
        self._rewriter = None if is_archive(rel) else StreamRewriter(self._old, self._new)
        self._inner.regular(rel, executable, size)

    def contents(self, data):
        # type: (bytes) -> None
        if self._rewriter is not None:
            data = self._rewriter.feed(data)
        if data:
            self._inner.contents(data)

    def end_regular(self):
        # type: () -> None
        if self._rewriter is not None:
            tail = self._rewriter.flush()
            if tail:
                self._inner.contents(tail)
            self.count += self._rewriter.count
            self._rewriter = None
        self._inner.end_regular()

    def symlink(self, rel, target):
        # type: (bytes, bytes) -> None
        self.count += target.count(self._old)
        self._inner.symlink(rel, rewrite(target, self._old, self._new))

    def __getattr__(self, name):
        # begin_directory, begin_entry, end_entry, end_directory, finish...
        return getattr(self._inner, name)


class HiddenReferenceScanner(object):
    """Visitor that finds suspect files (see ``hidden_reference``) of one store path.

    ``found`` collects ``"/<rel>: <reason>"`` strings (``": <reason>"`` for a
    store path that is itself a file), to append to the store path's name.  Only files with a
    suspect suffix are buffered, and only up to SCAN_LIMIT bytes.
    """

    def __init__(self, needle):
        # type: (bytes) -> None
        self._needle = needle
        self._kind = None  # type: Optional[str]
        self._rel = b""
        self._parts = []  # type: List[bytes]
        self._size = 0
        self.found = []  # type: List[str]

    def regular(self, rel, executable, size):
        # type: (bytes, bool, int) -> None
        self._kind = _suspect_kind(rel)
        self._rel = rel
        self._parts = []
        self._size = size

    def contents(self, data):
        # type: (bytes) -> None
        if self._kind is not None and self._size <= SCAN_LIMIT:
            self._parts.append(data)

    def end_regular(self):
        # type: () -> None
        if self._kind is None:
            return
        rel = "/" + self._rel.decode("utf-8", "replace") if self._rel else ""
        if self._size > SCAN_LIMIT:
            self.found.append("%s: %s file too large to check (%d bytes)"
                              % (rel, self._kind, self._size))
        else:
            reason = hidden_reference(self._kind, b"".join(self._parts), self._needle)
            if reason:
                self.found.append("%s: %s" % (rel, reason))
        self._kind = None
        self._parts = []

    def __getattr__(self, name):
        return lambda *args: None
