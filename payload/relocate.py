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
