"""payload.retarget: the padded store dir of a same-length retarget.  Real closures
retargeted and installed are in tests/e2e/test_relocation.py."""

from __future__ import annotations

import pytest

from nix_prefix.payload.retarget import RetargetError, padded_store_dir


def test_padded_store_dir_keeps_length_and_shape() -> None:
    padded = padded_store_dir("/tmp/nix-build-longprefix/store", "/home/u/n/store")
    assert padded == "/home/u/n/////////////////store"
    assert len(padded) == len("/tmp/nix-build-longprefix/store")
    with pytest.raises(RetargetError, match="longer"):
        padded_store_dir("/a/store", "/abc/store")
