"""``retarget --exact`` and ``build --with-derivations``.

Exact retarget (payload/exact.py) gives every store path the path a native
build at the new store dir would give it.  It needs the derivations: build
the installer with ``--with-derivations`` (the closure plus the ``.drv``
closure of every deriver, from the local Nix).

From the source installer every chunk is read twice through its verifying
path: first to collect the small one-file paths (``.drv`` files and
``builtins.toFile`` texts, whose contents decide their paths), then to write
the new payload.  ``.drv`` and text files get the canonical new store dir and
new paths (their lengths may change); fixed outputs and sources are copied
unchanged; every other file gets the slash-padded store dir and the new hash
parts, both same-length, so no offset moves.  NAR hashes and sizes are
recomputed; references, derivers, roots are mapped to the new names.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .. import payload as payload_pkg
from ..installer.source import InstallerFile
from ..payload import codecs, exact, hashes, nar, relocate
from .closure_info import Closure, read_closure
from .errors import BuildError
from .localnix import Nix, NixCommandError, store_nix
from .pack import PREAMBLE, BuildResult, PayloadWriter, relocation_target, write_installer_file
from .retarget import target_store_dir, with_installer

# Paths that are one regular file up to this size are read for the planner.
TEXT_LIMIT = 16 << 20


def retarget_exact(source: Path, prefix: str, out: Path, *, compression: str | None = None,
                   level: int | None = None,
                   progress: Callable[[int], object] | None = None) -> BuildResult:
    """Write to ``out`` an installer for ``prefix`` whose store paths are recomputed."""
    store_dir = target_store_dir(prefix)
    if source.is_dir():
        raise BuildError(f"{source}: --exact reads an installer, not a closureInfo dir",
                         "build an installer with --with-derivations first")
    return with_installer(
        source, lambda installer: _retarget(installer, store_dir, out, compression, level,
                                            progress),
        "pass an intact installer")


class _Collect:
    """Keeps the bytes of a path that is one small regular file."""

    def __init__(self, name: str, into: dict[str, bytes]) -> None:
        self._name = name
        self._into = into
        self._parts: list[bytes] | None = None

    def regular(self, rel: bytes, executable: bool, size: int) -> None:
        self._parts = [] if rel == b"" and size <= TEXT_LIMIT else None

    def contents(self, data: bytes) -> None:
        if self._parts is not None:
            self._parts.append(data)

    def end_regular(self) -> None:
        if self._parts is not None:
            self._into[self._name] = b"".join(self._parts)

    def __getattr__(self, name: str):
        return lambda *args: None


def _retarget(installer: InstallerFile, store_dir: str, out: Path, compression: str | None,
              level: int | None, progress: Callable[[int], object] | None) -> BuildResult:
    old = installer.manifest
    codec = compression or old.compression
    codecs.check_name(codec)
    embedded = relocation_target(old.embedded_store_dir, store_dir)
    contents: dict[str, bytes] = {}
    installer.unpack(lambda name: _Collect(name, contents))
    infos = [exact.PathInfo(p.name, p.references, p.nar_hash, contents.get(p.name))
             for p in old.paths]
    if not any(p.name.endswith(".drv") for p in old.paths):
        raise BuildError(f"the installer for {old.store_dir} holds no .drv files",
                         "build it with --with-derivations, or retarget without --exact")
    try:
        plan = exact.plan(infos, old.store_dir, store_dir)
    except exact.ExactError as e:
        raise BuildError(str(e), e.hint) from None
    names = plan.names
    new = old.moved_to(store_dir, embedded)
    new.chunks = []
    new.preamble_sha256 = hashlib.sha256(PREAMBLE.read_bytes()).hexdigest()
    new.tool_version = payload_pkg.__version__
    by_old = {}
    for entry in new.paths:
        by_old[entry.name] = entry
        deriver = plan.derivers.get(entry.name, entry.deriver)
        entry.deriver = names.get(deriver, "")
        entry.references = sorted(names[r] for r in entry.references)
        entry.name = names[entry.name]
    new.roots = sorted(names[r] for r in old.roots)
    if old.nix_store:
        base, _, rest = old.nix_store.partition("/")
        new.nix_store = f"{names[base]}/{rest}"
    new.hidden_refs = [names[h.partition("/")[0].partition(":")[0]]
                       + h[len(h.partition("/")[0].partition(":")[0]):] for h in old.hidden_refs]
    binary = (old.embedded_store_dir.encode(), embedded.encode(), plan.hashes)

    def write_payload(payload: PayloadWriter) -> None:
        for index in range(len(old.chunks)):
            group = [by_old[p.name] for p in old.paths_in_chunk(index)]
            with payload.chunk(group) as tar:
                def open_path(name: str, tar=tar) -> object:
                    entry = by_old[name]
                    tar.top = entry.name
                    return _ExactPath(tar, entry, plan.kinds[name], plan.texts.get(name),
                                      binary, progress)

                installer.unpack(open_path, [index])

    write_installer_file(out, new, codec, level, write_payload)
    return BuildResult(new, out.stat().st_size)


class _ExactPath:
    """One store path on its way from the old payload to the new one."""

    def __init__(self, tar, entry, kind: str, text: bytes | None,
                 binary: tuple[bytes, bytes, dict[bytes, bytes]],
                 progress: Callable[[int], object] | None) -> None:
        self._entry = entry
        self._kind = kind
        self._text = text
        self._binary = binary
        self._hasher = nar.NarHasher()
        self._out = nar.Tee(tar, self._hasher)
        self._progress = progress
        self._rewriter: exact.Rewriter | None = None
        self._pending: tuple[bytes, bool] | None = None

    def regular(self, rel: bytes, executable: bool, size: int) -> None:
        if self._text is not None:
            self._pending = (rel, executable)
            return
        self._rewriter = None
        if self._kind not in exact.KEEP_CONTENTS and not relocate.is_archive(rel):
            self._rewriter = exact.Rewriter(*self._binary)
        self._out.regular(rel, executable, size)

    def contents(self, data: bytes) -> None:
        if self._progress:
            self._progress(len(data))
        if self._text is not None:
            return
        if self._rewriter is not None:
            data = self._rewriter.feed(data)
        if data:
            self._out.contents(data)

    def end_regular(self) -> None:
        if self._pending is not None:
            rel, executable = self._pending
            self._pending = None
            self._out.regular(rel, executable, len(self._text))
            self._out.contents(self._text)
        elif self._rewriter is not None:
            tail = self._rewriter.flush()
            if tail:
                self._out.contents(tail)
            self._rewriter = None
        self._out.end_regular()

    def symlink(self, rel: bytes, target: bytes) -> None:
        if self._kind not in exact.KEEP_CONTENTS:
            target = exact.Rewriter(*self._binary).whole(target)
        self._out.symlink(rel, target)

    def __getattr__(self, name: str):
        return getattr(self._out, name)

    def finish(self) -> None:
        self._entry.nar_hash = hashes.format_sha256(self._hasher.digest())
        self._entry.nar_size = self._hasher.size


def with_derivations(closure: Closure, nix: Nix | None = None) -> tuple[Closure, list[str]]:
    """The closure plus the ``.drv`` closure of its derivers, and its original roots.

    The derivers come from the registration; ``nix-store -qR`` and
    ``--dump-db`` of the local Nix (bound to the closure's store) give the rest.
    """
    derivers = sorted({i.deriver for i in closure.infos if i.deriver})
    if not derivers:
        raise BuildError("no path of the closure has a deriver in its registration",
                         "register the closure with its derivers (nix-store --dump-db does)")
    paths = {i.path for i in closure.infos}
    referenced = {r for i in closure.infos for r in i.references if r != i.path}
    roots = sorted(paths - referenced)
    try:
        if nix is None:
            default = os.environ.get("NIX_STORE_DIR", "/nix/store")
            nix = store_nix(None if closure.store_dir == default else Path(closure.store_dir))
        drv_closure = nix.closure(derivers)
        dump = nix.dump_db(sorted(paths | set(drv_closure)))
    except NixCommandError as e:
        raise BuildError(f"cannot get the derivations of the closure: {e}",
                         "the .drv files must still be in the store (not garbage-collected)"
                         ) from None
    with tempfile.TemporaryDirectory() as tmp:
        reg = Path(tmp) / "registration"
        reg.write_bytes(dump)
        return read_closure(reg), roots
