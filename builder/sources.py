"""Where ``build``, ``cache``, ``retarget`` and ``serve`` read store paths from: a source.

``open_source(path)`` tells the three kinds apart and opens one, checked:

* an installer file (``InstallerSource``): every path through the installer's
  own verifying reader (chunk sha256, each path's NAR hash), after its seal
  and its signatures are checked;
* a closureInfo dir or ``nix-store --dump-db`` file with its store
  (``ClosureSource``): every path read from the store, checked against its
  registered NAR hash;
* a binary cache dir (``nix copy --to file://DIR`` or ``nix-prefix cache``,
  ``CacheSource``): every NAR decompressed and checked against its narinfo.

Each gives the closure's manifest, the contents the exact retarget needs
(payload/exact.py ``needs_contents``) and every path's tree events, whole and
verified, with ``finish`` sent only after the check.  A source may be read by
several threads at once (``serve``).  ``build`` packs every closure it is given
(a closureInfo dir, the closure of --roots or -f, a --from-cache fetch) as a
``TreeSource`` of the manifest it chose (builder/pack.py).
"""

from __future__ import annotations

import os
import queue
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Protocol, TypeVar

from ..payload import codecs, exact, hashes, nar, narinfo, nix32, storepath
from ..payload import retarget as retargets
from ..payload.container import CorruptInstaller, InstallerFile, not_a_file
from ..payload.machine import host_system
from ..payload.manifest import Manifest, PathEntry
from ..payload.refmap import RefMap
from ..payload.tree import Sink, Tee
from . import nixchoice
from .closure_info import check_acyclic, read_closure
from .derivations import read_store_contents
from .errors import BuildError
from .fromcache import BinaryCache
from .refmaps import cache_ref_map, fitting_sidecar, tree_ref_map

INSTALLER = "installer"
CLOSURE = "closureInfo dir"
CACHE = "binary cache"
STALE_HINT = "the store path was modified or the registration is stale"
T = TypeVar("T")
S = TypeVar("S", bound="Source")


class Source(Protocol):
    """A closure to read store paths from (see the module doc)."""

    path: Path
    manifest: Manifest

    def contents(self) -> dict[str, bytes]:
        """The files the exact retarget reads (payload/exact.py needs_contents)."""

    def replay(self, names: Iterable[str], open_path: Callable[[str], Sink],
               jobs: int = 1) -> None:
        """Send every path of ``names`` to its sink ``open_path(name)``, whole, verified,
        then ``finish`` it.  Other paths read on the way (those sharing an installer's
        chunks) go to their ``open_path`` sinks too."""

    def ref_map(self) -> RefMap | None:
        """The reference map of the source's paths (payload/refmap.py), by which a
        retarget patches at known offsets instead of scanning; None where there is none
        (then the retarget scans).  A map that does not fit is the caller's to refuse
        (``Retarget.use_refs``)."""
        return None

    def close(self) -> None:
        """Let go of the files held open."""

    def forked(self) -> None:
        """In a process forked with this source (``serve``'s workers): open files of its
        own from now on (one inherited shares its position with the others), and leave
        what is on disk to the process that made it."""
        return None  # a tree or a cache opens its files for each read

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def kind_of(path: Path) -> str:
    """Which source ``path`` is: INSTALLER, CLOSURE or CACHE (BuildError for a FIFO, a
    device or a missing path, before anything is opened)."""
    check_source(path)
    if (path / narinfo.CACHE_INFO).is_file():
        return CACHE
    if path.is_dir() or not looks_like_installer(path):
        return CLOSURE
    return INSTALLER


def open_source(path: Path, store_root: Path | None = None) -> Source:
    """The source at ``path``, opened and checked (``store_root``: where a closureInfo
    dir's store is, if not at its store dir)."""
    kind = kind_of(path)
    if kind == CACHE:
        return CacheSource(path)
    if kind == CLOSURE:
        return ClosureSource(path, store_root)
    return InstallerSource(path)


def looks_like_installer(path: Path) -> bool:
    """Whether ``path`` starts as an installer does (``#!``), not as a registration.

    A FIFO, a device or a socket is refused before it is opened (a FIFO would
    wait for a writer, ``/dev/zero`` never end): a BuildError naming what it is.
    """
    check_source(path)
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError as e:
        raise BuildError(f"cannot read {path}: {e.strerror}") from None


def check_source(path: Path) -> None:
    """Refuse a SOURCE that is neither a directory nor a regular file (or a missing one),
    saying what it is; before anything is opened or written."""
    what = not_a_file(str(path))
    if what is not None and what != "a directory":
        raise BuildError(f"{path} is {what}, not an installer, closureInfo dir or "
                         "registration file", "pass the file itself (save a download or a "
                         "pipe's output to a file first)")
    if not path.exists():
        raise BuildError(f"{path} does not exist",
                         "name an installer, a closureInfo dir or a registration file")


def _in_parallel(work: Callable[[PathEntry], None], entries: list[PathEntry],
                 jobs: int) -> None:
    """``work`` on every entry, ``jobs`` at once; the first failure stops the rest."""
    if jobs <= 1 or len(entries) <= 1:
        for entry in entries:
            work(entry)
        return
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(work, e) for e in entries]
        try:
            for done in futures:
                done.result()
        finally:
            for f in futures:
                f.cancel()


class TreeSource(Source):
    """Store paths as trees under ``root`` (``root/<base name>``), listed by ``manifest``:
    every read is checked against the manifest's NAR hash, unless ``verify`` is False
    (``build --no-verify``).  ``mismatch_hint``: what the user can do about a path that
    no longer matches."""

    def __init__(self, path: Path, manifest: Manifest, root: Path, verify: bool = True,
                 mismatch_hint: str = STALE_HINT) -> None:
        self.path = path
        self.manifest = manifest
        self.root = root
        self.verify = verify
        self.mismatch_hint = mismatch_hint

    def contents(self) -> dict[str, bytes]:
        return read_store_contents(self.manifest.paths, self.root)

    def replay(self, names: Iterable[str], open_path: Callable[[str], Sink],
               jobs: int = 1) -> None:
        """Every path of ``names``, in the manifest's order, read from the tree and
        checked against its NAR hash, then finished."""
        wanted = set(names)
        _in_parallel(lambda e: self._one(e, open_path(e.name)),
                     [e for e in self.manifest.paths if e.name in wanted], jobs)

    def _one(self, entry: PathEntry, visitor: Sink) -> None:
        # The one read of the path: the hasher rides along with the caller's sink.
        hasher = nar.NarHasher() if self.verify else None
        where = f"{self.manifest.store_dir}/{entry.name}"
        try:
            nar.dump_path(os.fsencode(self.root / entry.name), Tee(visitor, hasher))
        except nar.NarError as e:
            raise BuildError(f"{where}: {e}") from None
        except OSError as e:
            raise BuildError(f"{where}: cannot read {e.filename} ({e.strerror})",
                             "check the store's permissions") from None
        if hasher is not None:
            got = hashes.format_sha256(hasher.digest())
            if got != entry.nar_hash or hasher.size != entry.nar_size:
                raise BuildError(
                    f"{where} does not match its registration: narHash {got} size "
                    f"{hasher.size}, registered {entry.nar_hash} size {entry.nar_size}",
                    self.mismatch_hint)
        visitor.finish()

    def close(self) -> None:
        pass


class ClosureSource(TreeSource):
    """A closureInfo dir (or dump-db file) whose paths are read from the store."""

    def __init__(self, path: Path, store_root: Path | None = None) -> None:
        closure = read_closure(path)
        root = Path(store_root or closure.store_dir)
        entries = [PathEntry.from_registration(i) for i in closure.infos]
        for e in entries:
            if not os.path.lexists(root / e.name):
                raise BuildError(f"store path {closure.store_dir}/{e.name} is missing from "
                                 f"{root}", "pass --store-root if the store is elsewhere")
        names = [e.name for e in entries]
        nix = nixchoice.choose(names, [], root, None, False)
        system = nixchoice.closure_system(root, closure.store_dir, names, nix.nix_store, None)
        TreeSource.__init__(self, path, Manifest(closure.store_dir, system, "xz", entries,
                                                 [], []), root)
        self._refs: RefMap | None = None

    def ref_map(self) -> RefMap:
        """The sidecar MASTER.nix-prefix-refmap, made (once) if absent or stale
        (builder/refmaps.py)."""
        if self._refs is None:
            self._refs = tree_ref_map(self.manifest, self.root, self.replay, self.path)
        return self._refs


class InstallerSource(Source):
    """An installer: every path comes through its own verifying reader.  Each read
    borrows one of a pool of opened copies (an InstallerFile has one file position),
    so several threads may read at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with _installer_errors(path, "pass an intact installer or a closureInfo dir"):
            first = InstallerFile(str(path))  # checks the seal, once
        with ExitStack() as on_error, _installer_errors(path):
            on_error.enter_context(first)
            # A signature that does not hold stops here, as it would stop the installer.
            self.verdict = first.verdict([])
            on_error.pop_all()  # kept open: the first of the pool
        self.manifest = first.manifest
        self._opened = [first]
        self._free: queue.SimpleQueue[InstallerFile] = queue.SimpleQueue()
        self._free.put(first)

    def contents(self) -> dict[str, bytes]:
        with _installer_errors(self.path):
            return self._borrowed(retargets.read_contents)

    def ref_map(self) -> RefMap | None:
        """The payload's map (format 4; None in older installers), checked against the
        manifest's sha256 of it."""
        with _installer_errors(self.path):
            return self._borrowed(lambda installer: installer.ref_map())

    def replay(self, names: Iterable[str], open_path: Callable[[str], Sink],
               jobs: int = 1) -> None:
        # Every chunk holding bytes of a path to write (format 3 cuts paths across chunks).
        wanted = set(names)
        spans = self.manifest.chunk_spans()
        chunks = sorted({i for p in self.manifest.paths if p.name in wanted
                         for i in spans[p.name]})
        with _installer_errors(self.path):
            self._borrowed(lambda installer: installer.unpack(open_path, chunks, jobs=jobs))

    def _borrowed(self, read: Callable[[InstallerFile], T]) -> T:
        try:
            installer = self._free.get_nowait()
        except queue.Empty:
            installer = InstallerFile(str(self.path), sealed=True)
            self._opened.append(installer)
        try:
            return read(installer)
        finally:
            self._free.put(installer)

    def close(self) -> None:
        for installer in self._opened:
            installer.close()

    def forked(self) -> None:
        self._opened = []
        self._free = queue.SimpleQueue()


@contextmanager
def _installer_errors(path: Path, hint: str | None = None) -> Iterator[None]:
    """An installer's damage (CorruptInstaller, an undecodable chunk) as a BuildError
    naming the file."""
    try:
        yield
    except CorruptInstaller as e:
        raise BuildError(f"{path}: {e.args[0]}", e.hint if hint is None else hint) from None
    except codecs.CodecError as e:
        raise BuildError(f"{path}: {e}") from None


class CacheSource(Source):
    """A binary cache directory (``nix copy --to file://DIR`` or ``nix-prefix cache``)
    built at a long store dir: every read decompresses and checks one NAR file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache = BinaryCache(path.resolve().as_uri())
        store_dir = self._cache.store_dir()
        self._infos = _read_narinfos(path, store_dir)
        missing = sorted({r for i in self._infos.values() for r in i.references}
                         - set(self._infos))
        if missing:
            raise BuildError(f"{path} lacks {store_dir}/{missing[0]} (and "
                             f"{len(missing) - 1} more), which its paths refer to",
                             "serve a cache that holds whole closures")
        check_acyclic({i.store_path: [f"{store_dir}/{r}" for r in i.references]
                       for i in self._infos.values()}, str(path))
        entries = [PathEntry(i.name, i.nar_hash, i.nar_size, i.references,
                             i.deriver if i.deriver in self._infos else "")
                   for i in self._infos.values()]
        self.manifest = Manifest(store_dir, host_system(), "xz", entries, [], [])
        # A sidecar that fits the narinfos says how the NARs spell the store dir, so
        # that nothing is read at start; else they are read to tell (and for the map).
        self._refs = fitting_sidecar(path, self.manifest, padded_ok=True)
        if self._refs is not None:
            self.manifest.embedded_store_dir = self._refs.store_dir.decode()
        else:
            self._embedded(store_dir)

    def _embedded(self, store_dir: str) -> None:
        """Set the store dir as the NARs spell it: a cache nix-prefix retargeted holds it
        slash-padded to the length of the store dir its paths were built for
        (docs/retargeting.md).  The first NAR that names a padded form tells; texts
        and derivations name the canonical one, and so does every NAR of a cache Nix
        wrote: all are read, once, to be sure, and that read makes the map of the
        canonical spelling on the way (else ``ref_map`` reads them again)."""
        finder = _padded_finder(store_dir)

        def replay(names: Iterable[str], open_path: Callable[[str], Sink], jobs: int) -> None:
            for info in sorted((self._infos[n] for n in names), key=lambda i: i.nar_size):
                sink = open_path(info.name)  # smallest first: a padded form tells soon
                self._cache.fetch_nar(info, Tee(finder, sink))
                sink.finish()
        try:
            self._refs = cache_ref_map(self.manifest, replay, self.path)
        except _Found as found:
            self.manifest.embedded_store_dir = found.spelling

    def contents(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for name in exact.needs_contents(self.manifest.paths):
            if self._infos[name].nar_size <= retargets.TEXT_LIMIT + 1024:
                self._cache.fetch_nar(self._infos[name], retargets.Collector(name, out))
        return out

    def replay(self, names: Iterable[str], open_path: Callable[[str], Sink],
               jobs: int = 1) -> None:
        wanted = set(names)
        _in_parallel(self._one(open_path), [e for e in self.manifest.paths if e.name in wanted],
                     jobs)

    def _one(self, open_path: Callable[[str], Sink]) -> Callable[[PathEntry], None]:
        def one(entry: PathEntry) -> None:
            sink = open_path(entry.name)
            self._cache.fetch_nar(self._infos[entry.name], sink)  # checks NarHash, then:
            sink.finish()
        return one

    def ref_map(self) -> RefMap:
        """The sidecar CACHE_DIR.nix-prefix-refmap beside the cache dir, made (once,
        every NAR read and checked against its NarHash) if absent or stale
        (builder/refmaps.py)."""
        if self._refs is None:
            self._refs = cache_ref_map(self.manifest, self.replay, self.path)
        return self._refs

    def close(self) -> None:
        pass


def _read_narinfos(path: Path, store_dir: str) -> dict[str, narinfo.NarInfo]:
    """Every ``<hash part>.narinfo`` of the cache ``path``, parsed, by base name."""
    infos: dict[str, narinfo.NarInfo] = {}
    for file in sorted(path.glob("*.narinfo")):
        base = file.name[:-len(".narinfo")]
        try:
            text = file.read_text()
            info = narinfo.parse(text, str(file), store_dir)
        except (OSError, UnicodeDecodeError) as e:
            raise BuildError(f"cannot read {file}: {e}") from None
        except narinfo.NarInfoError as e:
            raise BuildError(str(e), "serve an intact binary cache") from None
        if storepath.hash_part(info.name) != base:
            raise BuildError(f"{file} describes {info.store_path}",
                             "serve an intact binary cache")
        infos[info.name] = info
    return infos


def padded_spelling(source: Source) -> str | None:
    """The slash-padded form of ``source``'s store dir that its files name, if any: a
    closure nix-prefix retargeted same-length holds it in its binaries (a prefix
    installed from an installer, a cache it wrote; docs/retargeting.md), and that, not
    the canonical form, is what a later rewrite must replace.  Paths are read smallest
    first (a padded form tells soon): a closure without one is read whole, once."""
    finder = _padded_finder(source.manifest.store_dir)
    try:
        for entry in sorted(source.manifest.paths, key=lambda e: e.nar_size):
            source.replay([entry.name], lambda name: finder)
    except _Found as found:
        return found.spelling
    return None


def _padded_finder(store_dir: str) -> _Finder:
    """A finder of ``store_dir`` spelled with more slashes before its last component,
    followed by a store path's hash part (as a rewrite pads it: retarget.py
    ``padded_store_dir``); the hash part keeps a stray ``//`` in a text from counting."""
    head, _, last = store_dir.rpartition("/")
    return _Finder(re.compile(re.escape(head.encode()) + b"//+" + re.escape(last.encode())
                              + b"/(?=[" + nix32.ALPHABET.encode() + b"]{32}-)"))


class _Found(Exception):
    """The store dir as a NAR spells it (``spelling``)."""

    def __init__(self, spelling: str) -> None:
        Exception.__init__(self, spelling)
        self.spelling = spelling


class _Finder(Sink):
    """Raises _Found at the first occurrence of ``pattern`` in a file or a symlink
    target (file contents are searched with an overlap, so no match is cut)."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self._pattern = pattern
        self._tail = b""

    def _search(self, data: bytes) -> None:
        m = self._pattern.search(data)
        if m:
            raise _Found(m.group(0)[:-1].decode("utf-8", "replace"))

    def regular(self, rel: bytes, executable: bool, size: int) -> None:
        self._tail = b""

    def contents(self, data: bytes) -> None:
        self._search(self._tail + data)
        self._tail = data[-4096:]

    def symlink(self, rel: bytes, target: bytes) -> None:
        self._search(target)
