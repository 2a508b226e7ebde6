"""Hostile payloads inside real installer files never write outside the staging dir.

Each crafted chunk (the archive-level corpus of
tests/unit/payload/test_archive.py plus attacks
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

from nix_prefix.builder.pack import PayloadWriter, preamble_sha256, write_installer_file
from nix_prefix.payload import nix32
from nix_prefix.payload.archive import Cut
from nix_prefix.payload.manifest import Manifest, PathEntry

from tests.hostile_files import write_chunk
from tests.support import run_installer, tree_snapshot
from tests.unit.payload.test_archive import (
    HOSTILE,
    TOP,
    TWO,
    entry,
    file,
    good_entries,
    inserted,
    tar_of,
)

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
    # The real preamble's hash: the installer gets as far as the payload.
    manifest = Manifest(str(prefix / "store"), _system(), "xz", paths, [], [TOP, TWO],
                        preamble_sha256=preamble_sha256())

    def write_payload(payload: PayloadWriter) -> None:
        write_chunk(payload, chunk, [TOP, TWO])

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


# -- a store path cut across two chunks whose pieces do not join up ------------------------------

def _split_chunks(starts: list[Cut], swap: bool = False,
                  drop: int | None = None) -> list[tuple[bytes, list[str], Cut | None]]:
    """TOP/a (12 bytes of contents) cut at 4 and at 8 bytes into three chunks, the
    chunks after the first claiming to start at ``starts``; then two swapped, or
    one dropped."""
    whole = tar_of(entry(TOP), file(TOP + "/a", b"0123456789ab"), file(TWO, b"two"))
    at = 1024  # TOP's header, TOP/a's header: then its contents
    chunks = [(whole[:at + 4], [TOP], None), (whole[at + 4:at + 8], [TOP], starts[0]),
              (whole[at + 8:], [TOP, TWO], starts[1])]
    if swap:
        chunks[1], chunks[2] = chunks[2], chunks[1]
    if drop is not None:
        del chunks[drop]
    return chunks


def _cuts(first: int = 4, second: int = 8, size: int = 12) -> list[Cut]:
    return [Cut(TOP, "a", "regular", first, size), Cut(TOP, "a", "regular", second, size)]


SPLIT_ATTACKS = {
    "a piece missing": lambda: _split_chunks(_cuts(), drop=1),
    "pieces out of order": lambda: _split_chunks(_cuts(), swap=True),
    "overlapping pieces": lambda: _split_chunks(_cuts(second=6)),
    "pieces that disagree in size": lambda: _split_chunks([_cuts()[0], _cuts(size=14)[1]]),
}


@pytest.mark.parametrize("case", sorted(SPLIT_ATTACKS))
def test_split_pieces_that_do_not_join_up_change_nothing(case: str, world_dir: Path) -> None:
    prefix = world_dir / "p"
    chunks = SPLIT_ATTACKS[case]()
    two = next(i for i, (_, names, _) in enumerate(chunks) if TWO in names)
    paths = [PathEntry(TOP, FAKE_HASH, 1000, []), PathEntry(TWO, FAKE_HASH, 100, [], "", two)]
    # The real preamble's hash: the installer gets as far as the payload.
    manifest = Manifest(str(prefix / "store"), _system(), "xz", paths, [], [TOP, TWO],
                        preamble_sha256=preamble_sha256())

    def write_payload(payload: PayloadWriter) -> None:
        for data, names, start in chunks:
            write_chunk(payload, data, names, start)

    installer = world_dir / "hostile.sh"
    write_installer_file(installer, manifest, "xz", 0, write_payload)
    for jobs in ("1", "2"):
        proc = run_installer(installer, "-y", "-j", jobs)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 3, proc.stderr
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        store = prefix / "store"
        assert not store.exists() or list(store.iterdir()) == [], jobs
