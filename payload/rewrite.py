"""Rewriting store references in bytes: one stream rewriter, one per-path sink.

Store paths embed the store dir in file contents (RUNPATH, #! lines,
scripts) and symlink targets.  A retarget (retarget.py) replaces the old
store dir by the new one of *the same length* (slash-padded), so no offset
moves in any binary, and, for an exact retarget, each old 32-character hash
part by its new one, found the way Nix finds references: every 32-character
window of a run of nix32 characters (src/libstore/references.cc).

Some files a byte rewrite must not or cannot fix: zip-family archives keep
CRCs of their members (they are left as they are), compressed files hide
the store dir from a byte search, a .pyc may be checked against its source.
``HiddenReferenceScanner`` finds them, to report them.
"""

import bz2
import gzip
import io
import lzma
import re
import zipfile
import zlib

from . import codecs
from .refmap import FilePatch, Finder, RefMapError, final_matches
from .storepath import HASH_LENGTH
from .textfile import FileRewrite
from .tree import Filter, Sink

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Any, Dict, List, Optional, Sequence, Tuple  # noqa: F401

    from .refmap import PathRefs, Rewrite  # noqa: F401

ARCHIVE_SUFFIXES = (".zip", ".jar", ".whl", ".egg", ".war", ".apk")
COMPRESSED_SUFFIXES = {".gz": "gzip", ".tgz": "gzip", ".xz": "xz", ".txz": "xz",
                       ".lzma": "xz", ".bz2": "bzip2", ".tbz2": "bzip2", ".zst": "zstd"}
PYC_SUFFIX = ".pyc"
# Bigger suspect files are reported without being opened (bounded memory).
SCAN_LIMIT = 64 << 20

_SLASHES = re.compile(b"//+")


class Rewriter(object):
    """Replace a store dir, and 32-char hash parts, in a byte stream fed in pieces.

    ``old_dir`` becomes ``new_dir``; with ``hashes`` (old hash part to new,
    same length) every run of nix32 characters is looked at 32 characters at
    a time and a window that is a key of ``hashes`` is replaced.  When
    ``new_dir`` has the length of ``old_dir`` no offset moves.  A match that
    may continue in the next piece is held back until ``feed`` or ``flush``
    shows where it ends.  ``count`` tells how many replacements were made.
    ``also`` are other spellings of the old store dir, replaced by ``new_dir``
    as well (a payload retargeted before has the canonical store dir in its
    text and the padded one in its binaries).
    """

    def __init__(self, old_dir, new_dir, hashes=None, also=()):
        # type: (bytes, bytes, Optional[Dict[bytes, bytes]], Sequence[bytes]) -> None
        self._olds = set((old_dir,) + tuple(also))
        self._new = new_dir
        self._hashes = hashes or {}
        # The store dir's spellings (longest first where one starts with another) and,
        # with hashes, every run of 32 or more nix32 characters (refmap.Finder).
        self._re = Finder(self._olds, runs=bool(self._hashes))
        self._keep = max(max(len(o) for o in self._olds),
                         HASH_LENGTH if self._hashes else 0) - 1
        self._tail = b""
        self.count = 0

    def _replace(self, m):
        # type: (Any) -> bytes
        s = m.group(0)  # type: bytes
        if s in self._olds:
            self.count += 1
            return self._new
        out = []
        i = 0
        start = 0
        while i + HASH_LENGTH <= len(s):
            new = self._hashes.get(s[i:i + HASH_LENGTH])
            if new is None:
                i += 1
                continue
            out.append(s[start:i])
            out.append(new)
            self.count += 1
            i += HASH_LENGTH
            start = i
        out.append(s[start:])
        return b"".join(out)

    def _run(self, buf, final):
        # type: (bytes, bool) -> Tuple[bytes, bytes]
        matches, cut = final_matches(self._re, buf, self._keep, final)
        out = []
        pos = 0
        for m in matches:
            out.append(buf[pos:m.start()])
            out.append(self._replace(m))
            pos = m.end()
        out.append(buf[pos:cut])
        return b"".join(out), buf[cut:]

    def feed(self, data):
        # type: (bytes) -> bytes
        """Return the rewritten bytes that are final so far."""
        done, self._tail = self._run(self._tail + data, False)
        return done

    def flush(self):
        # type: () -> bytes
        """The rest, at the end of the stream."""
        done, self._tail = self._run(self._tail, True)
        return done

    def whole(self, data):
        # type: (bytes) -> bytes
        """Rewrite one complete piece (a text file, a symlink target)."""
        done, _ = self._run(data, True)
        return done


def canonical(store_dir):
    # type: (bytes) -> bytes
    """The store dir as Nix sees it: a padded ``/a/b////store`` is ``/a/b/store``.

    The padding is only repeated slashes, which Nix's ``canonPath``
    (src/libutil/util.cc) folds into one.
    """
    return _SLASHES.sub(b"/", store_dir)


def is_archive(rel):
    # type: (bytes) -> bool
    """Whether a file is left byte-for-byte as it is by a rewrite (zip family)."""
    return rel.lower().endswith(tuple(x.encode() for x in ARCHIVE_SUFFIXES))


class PathRewriter(Filter):
    """One store path rewritten on its way to ``inner``.

    Every regular file's bytes and every symlink target get the new store dir
    for ``old_dir`` and the new hash parts of ``hashes`` (``Rewriter``):
    binaries the same-length ``new_dir``, so that no offset inside them
    moves; text files (the rule of textfile.py) and symlink targets, where no
    offset matters, the ``canonical`` new store dir for either form of the old
    one, as a native build at the new store dir writes them.  Files wait in
    ``spool_dir`` (default: the system's temporary dir) until they are known
    to be text or binary.

    Zip-family archives (``is_archive``) are left as they are.  With
    ``keep_contents`` (sources and fixed outputs of an exact retarget, whose
    paths are computed from their contents) nothing is rewritten; a path
    given a ``text`` (a ``.drv`` or text file of an exact retarget) gets those
    bytes instead of its own.  ``count`` tells how many replacements were made.

    With ``mapped``, the path's reference map (refmap.py) and the rewrite it
    stands for, nothing is scanned or classified: each file is patched at
    the offsets the map gives, with the same result.
    """

    def __init__(self, inner, old_dir, new_dir, hashes=None, keep_contents=False, text=None,
                 spool_dir=None, mapped=None):
        # type: (Sink, bytes, bytes, Optional[Dict[bytes, bytes]], bool, Optional[bytes], Optional[str], Optional[Tuple[PathRefs, Rewrite]]) -> None
        Filter.__init__(self, inner)
        self._mapped = mapped
        self._ordinal = -1
        self._patch = None  # type: Optional[FilePatch]
        self._args = (old_dir, new_dir, hashes)
        self._spool_dir = spool_dir
        self._keep = keep_contents
        self._text = text
        self._file = None  # type: Optional[FileRewrite]
        self._rewriters = ()  # type: Tuple[Rewriter, ...]
        self._pending = None  # type: Optional[Tuple[bytes, bool]]
        self.count = 0

    def _text_rewriter(self):
        # type: () -> Rewriter
        old_dir, new_dir, hashes = self._args
        return Rewriter(old_dir, canonical(new_dir), hashes, also=(canonical(old_dir),))

    def regular(self, rel, executable, size):
        # type: (bytes, bool, int) -> None
        self._ordinal += 1
        if self._text is not None:
            self._pending = (rel, executable)
            return
        self._file = None
        if self._keep or is_archive(rel):
            self.inner.regular(rel, executable, size)
            return
        if self._mapped is not None:
            self._patch = self._mapped_file(rel, False, size)
            self.inner.regular(rel, executable, size if self._patch is None
                               else self._patch.new_size)
            return
        inner = self.inner
        self._rewriters = (self._text_rewriter(), Rewriter(*self._args))
        self._file = FileRewrite(size, self._rewriters[0], self._rewriters[1],
                                 lambda n: inner.regular(rel, executable, n), inner.contents,
                                 self._spool_dir)

    def contents(self, data):
        # type: (bytes) -> None
        if self._text is not None:
            return
        if self._patch is not None:
            out = self._patch.feed(data)
            if out:
                self.inner.contents(out)
        elif self._file is not None:
            self._file.feed(data)
        elif data:
            self.inner.contents(data)

    def end_regular(self):
        # type: () -> None
        if self._pending is not None and self._text is not None:
            rel, executable = self._pending
            self._pending = None
            self.inner.regular(rel, executable, len(self._text))
            self.inner.contents(self._text)
        elif self._patch is not None:
            self._patch.finish()
            self.count += self._patch.count
            self._patch = None
        elif self._file is not None:
            self._file.finish()
            self.count += self._rewriters[0 if self._file.is_text else 1].count
            self._file = None
        self.inner.end_regular()

    def symlink(self, rel, target):
        # type: (bytes, bytes) -> None
        self._ordinal += 1
        if self._keep:
            pass
        elif self._mapped is not None:
            refs = self._mapped_file(rel, True, len(target))
            if refs is not None:
                target = refs.feed(target)
                refs.finish()
                self.count += refs.count
        else:
            rewriter = self._text_rewriter()
            target = rewriter.whole(target)
            self.count += rewriter.count
        self.inner.symlink(rel, target)

    def _mapped_file(self, rel, symlink, size):
        # type: (bytes, bool, int) -> Optional[FilePatch]
        """The patch of the file or symlink just begun, or None if the map names nothing
        in it."""
        assert self._mapped is not None
        refs, rewrite = self._mapped
        found = refs.files.get(self._ordinal)
        if found is None:
            return None
        where = "%s/%s" % (refs.name, rel.decode("utf-8", "replace")) if rel else refs.name
        if found.symlink != symlink:
            raise RefMapError("%s: the map says it is %s" % (where, "a symlink" if found.symlink
                                                              else "a regular file"))
        return FilePatch(found, size, rewrite, where)

    def finish(self):
        # type: () -> None
        if self._mapped is not None and self._mapped[0].files \
                and max(self._mapped[0].files) > self._ordinal:
            raise RefMapError("%s: the map names more files than it has" % self._mapped[0].name)
        self.inner.finish()


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


class HiddenReferenceScanner(Sink):
    """Finds the suspect files (see ``hidden_reference``) of one store path.

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
