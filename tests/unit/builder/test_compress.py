"""builder.compress: xz chunks with and without the x86 branch filter decode the same
(payload.codecs reads both)."""

from __future__ import annotations

import io

import pytest

from nix_prefix.builder.compress import compressor
from nix_prefix.payload import codecs


@pytest.mark.parametrize("system", ["x86_64-linux", "aarch64-linux"])
def test_xz_chunks_decode_with_or_without_the_branch_filter(system: str) -> None:
    data = b"".join(bytes([0xE8, i, i, 0, 0, 0x90]) for i in range(256)) * 64
    c = compressor("xz", 1, system)
    packed = c.compress(data) + c.flush()
    assert codecs.open_reader("xz", io.BytesIO(packed)).read() == data
    plain = compressor("xz", 1, "aarch64-linux")
    assert (packed != plain.compress(data) + plain.flush()) == system.startswith("x86_64")
