"""The master of ``nix-prefix serve``: one set of sources, a binary cache for any store dir.

The sources (installers or closureInfo dirs, as for ``nix-prefix cache``, or
binary cache dirs built at a long store dir) are opened and checked once, at
start.  For each store dir Q a client asks for,
``Master.view(Q)`` retargets every source to Q the way builder/cache.py does
(payload/retarget.py ``choose``: exact when a source holds its derivations,
same-length otherwise) and maps the new hash parts to the source paths:
computed once, kept in a bounded LRU.  That ``PrefixView``, the master seen
at Q, then gives, per hash part:

* ``narinfo``: the narinfo Nix at Q expects (payload/narinfo.py), signed with
  the server's keys.  Its NarHash is that of the *rewritten* NAR, so the path
  is streamed through the rewrite once to hash it (and the result kept, in a
  bounded LRU per view).  A streamed compressed file has no hash before it is
  sent, so FileHash and FileSize are left out, as Nix allows (nar-info.cc
  needs only StorePath, URL, NarHash and NarSize); Nix checks the NarHash of
  what it unpacks.
* ``stream``: the rewritten NAR, compressed, handed to a callback piece by
  piece (bounded memory: one compressor and one read buffer per stream).

Nothing a client sends becomes a file name: the only files read are the
sources named on the command line and the store paths they list.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import zstandard

from ..payload import hashes, nar, narinfo, nix32, storepath
from ..payload.machine import usable_cpus
from ..payload.manifest import has_derivations
from ..payload.signing import SecretKey
from ..payload.tree import Sink
from .cache import RetargetedSource, TargetPath
from .compress import check_nar_compression, compressor
from .errors import BuildError
from .narimages import Image, ImagedSource, Patched, imaged, patches
from .signer import sign
from .sources import Source, check_source, open_source
from .streams import FromStart, Produce

# Streaming compression levels: fast enough to keep up with a network link.
DEFAULT_LEVELS = {"zstd": 3, "xz": 1}
PLANS = 32  # store dirs whose views are kept
NARINFOS = 4096  # narinfos kept per view
PATCHED = 256  # patched images kept per view
_PIECE = 256 << 10  # bytes handed to the client at a time
_JOB = 2 << 20  # bytes of NAR a zstd thread compresses at a time, at most
_MIN_JOB = 1 << 20  # and at least: a NAR under 16 MiB is cut in 1 MiB jobs, so that
# one of 2 MiB still gets two threads (7 ms, not 12: bench/serve.py's small paths)
# NAR bytes of a master written as NAR images at start (builder/narimages.py; beyond,
# every request reads its source: an installer's chunks are decoded again, ~20 MB/s).
DECODE_LIMIT = 16 << 30


@dataclass
class ServeOptions:
    """How to serve: compression and level of the NARs, signing keys, cache sizes."""

    compression: str = "zstd"
    level: int | None = None
    sign_keys: Sequence[SecretKey] = ()
    plans: int = PLANS
    narinfos: int = NARINFOS
    decode_limit: int = DECODE_LIMIT
    threads: int = 0  # zstd's own threads per stream (0: none; docs/serving.md "All the cores")


K = TypeVar("K")
V = TypeVar("V")


class _LRU(Generic[K, V]):
    """A bounded, thread-safe map whose values are computed once per key, even when
    several threads ask for the same key at the same time."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self._busy: dict[K, threading.Event] = {}

    def get(self, key: K, make: Callable[[], V]) -> V:
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
                wait = self._busy.get(key)
                if wait is None:
                    self._busy[key] = threading.Event()
                    break
            wait.wait()  # another thread computes it; then look again
        try:
            value = make()
            with self._lock:
                self._items[key] = value
                while len(self._items) > self._size:
                    self._items.popitem(last=False)
            return value
        finally:
            with self._lock:
                self._busy.pop(key).set()

    def peek(self, key: K) -> V | None:
        """The value of ``key`` if it is computed already (nothing computed here)."""
        with self._lock:
            return self._items.get(key)

    def __len__(self) -> int:
        return len(self._items)


def _one(name: str, sink: Sink) -> Callable[[str], Sink]:
    """``open_path`` for a replay of one path: ``sink`` for it, nothing for the others
    of its chunk (which the source still verifies)."""
    def open_path(other: str) -> Sink:
        return sink if other == name else Sink()
    return open_path


class Master:
    """The sources, read once, and the per-store-dir views (see the module doc)."""

    def __init__(self, sources: Sequence[Path], options: ServeOptions,
                 store_root: Path | None = None) -> None:
        check_nar_compression(options.compression)
        if not sources:
            raise BuildError("no SOURCE given", "name an installer or a closureInfo dir")
        self.options = options
        for path in sources:
            check_source(path)  # every one, before any is read
        # Every path's NAR written once, here (builder/narimages.py), as far as they fit:
        # no request decodes an installer's xz or serialises a tree again, and a
        # retargeted NAR is read as that file plus patches.
        self.sources: list[Source] = []
        room = options.decode_limit
        for path in sources:
            source = imaged(open_source(path, store_root), room, usable_cpus())
            if isinstance(source, ImagedSource):
                room -= source.manifest.total_nar_size
            self.sources.append(source)
        # What the exact planner needs, read (and verified) once for every view.
        self.contents = [s.contents() if has_derivations(s.manifest.paths) else None
                          for s in self.sources]
        # Each source's reference map, read (or made, as a closure's sidecar) once, here,
        # and checked against the images: a map that lies stops the start, not a request.
        self.ref_maps = [s.ref_map() for s in self.sources]
        for source, refs in zip(self.sources, self.ref_maps, strict=True):
            if refs is not None and isinstance(source, ImagedSource):
                source.check(refs)
        self.max_store_dir = min(len(s.manifest.embedded_store_dir) for s in self.sources)
        self._views: _LRU[str, PrefixView] = _LRU(options.plans)
        self.counts = {"plans": 0, "narinfos": 0}  # computed (for /metrics)

    def view(self, store_dir: str) -> PrefixView:
        """The master seen at ``store_dir`` (checked by the caller), computed once."""
        return self._views.get(store_dir, lambda: PrefixView(self, store_dir))

    def cached_view(self, store_dir: str) -> PrefixView | None:
        """The view at ``store_dir`` if it is computed already (cheap: no cold work)."""
        return self._views.peek(store_dir)

    @property
    def views_cached(self) -> int:
        return len(self._views)

    def close(self) -> None:
        """Let go of the sources (an installer's decoded tree is removed)."""
        for source in self.sources:
            source.close()

    def forked(self) -> None:
        """Called in a worker process forked with this master (builder/workers.py): what
        the sources hold per process is its own, what is on disk stays the supervisor's."""
        for source in self.sources:
            source.forked()


@dataclass
class _Entry:
    """One path of the master at a store dir: where it is read, how it is rewritten."""

    source: Source
    retargeted: RetargetedSource
    target: TargetPath

    @property
    def image(self) -> Image | None:
        """The path's NAR image, where its source is imaged."""
        source = self.source
        return source.image(self.target.old) if isinstance(source, ImagedSource) else None

    def patched(self) -> Patched | None:
        """The path at the new store dir as its image plus patches, or None when only
        ``replay`` can make it (no image; a path the reference map does not cover)."""
        image = self.image
        if image is None:
            return None
        retarget, old = self.retargeted.target, self.target.old
        if retarget.keeps(old):
            return Patched(image, [])
        mapped = retarget.mapped(old)
        return None if mapped is None else Patched(image, patches(image, *mapped))

    def replay(self, out: nar.NarWriter) -> None:
        """The path's events, read from its source and rewritten, into ``out``."""
        old = self.target.old
        self.source.replay({old}, _one(old, self.retargeted.target.sink(old, out)))


class PrefixView:
    """Every path of the master under its name at one store dir."""

    def __init__(self, master: Master, store_dir: str) -> None:
        self.master = master
        self.store_dir = store_dir
        self.cache_info = narinfo.cache_info_text(store_dir, want_mass_query=True).encode()
        self._by_hash: dict[str, _Entry] = {}
        for source, contents, refs in zip(master.sources, master.contents, master.ref_maps,
                                          strict=True):
            retargeted = RetargetedSource(source.manifest, store_dir, _given(contents or {}),
                                          _given(refs))
            for target in retargeted.targets:
                self._by_hash.setdefault(storepath.hash_part(target.new),
                                         _Entry(source, retargeted, target))
        self._names = {e.target.new for e in self._by_hash.values()}
        self._narinfos: _LRU[str, bytes] = _LRU(master.options.narinfos)
        # Patches are cheap to make again (a few reads per occurrence): a few are kept.
        self._patched: _LRU[str, Patched | None] = _LRU(PATCHED)
        master.counts["plans"] += 1

    def __contains__(self, hash_part: str) -> bool:
        return hash_part in self._by_hash

    def narinfo(self, hash_part: str) -> bytes | None:
        """The signed narinfo text of ``hash_part``, or None when the master lacks it."""
        entry = self._by_hash.get(hash_part)
        if entry is None:
            return None
        return self._narinfos.get(hash_part, lambda: self._make_narinfo(entry))

    def cached_narinfo(self, hash_part: str) -> bytes | None:
        """The narinfo of ``hash_part`` if it is computed already (cheap: no cold work)."""
        return self._narinfos.peek(hash_part)

    def _make_narinfo(self, entry: _Entry) -> bytes:
        self.master.counts["narinfos"] += 1
        patched = self._patched_of(entry)
        if patched is not None:
            digest, size = patched.digest(), patched.size
        else:
            writer = nar.NarHasher()
            entry.replay(writer)
            digest, size = writer.digest(), writer.size
        nar_hash = hashes.format_sha256(digest)
        options = self.master.options
        target = entry.target
        info = narinfo.NarInfo(
            f"{self.store_dir}/{target.new}", nar_file(target.new, nar_hash,
                                                       options.compression),
            options.compression, "", 0, nar_hash, size, target.references,
            target.deriver if target.deriver in self._names else "",
            ca=target.ca() if target.ca else "")
        fingerprint = info.fingerprint()
        info.sigs = sorted(str(sign(k, fingerprint)) for k in options.sign_keys)
        return info.to_text().encode()

    def stream(self, hash_part: str, emit: Callable[[bytes], None],
               threads: int | None = None) -> None:
        """Send the compressed, rewritten NAR of ``hash_part`` to ``emit``, in pieces;
        ``threads``: zstd's own (default: the options').

        An exception raised by ``emit`` (the client went away) stops the read.
        """
        entry = self._by_hash[hash_part]
        options = self.master.options
        patched = self._patched_of(entry)
        size = patched.size if patched is not None else 0  # 0: unknown (largest jobs)
        out = _CompressedOut(emit, options.compression,
                             options.level if options.level is not None
                             else DEFAULT_LEVELS.get(options.compression),
                             entry.source.manifest.system,
                             options.threads if threads is None else threads, size)
        if patched is None:
            entry.replay(nar.NarWriter(out))
        else:
            for piece in patched.pieces():
                out(piece)
        out.close()

    def producer(self, hash_part: str, alone: Callable[[], bool] = lambda: True) -> Produce:
        """What makes the NAR of ``hash_part`` for a response (builder/streams.py): from
        any byte on, straight from its image, when it is sent uncompressed; else from
        the first byte (``FromStart``).  zstd's own threads are used when the first run
        starts ``alone`` (no other NAR is being made: they would only contend for the
        cores), and then on every run (other threads, other bytes)."""
        threads: list[int] = []

        def compressed(emit: Callable[[bytes], None]) -> None:
            if not threads:
                threads.append(self.master.options.threads if alone() else 0)
            self.stream(hash_part, emit, threads[0])
        from_start = FromStart(compressed)
        entry = self._by_hash[hash_part]
        if self.master.options.compression != "none" or entry.image is None:
            return from_start

        def produce(emit: Callable[[bytes], None], start: int) -> None:
            patched = self._patched_of(entry)  # here, in the producer's thread
            if patched is None:
                from_start(emit, start)
                return
            for piece in patched.pieces(start=start):
                emit(piece)
        return produce

    def _patched_of(self, entry: _Entry) -> Patched | None:
        return self._patched.get(entry.target.new, entry.patched)


def _given(value: V) -> Callable[[], V]:
    """What was read at start (contents, a reference map), as the reader
    RetargetedSource asks for."""
    return lambda: value


def nar_file(base: str, nar_hash: str, compression: str) -> str:
    """The URL of a served NAR: ``nar/<hash part>-<nix32 NarHash>.nar<ext>``.

    The NarHash in the name makes the URL name one content: an HTTP cache may keep
    it for ever."""
    return (f"nar/{storepath.hash_part(base)}-{nar_hash.partition(':')[2]}.nar"
            + narinfo.NAR_EXTENSIONS[compression])


def parse_nar_file(name: str, compression: str) -> tuple[str, str] | None:
    """(hash part, nix32 NarHash) from the file name ``nar_file`` made, or None."""
    ext = ".nar" + narinfo.NAR_EXTENSIONS[compression]
    if not name.endswith(ext):
        return None
    hash_part, dash, nar_hash = name[:-len(ext)].partition("-")
    if not dash or len(hash_part) != storepath.HASH_LENGTH or len(nar_hash) != 52 or \
            not set(hash_part + nar_hash) <= set(nix32.ALPHABET):
        return None
    return hash_part, nar_hash


class _CompressedOut:
    """NAR bytes in; compressed pieces of about _PIECE bytes out to ``emit``."""

    def __init__(self, emit: Callable[[bytes], None], compression: str, level: int | None,
                 system: str, threads: int = 0, size: int = 0) -> None:
        self._emit = emit
        self._compressor: Any = None
        if compression == "zstd":
            # zstd's own window for the level, no long-distance matching: about 4 MiB
            # a stream at level 3, where the installer's settings (compress.py) hold
            # about 19 MiB for each of the server's concurrent streams.  With threads,
            # 2 MiB jobs: about 17 MiB a stream (zstd's default jobs: about 60).
            params = zstandard.ZstdCompressionParameters.from_level(
                level if level is not None else DEFAULT_LEVELS["zstd"], write_checksum=True,
                threads=threads,
                job_size=max(_MIN_JOB, min(_JOB, size // 8 or _JOB)) if threads else 0)
            self._compressor = zstandard.ZstdCompressor(
                compression_params=params).compressobj()
        elif compression != "none":
            self._compressor = compressor(compression, level, system)
        self._buf = bytearray()

    def __call__(self, data: bytes) -> None:
        if self._compressor is not None:
            data = self._compressor.compress(data)
        if not self._buf and len(data) >= _PIECE:
            self._emit(data)  # a big piece as it is: no copy
            return
        self._buf += data
        if len(self._buf) >= _PIECE:
            self._send()

    def _send(self) -> None:
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            self._emit(data)

    def close(self) -> None:
        if self._compressor is not None:
            self._buf += self._compressor.flush()
        self._send()
