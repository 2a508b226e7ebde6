"""builder.compress: xz chunks with and without the x86 branch filter decode the same
(payload.codecs reads both)."""

from __future__ import annotations

import io
import lzma
import os
import struct
from concurrent.futures import ThreadPoolExecutor

import pytest

from nix_prefix.builder import compress
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


@pytest.mark.parametrize("size", [0, 1, 4095, 3 << 18, (3 << 18) + 1, 5 << 20])
@pytest.mark.parametrize("system", ["x86_64-linux", "aarch64-linux"])
def test_xz_blocks_decode_as_one_stream(size: int, system: str) -> None:
    """XzBlocks' container (xz-file-format 1.2.0) decodes with liblzma (Python's lzma,
    which Nix's decoders share), the blocks in order, whatever the pieces fed; its
    index lists one block a block size."""
    data = (os.urandom(200_000) * (size // 200_000 + 1))[:size]
    block = compress.xz_block_size(0, size, 2)
    with ThreadPoolExecutor(2) as pool:
        for piece in (1 << 20, 99_991):
            xz = compress.XzBlocks(pool, 0, system, block)
            out = b"".join(xz.compress(data[i:i + piece]) for i in range(0, size, piece))
            out += xz.flush()
            assert lzma.decompress(out, format=lzma.FORMAT_XZ) == data
            assert out.startswith(b"\xfd7zXZ\x00") and out.endswith(b"YZ")
            assert _blocks_in_index(out) == -(-size // block)


def _blocks_in_index(xz: bytes) -> int:
    """The number of records of the stream's index (its footer says where it starts)."""
    backward = (struct.unpack("<I", xz[-8:-4])[0] + 1) * 4
    index = xz[-12 - backward:-12]
    assert index[0] == 0
    n = shift = 0
    for b in index[1:]:
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return n
    raise AssertionError("no record count")


def test_xz_blocks_hold_a_dictionary_to_three() -> None:
    assert compress.xz_block_size(6, 1 << 20, 2) == 8 << 20  # never below the dictionary
    assert compress.xz_block_size(6, 36 << 20, 2) == 9 << 20  # two a job
    assert compress.xz_block_size(6, 1 << 30, 2) == 24 << 20  # never above three
