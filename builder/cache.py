"""``nix-prefix cache``: a standard Nix binary cache for another prefix's store.

Each SOURCE (an installer, a closureInfo dir with its store, or a binary cache
dir: builder/sources.py) is read once through its verifying path, every store
path is retargeted to ``Q/store`` (payload/retarget.py ``choose``: exact when
the source holds its derivations, same-length otherwise), and written the way
``nix copy --to file://DIR`` writes it (NixOS/nix 2.8.0
src/libstore/binary-cache-store.cc ``addToStoreCommon``; the file formats are
in payload/narinfo.py):

* the directories ``nar/``, ``realisations/`` and ``log/``, which a Nix that
  cannot write the cache does not get to create (``LAYOUT``);
* ``nix-cache-info`` naming ``StoreDir: Q/store``, written first;
* ``nar/<nix32 sha256 of the file>.nar.xz`` (or ``.zst``, ``.nar``);
* ``<hash part>.narinfo``, signed with each ``--sign-key``.

Every file appears by rename, complete or not at all, and a narinfo only
after its NAR and the narinfos of its references, so the cache can be served
while it grows.  A re-run adds what is missing: a store path whose narinfo
and NAR are already there is not written again, nor is a NAR file whose name
(its hash) is already there.  A narinfo names a Deriver only if that ``.drv``
is in the cache.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..payload import derivation, exact, hashes, nar, narinfo
from ..payload import retarget as retargets
from ..payload.manifest import Manifest, PathEntry, has_derivations
from ..payload.refmap import RefMap
from ..payload.signing import SecretKey
from ..payload.tree import Count, Filter, Sink
from .compress import XzBlocks, check_nar_compression, compressor, default_jobs, xz_block_size
from .errors import BuildError
from .leftovers import remove_stale
from .pack import choose_retarget, thread_safe
from .retarget import target_store_dir
from .signer import sign
from .sources import Source, check_source, open_source

# Without --level, what nix copy uses: xz's preset 6 (compress.py's default too)
# and libzstd's default level 3 (compression.cc: level -1 is the library's own).
ZSTD_LEVEL = 3
_BUFFER = 1 << 20
# The directories a Nix opening file://DIR creates if they are missing (NixOS/nix 2.8.0
# src/libstore/local-binary-cache-store.cc, LocalBinaryCacheStore::init: nar,
# realisations, log; debuginfo only with ?index-debug-info=true), as nix copy leaves
# them.  A Nix that cannot create one (a cache on NFS or a group share that users read
# but cannot write) fails "creating directory ...: Permission denied" and ignores the
# cache: they must be there already.
LAYOUT = ("nar", "realisations", "log")
_tmp_names = itertools.count()



@dataclass
class CacheOptions:
    """How to write: codec and level, the keys every narinfo is signed with, threads."""

    compression: str = "xz"
    level: int | None = None
    sign_keys: Sequence[SecretKey] = ()
    jobs: int | None = None


@dataclass
class CacheResult:
    """What a run did, for the summary."""

    store_dir: str
    written: list[str] = field(default_factory=list)  # base names at the new store dir
    present: list[str] = field(default_factory=list)  # already in the cache, untouched
    # There, but their narinfos not signed by every --sign-key: written again, signed.
    signed: list[str] = field(default_factory=list)
    nar_size: int = 0  # NAR bytes written
    file_size: int = 0  # compressed bytes written
    exact: bool = False
    hidden_refs: list[str] = field(default_factory=list)


@dataclass
class TargetPath:
    """One store path of a source and what its narinfo will say, but for its NAR."""

    old: str  # base name in the source
    new: str  # base name at the new store dir
    references: list[str]  # new base names
    deriver: str  # new base name of its .drv, or ""
    ca: Callable[[], str] | None = None  # its CA, where Nix registers one
    nar_size: int = 0  # in the source (for the size of its xz blocks)


class RetargetedSource:
    """A source's paths under their names at the new store dir (payload/retarget.py
    ``choose``), and what their narinfos say.  Where the derivations travel the
    retarget is exact at every store dir, the built one too: the plan knows the
    content addresses the narinfos carry."""

    def __init__(self, manifest: Manifest, store_dir: str,
                 read_contents: Callable[[], dict[str, bytes]],
                 ref_map: Callable[[], RefMap | None] = lambda: None) -> None:
        self.manifest = manifest
        contents: dict[str, bytes] = {}

        def read() -> dict[str, bytes]:
            contents.update(read_contents())
            return contents

        self.target = choose_retarget(
            manifest, store_dir, read,
            want=retargets.EXACT if has_derivations(manifest.paths) else None)
        if self.target.rewrites:  # patched at the offsets of the source's map
            self.target.use_refs(ref_map())
        self.plan = self.target.plan if isinstance(self.target, retargets.Exact) else None
        moved = self.target.manifest
        self.targets = [
            # A same-length retarget keeps hash parts: the old .drv names are nobody's
            # at the new store dir, so such a path has no deriver there.
            TargetPath(old.name, new.name, new.references, new.deriver if self.plan else "",
                       self._ca(old, contents), old.nar_size)
            for old, new in zip(manifest.paths, moved.paths, strict=True)]
        self.hidden_refs = moved.hidden_refs

    def _ca(self, entry: PathEntry, contents: dict[str, bytes]) -> Callable[[], str] | None:
        """The CA Nix registers for a text path, a source or a fixed output (local-store.cc
        addTextToStore, addToStore; registerOutputs), from the exact plan.  A same-length
        retarget keeps the old hash parts, whose content address no longer holds."""
        plan = self.plan
        if plan is None:
            return None
        kind = plan.kinds[entry.name]
        if kind in (exact.TEXT, exact.DRV):
            digest = hashlib.sha256(plan.texts[entry.name]).digest()
            return lambda: narinfo.content_address_text(digest)
        if kind == exact.SOURCE:  # contents unchanged: the NAR hash is the old one
            digest = hashes.parse_sha256(entry.nar_hash)
            return lambda: narinfo.content_address_fixed(True, "sha256", digest)
        if kind != exact.FIXED:
            return None
        drv_name = plan.derivers.get(entry.name)
        if drv_name is None:  # a flat sha256 path made without a .drv
            digest = hashlib.sha256(contents[entry.name]).digest()
            return lambda: narinfo.content_address_fixed(False, "sha256", digest)
        _, _, algo, hex_hash = derivation.parse(contents[drv_name]).outputs[0]
        recursive = algo.startswith("r:")
        algo = algo[2:] if recursive else algo
        return lambda: narinfo.content_address_fixed(recursive, algo, bytes.fromhex(hex_hash))

class _NarSink:
    """NAR bytes in: their sha256 (NarHash); out, compressed, into the file ``tmp``,
    with its sha256 (FileHash) and size."""

    def __init__(self, tmp: Path, compression: str, level: int | None, system: str,
                 blocks: tuple[Executor, int] | None = None) -> None:
        """``blocks``: xz in blocks of this size, compressed by this pool (compress.py
        ``XzBlocks``: one big path on every core)."""
        self.tmp = tmp
        self._file = open(tmp, "wb")  # closed by finish or abort
        self._compressor: Any = None
        if blocks is not None and compression == "xz":
            self._compressor = XzBlocks(blocks[0], level, system, blocks[1])
        elif compression != "none":
            self._compressor = compressor(compression, level, system)
        self._buf = bytearray()
        self.nar_hash = hashlib.sha256()
        self.file_hash = hashlib.sha256()
        self.file_size = 0

    def __call__(self, data: bytes) -> None:
        self.nar_hash.update(data)
        self._buf += data
        if len(self._buf) >= _BUFFER:
            self._emit(bytes(self._buf))
            self._buf.clear()

    def _emit(self, data: bytes, final: bool = False) -> None:
        if self._compressor is not None:
            data = self._compressor.compress(data) + (self._compressor.flush() if final else b"")
        if data:
            self._file.write(data)
            self.file_hash.update(data)
            self.file_size += len(data)

    def finish(self) -> None:
        self._emit(bytes(self._buf), final=True)
        self._buf.clear()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def abort(self) -> None:
        try:
            self._file.close()  # flushing what is buffered may fail again (a full disk)
        except OSError:
            pass
        finally:
            self.tmp.unlink(missing_ok=True)


class _PathWriter(Filter):
    """Sink for one store path of a source: rewritten by the retarget, serialised as a
    NAR and compressed; ``finish`` (sent once the source has verified the path)
    hands it to the cache."""

    def __init__(self, cache: _CacheDir, source: RetargetedSource, target: TargetPath,
                 progress: Callable[[int], object] | None) -> None:
        self._cache = cache
        self._target = target
        self._progress = progress
        self._sink = cache.nar_sink(source.manifest.system, target.nar_size)
        self._nar = nar.NarWriter(self._sink)
        Filter.__init__(self, source.target.sink(target.old, self._nar))

    def contents(self, data: bytes) -> None:
        if self._progress:
            self._progress(len(data))
        Filter.contents(self, data)

    def finish(self) -> None:
        Filter.finish(self)
        self._sink.finish()
        self._cache.add(self._target, self._sink, self._nar.size)


class _CacheDir:
    """The output directory: what it holds, and atomic writes into it (thread-safe)."""

    def __init__(self, root: Path, store_dir: str, options: CacheOptions) -> None:
        self.root = root
        self.store_dir = store_dir
        self.options = options
        self.result = CacheResult(store_dir)
        self._lock = threading.Lock()
        self._known: set[str] = set()  # base names with a good narinfo here
        # Base names whose narinfo is good but for a signature by a --sign-key.
        self._unsigned: dict[str, narinfo.NarInfo] = {}
        self._coming: set[str] = set()  # base names this run is writing
        self._pending: dict[str, narinfo.NarInfo] = {}  # narinfos waiting for others
        self._sinks: set[_NarSink] = set()
        self.jobs = options.jobs or default_jobs(
            "xz" if options.compression == "none" else options.compression, options.level)
        # xz's blocks are compressed here: a big path on every core, as nix copy cannot.
        self._pool = ThreadPoolExecutor(self.jobs, "nix-prefix-xz") \
            if options.compression == "xz" else None
        self._open()

    def _open(self) -> None:
        for name in LAYOUT:  # also into a cache an older nix-prefix wrote without them
            try:
                (self.root / name).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise BuildError(f"cannot create {self.root / name}: {e.strerror}") from None
        info = self.root / narinfo.CACHE_INFO
        if info.exists():
            try:
                there = narinfo.parse_cache_info(info.read_text(errors="replace"), str(info))
            except (OSError, narinfo.NarInfoError) as e:
                raise BuildError(str(e), "write the cache into a new directory") from None
            if there != self.store_dir:
                raise BuildError(f"{self.root} is a binary cache for {there}, not for "
                                 f"{self.store_dir}",
                                 "write each prefix's cache into a directory of its own")
        else:
            self.write_atomic(info, narinfo.cache_info_text(self.store_dir).encode())
        for directory in (self.root, self.root / "nar"):
            remove_stale(directory, ".tmp-")  # left by a run that was killed

    def has(self, base: str) -> bool:
        """Whether ``base`` is already here: its narinfo parses and names it, the NAR file
        it points to has its FileSize, and it is signed by every ``--sign-key`` (a path
        that is not is written again, signed: a Nix requiring signatures would not take
        it, and the summary would say it is signed)."""
        if base in self._known:
            return True
        file = self.root / narinfo.narinfo_file(base)
        try:
            info = narinfo.parse(file.read_text(), str(file), self.store_dir)
            good = info.name == base and (self.root / info.url).stat().st_size == info.file_size
        except (OSError, UnicodeDecodeError, narinfo.NarInfoError):
            good = False
        keys = [k.public_key for k in self.options.sign_keys]
        if good and len(info.signed_by(keys)) < len(keys):
            self._unsigned[base] = info
            good = False
        if good:
            self._known.add(base)
        return good

    def expect(self, bases: set[str]) -> None:
        """``bases`` are going to be written by this run (so they may be derivers)."""
        self._coming |= bases

    def nar_sink(self, system: str, nar_size: int) -> _NarSink:
        level = self.options.level
        if level is None and self.options.compression == "zstd":
            level = ZSTD_LEVEL
        blocks = None if self._pool is None else (
            self._pool, xz_block_size(level, nar_size, self.jobs))
        sink = _NarSink(self._tmp(self.root / "nar"), self.options.compression, level, system,
                        blocks)
        with self._lock:
            self._sinks.add(sink)
        return sink

    def _tmp(self, directory: Path) -> Path:
        return directory / f".tmp-{os.getpid()}-{next(_tmp_names)}"

    def write_atomic(self, path: Path, data: bytes) -> None:
        """``path`` appears with ``data``, complete, or not at all."""
        tmp = self._tmp(path.parent)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise BuildError(f"cannot write {path}: {e.strerror}") from None

    def add(self, target: TargetPath, sink: _NarSink, nar_size: int) -> None:
        """Move a finished NAR into place; write its narinfo once it may appear."""
        file_hash = sink.file_hash.digest()
        url = narinfo.nar_url(file_hash, self.options.compression)
        final = self.root / url
        with self._lock:
            self._sinks.discard(sink)
            try:
                if final.exists() and final.stat().st_size == sink.file_size:
                    sink.tmp.unlink()  # the same bytes are there: the name is their hash
                else:
                    os.chmod(sink.tmp, 0o644)
                    os.replace(sink.tmp, final)
            except OSError as e:
                sink.tmp.unlink(missing_ok=True)
                raise BuildError(f"cannot write {final}: {e.strerror}") from None
            info = narinfo.NarInfo(
                f"{self.store_dir}/{target.new}", url, self.options.compression,
                hashes.format_sha256(file_hash), sink.file_size,
                hashes.format_sha256(sink.nar_hash.digest()), nar_size, target.references,
                target.deriver if target.deriver in self._coming or self.has(target.deriver)
                else "", ca=target.ca() if target.ca else "")
            fingerprint = info.fingerprint()
            sigs = {str(sign(k, fingerprint)) for k in self.options.sign_keys}
            old = self._unsigned.pop(target.new, None)
            if old is not None and old.fingerprint() == fingerprint:
                sigs |= set(old.sigs)  # signed before by others, over the same facts
            info.sigs = sorted(sigs)
            if old is None:
                self.result.written.append(target.new)
                self.result.nar_size += nar_size
                self.result.file_size += sink.file_size
            else:
                self.result.signed.append(target.new)
            self._pending[target.new] = info
            self._flush()

    def _flush(self) -> None:
        """Write every waiting narinfo whose references and deriver are all here: a
        client that finds a narinfo finds everything it names."""
        moved = True
        while moved:
            moved = False
            for base, info in sorted(self._pending.items()):
                needs = [r for r in info.references if r != base]
                if info.deriver:
                    needs.append(info.deriver)
                if all(r in self._known for r in needs):
                    self.write_atomic(self.root / narinfo.narinfo_file(base),
                                      info.to_text().encode())
                    self._known.add(base)
                    del self._pending[base]
                    moved = True

    def finish(self) -> None:
        if self._pending:
            waiting = sorted(self._pending)
            raise BuildError(f"the narinfo of {waiting[0]} (and {len(waiting) - 1} more) waits "
                             "for references that are not in the cache",
                             "every source must be a closed closure")

    def abort(self) -> None:
        """Remove this run's unfinished NAR files (nothing half-written stays)."""
        with self._lock:
            for sink in self._sinks:
                sink.abort()
            self._sinks.clear()

    def close(self) -> None:
        """Stop the xz threads (each block they have begun is finished first)."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


def _write_source(source: Source, cache: _CacheDir,
                  progress: Callable[[int], object] | None) -> None:
    retargeted = RetargetedSource(source.manifest, cache.store_dir, source.contents,
                                  source.ref_map)
    cache.result.exact = cache.result.exact or retargeted.plan is not None
    cache.result.hidden_refs += retargeted.hidden_refs
    todo = {t.old: t for t in retargeted.targets if not cache.has(t.new)}
    cache.result.present += [t.new for t in retargeted.targets if t.old not in todo]
    if not todo:
        return
    cache.expect({t.new for t in todo.values()})

    def open_path(name: str) -> Sink:
        target = todo.get(name)
        if target is None:
            return Count(progress)
        return _PathWriter(cache, retargeted, target, progress)

    source.replay(set(todo), open_path, cache.jobs)
    missing = sorted(set(t.new for t in todo.values()) - set(cache.result.written)
                     - set(cache.result.signed))
    if missing:  # a path the source never sent whole: say so rather than leave it out
        raise BuildError(f"{cache.store_dir}/{missing[0]} (and {len(missing) - 1} more) did not "
                         "come out of the source", "report this, with the source")


def write_cache(sources: Sequence[Path], prefix: str, out: Path, options: CacheOptions,
                store_root: Path | None = None,
                progress: Callable[[int], object] | None = None) -> CacheResult:
    """Write (or complete) the binary cache ``out`` for ``prefix``'s store from ``sources``
    (installers or closureInfo dirs, merged)."""
    check_nar_compression(options.compression)
    store_dir = target_store_dir(prefix)
    if not sources:
        raise BuildError("no SOURCE given", "name an installer or a closureInfo dir")
    for path in sources:
        check_source(path)  # a FIFO or a device: refused before -o is made
    cache = _CacheDir(out, store_dir, options)
    report = thread_safe(progress) if progress else None
    try:
        for path in sources:
            with open_source(path, store_root) as source:
                _write_source(source, cache, report)
        cache.finish()
    except OSError as e:  # a NAR file being written: full disk, quota, permissions
        cache.abort()
        raise BuildError(f"cannot write into {out}: {e.strerror}",
                         "free some space there, or write the cache elsewhere") from None
    except BaseException:
        cache.abort()
        raise
    finally:
        cache.close()
    return cache.result
