"""Pack a checked closure into one installer file.

The file's layout (the sh preamble, then a zip of the installer code, the
payload chunks and the manifest) is payload/container.py's; this module
decides what goes in: which paths, in which chunks, checked how.  Everything
is written in a fixed order with fixed metadata, so two builds of the same
closure are byte-identical.

The closure is read as every tree source is (builder/sources.py ``TreeSource``):
each store path once, the one walk feeding the tar writer here and the source's
NAR hasher, so verifying the registration costs no second pass.
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
    elf,
    hashes,
    refmap,
    retarget,
    seal,
)
from ..payload.container import PayloadWriter
from ..payload.manifest import Manifest, PathEntry
from ..payload.rewrite import HiddenReferenceScanner
from ..payload.signing import PublicKey, SecretKey
from ..payload.tree import Count, Sink, Tee
from . import bundles, nixchoice
from .closure_info import Closure
from .compress import compressor, default_jobs
from .errors import BuildError
from .leftovers import remove_stale
from .nixchoice import closure_system
from .refmaps import drv_outputs
from .signer import KeySigner
from .sources import STALE_HINT, TreeSource, padded_spelling

PREAMBLE_SH = Path(__file__).with_name("preamble.sh")
# Tar bytes per chunk: the closure cut into CHUNKS_PER_PAYLOAD chunks, so that
# 1, 2, 4, 8 or 16 threads get the same share, but no smaller than MIN_CHUNK_SIZE
# (smaller chunks compress worse: +1% at 8 MiB, bench/pieces.py) nor larger than
# MAX_CHUNK_SIZE (what a thread holds in memory).
CHUNKS_PER_PAYLOAD = 16
MIN_CHUNK_SIZE = 8 << 20
MAX_CHUNK_SIZE = 64 << 20
NO_VERIFY_HINT = STALE_HINT + "; regenerate it, or pass --no-verify to pack it anyway"


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
    # The closure read as every tree source is read (builder/sources.py): each path
    # once, checked against its registration on the way.
    source = TreeSource(store_root, built, store_root, options.verify, NO_VERIFY_HINT)
    # Paths nix-prefix retargeted before (an installed prefix, a cache it wrote) hold
    # the store dir slash-padded in their binaries: that spelling is what travels.
    built.embedded_store_dir = padded_spelling(source) or built.store_dir
    # Packed from the store, nothing is recomputed: the same-length retarget, if any.
    target = choose_retarget(built, options.retarget_to or closure.store_dir, derivations=False)
    chunk_size = options.chunk_size or default_chunk_size(built.total_nar_size)

    extra = drv_outputs(store_root, closure.store_dir, entries) if options.derivations else []
    candidates = refmap.candidates([e.name for e in entries], extra)

    def write_payload(payload: PayloadWriter) -> Manifest:
        # One tar stream of every path, in order; the payload writer cuts it into
        # chunks and compresses them in threads.
        with payload.stream(chunk_size, payload_jobs(options, chunk_size)) as tar:
            packer = _Packer(tar, target, built, progress,
                             None if options.mixed_systems else built.system, candidates)
            _pack_paths(source, packer)
        payload.ref_map = refmap.RefMap(packer.embedded, packer.refs, extra).to_bytes()
        # After a same-length retarget the paths cannot be recomputed exactly.
        return target.manifest.with_nar_info(packer.infos).replaced(
            hidden_refs=packer.hidden, derivations=options.derivations and not target.rewrites)

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


def _pack_paths(source: TreeSource, packer: _Packer) -> None:
    """Every path of ``source``, in its manifest's order, into ``packer``'s tar stream
    (one at a time: the stream is one).  An ELF program or library for another machine
    than the closure's stops the build."""
    try:
        source.replay([e.name for e in source.manifest.paths], packer.open_path)
    except elf.MachineMismatch as e:
        raise BuildError(f"{source.manifest.store_dir}/{packer.current}: {e}: the closure "
                         "mixes systems", "build it from one system's paths, or pass "
                         "--allow-mixed-systems if that is meant") from None


class _Packer:
    """Packs the store paths a source replays into one tar stream: each retargeted,
    scanned for hidden references, its ELF machines checked (with ``system``), counted
    (``progress``), and the references of what is packed mapped; keeps what each path
    found once the source has checked and finished it."""

    def __init__(self, tar: archive.TarWriter, target: retarget.Retarget, manifest: Manifest,
                 progress: Callable[[int], object] | None, system: str | None,
                 candidates: frozenset[bytes]) -> None:
        self.tar, self.target, self.progress, self.system = tar, target, progress, system
        self.store_dir = manifest.store_dir
        self.nar_hashes = {e.name: e.nar_hash for e in manifest.paths}  # as registered
        self.embedded = target.manifest.embedded_store_dir.encode()
        self.candidates = candidates
        self.hidden: list[str] = []
        self.infos: dict[str, tuple[str, int]] = {}
        self.refs: list[refmap.PathRefs] = []
        self.current = ""  # the path being read, for a MachineMismatch to name

    def open_path(self, name: str) -> Sink:
        """The sink of the store path ``name``: the tar stream's, and the checks'."""
        self.current = name
        self.tar.top = self.target.name(name)
        recorder = refmap.Recorder(name, self.embedded, self.candidates)
        packed = retarget.Retargeted(self.target, name, Tee(self.tar, recorder))
        scanner = HiddenReferenceScanner(self.store_dir.encode())
        machines = elf.Machines(self.system.partition("-")[0]) if self.system else None
        return _Then(lambda: self._found(name, packed, scanner, recorder), packed, scanner,
                     machines, Count(self.progress) if self.progress else None)

    def _found(self, name: str, packed: retarget.Retargeted,
               scanner: HiddenReferenceScanner, recorder: refmap.Recorder) -> None:
        self.hidden += [name + found for found in scanner.found]
        info = packed.nar_info()  # when the retarget rewrote it
        if info is not None:
            self.infos[packed.name] = info
        nar_hash = info[0] if info is not None else self.nar_hashes[name]
        self.refs.append(recorder.result(hashes.parse_sha256(nar_hash)))


class _Then(Tee):
    """A Tee that calls ``then`` once every sink is finished."""

    def __init__(self, then: Callable[[], None], *sinks: Sink | None) -> None:
        Tee.__init__(self, *sinks)
        self._then = then

    def finish(self) -> None:
        Tee.finish(self)
        self._then()
