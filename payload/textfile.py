"""Which files are text, and rewriting a file the text way or the binary way.

A retarget writes the store dir in two forms (docs/retargeting.md): binaries
get the same-length, slash-padded form, so that no offset inside them moves;
text gets the canonical store dir, so that it is byte-identical to what a
native build at the new store dir writes (its length changes).  Treating a
binary as text would move offsets and break it; treating text as a binary
only leaves slashes in it.  The rule therefore errs towards "binary":

A file is **text** when none of its bytes is a control character that
text does not use and it does not start with the signature of a binary or
compressed format:

* The bytes 0x00-0x06, 0x0E-0x1A, 0x1C-0x1F and 0x7F never occur in text:
  this is file(1)'s table of text characters (``text_chars`` in
  src/encoding.c of the file command), which allows BEL, BS, TAB, LF, VT, FF,
  CR and ESC and every byte from 0x80 (UTF-8, ISO-8859, other 8-bit sets).
  Machine code, compressed data and most binary formats hold such bytes
  within their first few hundred bytes; the whole file is looked at, so a
  script with a binary payload appended is a binary, however long the
  script.
* ``SIGNATURES`` are formats whose first bytes may all be printable but
  whose contents hold offsets, sizes or checksums (ar archives, ASCII cpio,
  PDF) or which are compressed, plus the byte order marks of UTF-16 and
  UTF-32 (their store dirs are not ASCII bytes, so no byte-wise rewrite can
  find them).

The verdict needs the whole file, and a text's new length is known only at
its end, while a NAR (and the tar and disk writers) need a file's size
before its bytes.  ``FileRewrite`` therefore holds a file back, in memory up
to ``SPOOL_MEMORY`` and in a temporary file beyond that, until it is known:
a binary is let through as soon as a byte shows it is one (its size is the
old one), a text once its last byte is in.
"""

import re
import tempfile

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Any, Callable, Optional  # noqa: F401

# Bytes that text does not contain (file(1), src/encoding.c, text_chars).
_NOT_TEXT = re.compile(b"[\x00-\x06\x0e-\x1a\x1c-\x1f\x7f]")

SIGNATURES = (
    b"\x7fELF",             # ELF executables, shared objects, core files
    b"!<arch>\n",           # ar archives (static libraries, .deb)
    b"070701", b"070702", b"070707",  # cpio with ASCII headers
    b"%PDF-",               # PDF: a cross-reference table of byte offsets
    b"\x1f\x8b",            # gzip
    b"\x1f\x9d", b"\x1f\xa0",  # compress, LZH
    b"BZh",                 # bzip2
    b"\xfd7zXZ",            # xz
    b"\x28\xb5\x2f\xfd",    # zstd
    b"\x04\x22\x4d\x18",    # lz4
    b"LZIP",                # lzip
    b"PK\x03\x04", b"PK\x05\x06",  # zip, jar, whl
    b"\xca\xfe\xba\xbe",    # Mach-O universal, Java class
    b"\xfe\xed\xfa", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe",  # Mach-O
    b"\xff\xfe", b"\xfe\xff",  # UTF-16 (and UTF-32 LE) byte order marks
    b"\x00\x00\xfe\xff",    # UTF-32 BE
)
_HEAD = max(len(s) for s in SIGNATURES)

# What one file may hold in memory while it is undecided (twice: the bytes
# as they came and as text would have them); beyond, a temporary file.
SPOOL_MEMORY = 1 << 20


def is_text(data):
    # type: (bytes) -> bool
    """Whether ``data``, a whole file, is text by the rule above."""
    return not data.startswith(SIGNATURES) and _NOT_TEXT.search(data) is None


class Classifier(object):
    """The rule above applied to a file fed in pieces.

    ``binary`` turns True as soon as a piece shows the file is not text (a
    signature is recognised once enough bytes are in, or at ``finish``);
    when it is still False after ``finish``, the file is text.
    """

    def __init__(self):
        # type: () -> None
        self.binary = False
        self._head = b""

    def feed(self, data):
        # type: (bytes) -> None
        if self.binary:
            return
        if len(self._head) < _HEAD:
            self._head += data[:_HEAD - len(self._head)]
            if self._head.startswith(SIGNATURES):
                self.binary = True
                return
        if _NOT_TEXT.search(data) is not None:
            self.binary = True

    def finish(self):
        # type: () -> bool
        """True if the file is text (checked against every signature it is long enough for)."""
        self.binary = self.binary or self._head.startswith(SIGNATURES)
        return not self.binary


class FileRewrite(object):
    """One regular file's bytes rewritten the text way or the binary way, once known.

    ``text`` and ``binary`` are stream rewriters (``feed(data) -> bytes``,
    ``flush() -> bytes``); ``binary`` must keep the length.  ``start(size)``
    is called once with the size of what will be written, then
    ``write(data)`` with the bytes.  ``size`` is the file's old size.
    Temporary files, if needed, go to ``spool_dir`` (default: the system's).
    ``is_text`` says what the file turned out to be (after ``finish``).
    """

    def __init__(self, size, text, binary, start, write, spool_dir=None):
        # type: (int, Any, Any, Callable[[int], None], Callable[[bytes], None], Optional[str]) -> None
        self._size = size
        self._text = text
        self._binary = binary
        self._start = start
        self._write = write
        self._classifier = Classifier()
        self._passing = False  # a binary: the bytes go straight through
        self._written = 0
        self._spool_dir = spool_dir
        # Made when the first undecided bytes come (most binaries show at once).
        self._old = None  # type: Any
        self._new = None  # type: Any
        self.is_text = None  # type: Optional[bool]

    def feed(self, data):
        # type: (bytes) -> None
        if self._passing:
            self._emit(self._binary.feed(data))
            return
        self._classifier.feed(data)
        if self._classifier.binary:
            self._pass_binary()
            self._emit(self._binary.feed(data))
            return
        if self._old is None:
            self._old = tempfile.SpooledTemporaryFile(SPOOL_MEMORY, dir=self._spool_dir)
            self._new = tempfile.SpooledTemporaryFile(SPOOL_MEMORY, dir=self._spool_dir)
        self._old.write(data)
        self._new.write(self._text.feed(data))

    def finish(self):
        # type: () -> None
        """Write what is held back; the file is complete."""
        if not self._passing:
            if self._classifier.finish():
                self.is_text = True
                rest = self._text.flush()
                self._start((self._new.tell() if self._new is not None else 0) + len(rest))
                self._replay(self._new, None)
                self._emit(rest)
                self._close()
                return
            self._pass_binary()
        self._emit(self._binary.flush())
        if self._written != self._size:
            raise ValueError("a binary rewrite changed the length of a file (%d bytes, not %d)"
                             % (self._written, self._size))

    def close(self):
        # type: () -> None
        """Drop the temporary files (also after an error)."""
        self._close()

    def _pass_binary(self):
        # type: () -> None
        self.is_text = False
        self._passing = True
        self._start(self._size)
        self._replay(self._old, self._binary)
        self._close()

    def _replay(self, spool, rewriter):
        # type: (Any, Any) -> None
        if spool is None:
            return
        spool.seek(0)
        while True:
            data = spool.read(SPOOL_MEMORY)
            if not data:
                break
            self._emit(rewriter.feed(data) if rewriter is not None else data)

    def _emit(self, data):
        # type: (bytes) -> None
        if data:
            self._written += len(data)
            self._write(data)

    def _close(self):
        # type: () -> None
        for spool in (self._old, self._new):
            if spool is not None:
                spool.close()
        self._old = self._new = None
