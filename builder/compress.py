"""Payload encoders (build side): xz through lzma, zstd through zstandard.

The decoders, which must run anywhere, are in nix_prefix.payload.codecs.
"""

from __future__ import annotations

import lzma

import zstandard

from ..payload import codecs

XZ_PRESET = 6  # as `xz -6`, the official tarball's default
ZSTD_LEVEL = 19
# A window beyond the chunk size buys nothing and costs the installer memory.
ZSTD_WINDOW_LOG = 24


def compressor(name: str, level: int | None = None):
    """A streaming compressor with ``compress(bytes)`` and ``flush()``."""
    codecs.check_name(name)
    if name == "xz":
        return lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                                   preset=XZ_PRESET if level is None else level)
    params = zstandard.ZstdCompressionParameters.from_level(
        ZSTD_LEVEL if level is None else level, window_log=ZSTD_WINDOW_LOG, enable_ldm=True,
        write_checksum=True)
    return zstandard.ZstdCompressor(compression_params=params).compressobj()
