"""payload.nix32 against the real ``nix-hash`` (docs/nix-formats.md section 4); the rest of
its tests, which need no Nix, are in tests/unit/payload/test_nix32.py."""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess

import pytest

from nix_prefix.payload import nix32

from tests.unit.payload.test_nix32 import ABC_SHA256_NIX32


def nix_hash(*args: str) -> list[str]:
    exe = shutil.which("nix-hash")
    assert exe, "nix-hash is not on PATH"
    proc = subprocess.run([exe, *args], capture_output=True, text=True, check=True)
    return proc.stdout.split()


def test_check_value_agrees_with_nix_hash() -> None:
    hex_digest = hashlib.sha256(b"abc").hexdigest()
    assert nix_hash("--type", "sha256", "--to-base32", hex_digest) == [ABC_SHA256_NIX32]


def test_random_digests_agree_with_nix_hash() -> None:
    """One nix-hash call converts many digests; every one must match ours."""
    rng = random.Random(1234)
    specials = [bytes(32), b"\xff" * 32, b"\x01" + bytes(31), bytes(31) + b"\x80"]
    digests = specials + [rng.randbytes(32) for _ in range(60)]
    expected = nix_hash("--type", "sha256", "--to-base32", *(d.hex() for d in digests))
    assert len(expected) == len(digests)
    assert [nix32.encode(d) for d in digests] == expected
    for digest, text in zip(digests, expected, strict=True):
        assert nix32.decode(text, 32) == digest


@pytest.mark.parametrize(("algo", "nbytes"), [("sha1", 20), ("md5", 16), ("sha512", 64)])
def test_other_lengths_agree_with_nix_hash(algo: str, nbytes: int) -> None:
    rng = random.Random(algo)
    digests = [rng.randbytes(nbytes) for _ in range(10)]
    expected = nix_hash("--type", algo, "--to-base32", *(d.hex() for d in digests))
    assert [nix32.encode(d) for d in digests] == expected
    assert [nix32.decode(t, nbytes) for t in expected] == digests


def test_decode_rejects_overflow_like_nix() -> None:
    """52 digits hold 260 bits; Nix refuses a hash whose top 4 bits are set."""
    too_big = "z" + "0" * 51
    exe = shutil.which("nix-hash")
    assert exe
    proc = subprocess.run([exe, "--type", "sha256", "--to-base16", too_big],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "invalid base-32" in proc.stderr
    with pytest.raises(ValueError, match="does not fit"):
        nix32.decode(too_big, 32)
    # The largest value that fits is accepted, by Nix and by us.
    largest = nix32.encode(b"\xff" * 32)
    assert largest[0] == "1"
    assert nix_hash("--type", "sha256", "--to-base16", largest) == ["ff" * 32]
    assert nix32.decode(largest, 32) == b"\xff" * 32
