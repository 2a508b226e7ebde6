"""Payload encoders (build side): xz through lzma, zstd through zstandard.

The decoders, which must run anywhere, are in nix_prefix.payload.codecs.
"""

from __future__ import annotations

import lzma

import zstandard

from ..payload import codecs
from ..payload.machine import usable_cpus
from .errors import BuildError

XZ_PRESET = 6  # as `xz -6`, the official tarball's default
ZSTD_LEVEL = 19
# A window beyond the chunk size buys nothing and costs the installer memory.
ZSTD_WINDOW_LOG = 24
# Closures are mostly x86 machine code on x86 systems: xz's BCJ filter turns
# relative call targets absolute, which LZMA2 then finds as repeats (about 3%
# smaller on the benchmark closure).  Every liblzma decodes it.
_BCJ = {"x86_64": lzma.FILTER_X86, "i686": lzma.FILTER_X86}
# What one compressor holds (liblzma's and zstd's own figures, rounded up):
# the builder runs as many at once as fit in MEMORY_BUDGET.
_XZ_MEMORY = {0: 3, 1: 10, 2: 18, 3: 33, 4: 48, 5: 95, 6: 95, 7: 187, 8: 371, 9: 675}
_ZSTD_MEMORY = 160
MEMORY_BUDGET = 800  # MiB, under the 1 GiB the builder may use
MAX_JOBS = 8
# How a binary cache's NARs may be compressed (``cache`` and ``serve``): what Nix reads
# (src/libutil/compression.cc), "none" for a cache on a fast network.
NAR_COMPRESSIONS = ("xz", "zstd", "none")


def compressor(name: str, level: int | None = None, system: str | None = None):
    """A streaming compressor with ``compress(bytes)`` and ``flush()``.

    ``system`` (a Nix system name) picks xz's branch filter for its machine code.
    """
    codecs.check_name(name)
    if name == "xz":
        preset = XZ_PRESET if level is None else level
        filters = [{"id": lzma.FILTER_LZMA2, "preset": preset}]
        bcj = _BCJ.get((system or "").partition("-")[0])
        if bcj is not None:
            filters.insert(0, {"id": bcj})
        return lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                                   filters=filters)
    params = zstandard.ZstdCompressionParameters.from_level(
        ZSTD_LEVEL if level is None else level, window_log=ZSTD_WINDOW_LOG, enable_ldm=True,
        write_checksum=True)
    return zstandard.ZstdCompressor(compression_params=params).compressobj()


def default_jobs(name: str, level: int | None = None, chunk_size: int = 0) -> int:
    """How many chunks to compress at once: one per CPU, as memory allows
    (each holds a compressor and its chunk's ``chunk_size`` tar bytes)."""
    if name == "xz":
        each = _XZ_MEMORY.get(XZ_PRESET if level is None else level, 675)
    else:
        each = _ZSTD_MEMORY
    each += chunk_size >> 20
    return max(1, min(usable_cpus(), MAX_JOBS, MEMORY_BUDGET // each))


def check_nar_compression(name: str) -> None:
    """Refuse a NAR compression not in NAR_COMPRESSIONS, naming those that are."""
    if name not in NAR_COMPRESSIONS:
        raise BuildError(f"unknown compression {name!r}",
                         f"use one of {', '.join(NAR_COMPRESSIONS)}")
