"""Payload encoders (build side): xz through lzma, zstd through zstandard.

The decoders, which must run anywhere, are in nix_prefix.payload.codecs.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from collections import deque
from concurrent.futures import Executor, Future

import zstandard

from ..payload import codecs
from ..payload.machine import usable_cpus
from ..payload.refmap import put_varint
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
        return lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                                   filters=_xz_filters(preset, system))
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


# -- xz in blocks, compressed in threads -------------------------------------------------------

# xz's dictionary size by preset (liblzma's lzma_lzma_preset): a block is at least one.
_XZ_DICT = {0: 256 << 10, 1: 1 << 20, 2: 2 << 20, 3: 4 << 20, 4: 4 << 20, 5: 8 << 20,
            6: 8 << 20, 7: 16 << 20, 8: 32 << 20, 9: 64 << 20}
_XZ_MAGIC = b"\xfd7zXZ\x00"
_XZ_FLAGS = b"\x00\x01"  # the check of every block: CRC32 (xz-file-format 2.1.1.2)
_XZ_AHEAD = 2  # blocks of one file compressing or waiting to be written, at most


def xz_block_size(preset: int | None, nar_size: int, jobs: int) -> int:
    """How much of a NAR one xz block holds: two blocks a job for a NAR that fills them
    (the other paths compress beside it: halves balance the cores better, bench/cache.py
    12.5 s against 13.0 with one a job, 2% larger), never less than the dictionary
    (smaller blocks only lose ratio) nor more than three (``xz -T``'s own default)."""
    window = _XZ_DICT.get(XZ_PRESET if preset is None else preset, 8 << 20)
    return max(window, min(3 * window, -(-nar_size // max(1, 2 * jobs))))


class XzBlocks:
    """An xz compressor (``compress``, ``flush``) writing one stream of independent
    blocks, each compressed by ``pool`` (what ``xz -T`` writes, and every liblzma
    decoder reads: xz-file-format 1.2.0, sections 2 and 3): one NAR on several
    cores.  Output comes in order, as blocks are done."""

    def __init__(self, pool: Executor, preset: int | None, system: str | None,
                 block_size: int) -> None:
        self._pool = pool
        self._filters = _xz_filters(XZ_PRESET if preset is None else preset, system)
        self._block = block_size
        self._buf = bytearray()
        self._ahead: deque[Future[tuple[bytes, int, int]]] = deque()
        self._records: list[tuple[int, int]] = []  # (unpadded size, uncompressed size)
        self._out = [_XZ_MAGIC + _XZ_FLAGS + _crc32(_XZ_FLAGS)]

    def compress(self, data: bytes) -> bytes:
        self._buf += data
        while len(self._buf) >= self._block:
            self._ahead.append(self._pool.submit(_xz_block, bytes(self._buf[:self._block]),
                                                 self._filters))
            del self._buf[:self._block]
            while len(self._ahead) > _XZ_AHEAD or (self._ahead and self._ahead[0].done()):
                self._take()
        return self._taken()

    def flush(self) -> bytes:
        if self._buf:
            self._ahead.append(self._pool.submit(_xz_block, bytes(self._buf), self._filters))
            self._buf.clear()
        while self._ahead:
            self._take()
        index = bytearray(b"\x00") + _varint(len(self._records))
        for unpadded, size in self._records:
            index += _varint(unpadded) + _varint(size)
        index += bytes(-len(index) % 4)
        index += _crc32(index)
        footer = struct.pack("<I", len(index) // 4 - 1) + _XZ_FLAGS
        self._out += [bytes(index), _crc32(footer) + footer + b"YZ"]
        return self._taken()

    def _take(self) -> None:
        block, unpadded, size = self._ahead.popleft().result()
        self._out.append(block)
        self._records.append((unpadded, size))

    def _taken(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out


def _xz_filters(preset: int, system: str | None) -> list[dict]:
    filters: list[dict] = [{"id": lzma.FILTER_LZMA2, "preset": preset}]
    bcj = _BCJ.get((system or "").partition("-")[0])
    if bcj is not None:
        filters.insert(0, {"id": bcj})
    return filters


def _xz_block(data: bytes, filters: list[dict]) -> tuple[bytes, int, int]:
    """One block (xz-file-format 3.1): header, LZMA2 data, padding, CRC32 of ``data``;
    with its unpadded size and ``data``'s size, for the index."""
    raw = lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters)
    flags = bytearray()
    for f in filters:
        props = lzma._encode_filter_properties(f)  # type: ignore[attr-defined]
        flags += _varint(f["id"]) + _varint(len(props)) + props
    # Block flags: the number of filters - 1, compressed and uncompressed size present.
    body = bytes([0xC0 | (len(filters) - 1)]) + _varint(len(raw)) + _varint(len(data)) + flags
    size = -(-(1 + len(body) + 4) // 4) * 4
    header = bytes([size // 4 - 1]) + body + bytes(size - 5 - len(body))
    header += _crc32(header)
    check = _crc32(data)
    return (header + raw + bytes(-len(raw) % 4) + check, len(header) + len(raw) + len(check),
            len(data))


def _varint(n: int) -> bytes:
    out = bytearray()
    put_varint(out, n)
    return bytes(out)


def _crc32(data: bytes | bytearray) -> bytes:
    return struct.pack("<I", zlib.crc32(data))
