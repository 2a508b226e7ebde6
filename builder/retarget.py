"""``nix-prefix retarget``: a new installer for another prefix, without Nix.

From an existing installer every chunk is read through the installer's own
verifying path (chunk sha256, each path's NAR hash) and goes through a
retarget (payload/retarget.py) into new chunks of the same layout, each
rewritten path's NAR hash recomputed:

* same-length: the store dir is rewritten, with its same-length, slash-padded
  form in binaries and the canonical one in text (``SameLength``); the hash
  parts stay;
* ``--exact``: every store path gets the path a native build at the new
  store dir would give it (``Exact``).  It needs the derivations: build the
  installer with ``--with-derivations`` (builder/derivations.py).  The chunks
  holding ``.drv`` files and other one-file paths are read once first, for
  the planner.

From a closureInfo dir a same-length retarget is a build with
``BuildOptions.retarget_to``.  Either way the output is deterministic: the
same input and prefix give the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import payload as payload_pkg
from ..payload import codecs, refmap, storepath
from ..payload import retarget as retargets
from ..payload.container import PayloadWriter
from ..payload.hashes import parse_sha256
from ..payload.manifest import Manifest
from ..payload.signing import SecretKey
from ..payload.tree import Count, Sink, Tee
from .closure_info import read_closure
from .compress import default_jobs
from .errors import BuildError, UsageError
from .pack import (
    BuildOptions,
    BuildResult,
    build_installer,
    choose_retarget,
    default_chunk_size,
    preamble_sha256,
    write_installer_file,
)
from .sources import INSTALLER, InstallerSource, kind_of


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
    if kind_of(source) != INSTALLER:
        options = BuildOptions(compression=compression or "xz", level=level,
                               store_root=store_root, retarget_to=store_dir,
                               sign_keys=list(sign_keys))
        return build_installer(read_closure(source), out, options, progress)
    with InstallerSource(source) as installer:
        target = choose_retarget(installer.manifest, store_dir, want=retargets.SAME_LENGTH)
        return _rewrite(installer, target, out, compression, level, progress, sign_keys)


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
    with InstallerSource(source) as installer:
        target = choose_retarget(installer.manifest, store_dir, installer.contents,
                                 want=retargets.EXACT)
        return _rewrite(installer, target, out, compression, level, progress, sign_keys)


def _rewrite(installer: InstallerSource, target: retargets.Retarget, out: Path,
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
            installer.replay([p.name for p in old.paths], open_path)
        infos = {p.name: info for p, _ in rewritten if (info := p.nar_info()) is not None}
        manifest = new.with_nar_info(infos)
        hashes = {p.name: p.nar_hash for p in manifest.paths}
        payload.ref_map = refmap.RefMap(embedded, [
            r.result(parse_sha256(hashes[p.name])) for p, r in rewritten], extra).to_bytes()
        return manifest

    manifest = write_installer_file(out, new, codec, level, write_payload, sign_keys)
    return BuildResult(manifest, out.stat().st_size,
                       source_signed_by=installer.verdict.signed_by)
