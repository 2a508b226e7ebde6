"""``nix-prefix retarget``: a new installer for another prefix, without Nix.

From an existing installer every chunk is read through the installer's own
verifying path (chunk sha256, each path's NAR hash) and goes through a
retarget (payload/retarget.py) into new chunks of the same layout, each
rewritten path's NAR hash recomputed:

* plain: the store dir is rewritten, with its same-length, slash-padded
  form in binaries and the canonical one in text (``SameLength``); the hash
  parts stay;
* ``--exact``: every store path gets the path a native build at the new
  store dir would give it (``Exact``).  It needs the derivations: build the
  installer with ``--with-derivations`` (builder/derivations.py).  The chunks
  holding ``.drv`` files and other one-file paths are read once first, for
  the planner.

From a closureInfo dir a plain retarget is a build with
``BuildOptions.retarget_to``.  Either way the output is deterministic: the
same input and prefix give the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from .. import payload as payload_pkg
from ..payload import codecs, exact, refmap, storepath
from ..payload import retarget as retargets
from ..payload.container import CorruptInstaller, InstallerFile, PayloadWriter, not_a_file
from ..payload.hashes import parse_sha256
from ..payload.manifest import Manifest, has_derivations
from ..payload.signing import SecretKey
from ..payload.tree import Count, Sink, Tee
from .closure_info import read_closure
from .compress import default_jobs
from .errors import BuildError, UsageError
from .pack import (
    BuildOptions,
    BuildResult,
    build_installer,
    default_chunk_size,
    preamble_sha256,
    same_length,
    write_installer_file,
)

T = TypeVar("T")


def target_store_dir(prefix: str) -> str:
    """The canonical store dir for ``--prefix`` (absolute, no trailing slash)."""
    root = os.path.abspath(os.path.expanduser(prefix))
    if root == "/":  # the installer refuses / (installer/preflight.py resolve_prefix)
        raise UsageError("the prefix cannot be /: the installer refuses it",
                         "choose a directory such as /home/alice/.nix")
    store_dir = os.path.join(root, "store")
    try:
        storepath.check_store_dir(store_dir)
    except storepath.StorePathError as e:
        raise BuildError(f"prefix {prefix!r}: {e}",
                         "choose a prefix of letters, digits and + - . _ = @ , ~") from None
    return store_dir


def retarget(source: Path, prefix: str, out: Path, *, compression: str | None = None,
             level: int | None = None, store_root: Path | None = None,
             progress: Callable[[int], object] | None = None,
             sign_keys: Sequence[SecretKey] = ()) -> BuildResult:
    """Write to ``out`` an installer for ``prefix`` made from ``source`` (same length).

    ``source`` is an installer file or a closureInfo dir (or dump-db file,
    with the store read from ``store_root`` if it is not at its store dir).
    ``sign_keys`` sign the new installer and its paths; no signature of the
    source carries over.
    """
    store_dir = target_store_dir(prefix)
    if source.is_dir() or not looks_like_installer(source):
        options = BuildOptions(compression=compression or "xz", level=level,
                               store_root=store_root, retarget_to=store_dir,
                               sign_keys=list(sign_keys))
        return build_installer(read_closure(source), out, options, progress)
    return with_installer(
        source, lambda installer: _rewrite(installer, _same_length(installer, store_dir), out,
                                           compression, level, progress, sign_keys),
        "pass an intact installer or a closureInfo dir")


def retarget_exact(source: Path, prefix: str, out: Path, *, compression: str | None = None,
                   level: int | None = None,
                   progress: Callable[[int], object] | None = None,
                   sign_keys: Sequence[SecretKey] = ()) -> BuildResult:
    """Write to ``out`` an installer for ``prefix`` whose store paths are recomputed,
    signed by ``sign_keys`` (no signature of the source carries over)."""
    store_dir = target_store_dir(prefix)
    if source.is_dir():
        raise BuildError(f"{source}: --exact reads an installer, not a closureInfo dir",
                         "build an installer with --with-derivations first")
    return with_installer(
        source, lambda installer: _rewrite(installer, _exact(installer, store_dir), out,
                                           compression, level, progress, sign_keys),
        "pass an intact installer")


def with_installer(source: Path, run: Callable[[InstallerFile], T], hint: str) -> T:
    """Open ``source`` as an installer and ``run`` on it; its errors become BuildErrors."""
    try:
        installer = InstallerFile(str(source))
    except CorruptInstaller as e:
        raise BuildError(f"{source}: {e.args[0]}", hint) from None
    try:
        # A signature that does not hold stops here, as it would stop the installer.
        installer.verdict([])
        return run(installer)
    except CorruptInstaller as e:
        raise BuildError(f"{source}: {e.args[0]}", e.hint) from None
    except refmap.RefMapError as e:
        error = BuildError(f"{source}: {e.args[0]}", e.hint)
        error.exit_code = e.exit_code  # an integrity error (3)
        raise error from None
    except codecs.CodecError as e:
        raise BuildError(f"{source}: {e}") from None
    finally:
        installer.close()


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


def _same_length(installer: InstallerFile, store_dir: str) -> retargets.Retarget:
    old = installer.manifest
    target = same_length(old, store_dir)
    if has_derivations(old.paths):
        # Their hash parts would stay: Nix's --load-db checks a .drv's outputs and refuses it.
        raise BuildError(f"the installer for {old.store_dir} holds .drv files, which Nix refuses "
                         "to register at another store dir with their old hash parts",
                         "retarget with --exact (see docs/relocation.md)")
    return target


def _exact(installer: InstallerFile, store_dir: str) -> retargets.Retarget:
    old = installer.manifest
    same_length(old, store_dir)  # a longer store dir is refused before anything is read
    if not has_derivations(old.paths):
        raise BuildError(f"the installer for {old.store_dir} holds no .drv files",
                         "build it with --with-derivations, or retarget without --exact")
    contents = retargets.read_contents(installer)
    try:
        return retargets.Exact(old, store_dir, contents)
    except exact.ExactError as e:
        raise BuildError(str(e), e.hint) from None


def _rewrite(installer: InstallerFile, target: retargets.Retarget, out: Path,
             compression: str | None, level: int | None,
             progress: Callable[[int], object] | None,
             sign_keys: Sequence[SecretKey]) -> BuildResult:
    """Read every chunk of ``installer``, in order, through ``target`` into ``out``'s
    payload (cut into chunks of its own as it fills)."""
    old = installer.manifest
    codec = compression or old.compression
    codecs.check_name(codec)
    new = target.manifest.replaced(
        compression=codec, chunks=[], tool_version=payload_pkg.__version__,
        preamble_sha256=preamble_sha256())

    target.use_refs(installer.ref_map())  # patched at the map's offsets, if it has one
    # The new payload's map looks for its own hash parts (an exact retarget's new ones).
    extra = list(target.plan.hashes.values()) if isinstance(target, retargets.Exact) else []
    embedded = new.embedded_store_dir.encode()
    candidates = refmap.candidates([p.name for p in new.paths], extra)

    def write_payload(payload: PayloadWriter) -> Manifest:
        rewritten: list[tuple[retargets.Retargeted, refmap.Recorder]] = []
        size = default_chunk_size(old.total_nar_size)
        with payload.stream(size, default_jobs(codec, level, size)) as tar:
            def open_path(name: str) -> Sink:
                tar.top = target.name(name)
                recorder = refmap.Recorder(tar.top, embedded, candidates)
                path = retargets.Retargeted(target, name, Tee(tar, recorder))
                rewritten.append((path, recorder))
                return Tee(Count(progress), path)

            # One thread: the paths reach the tar writer whole and in order.
            installer.unpack(open_path)
        infos = {p.name: info for p, _ in rewritten if (info := p.nar_info()) is not None}
        manifest = new.with_nar_info(infos)
        hashes = {p.name: p.nar_hash for p in manifest.paths}
        payload.ref_map = refmap.RefMap(embedded, [
            r.result(parse_sha256(hashes[p.name])) for p, r in rewritten], extra).to_bytes()
        return manifest

    manifest = write_installer_file(out, new, codec, level, write_payload, sign_keys)
    return BuildResult(manifest, out.stat().st_size,
                       source_signed_by=installer.verdict([]).signed_by)
