"""Pack a checked closure into one installer file.

The file is the sh preamble followed by a zip application whose members are
the installer code (``nix_prefix/installer``, ``nix_prefix/payload``), the
payload chunks (``payload/NNNN.tar.xz`` or ``.tar.zst``) and ``manifest.json``
(last).  Everything is written in a fixed order with fixed metadata, so two
builds of the same closure are byte-identical.

Each store path is read once: the same walk feeds the tar writer and the NAR
hasher, so verifying the registration costs no second pass.
"""

from __future__ import annotations

import hashlib
import os
import platform
import stat
import tempfile
import threading
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .. import installer as installer_pkg
from .. import payload as payload_pkg
from ..payload import archive, codecs, hashes, nar, relocate, seal
from ..payload.manifest import Chunk, Manifest, PathEntry
from . import nixchoice
from .closure_info import Closure
from .compress import compressor, default_jobs
from .errors import BuildError

PREAMBLE_SH = Path(__file__).with_name("preamble.sh")
DEFAULT_CHUNK_SIZE = 64 << 20  # NAR bytes per chunk: whole paths, at least one
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_BUFFER = 1 << 20
_MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}
T = TypeVar("T")

MAIN_PY = b"""\
import sys
from nix_prefix.installer.main import main
main(sys.argv[0], sys.argv[1:])
"""


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


def host_system() -> str:
    """The Nix system name of this machine (e.g. ``x86_64-linux``)."""
    machine = platform.machine().lower()
    return f"{_MACHINES.get(machine, machine)}-{platform.system().lower()}"


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
        for hidden in payload.write_chunks(groups, fill, options.jobs):
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
    """Write preamble, code, payload (by ``write_payload``) and manifest to ``out``.

    Atomic: the file appears complete under its name or not at all.  Compressed
    chunks wait for their turn in anonymous temporary files beside ``out``.
    """
    check_output(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(preamble())
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
                _write_code(zf)
                payload = PayloadWriter(zf, manifest, compression, level, out.parent)
                write_payload(payload)
                payload.finish()
                zf.writestr(_zip_info("manifest.json"), manifest.to_json())
            f.flush()
        seal.seal(str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        check_output(out)  # again: it may have appeared while the payload was written
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3
    info.external_attr = 0o644 << 16
    return info


def _write_code(zf: zipfile.ZipFile) -> None:
    """Embed the installer and payload packages (Python 3.6+, stdlib only)."""
    zf.writestr(_zip_info("__main__.py"), MAIN_PY)
    zf.writestr(_zip_info("nix_prefix/__init__.py"), b"")
    for pkg in (installer_pkg, payload_pkg):
        pkg_dir = Path(pkg.__file__).parent
        sub = pkg.__name__.rpartition(".")[2]
        for src in sorted(pkg_dir.glob("*.py")):
            zf.writestr(_zip_info(f"nix_prefix/{sub}/{src.name}"), src.read_bytes())


class _ChunkSink:
    """Buffers tar bytes, compresses them into a file, hashes the result."""

    def __init__(self, member, compressor) -> None:
        self._member = member
        self._compressor = compressor
        self._buf = bytearray()
        self.sha256 = hashlib.sha256()
        self.size = 0

    def __call__(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= _BUFFER:
            self._emit(self._compressor.compress(bytes(self._buf)))
            self._buf.clear()

    def _emit(self, data: bytes) -> None:
        if data:
            self._member.write(data)
            self.sha256.update(data)
            self.size += len(data)

    def finish(self) -> None:
        self._emit(self._compressor.compress(bytes(self._buf)))
        self._buf.clear()
        self._emit(self._compressor.flush())


def _chunk_groups(entries: list[PathEntry], chunk_size: int) -> list[list[PathEntry]]:
    groups: list[list[PathEntry]] = [[]]
    filled = 0
    for entry in entries:
        if groups[-1] and filled + entry.nar_size > chunk_size:
            groups.append([])
            filled = 0
        groups[-1].append(entry)
        filled += entry.nar_size
    return groups


class PayloadWriter:
    """Writes the payload chunks of ``manifest`` into the zip: all at once
    (``write_chunks``, in threads) or one ``chunk()`` at a time; either way each
    is compressed into a temporary file in ``tmp_dir`` and then copied in."""

    def __init__(self, zf: zipfile.ZipFile, manifest: Manifest, compression: str,
                 level: int | None, tmp_dir: Path | None = None) -> None:
        self._zf = zf
        self._manifest = manifest
        self._compression = compression
        self._level = level
        self._tmp_dir = tmp_dir
        self._hash = hashlib.sha256()
        self._longest = 0

    def write_chunks(self, groups: list[list[PathEntry]],
                     fill: Callable[[list[PathEntry], archive.TarWriter], T],
                     jobs: int | None = None) -> Iterator[T]:
        """Write one chunk per group, ``fill(group, tar)`` packing each, in threads.

        The compressors (lzma, zstd) and sha256 release the GIL, so ``jobs``
        chunks are packed and compressed at once, each into an anonymous
        temporary file; they enter the zip in order, so the file is the same
        whatever the number of jobs.  Yields what ``fill`` returned, in order.
        """
        first = len(self._manifest.chunks)
        for offset, group in enumerate(groups):
            for entry in group:
                entry.chunk = first + offset
        jobs = jobs or default_jobs(self._compression, self._level)
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            pending: deque = deque()
            try:
                for group in groups:
                    # At most jobs chunks compressing and one waiting to be copied.
                    if len(pending) > jobs:
                        yield self._add_compressed(*pending.popleft().result())
                    pending.append(pool.submit(self._compress_group, group, fill))
                while pending:
                    yield self._add_compressed(*pending.popleft().result())
            finally:
                for future in pending:
                    future.cancel()
                for future in pending:
                    if not future.cancelled():
                        with suppress(BaseException):
                            future.result()[0].close()

    def _compressor(self):
        return compressor(self._compression, self._level, self._manifest.system)

    @contextmanager
    def _spooled_chunk(self) -> Iterator[tuple[archive.TarWriter, object, _ChunkSink]]:
        """A tar writer into a compressed anonymous temporary file (closed on error)."""
        spool = tempfile.TemporaryFile(dir=self._tmp_dir)
        try:
            sink = _ChunkSink(spool, self._compressor())
            tar = archive.TarWriter(sink)
            yield tar, spool, sink
            tar.close()
            sink.finish()
        except BaseException:
            spool.close()
            raise

    def _compress_group(self, group: list[PathEntry], fill: Callable) -> tuple:
        with self._spooled_chunk() as (tar, spool, sink):
            result = fill(group, tar)
        return spool, sink, tar.longest, group, result

    def _add_compressed(self, spool, sink: _ChunkSink, longest: int, group: list[PathEntry],
                        result: T) -> T:
        index = len(self._manifest.chunks)
        info = _zip_info(f"payload/{index:04d}{codecs.EXTENSIONS[self._compression]}")
        with spool, self._zf.open(info, "w", force_zip64=True) as member:
            spool.seek(0)
            while data := spool.read(_BUFFER):
                member.write(data)
                self._hash.update(data)
        self._longest = max(self._longest, longest)
        self._manifest.chunks.append(Chunk(info.filename, sink.size, sink.sha256.hexdigest(),
                                           sum(e.nar_size for e in group)))
        return result

    @contextmanager
    def chunk(self, group: list[PathEntry]) -> Iterator[archive.TarWriter]:
        """A tar writer for the next chunk, which will hold the paths of ``group``
        (one chunk at a time, for callers that fill it as they read another file)."""
        index = len(self._manifest.chunks)
        for entry in group:
            entry.chunk = index
        with self._spooled_chunk() as (tar, spool, sink):
            yield tar
        self._add_compressed(spool, sink, tar.longest, group, None)

    def finish(self) -> None:
        """Record the payload's size, hash and longest name in the manifest."""
        m = self._manifest
        m.payload_size = sum(c.size for c in m.chunks)
        m.payload_sha256 = self._hash.hexdigest()
        m.longest_path = self._longest


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
