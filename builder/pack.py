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

import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import payload as payload_pkg
from ..payload import (
    archive,
    codecs,
    container,
    derivation,
    elf,
    hashes,
    nar,
    refmap,
    retarget,
    seal,
    storepath,
)
from ..payload.container import PayloadWriter
from ..payload.machine import host_system
from ..payload.manifest import Manifest, PathEntry
from ..payload.rewrite import HiddenReferenceScanner
from ..payload.signing import PublicKey, SecretKey
from ..payload.tree import Count, Tee
from . import bundles, nixchoice
from .closure_info import Closure
from .compress import compressor, default_jobs
from .errors import BuildError
from .leftovers import remove_stale
from .signer import KeySigner

PREAMBLE_SH = Path(__file__).with_name("preamble.sh")
# Tar bytes per chunk: the closure cut into CHUNKS_PER_PAYLOAD chunks, so that
# 1, 2, 4, 8 or 16 threads get the same share, but no smaller than MIN_CHUNK_SIZE
# (smaller chunks compress worse: +1% at 8 MiB, bench/pieces.py) nor larger than
# MAX_CHUNK_SIZE (what a thread holds in memory).
CHUNKS_PER_PAYLOAD = 16
MIN_CHUNK_SIZE = 8 << 20
MAX_CHUNK_SIZE = 64 << 20


@dataclass
class BuildOptions:
    """How to pack: codec and level, where the store physically is, what to check."""

    compression: str = "xz"
    level: int | None = None
    store_root: Path | None = None
    verify: bool = True
    roots: list[str] | None = None
    system: str | None = None
    chunk_size: int | None = None  # None: default_chunk_size() of the closure
    # The closure holds the derivations of its paths (build --with-derivations).
    derivations: bool = False
    # Pack for another store dir (no longer than the closure's): binaries get its
    # same-length, slash-padded form, text its canonical one (payload/retarget.py).
    retarget_to: str | None = None
    # Chunks packed and compressed at once (None: as many as CPUs and memory allow).
    jobs: int | None = None
    # The Nix that registers the paths, when the closure holds several
    # (builder/nixchoice.py; None: the newest).
    nix_store: str | None = None
    # The publisher's Nix secret keys (--sign-key): they sign the installer and every path.
    sign_keys: list[SecretKey] = field(default_factory=list)
    # Pack ELF files of other machines than the closure's system (--allow-mixed-systems).
    mixed_systems: bool = False


@dataclass
class BuildResult:
    """What was written, for the summary."""

    manifest: Manifest
    size: int
    notes: list[str] = field(default_factory=list)
    # retarget: the keys whose signatures the source installer carried.
    source_signed_by: list[PublicKey] = field(default_factory=list)


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
    built, notes = _manifest(closure, store_root, options)
    entries = built.paths
    # Packed from the store, nothing is recomputed: the same-length retarget, if any.
    target = choose_retarget(built, options.retarget_to or closure.store_dir, derivations=False)
    chunk_size = options.chunk_size or default_chunk_size(built.total_nar_size)

    embedded = target.manifest.embedded_store_dir.encode()
    extra = drv_outputs(store_root, closure.store_dir, entries) if options.derivations else []
    candidates = refmap.candidates([e.name for e in entries], extra)

    def write_payload(payload: PayloadWriter) -> Manifest:
        infos: dict[str, tuple[str, int]] = {}
        hidden: list[str] = []
        refs: list[refmap.PathRefs] = []
        # One tar stream of every path, in order; the payload writer cuts it into
        # chunks and compresses them in threads.
        with payload.stream(chunk_size, payload_jobs(options, chunk_size)) as tar:
            for entry in entries:
                recorder = refmap.Recorder(entry.name, embedded, candidates)
                p = _pack_path(tar, entry, target, store_root, options.verify,
                               closure.store_dir, progress,
                               None if options.mixed_systems else built.system, recorder)
                hidden += p.hidden_refs
                if p.nar_info is not None:
                    infos[p.name] = p.nar_info
                refs.append(recorder.result(hashes.parse_sha256(
                    (p.nar_info or (entry.nar_hash, 0))[0])))
        payload.ref_map = refmap.RefMap(embedded, refs, extra).to_bytes()
        # After a same-length retarget the paths cannot be recomputed exactly.
        return target.manifest.with_nar_info(infos).replaced(
            hidden_refs=hidden, derivations=options.derivations and not target.rewrites)

    manifest = write_installer_file(out, built, options.compression, options.level,
                                    write_payload, options.sign_keys)
    return BuildResult(manifest, out.stat().st_size, notes)


def _manifest(closure: Closure, store_root: Path, options: BuildOptions
              ) -> tuple[Manifest, list[str]]:
    """The manifest of ``closure`` before packing (no chunks yet), every path found at
    ``store_root``; and what choosing its Nix has to say (nixchoice.py)."""
    entries = [PathEntry.from_registration(info) for info in closure.infos]
    for entry in entries:
        if not os.path.lexists(store_root / entry.name):
            raise BuildError(
                f"store path {closure.store_dir}/{entry.name} is missing from {store_root}",
                "build or copy the closure into the store first, or pass --store-root")
    nix = nixchoice.choose([e.name for e in entries],
                           _roots(entries, options.roots, closure.store_dir), store_root,
                           options.nix_store, roots_given=bool(options.roots),
                           store_dir=closure.store_dir)
    system = closure_system(store_root, closure.store_dir, [e.name for e in entries],
                            nix.nix_store, options.system)
    return Manifest(
        store_dir=closure.store_dir,
        system=system,
        compression=options.compression,
        paths=entries,
        chunks=[],
        roots=nix.roots,
        nix_store=nix.nix_store,
        preamble_sha256=preamble_sha256(),
        tool_version=payload_pkg.__version__,
        derivations=options.derivations,
    ), nix.notes


def closure_system(store_root: Path, store_dir: str, names: Sequence[str],
                   nix_store: str | None, given: str | None) -> str:
    """The Nix system of a closure (the store paths ``names`` of ``store_dir``, read at
    ``store_root``): that of the ELF of its Nix (``nix_store``, a
    ``<base name>/bin/nix-store``, resolved inside the closure as the installer resolves
    it), else ``given`` (--system), else this machine's.  A --system that contradicts
    the closure's Nix is refused."""
    cpu = None
    found_file = (storepath.shipped_file(str(store_root), store_dir, names, nix_store)
                  if nix_store is not None else None)
    if found_file is not None:
        try:
            with open(store_root / found_file, "rb") as f:
                cpu = elf.machine_of(f.read(elf.HEADER_SIZE))
        except OSError:
            cpu = None  # nixchoice and the packing itself name an unreadable Nix
    if cpu is None:
        return given or host_system()
    found = cpu + "-linux"
    if given is not None and given != found:
        raise BuildError(f"--system {given}, but the closure's Nix ({nix_store}) is for {found}",
                         "leave --system out: the closure's Nix tells")
    return found


def choose_retarget(manifest: Manifest, store_dir: str,
                    read_contents: Callable[[], dict[str, bytes]] | None = None,
                    want: str | None = None, derivations: bool | None = None
                    ) -> retarget.Retarget:
    """The retarget payload/retarget.py ``choose`` chooses, its refusal a BuildError."""
    try:
        return retarget.choose(manifest, store_dir, read_contents, want, derivations)
    except retarget.RetargetError as e:
        raise BuildError(e.args[0], e.hint) from None


def preamble() -> bytes:
    """The file's first bytes: the sh preamble (builder/preamble.sh) and the seal and
    signature checker (payload/seal.py, trust.py, bundled) it hands the file to,
    with the seal placeholder."""
    return seal.head(PREAMBLE_SH.read_bytes(), bundles.boot_text())


def preamble_sha256() -> str:
    """The manifest's ``preambleSha256``: of preamble(), seal placeholder included."""
    return hashlib.sha256(preamble()).hexdigest()


def write_installer_file(out: Path, manifest: Manifest, compression: str, level: int | None,
                         write_payload: Callable[[PayloadWriter], Manifest | None],
                         sign_keys: Sequence[SecretKey] = ()) -> Manifest:
    """Write preamble, code, payload (by ``write_payload``) and manifest to ``out``,
    atomically (payload/container.py), only ever over a regular file (``check_output``,
    before the work and again before the rename); return the manifest as written.

    ``write_payload`` returns the manifest of what it wrote, or None if that
    is ``manifest`` as it is.  With ``sign_keys`` the installer and every path
    (over its final NAR hash at the manifest's store dir) are signed.
    """
    check_output(out)
    remove_stale(out.parent, f".{out.name}.tmp-")  # container.write_installer's, killed
    try:
        return container.write_installer(
            str(out), preamble(), container.embedded_code(), compression,
            lambda: compressor(compression, level, manifest.system),
            lambda payload: write_payload(payload) or manifest,
            check_out=lambda path: check_output(Path(path)), signer=KeySigner(sign_keys))
    except container.ManifestTooLarge as e:
        raise BuildError(str(e), "make installers of smaller closures (an installer's "
                                 "reader refuses a larger manifest)") from None
    except OSError as e:  # writing the file: a full disk, a quota, a vanished directory
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        raise BuildError(f"cannot write {out} ({e.strerror})",
                         "free some space there, or choose another -o" if full
                         else "choose another -o") from None


def write_verifier(out: Path) -> None:
    """``nix-prefix verifier``: the standalone verifier (bundles.py), written to ``out``
    only over a regular file."""
    check_output(out)
    try:
        bundles.write_verifier(out)
    except OSError as e:
        raise BuildError(f"cannot write {out} ({e.strerror})", "choose another -o") from None


def payload_jobs(options: BuildOptions, chunk_size: int) -> int:
    """Chunks compressed at once: ``-j``, else as CPUs and memory allow."""
    return options.jobs or default_jobs(options.compression, options.level, chunk_size)


def default_chunk_size(nar_size: int) -> int:
    """Tar bytes per chunk for a closure of ``nar_size`` NAR bytes (see CHUNKS_PER_PAYLOAD)."""
    return min(MAX_CHUNK_SIZE, max(MIN_CHUNK_SIZE, -(-nar_size // CHUNKS_PER_PAYLOAD)))


def check_output(out: Path) -> None:
    """Refuse an output whose directory is missing or not writable, or that exists and
    is not a regular file: the atomic rename would replace it (run as root, ``-o
    /dev/null`` would turn the device into a file), and a symlink would be replaced
    rather than followed."""
    where = out.parent if str(out.parent) else Path(".")
    if not where.is_dir():
        raise BuildError(f"cannot write {out}: there is no directory {where}",
                         "create it, or choose another -o")
    if not os.access(where, os.W_OK | os.X_OK):
        raise BuildError(f"cannot write {out}: the directory {where} is not writable by you",
                         "choose another -o")
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


def thread_safe(report: Callable[[int], object]) -> Callable[[int], object]:
    """``report`` made safe to call from several threads (builder/cache.py's)."""
    lock = threading.Lock()

    def call(n: int) -> None:
        with lock:
            report(n)
    return call


@dataclass(frozen=True)
class _Packed:
    """What packing one store path found: its hidden references, its new NAR info
    (when the retarget rewrote it)."""

    name: str
    hidden_refs: list[str]
    nar_info: tuple[str, int] | None


def drv_outputs(store_root: Path, store_dir: str, entries: Sequence[PathEntry]) -> list[bytes]:
    """The hash parts of the outputs the closure's ``.drv`` files name: what an exact
    retarget renames, and so what the reference map looks for besides the closure's."""
    found = set()
    for e in entries:
        if storepath.is_derivation(e.name):
            try:
                drv = derivation.parse((store_root / e.name).read_bytes())
            except (OSError, derivation.DerivationError):
                continue  # derivations.py names it; a map without its outputs is only unused
            for _, path, _, _ in drv.outputs:
                found.add(path.rpartition("/")[2][:storepath.HASH_LENGTH].encode())
    return sorted(found)


def _pack_path(tar: archive.TarWriter, entry: PathEntry, target: retarget.Retarget,
               store_root: Path, verify: bool, store_dir: str,
               progress: Callable[[int], object] | None, system: str | None = None,
               recorder: refmap.Recorder | None = None) -> _Packed:
    """Pack one store path; verify it, retarget it, map the references of what is packed
    (``recorder``); say what was found.  With ``system``, an ELF program or library for
    another machine stops the build."""
    hasher = nar.NarHasher() if verify else None
    scanner = HiddenReferenceScanner(store_dir.encode())
    tar.top = target.name(entry.name)
    packed = retarget.Retargeted(target, entry.name, Tee(tar, recorder) if recorder else tar)
    machines = elf.Machines(system.partition("-")[0]) if system else None
    sink = Tee(packed, hasher, scanner, machines, Count(progress) if progress else None)
    try:
        nar.dump_path(os.fsencode(store_root / entry.name), sink)
        sink.finish()
    except nar.NarError as e:
        raise BuildError(f"{store_dir}/{entry.name}: {e}") from None
    except elf.MachineMismatch as e:
        raise BuildError(f"{store_dir}/{entry.name}: {e}: the closure mixes systems",
                         "build it from one system's paths, or pass --allow-mixed-systems "
                         "if that is meant") from None
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
    return _Packed(packed.name, [entry.name + found for found in scanner.found],
                   packed.nar_info())
