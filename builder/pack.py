"""Pack a checked closure into one installer file.

The file's layout (the sh preamble, then a zip of the installer code, the
payload chunks and the manifest) is payload/container.py's; this module
decides what goes in: which paths, in which chunks, checked how.  Everything
is written in a fixed order with fixed metadata, so two builds of the same
closure are byte-identical.

Each store path is read once: the same walk feeds the tar writer and the NAR
hasher, so verifying the registration costs no second pass.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import payload as payload_pkg
from ..payload import archive, codecs, container, hashes, nar, relocate, seal
from ..payload.container import PayloadWriter
from ..payload.machine import host_system
from ..payload.manifest import Manifest, PathEntry
from . import nixchoice
from .closure_info import Closure
from .compress import compressor, default_jobs
from .errors import BuildError

PREAMBLE_SH = Path(__file__).with_name("preamble.sh")
DEFAULT_CHUNK_SIZE = 64 << 20  # NAR bytes per chunk: whole paths, at least one


@dataclass
class BuildOptions:
    """How to pack: codec and level, where the store physically is, what to check."""

    compression: str = "xz"
    level: int | None = None
    store_root: Path | None = None
    verify: bool = True
    roots: list[str] | None = None
    system: str | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    # The closure holds the derivations of its paths (build --with-derivations).
    derivations: bool = False
    # Pack for another store dir (no longer than the closure's): contents are
    # rewritten with the same-length, slash-padded form (payload/relocate.py).
    relocate_to: str | None = None
    # Chunks packed and compressed at once (None: as many as CPUs and memory allow).
    jobs: int | None = None
    # The Nix that registers the paths, when the closure holds several
    # (builder/nixchoice.py; None: the newest).
    nix_store: str | None = None


@dataclass
class BuildResult:
    """What was written, for the summary."""

    manifest: Manifest
    size: int
    notes: list[str] = field(default_factory=list)


def build_installer(
    closure: Closure,
    out: Path,
    options: BuildOptions,
    progress: Callable[[int], object] | None = None,
) -> BuildResult:
    """Write the installer for ``closure`` to ``out`` (atomically: all or nothing).

    ``progress`` is called with the number of NAR bytes done since the last call.
    """
    codecs.check_name(options.compression)
    store_root = Path(options.store_root or closure.store_dir)
    names = [p.path.rpartition("/")[2] for p in closure.infos]
    for name in names:
        if not os.path.lexists(store_root / name):
            raise BuildError(
                f"store path {closure.store_dir}/{name} is missing from {store_root}",
                "build or copy the closure into the store first, or pass --store-root")
    entries = [
        PathEntry(name, info.nar_hash, info.nar_size,
                  [r.rpartition("/")[2] for r in info.references],
                  info.deriver.rpartition("/")[2])
        for name, info in zip(names, closure.infos, strict=True)
    ]
    nix = nixchoice.choose([e.name for e in entries],
                           _roots(entries, options.roots, closure.store_dir), store_root,
                           options.nix_store, roots_given=bool(options.roots))
    roots = nix.roots
    store_dir, embedded = closure.store_dir, closure.store_dir
    if options.relocate_to:
        store_dir = options.relocate_to
        embedded = relocation_target(closure.store_dir, store_dir)
    manifest = Manifest(
        store_dir=store_dir,
        system=options.system or host_system(),
        compression=options.compression,
        paths=entries,
        chunks=[],
        roots=roots,
        nix_store=nix.nix_store,
        preamble_sha256=preamble_sha256(),
        tool_version=payload_pkg.__version__,
        embedded_store_dir=embedded,
        derivations=options.derivations and embedded == closure.store_dir,
    )
    relocation = None
    if embedded != closure.store_dir:
        relocation = (closure.store_dir.encode(), embedded.encode())

    report = _locked(progress) if progress else None

    def fill(group: list[PathEntry], tar: archive.TarWriter) -> list[str]:
        hidden: list[str] = []
        for entry in group:
            tar.top = entry.name
            hidden += _pack_path(tar, entry, store_root, options.verify, closure.store_dir,
                                 relocation, report)
        return hidden

    def write_payload(payload: PayloadWriter) -> None:
        groups = _chunk_groups(manifest.paths, options.chunk_size)
        for hidden in payload.write_chunks(groups, fill, payload_jobs(options)):
            manifest.hidden_refs += hidden

    write_installer_file(out, manifest, options.compression, options.level, write_payload)
    return BuildResult(manifest, out.stat().st_size, nix.notes)


def relocation_target(old_store_dir: str, new_store_dir: str) -> str:
    """The padded form of ``new_store_dir`` that replaces ``old_store_dir`` in place."""
    try:
        return relocate.padded_store_dir(old_store_dir, new_store_dir)
    except relocate.RelocationError as e:
        raise BuildError(str(e), "build the closure with a store dir at least as long as the "
                         "target's (see docs/relocation.md)") from None


def preamble() -> bytes:
    """The file's first bytes: the sh preamble (builder/preamble.sh) and the seal
    checker (payload/seal.py) it hands the file to, with the seal placeholder."""
    return seal.head(PREAMBLE_SH.read_bytes(), Path(seal.__file__).read_bytes())


def preamble_sha256() -> str:
    """The manifest's ``preambleSha256``: of preamble(), seal placeholder included."""
    return hashlib.sha256(preamble()).hexdigest()


def write_installer_file(out: Path, manifest: Manifest, compression: str, level: int | None,
                         write_payload: Callable[[PayloadWriter], None]) -> None:
    """Write preamble, code, payload (by ``write_payload``) and manifest to ``out``,
    atomically (payload/container.py), only ever over a regular file (``check_output``,
    before the work and again before the rename)."""
    container.write_installer(
        str(out), preamble(), manifest, container.embedded_code(),
        lambda: compressor(compression, level, manifest.system), write_payload,
        check_out=lambda path: check_output(Path(path)))


def payload_jobs(options: BuildOptions) -> int:
    """Chunks packed and compressed at once: ``-j``, else as CPUs and memory allow."""
    return options.jobs or default_jobs(options.compression, options.level)


def check_output(out: Path) -> None:
    """Refuse an output that exists and is not a regular file: the atomic rename
    would replace it (run as root, ``-o /dev/null`` would turn the device into a
    file), and a symlink would be replaced rather than followed."""
    try:
        mode = os.lstat(out).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise BuildError(f"cannot use {out} as the output ({e.strerror})",
                         "choose another -o") from None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a symlink" if stat.S_ISLNK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "not a regular file")
        raise BuildError(f"{out} is {kind}; the installer is written only over a regular file",
                         "choose another -o, e.g. ./installer.sh")


def _roots(entries: list[PathEntry], wanted: list[str] | None, store_dir: str) -> list[str]:
    names = {e.name for e in entries}
    if wanted:
        roots = []
        for root in wanted:
            name = root.rpartition("/")[2] if root.startswith("/") else root
            if name not in names:
                raise BuildError(f"--root {root} is not in the closure")
            roots.append(name)
        return sorted(set(roots))
    referenced = {r for e in entries for r in e.references if r != e.name}
    return sorted(names - referenced)




def _chunk_groups(entries: list[PathEntry], chunk_size: int) -> list[list[PathEntry]]:
    """The paths in order, cut into groups of about ``chunk_size`` NAR bytes (one chunk each)."""
    groups: list[list[PathEntry]] = [[]]
    filled = 0
    for entry in entries:
        if groups[-1] and filled + entry.nar_size > chunk_size:
            groups.append([])
            filled = 0
        groups[-1].append(entry)
        filled += entry.nar_size
    return groups


def _locked(report: Callable[[int], object]) -> Callable[[int], object]:
    """``report`` made safe to call from the chunk threads."""
    lock = threading.Lock()

    def call(n: int) -> None:
        with lock:
            report(n)
    return call


class _Progress:
    """Counts NAR bytes for the progress bar without touching the data."""

    def __init__(self, report: Callable[[int], object]) -> None:
        self._report = report

    def contents(self, data: bytes) -> None:
        self._report(len(data))

    def __getattr__(self, name: str):
        return lambda *args: None


def _pack_path(tar: archive.TarWriter, entry: PathEntry, store_root: Path, verify: bool,
               store_dir: str, relocation: tuple[bytes, bytes] | None,
               progress: Callable[[int], object] | None) -> list[str]:
    """Pack one store path; verify it, relocate it if asked; return its hidden refs."""
    hasher = nar.NarHasher() if verify else None
    scanner = relocate.HiddenReferenceScanner(store_dir.encode())
    out: object = tar
    new_hasher = None
    if relocation is not None:
        new_hasher = nar.NarHasher()
        out = relocate.Relocator(nar.Tee(tar, new_hasher), *relocation)
    visitor = nar.Tee(out, hasher, scanner, _Progress(progress) if progress else None)
    try:
        nar.dump_path(os.fsencode(store_root / entry.name), visitor)
    except nar.NarError as e:
        raise BuildError(f"{store_dir}/{entry.name}: {e}") from None
    except OSError as e:
        raise BuildError(f"{store_dir}/{entry.name}: cannot read {e.filename} ({e.strerror})",
                         "check the store's permissions") from None
    if hasher is not None:
        got = hashes.format_sha256(hasher.digest())
        if got != entry.nar_hash or hasher.size != entry.nar_size:
            raise BuildError(
                f"{store_dir}/{entry.name} does not match its registration: narHash {got} "
                f"size {hasher.size}, registered {entry.nar_hash} size {entry.nar_size}",
                "the store path was modified or the registration is stale; regenerate it, "
                "or pass --no-verify to pack it anyway")
    if new_hasher is not None:
        entry.nar_hash = hashes.format_sha256(new_hasher.digest())
    return [entry.name + found for found in scanner.found]
