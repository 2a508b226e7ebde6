"""Crafting hostile installer files, and measuring what a process did with one.

An installer is made from tar entries (``installer_of``: real NAR hashes, real
seal, signed if keys are given), then changed member by member and sealed
again (``rezip``), as an attacker would who hands over a file: only the deeper
checks stand in the way.  ``measured`` (tests/support.py) runs a command and
reports its peak RSS and the bytes it wrote, from the kernel.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from nix_prefix.builder.pack import PayloadWriter, preamble_sha256, write_installer_file
from nix_prefix.payload import archive, hashes, nar, seal
from nix_prefix.payload.machine import host_system
from nix_prefix.payload.manifest import Manifest, PathEntry
from nix_prefix.payload.signing import SecretKey

from .support import Measured, measured  # noqa: F401 (the hostile tests' measure)
from tests.unit.payload.test_archive import tar_of

Entry = tuple  # (tarfile.TarInfo, bytes | None), as test_archive makes them
NIX_PREFIX = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "nix-prefix"


def write_chunk(payload: PayloadWriter, data: bytes, paths: list[str],
                start: archive.Cut | None = None) -> None:
    """One chunk of tar bytes as they are, holding ``paths`` from ``start``, compressed
    and added as ``PayloadWriter.stream`` adds each chunk it cuts: crafted (hostile)
    payloads, which no installer needs to write."""
    payload._add_compressed(*payload._compress(bytearray(data), paths, start))


def installer_of(out: Path, store_dir: str, entries: Sequence[Entry], names: list[str], *,
                 keys: Sequence[SecretKey] = (), nix_store: str | None = None,
                 nar_sizes: dict[str, int] | None = None) -> Manifest:
    """A complete, sealed installer whose one chunk is the tar of ``entries`` (store paths
    ``names``), each path's NAR hash and size computed from those entries (or the size
    given in ``nar_sizes``)."""
    tar = tar_of(*entries)
    hashers: dict[str, nar.NarHasher] = {}

    def opened(name: str) -> nar.NarHasher:
        hashers[name] = nar.NarHasher()
        return hashers[name]

    archive.unpack(io.BytesIO(tar), names, opened)
    paths = [PathEntry(n, hashes.format_sha256(hashers[n].digest()),
                       (nar_sizes or {}).get(n, hashers[n].size), []) for n in names]
    manifest = Manifest(store_dir, host_system(), "xz", paths, [], names, nix_store=nix_store,
                        preamble_sha256=preamble_sha256())

    def write_payload(payload: PayloadWriter) -> None:
        write_chunk(payload, tar, names)

    return write_installer_file(out, manifest, "xz", 0, write_payload, sign_keys=keys)


def _copy(src: IO[bytes], dst: IO[bytes]) -> None:
    while data := src.read(1 << 20):
        dst.write(data)


def rezip(src: Path, out: Path, *, writers: dict[str, Callable[[IO[bytes]], None]] | None = None,
          methods: dict[str, int] | None = None) -> None:
    """``src`` with members rewritten by ``writers`` (name -> write the new bytes) or stored
    with another zip method (``methods``), the rest copied as they are; sealed again."""
    writers, methods = writers or {}, methods or {}
    with open(src, "rb") as f:
        head = f.read(seal.HEAD_SIZE)
    with zipfile.ZipFile(src) as zin, open(out, "wb") as f:
        f.write(seal.masked(head))
        with zipfile.ZipFile(f, "w") as zout:
            for info in zin.infolist():
                new = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                new.compress_type = methods.get(info.filename, zipfile.ZIP_STORED)
                new.external_attr = info.external_attr
                with zout.open(new, "w", force_zip64=True) as member:
                    if info.filename in writers:
                        writers[info.filename](member)
                    else:
                        with zin.open(info) as old:
                            _copy(old, member)
    seal.seal(str(out))
    os.chmod(out, 0o755)


