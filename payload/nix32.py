"""Nix's base-32 encoding ("nix32").

Follows NixOS/nix src/libutil/hash.cc (``printHash32``/``parseHash32``):
alphabet without e, o, u, t; the digest is read as a little-endian integer
and printed most significant 5-bit group first.
"""

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}


def encoded_length(nbytes):
    # type: (int) -> int
    """Length of the nix32 form of ``nbytes`` bytes (52 for sha256, 32 for 20 bytes)."""
    return (nbytes * 8 - 1) // 5 + 1


def encode(digest):
    # type: (bytes) -> str
    """Encode bytes as nix32 (hash.cc ``printHash32``)."""
    value = int.from_bytes(digest, "little")
    n = encoded_length(len(digest))
    return "".join(ALPHABET[(value >> (5 * i)) & 31] for i in range(n - 1, -1, -1))


def decode(text, nbytes):
    # type: (str, int) -> bytes
    """Decode nix32 ``text`` into ``nbytes`` bytes; raise ValueError if it is not valid."""
    if len(text) != encoded_length(nbytes):
        raise ValueError("nix32 string has length %d, expected %d"
                         % (len(text), encoded_length(nbytes)))
    value = 0
    for c in text:
        digit = _INDEX.get(c)
        if digit is None:
            raise ValueError("invalid nix32 character %r" % c)
        value = (value << 5) | digit
    if value >> (nbytes * 8):
        raise ValueError("nix32 string %r does not fit in %d bytes" % (text, nbytes))
    return value.to_bytes(nbytes, "little")
