"""Computing store paths the way Nix does, for any store dir.

Follows NixOS/nix 2.8 src/libstore/store-api.cc (the comment block before
``makeStorePath``, ``makeType``, ``makeFixedOutputPath``, ``makeTextPath``)
and src/libutil/hash.cc (``compressHash``);
../shared/docs/nix-formats.md section 8:

    fingerprint = "<type>:sha256:<hex(inner)>:<storeDir>:<name>"
    path        = <storeDir>/<nix32(xor-fold-20(sha256(fingerprint)))>-<name>
"""

import binascii
import hashlib

from . import nix32

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Iterable  # noqa: F401


def compress_hash(digest, size=20):
    # type: (bytes, int) -> bytes
    """XOR-fold ``digest`` to ``size`` bytes (hash.cc ``compressHash``)."""
    out = bytearray(size)
    for i, b in enumerate(bytearray(digest)):
        out[i % size] ^= b
    return bytes(out)


def make_store_path(type_, inner, store_dir, name):
    # type: (str, bytes, str, str) -> str
    """``makeStorePath``: ``inner`` is the raw sha256 of the type-specific input."""
    fingerprint = "%s:sha256:%s:%s:%s" % (type_, binascii.hexlify(inner).decode(),
                                          store_dir, name)
    digest = compress_hash(hashlib.sha256(fingerprint.encode("utf-8")).digest())
    return "%s/%s-%s" % (store_dir, nix32.encode(digest), name)


def make_type(type_, references, self_reference=False):
    # type: (str, Iterable[str], bool) -> str
    """``makeType``: the type followed by ``:<path>`` for each sorted reference."""
    return type_ + "".join(":" + r for r in sorted(references)) + (":self" if self_reference
                                                                  else "")


def make_text_path(store_dir, name, contents, references):
    # type: (str, str, bytes, Iterable[str]) -> str
    """``makeTextPath`` / ``computeStorePathForText``: ``.drv`` files, ``builtins.toFile``."""
    return make_store_path(make_type("text", references), hashlib.sha256(contents).digest(),
                           store_dir, name)


def make_source_path(store_dir, name, nar_sha256, references=(), self_reference=False):
    # type: (str, str, bytes, Iterable[str], bool) -> str
    """NAR-hashed sha256 paths (``nix-store --add``, ``builtins.path``, recursive FODs)."""
    return make_store_path(make_type("source", references, self_reference), nar_sha256,
                           store_dir, name)


def make_fixed_output_path(store_dir, name, recursive, algo, digest):
    # type: (str, str, bool, str, bytes) -> str
    """``makeFixedOutputPath`` (no references: fixed outputs cannot have any)."""
    if recursive and algo == "sha256":
        return make_source_path(store_dir, name, digest)
    inner = "fixed:out:%s%s:%s:" % ("r:" if recursive else "", algo,
                                    binascii.hexlify(digest).decode())
    return make_store_path("output:out", hashlib.sha256(inner.encode()).digest(),
                           store_dir, name)


def output_path_name(drv_name, output):
    # type: (str, str) -> str
    """derivations.cc ``outputPathName``."""
    return drv_name if output == "out" else drv_name + "-" + output


def make_output_path(store_dir, drv_name, output, drv_hash):
    # type: (str, str, str, bytes) -> str
    """``makeOutputPath``: input-addressed output ``output`` of a derivation."""
    return make_store_path("output:" + output, drv_hash, store_dir,
                           output_path_name(drv_name, output))
