"""Nix's signing formats: keys, signatures, and what a store path's signature covers.

Follows NixOS/nix src/libstore/crypto.cc at 2.8.0 (in 2.34:
src/libutil/signature/local-keys.cc) and ``ValidPathInfo::fingerprint``
(src/libstore/store-api.cc at 2.8.0, src/libstore/path-info.cc in 2.34);
see ../shared/docs/nix-formats.md section 9.

- A key is ``NAME:BASE64``: the name is everything before the first colon
  and must not be empty.  ``nix-store --generate-binary-cache-key`` writes
  a secret key of 64 bytes (libsodium's ed25519 secret key: the 32-byte seed,
  then the public key) and a public key of 32 bytes.
- A signature is ``NAME:BASE64`` of a 64-byte detached ed25519 signature;
  NAME says which key made it, and Nix checks it only against a trusted key
  of that name (``verifyDetached``).
- A store path's signature is made over its fingerprint,
  ``1;<store path>;<narHash as sha256:nix32>;<narSize>;<references>``, the
  references being full store paths, sorted and comma-joined.  The store dir
  is part of it: a retargeted path is another path, which no old signature
  covers.

Nothing here knows the installer file; it is the format library both the
builder (which signs, builder/signer.py) and the installer (which verifies,
with ed25519.py) use, and binary-cache narinfo ``Sig:`` lines are the same
signatures.
"""

import base64
import binascii
import collections
import re

from . import ed25519, hashes

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Iterable, List, Tuple, Union  # noqa: F401

SECRET_KEY_SIZE = 64  # libsodium's crypto_sign_SECRETKEYBYTES: seed, then public key
SEED_SIZE = 32
# What a secret key given where a public key belongs is told (never the key itself).
SECRET_NOT_PUBLIC = ("this is a secret key (64 bytes); give the public key "
                     "(`nix key convert-secret-to-public`)")

# Nix takes any name before the first colon.  We also refuse white space and
# control characters: trusted-public-keys is a space-separated list, so such a
# name could never be trusted, and every message here is one line.
_NAME = re.compile(r"^[^:\s\x00-\x1f\x7f]+\Z")


class SigningError(ValueError):
    """A key, key list or signature is malformed."""


class PublicKey(collections.namedtuple("PublicKey", ["name", "key"])):
    """A named ed25519 public key (32 bytes), as in Nix's ``trusted-public-keys``."""

    __slots__ = ()

    def __str__(self):
        # type: () -> str
        return _format(self.name, self.key)


class SecretKey(collections.namedtuple("SecretKey", ["name", "key"])):
    """A named libsodium ed25519 secret key (64 bytes: seed, then public key)."""

    __slots__ = ()

    @property
    def seed(self):
        # type: () -> bytes
        return self.key[:SEED_SIZE]

    @property
    def public_key(self):
        # type: () -> PublicKey
        """The public half, as libsodium's ``crypto_sign_ed25519_sk_to_pk`` reads it."""
        return PublicKey(self.name, self.key[SEED_SIZE:])

    def __repr__(self):
        # type: () -> str
        return "SecretKey(%r, <secret>)" % self.name  # never the key itself


class Signature(collections.namedtuple("Signature", ["key_name", "sig"])):
    """A detached ed25519 signature (64 bytes) and the name of the key that made it."""

    __slots__ = ()

    def __str__(self):
        # type: () -> str
        return _format(self.key_name, self.sig)


def _format(name, data):
    # type: (str, bytes) -> str
    return name + ":" + base64.b64encode(data).decode("ascii")


def _split(text, what, size, secret=False):
    # type: (object, str, int, bool) -> Tuple[str, bytes]
    """``NAME:BASE64`` into the name and ``size`` decoded bytes (crypto.cc ``split``).

    Messages name the key by its name only, never the text after the colon: a
    secret key given where a public key belongs (or a damaged one) must not end
    up in a terminal or a CI log, and its base64 holds the whole ed25519 seed.
    """
    if not isinstance(text, str):
        raise SigningError("%s must be text" % what)
    name, colon, body = text.strip().partition(":")
    if not colon or not name:
        raise SigningError("%s is not of the form NAME:BASE64" % what)
    if not _NAME.match(name):
        raise SigningError("%s: the name before the colon has white space or control "
                           "characters" % what)
    quoted = "%s %r" % (what, name if len(name) <= 80 else name[:77] + "...")
    try:
        data = base64.b64decode(body.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise SigningError("%s: the part after the colon is not base64" % quoted)
    if secret and len(data) == ed25519.PUBLIC_KEY_SIZE:
        raise SigningError("%s holds %d bytes: it is a public key, not the secret one"
                           % (quoted, len(data)))
    if size == ed25519.PUBLIC_KEY_SIZE and len(data) == SECRET_KEY_SIZE:
        raise SigningError("%s: %s" % (quoted, SECRET_NOT_PUBLIC))
    if len(data) != size:
        raise SigningError("%s holds %d bytes, not the %d of an ed25519 %s"
                           % (quoted, len(data), size, what))
    return name, data


def parse_public_key(text):
    # type: (object) -> PublicKey
    """Parse ``NAME:BASE64`` (a 32-byte key), as ``nix-store --generate-binary-cache-key``
    writes it and ``trusted-public-keys`` lists it; raise SigningError otherwise."""
    name, key = _split(text, "public key", ed25519.PUBLIC_KEY_SIZE)
    return PublicKey(name, key)


def parse_secret_key(text):
    # type: (str) -> SecretKey
    """Parse a secret key file's text, ``NAME:BASE64`` of 64 bytes (crypto.cc ``SecretKey``).

    Raises SigningError if it is malformed, or if its public half is not the
    public key of its seed: libsodium signs with the public half as it is,
    so such a key would make signatures that nothing verifies.
    """
    name, key = _split(text, "secret key", SECRET_KEY_SIZE, secret=True)
    secret = SecretKey(name, key)
    if ed25519.public_key_of_seed(secret.seed) != secret.public_key.key:
        raise SigningError("secret key %r is not valid: its public half does not belong to "
                           "its seed" % name)
    return secret


def parse_signature(text):
    # type: (object) -> Signature
    """Parse ``NAME:BASE64`` of a 64-byte signature; raise SigningError otherwise."""
    name, sig = _split(text, "signature", ed25519.SIGNATURE_SIZE)
    return Signature(name, sig)


def fingerprint(store_path, nar_hash, nar_size, references):
    # type: (str, str, int, Iterable[str]) -> str
    """What a store path's Nix signature covers (``ValidPathInfo::fingerprint``).

    ``store_path`` and ``references`` are full store paths; ``nar_hash`` is any
    form ``hashes`` reads and is printed as ``sha256:<nix32>``.  Nix refuses a
    path whose size is unknown (0), and so does this.
    """
    if nar_size <= 0:
        raise SigningError("cannot make the fingerprint of %s: its NAR size is not known"
                           % store_path)
    # printStorePathSet gives a std::set<std::string>: sorted, each path once.
    refs = ",".join(sorted(set(references)))
    return "1;%s;%s;%d;%s" % (store_path, hashes.normalise_sha256(nar_hash), nar_size, refs)


def verify(message, signature, keys):
    # type: (Union[str, bytes], Signature, Iterable[PublicKey]) -> bool
    """Did a key of ``keys`` with the signature's name make ``signature`` over ``message``?

    As Nix's ``verifyDetached``: only keys named as the signature says are tried.
    """
    data = message.encode("utf-8") if isinstance(message, str) else message
    return any(k.name == signature.key_name and ed25519.verify(k.key, data, signature.sig)
               for k in keys)


def signers(message, signatures, keys):
    # type: (Union[str, bytes], Iterable[Signature], Iterable[PublicKey]) -> List[PublicKey]
    """The keys of ``keys`` that made one of ``signatures`` over ``message``."""
    keys = list(keys)
    signatures = list(signatures)
    return [k for k in keys if any(verify(message, s, [k]) for s in signatures)]
