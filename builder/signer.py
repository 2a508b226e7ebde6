"""Signing with a publisher's Nix secret key (the build side only).

Keys are the files ``nix-store --generate-binary-cache-key NAME SECRET PUBLIC``
writes; their format lives in payload/signing.py, which the installer shares.
Signatures are made with PyNaCl: it binds libsodium, the library Nix itself
signs with (``crypto_sign_detached`` in src/libstore/crypto.cc), and reads
the seed of Nix's 64-byte secret key directly.  Ed25519 signatures are
deterministic, so a signature made here is byte for byte the one
``nix store sign`` makes with the same key, and builds stay reproducible.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import nacl.exceptions
import nacl.signing

from ..payload import publisher, signing
from ..payload.manifest import Manifest
from ..payload.publisher import Endorsement
from ..payload.signing import PublicKey, SecretKey, Signature
from .errors import BuildError

_HINT = ("give the secret key file written by nix-store --generate-binary-cache-key "
         "NAME SECRET PUBLIC")
_MAX_KEY_FILE = 4096  # a key file is one short line
# NAME:BASE64 of a key or more: what a path never looks like.
_KEY_TEXT = re.compile(r"^\s*[^:/\s]+:[A-Za-z0-9+/]{40,}={0,2}\s*$")


def load_secret_key(path: Path) -> SecretKey:
    """Read a Nix secret key file; a missing, unreadable or malformed one is a BuildError."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_KEY_FILE + 1)
    except OSError as e:
        if _KEY_TEXT.match(str(path)):
            # --sign-key "$(cat key.sec)": the key itself, which no message may show.
            raise BuildError("--sign-key was given a key's text, not the path of a key file",
                             _HINT) from None
        raise BuildError(f"cannot read the secret key file {path} ({e.strerror})",
                         _HINT) from None
    if len(data) > _MAX_KEY_FILE:
        raise BuildError(f"{path} is not a Nix secret key file (it is longer than a key)",
                         _HINT)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise BuildError(f"{path} is not a Nix secret key file (not ASCII text)",
                         _HINT) from None
    try:
        return signing.parse_secret_key(text)
    except signing.SigningError as e:
        raise BuildError(f"{path}: {e}", _HINT) from None


def load_secret_keys(paths: list[Path]) -> list[SecretKey]:
    """Every ``--sign-key`` file; the same key given twice is used once."""
    keys: list[SecretKey] = []
    for path in paths:
        key = load_secret_key(path)
        if all(k.key != key.key for k in keys):
            keys.append(key)
    return keys


def sign(secret_key: SecretKey, data: str | bytes) -> Signature:
    """The detached signature of ``data`` by ``secret_key``, named after the key."""
    message = data.encode("utf-8") if isinstance(data, str) else data
    signed = nacl.signing.SigningKey(secret_key.seed).sign(message)
    return Signature(secret_key.name, signed.signature)


class KeySigner(publisher.Signer):
    """Signs an installer with the publisher's Nix keys while payload/container.py
    ``write_installer`` writes it: every path once the payload is written (its NAR
    hash is final), then the manifest's bytes."""

    def __init__(self, keys: Sequence[SecretKey]) -> None:
        self.keys = list(keys)

    def sign_paths(self, manifest: Manifest) -> Manifest:
        new = manifest.replaced()
        for entry in new.paths:
            text = new.fingerprint(entry)
            entry.sigs = [str(sign(key, text)) for key in self.keys]
        return new

    def endorse(self, manifest_json: bytes) -> list[Endorsement]:
        text = publisher.message(manifest_json)
        return [Endorsement(key.public_key, sign(key, text)) for key in self.keys]


def verify(data: str | bytes, signature: Signature, keys: Sequence[PublicKey]) -> bool:
    """As payload/signing.py ``verify``, with libsodium: fast enough to check every path
    of a large closure."""
    message = data.encode("utf-8") if isinstance(data, str) else data
    for key in keys:
        if key.name != signature.key_name:
            continue
        try:
            nacl.signing.VerifyKey(key.key).verify(message, signature.sig)
            return True
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
            continue
    return False


def unsigned_paths(manifest: Manifest, keys: Sequence[PublicKey]) -> list[str]:
    """The paths of ``manifest`` without a signature by one of ``keys`` that holds for
    their fingerprint at the manifest's store dir."""
    missing = []
    for entry in manifest.paths:
        text = manifest.fingerprint(entry)
        if not any(verify(text, signing.parse_signature(s), keys) for s in entry.sigs):
            missing.append(entry.name)
    return missing
