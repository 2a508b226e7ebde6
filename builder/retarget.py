"""``nix-prefix retarget``: a new installer for another prefix, without Nix.

From an existing installer: every chunk is read through the installer's own
verifying path (chunk sha256, each path's NAR hash), the store dir is
rewritten in place with its same-length, slash-padded form
(payload/relocate.py), each path's NAR hash is recomputed, and the paths go
into new chunks of the same layout.  From a closureInfo dir it is a plain
build with ``BuildOptions.relocate_to``.  Either way the output is
deterministic: the same input and prefix give the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .. import payload as payload_pkg
from ..payload import codecs, hashes, nar, relocate, storepath
from ..payload.container import CorruptInstaller, InstallerFile
from .closure_info import read_closure
from .errors import BuildError
from .pack import (
    BuildOptions,
    BuildResult,
    PayloadWriter,
    build_installer,
    preamble_sha256,
    relocation_target,
    write_installer_file,
)


def target_store_dir(prefix: str) -> str:
    """The canonical store dir for ``--prefix`` (absolute, no trailing slash)."""
    store_dir = os.path.join(os.path.abspath(os.path.expanduser(prefix)), "store")
    try:
        storepath.check_store_dir(store_dir)
    except storepath.StorePathError as e:
        raise BuildError(f"prefix {prefix!r}: {e}",
                         "choose a prefix of letters, digits and + - . _ = @ , ~") from None
    return store_dir


def retarget(source: Path, prefix: str, out: Path, *, compression: str | None = None,
             level: int | None = None, store_root: Path | None = None,
             progress: Callable[[int], object] | None = None) -> BuildResult:
    """Write to ``out`` an installer for ``prefix`` made from ``source``.

    ``source`` is an installer file or a closureInfo dir (or dump-db file,
    with the store read from ``store_root`` if it is not at its store dir).
    """
    store_dir = target_store_dir(prefix)
    if source.is_dir() or not _looks_like_installer(source):
        options = BuildOptions(compression=compression or "xz", level=level,
                               store_root=store_root, relocate_to=store_dir)
        return build_installer(read_closure(source), out, options, progress)
    return with_installer(
        source, lambda installer: _retarget_installer(installer, store_dir, out, compression,
                                                      level, progress),
        "pass an intact installer or a closureInfo dir")


def with_installer(source: Path, run: Callable[[InstallerFile], BuildResult],
                   hint: str) -> BuildResult:
    """Open ``source`` as an installer and ``run`` on it; its errors become BuildErrors."""
    try:
        installer = InstallerFile(str(source))
    except CorruptInstaller as e:
        raise BuildError(f"{source}: {e.args[0]}", hint) from None
    try:
        return run(installer)
    except CorruptInstaller as e:
        raise BuildError(f"{source}: {e.args[0]}", e.hint) from None
    except codecs.CodecError as e:
        raise BuildError(f"{source}: {e}") from None
    finally:
        installer.close()


def _looks_like_installer(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError as e:
        raise BuildError(f"cannot read {path}: {e.strerror}") from None


def _retarget_installer(installer: InstallerFile, store_dir: str, out: Path,
                        compression: str | None, level: int | None,
                        progress: Callable[[int], object] | None) -> BuildResult:
    old = installer.manifest
    codec = compression or old.compression
    codecs.check_name(codec)
    embedded = relocation_target(old.embedded_store_dir, store_dir)
    if any(p.name.endswith(".drv") for p in old.paths):
        # Their hash parts would stay: Nix's --load-db checks a .drv's outputs and refuses it.
        raise BuildError(f"the installer for {old.store_dir} holds .drv files, which Nix refuses "
                         "to register at another store dir with their old hash parts",
                         "retarget with --exact (see docs/relocation.md)")
    new = old.moved_to(store_dir, embedded)
    new.chunks = []
    new.preamble_sha256 = preamble_sha256()
    new.tool_version = payload_pkg.__version__
    by_name = {p.name: p for p in new.paths}
    rewrite = (old.embedded_store_dir.encode(), embedded.encode())

    def write_payload(payload: PayloadWriter) -> None:
        for index in range(len(old.chunks)):
            group = [by_name[p.name] for p in old.paths_in_chunk(index)]
            with payload.chunk(group) as tar:
                def open_path(name: str, tar=tar) -> object:
                    tar.top = name
                    return _RetargetedPath(tar, by_name[name], rewrite, progress)

                installer.unpack(open_path, [index])

    write_installer_file(out, new, codec, level, write_payload)
    return BuildResult(new, out.stat().st_size)


class _RetargetedPath:
    """One store path on its way from the old payload to the new one."""

    def __init__(self, tar, entry, rewrite: tuple[bytes, bytes],
                 progress: Callable[[int], object] | None) -> None:
        self._entry = entry
        self._hasher = nar.NarHasher()
        self._progress = progress
        self._tee = relocate.Relocator(nar.Tee(tar, self._hasher), *rewrite)

    def contents(self, data: bytes) -> None:
        self._tee.contents(data)
        if self._progress:
            self._progress(len(data))

    def __getattr__(self, name: str):
        return getattr(self._tee, name)

    def finish(self) -> None:
        self._entry.nar_hash = hashes.format_sha256(self._hasher.digest())
