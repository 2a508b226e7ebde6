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

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .. import payload as payload_pkg
from ..payload import codecs, exact, hashes, nar
from ..payload.container import InstallerFile
from .closure_info import Closure, read_closure
from .errors import BuildError
from .localnix import Nix, NixCommandError, store_nix
from .pack import (
    BuildResult,
    PayloadWriter,
    preamble_sha256,
    relocation_target,
    write_installer_file,
)
from .retarget import target_store_dir, with_installer


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


def _retarget(installer: InstallerFile, store_dir: str, out: Path, compression: str | None,
              level: int | None, progress: Callable[[int], object] | None) -> BuildResult:
    old = installer.manifest
    codec = compression or old.compression
    codecs.check_name(codec)
    embedded = relocation_target(old.embedded_store_dir, store_dir)
    if not any(p.name.endswith(".drv") for p in old.paths):
        raise BuildError(f"the installer for {old.store_dir} holds no .drv files",
                         "build it with --with-derivations, or retarget without --exact")
    contents: dict[str, bytes] = {}
    installer.unpack(lambda name: exact.Collector(name, contents))
    try:
        plan = exact.plan_manifest(old, contents, store_dir)
    except exact.ExactError as e:
        raise BuildError(str(e), e.hint) from None
    new = exact.retargeted_manifest(old, plan, store_dir, embedded)
    new.chunks = []
    new.preamble_sha256 = preamble_sha256()
    new.tool_version = payload_pkg.__version__
    # Still the derivations of its paths, for S2: installing elsewhere recomputes again.
    new.derivations = True
    by_old = {p.name: entry for p, entry in zip(old.paths, new.paths, strict=True)}
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
        self._hasher = nar.NarHasher()
        self._rewriter = exact.PathRewriter(nar.Tee(tar, self._hasher), kind, text, *binary)
        self._progress = progress

    def contents(self, data: bytes) -> None:
        if self._progress:
            self._progress(len(data))
        self._rewriter.contents(data)

    def __getattr__(self, name: str):
        return getattr(self._rewriter, name)

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


def check_exact(closure: Closure, store_root: Path | None = None) -> None:
    """Refuse a closure that exact retarget could not plan, naming why.

    Plans the closure for its own store dir (which must give back every path),
    reading the one-file paths the planner needs from ``store_root`` (default:
    the store dir), so that an installer marked as holding its derivations
    can be retargeted exactly, by ``retarget --exact`` or at install time.
    """
    root = Path(store_root or closure.store_dir)
    bases = {i.path: i.path.rpartition("/")[2] for i in closure.infos}
    infos = []
    for i in closure.infos:
        name = bases[i.path]
        contents = None
        if name.endswith(".drv") or i.deriver not in bases:
            path = root / name
            if path.is_file() and not path.is_symlink() and path.stat().st_size <= exact.TEXT_LIMIT:
                contents = path.read_bytes()
        infos.append(exact.PathInfo(name, [bases[r] for r in i.references], i.nar_hash,
                                    contents))
    if not any(i.name.endswith(".drv") for i in infos):
        raise BuildError(f"the closure at {closure.store_dir} holds no .drv files",
                         "build with --with-derivations")
    try:
        exact.plan(infos, closure.store_dir, closure.store_dir)
    except exact.ExactError as e:
        raise BuildError(f"exact retarget could not recompute this closure: {e}",
                         "build without --with-derivations (plain relocation only)") from None
