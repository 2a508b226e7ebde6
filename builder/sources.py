"""Where ``cache`` reads store paths from: a closureInfo dir with its store, or an
installer.  Both give the closure's manifest, the contents the exact retarget
needs, and every path's tree events, each path checked against its NAR hash."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from ..payload import hashes, nar
from ..payload import retarget as retargets
from ..payload.container import InstallerFile
from ..payload.manifest import Manifest, PathEntry
from ..payload.tree import Sink, Tee
from . import nixchoice
from .closure_info import read_closure
from .derivations import read_store_contents
from .errors import BuildError
from .pack import closure_system


class Source(Protocol):
    """A closure to read store paths from."""

    manifest: Manifest

    def contents(self) -> dict[str, bytes]:
        """The files the exact retarget reads (payload/exact.py needs_contents)."""

    def replay(self, names: set[str], open_path: Callable[[str], Sink], jobs: int) -> None:
        """Send every path of ``names`` to its sink ``open_path(name)``, whole, verified."""


class ClosureSource:
    """A closureInfo dir (or dump-db file) whose paths are read from the store."""

    def __init__(self, source: Path, store_root: Path | None) -> None:
        closure = read_closure(source)
        self.root = Path(store_root or closure.store_dir)
        entries = [PathEntry.from_registration(i) for i in closure.infos]
        for e in entries:
            if not os.path.lexists(self.root / e.name):
                raise BuildError(f"store path {closure.store_dir}/{e.name} is missing from "
                                 f"{self.root}", "pass --store-root if the store is elsewhere")
        names = [e.name for e in entries]
        nix = nixchoice.choose(names, [], self.root, None, False)
        system = closure_system(self.root, closure.store_dir, names, nix.nix_store, None)
        self.manifest = Manifest(closure.store_dir, system, "xz", entries, [], [])

    def contents(self) -> dict[str, bytes]:
        return read_store_contents(self.manifest.paths, self.root)

    def replay(self, names: set[str], open_path: Callable[[str], Sink], jobs: int) -> None:
        """Every path of ``names``, read from the store and checked against its NAR hash."""
        def one(entry: PathEntry) -> None:
            hasher = nar.NarHasher()
            visitor = open_path(entry.name)
            where = f"{self.manifest.store_dir}/{entry.name}"
            try:
                nar.dump_path(os.fsencode(self.root / entry.name), Tee(visitor, hasher))
            except nar.NarError as e:
                raise BuildError(f"{where}: {e}") from None
            except OSError as e:
                raise BuildError(f"{where}: cannot read {e.filename} ({e.strerror})") from None
            got = hashes.format_sha256(hasher.digest())
            if got != entry.nar_hash or hasher.size != entry.nar_size:
                raise BuildError(f"{where} does not match its registration (narHash {got}, "
                                 f"registered {entry.nar_hash})",
                                 "the store path was modified or the registration is stale")
            visitor.finish()

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(one, e) for e in self.manifest.paths if e.name in names]
            try:
                for done in futures:
                    done.result()
            finally:
                for f in futures:
                    f.cancel()


class InstallerSource:
    """An installer: every path comes through its own verifying reader."""

    def __init__(self, installer: InstallerFile) -> None:
        self._installer = installer
        self.manifest = installer.manifest

    def contents(self) -> dict[str, bytes]:
        return retargets.read_contents(self._installer)

    def replay(self, names: set[str], open_path: Callable[[str], Sink], jobs: int) -> None:
        # Every chunk holding bytes of a path to write (format 3 cuts paths across chunks).
        spans = self.manifest.chunk_spans()
        chunks = sorted({i for p in self.manifest.paths if p.name in names
                         for i in spans[p.name]})
        self._installer.unpack(open_path, chunks, jobs=jobs)
