"""payload.hashes: the sha256 forms Nix accepts and the ones it refuses
(docs/nix-formats.md sections 2 and 4); the same forms against the real ``nix-hash``
are in tests/e2e/test_hashes_against_nix.py."""

from __future__ import annotations

import base64
import hashlib

import pytest

from nix_prefix.payload import hashes, nix32

GOOD = hashlib.sha256(b"abc").digest()


GOOD_B32 = nix32.encode(GOOD)


GOOD_B64 = base64.b64encode(GOOD).decode()


def test_check_value() -> None:
    digest = hashlib.sha256(b"abc").digest()
    assert hashes.format_sha256(digest) == \
        "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"


@pytest.mark.parametrize("text", ["sha256-" + "=" * 44, "sha256:" + "é" * 52, "é" * 44,
                                  GOOD.hex() + "\n", "sha256:" + GOOD_B32 + "\n"])
def test_rejects_other_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        hashes.parse_sha256(text)
