"""payload.nix32: Nix's base-32 (docs/nix-formats.md section 4).  The same digests
converted by the real ``nix-hash`` are in tests/e2e/test_nix32_against_nix.py."""

from __future__ import annotations

import hashlib
import random

import pytest

from nix_prefix.payload import nix32

# The doc's check value, confirmed there with `nix-hash --to-base32`.
ABC_SHA256_NIX32 = "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"


def test_check_value_sha256_abc() -> None:
    assert nix32.encode(hashlib.sha256(b"abc").digest()) == ABC_SHA256_NIX32


@pytest.mark.parametrize(("nbytes", "length"), [(32, 52), (20, 32), (16, 26), (64, 103),
                                                (1, 2), (5, 8)])
def test_encoded_length(nbytes: int, length: int) -> None:
    assert nix32.encoded_length(nbytes) == length
    assert len(nix32.encode(bytes(nbytes))) == length


def test_round_trip_every_length() -> None:
    rng = random.Random(7)
    for nbytes in range(1, 70):
        for _ in range(5):
            digest = rng.randbytes(nbytes)
            text = nix32.encode(digest)
            assert set(text) <= set(nix32.ALPHABET)
            assert nix32.decode(text, nbytes) == digest


def test_alphabet_has_no_e_o_u_t() -> None:
    assert len(nix32.ALPHABET) == 32
    assert len(set(nix32.ALPHABET)) == 32
    assert not set("eout") & set(nix32.ALPHABET)


@pytest.mark.parametrize("bad", ["e", "o", "u", "t", "E", "B", "-", " ", "\n", "é"])
def test_decode_rejects_bad_characters(bad: str) -> None:
    text = ABC_SHA256_NIX32[:20] + bad + ABC_SHA256_NIX32[21:]
    assert len(text) == 52
    with pytest.raises(ValueError, match="invalid nix32 character"):
        nix32.decode(text, 32)


@pytest.mark.parametrize("text", ["", ABC_SHA256_NIX32[:-1], ABC_SHA256_NIX32 + "0",
                                  ABC_SHA256_NIX32 + "\n", ABC_SHA256_NIX32[:32]])
def test_decode_rejects_bad_lengths(text: str) -> None:
    with pytest.raises(ValueError, match="length"):
        nix32.decode(text, 32)

