"""Ed25519 signature verification on Python integers (RFC 8032, section 5.1.7).

The installer checks a publisher's signature on machines where nothing can be
installed, so this is the standard library only: SHA-512 from hashlib and the
curve arithmetic on Python ints.  It runs a few times per install, where a
few milliseconds each are nothing, so it favours being short and checkable
over being fast.  It verifies only: signing happens in the builder, with
libsodium (builder/signer.py), as Nix itself does (src/libutil/crypto.cc).

Acceptance follows libsodium's ``crypto_sign_verify_detached``, which is what
Nix calls, rather than the laxest reading of the RFC: S must be below the
group order, the public key must be a canonical encoding of a point that is
not of small order, and R must equal the canonical encoding of [S]B - [k]A
(so a non-canonical R is refused too).  Nothing here is secret, so nothing
needs to run in constant time.
"""

import hashlib

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Optional, Tuple  # noqa: F401

# The curve -x^2 + y^2 = 1 + d x^2 y^2 over GF(p) (RFC 8032, section 5.1).
P = 2 ** 255 - 19
L = 2 ** 252 + 27742317777372353535851937790883648493  # order of the base point
D = (-121665 * pow(121666, P - 2, P)) % P
_SQRT_M1 = pow(2, (P - 1) // 4, P)  # a square root of -1

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64

# Points in extended coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, x*y = T/Z.
_IDENTITY = (0, 1, 1, 0)


def _add(p, q):
    # type: (Tuple[int, int, int, int], Tuple[int, int, int, int]) -> Tuple[int, int, int, int]
    """Point addition (RFC 8032, section 5.1.4: add-2008-hwcd-3); also doubles."""
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * t1 * t2 * D % P
    dd = 2 * z1 * z2 % P
    e, f, g, h = b - a, dd - c, dd + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _multiply(scalar, point):
    # type: (int, Tuple[int, int, int, int]) -> Tuple[int, int, int, int]
    """[scalar]point by double-and-add (variable time; nothing here is secret)."""
    result = _IDENTITY
    while scalar > 0:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def _negate(point):
    # type: (Tuple[int, int, int, int]) -> Tuple[int, int, int, int]
    x, y, z, t = point
    return (-x % P, y, z, -t % P)


def _recover_x(y, sign):
    # type: (int, int) -> Optional[int]
    """The x with the given low bit on the curve at y, or None (RFC 8032, 5.1.3)."""
    if y >= P:
        return None  # not canonical
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * _SQRT_M1 % P
    if (x * x - x2) % P != 0:
        return None
    if (x & 1) != sign:
        x = P - x
    return x


def decode_point(data):
    # type: (bytes) -> Optional[Tuple[int, int, int, int]]
    """A 32-byte point encoding as extended coordinates, or None if it is not one."""
    if len(data) != 32:
        return None
    value = int.from_bytes(data, "little")
    y = value & ((1 << 255) - 1)
    x = _recover_x(y, value >> 255)
    if x is None:
        return None
    return (x, y, 1, x * y % P)


def encode_point(point):
    # type: (Tuple[int, int, int, int]) -> bytes
    """The canonical 32-byte encoding of a point (RFC 8032, 5.1.2)."""
    x, y, z, _ = point
    z_inv = pow(z, P - 2, P)
    x, y = x * z_inv % P, y * z_inv % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


# The base point B: y = 4/5, x positive (even).
_B_Y = 4 * pow(5, P - 2, P) % P
_B_X = _recover_x(_B_Y, 0)
if _B_X is None:  # cannot happen: y = 4/5 is on the curve
    raise ImportError("ed25519: the base point does not decode")
BASE = (_B_X, _B_Y, 1, _B_X * _B_Y % P)


def _is_small_order(point):
    # type: (Tuple[int, int, int, int]) -> bool
    """[8]point is the identity: the point lies in the small torsion subgroup."""
    eight = _multiply(8, point)
    return eight[0] % P == 0 and (eight[1] - eight[2]) % P == 0


def public_key_of_seed(seed):
    # type: (bytes) -> bytes
    """The public key of a 32-byte secret seed (RFC 8032, 5.1.5).

    Not needed to verify; it lets tests and the key parser check that a
    libsodium secret key (seed followed by public key) is consistent
    without libsodium.
    """
    if len(seed) != 32:
        raise ValueError("an ed25519 seed is 32 bytes, not %d" % len(seed))
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return encode_point(_multiply(a, BASE))


def verify(public_key, message, signature):
    # type: (bytes, bytes, bytes) -> bool
    """True if ``signature`` is a valid ed25519 signature of ``message`` by ``public_key``."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        return False
    a = decode_point(public_key)
    if a is None or _is_small_order(a):
        return False
    r_bytes = signature[:32]
    k = int.from_bytes(hashlib.sha512(r_bytes + public_key + message).digest(), "little") % L
    # R' = [S]B - [k]A, compared by its canonical encoding as libsodium does.
    r_check = _add(_multiply(s, BASE), _multiply(k, _negate(a)))
    return encode_point(r_check) == r_bytes
