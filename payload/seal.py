"""The seal: a sha256 of the whole installer file, kept in its last bytes.

The zip's CRCs cover member data, and the manifest covers the sh preamble,
but some bytes of a zip (local header times and versions, the central
directory's attributes, padding) are checked by nothing.  So the file ends
with the zip comment ``nix-prefix-sha256:<64 hex digits>``: the sha256 of
every byte before those 64 digits.  Any flipped bit anywhere, and any
truncation, breaks it, and the installer checks it before anything else.
The sh preamble checks only that the marker is there (``tail -c``), so a
truncated file says so even before Python starts.
"""

import hashlib
import os
import re

MARKER = b"nix-prefix-sha256:"
DIGITS = 64
LENGTH = len(MARKER) + DIGITS
_READ_SIZE = 1 << 20
_SEAL = re.compile(b"^" + re.escape(MARKER) + b"[0-9a-f]{64}\\Z")


class SealError(ValueError):
    """The file's seal is missing or does not match its bytes."""


def placeholder():
    # type: () -> bytes
    """The comment to write into the zip before the digest is known."""
    return MARKER + b"0" * DIGITS


def _digest(f, size):
    # type: (BinaryIO, int) -> bytes
    h = hashlib.sha256()
    f.seek(0)
    left = size
    while left > 0:
        data = f.read(min(_READ_SIZE, left))
        if not data:
            raise SealError("the file ended while being read")
        h.update(data)
        left -= len(data)
    return h.hexdigest().encode()


def seal(path):
    # type: (str) -> None
    """Write the digest over the placeholder at the end of ``path``."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(size - LENGTH)
        if f.read(LENGTH) != placeholder():
            raise SealError("%s does not end with the seal placeholder" % path)
        digest = _digest(f, size - DIGITS)
        f.seek(size - DIGITS)
        f.write(digest)


def check(path):
    # type: (str) -> None
    """Raise SealError unless ``path`` ends with a seal matching all its other bytes."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < LENGTH:
            raise SealError("the file is too short to be an installer")
        f.seek(size - LENGTH)
        tail = f.read(LENGTH)
        if not _SEAL.match(tail):
            raise SealError("its end marker is missing or damaged (truncated download?)")
        if _digest(f, size - DIGITS) != tail[len(MARKER):]:
            raise SealError("its bytes do not match its sha256 seal")
