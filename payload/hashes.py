"""Nix hash strings: parsing every form Nix accepts and printing the canonical one.

``Hash::parseAny`` (NixOS/nix src/libutil/hash.cc) accepts base16, nix32 and
base64, with or without a ``sha256:`` prefix, and SRI (``sha256-<base64>``).
closureInfo writes ``sha256:<nix32>`` and ``nix-store --dump-db`` bare hex
(../shared/docs/nix-formats.md sections 1-2); we store ``sha256:<nix32>``.
"""

import base64
import binascii
import re

from . import nix32

SHA256_SIZE = 32
_HEX = re.compile(r"^[0-9a-fA-F]{64}\Z")


def parse_sha256(text):
    # type: (str) -> bytes
    """Parse a sha256 hash in any form Nix prints; raise ValueError otherwise."""
    body = text
    if text.startswith("sha256-"):
        return _b64(text[len("sha256-"):], text)
    if ":" in text:
        algo, body = text.split(":", 1)
        if algo != "sha256":
            raise ValueError("hash %r is not sha256" % text)
    if _HEX.match(body):
        return binascii.unhexlify(body)
    if len(body) == nix32.encoded_length(SHA256_SIZE):
        return nix32.decode(body, SHA256_SIZE)
    if len(body) == 44:
        return _b64(body, text)
    raise ValueError("%r is not a sha256 hash (expected sha256:<nix32>, hex or SRI)" % text)


def _b64(body, text):
    # type: (str, str) -> bytes
    try:
        raw = base64.b64decode(body.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("%r is not a valid base64 sha256 hash" % text)
    if len(raw) != SHA256_SIZE:
        raise ValueError("%r is not a sha256 hash" % text)
    return raw


def format_sha256(digest):
    # type: (bytes) -> str
    """The canonical ``sha256:<nix32>`` form, as closureInfo writes it."""
    return "sha256:" + nix32.encode(digest)


def normalise_sha256(text):
    # type: (str) -> str
    """Any accepted form to ``sha256:<nix32>``."""
    return format_sha256(parse_sha256(text))
