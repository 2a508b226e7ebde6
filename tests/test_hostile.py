"""Hostile payloads inside real installer files never write outside the staging dir.

Each crafted chunk (the archive-level corpus of test_archive.py plus attacks
that aim at the file system: a symlink out of the store followed by an entry
written through it, a hard link to a file outside, names with NUL) is
packed through the payload writer into a complete, correctly sealed
installer, which is then run.  It must exit non-zero with one clear line,
leave no store path and no staging dir, and leave a canary tree outside the
prefix exactly as it was, mtimes included.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest

from nix_prefix.builder.pack import PayloadWriter, write_installer_file
from nix_prefix.payload import nix32
from nix_prefix.payload.manifest import Manifest, PathEntry

from .support import run_installer, tree_snapshot
from .test_archive import HOSTILE, TOP, TWO, entry, file, good_entries, inserted, tar_of

FAKE_HASH = "sha256:" + nix32.encode(hashlib.sha256(b"not checked").digest())


def _through_symlink(canary: Path) -> bytes:
    e = good_entries()
    return tar_of(e[0], entry(TOP + "/out", tarfile.SYMTYPE, linkname=str(canary)),
                  file(TOP + "/out/owned", b"pwned"), *e[1:])


def _hard_link_out(canary: Path) -> bytes:
    return inserted(2, entry(TOP + "/b", tarfile.LNKTYPE, linkname=str(canary / "secret")))


def _pax_nul(canary: Path) -> bytes:
    info, data = file(TOP + "/harmless")
    info.pax_headers = {"path": TOP + "/a\0/../../" + str(canary)}
    e = good_entries()
    return tar_of(e[0], (info, data), *e[1:], fmt=tarfile.PAX_FORMAT)


def _size_lies_short(canary: Path) -> bytes:
    data = bytearray(tar_of(*good_entries()))
    # The header of TOP/a says 1 byte; claim 0 so its data is read as a header.
    info, _ = file(TOP + "/a", b"")
    header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    data[512:1024] = header
    return bytes(data)


FS_ATTACKS = {
    "symlink out of the store, then a file through it": _through_symlink,
    "hard link to a file outside": _hard_link_out,
    "NUL in a pax name": _pax_nul,
    "size that lies (shorter than the data)": _size_lies_short,
}
CASES = sorted(HOSTILE) + sorted(FS_ATTACKS)


def hostile_installer(out: Path, prefix: Path, chunk: bytes) -> None:
    """A complete, sealed installer whose only chunk is ``chunk``."""
    paths = [PathEntry(TOP, FAKE_HASH, 1000, []), PathEntry(TWO, FAKE_HASH, 100, [])]
    manifest = Manifest(str(prefix / "store"), _system(), "xz", paths, [], [TOP, TWO])

    def write_payload(payload: PayloadWriter) -> None:
        with payload.chunk(paths) as tar:
            tar.raw(chunk)

    write_installer_file(out, manifest, "xz", 0, write_payload)


def _system() -> str:
    from nix_prefix.payload.machine import host_system
    return host_system()


@pytest.mark.parametrize("case", CASES)
def test_hostile_payload_changes_nothing(case: str, world_dir: Path) -> None:
    canary = world_dir / "canary"
    canary.mkdir()
    (canary / "secret").write_text("keep me\n")
    (canary / "dir").mkdir()
    (canary / "dir" / "file").write_text("and me\n")
    before = tree_snapshot(canary)
    prefix = world_dir / "p"
    chunk = FS_ATTACKS[case](canary) if case in FS_ATTACKS else HOSTILE[case]()
    installer = world_dir / "hostile.sh"
    hostile_installer(installer, prefix, chunk)

    proc = run_installer(installer, "-y")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert tree_snapshot(canary) == before
    store = prefix / "store"
    assert not store.exists() or not list(store.iterdir()), list(store.iterdir())
