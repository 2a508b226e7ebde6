"""The parallel pipeline: chunks packed and unpacked in threads, same bytes, same store."""

from __future__ import annotations

import subprocess
import threading
import zipfile
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.localnix import prefix_env
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.payload import seal
from nix_prefix.payload.container import CorruptInstaller, InstallerFile

from tests.support import Built, build_small, run_installer, tree_snapshot

# Small enough that the store paths, and files in them, are cut across chunks.
CHUNK_SIZE = 4096


@pytest.fixture
def chunked(world_dir: Path) -> Built:
    """The small closure cut into chunks of CHUNK_SIZE tar bytes."""
    built = build_small(world_dir)
    out = world_dir / "chunked.sh"
    build_installer(read_closure(built.closure_info), out,
                    BuildOptions(chunk_size=CHUNK_SIZE, jobs=3))
    built.installer = out
    return built


def test_jobs_do_not_change_the_installer(chunked: Built, world_dir: Path) -> None:
    serial = world_dir / "serial.sh"
    build_installer(read_closure(chunked.closure_info), serial,
                    BuildOptions(chunk_size=CHUNK_SIZE, jobs=1))
    source = InstallerFile(str(serial))
    try:
        m = source.manifest
        assert len(m.chunks) > 2 * len(m.paths) >= 6
        starts = [c.start for c in m.chunks if c.start is not None]
        assert any(s.offset is not None for s in starts)  # a file cut in pieces
        assert any(len(span) > 2 for span in m.chunk_spans().values())
        assert all(c.tar_size <= CHUNK_SIZE + 3 * 512 for c in m.chunks)
    finally:
        source.close()
    assert serial.read_bytes() == chunked.installer.read_bytes()


def test_parallel_and_serial_installs_are_the_same(chunked: Built) -> None:
    chunked.move_build_away()
    prefix = chunked.prefix
    proc = run_installer(chunked.installer, "-y", "-q", "-j", "1", "-p", str(prefix))
    assert proc.returncode == 0, proc.stderr
    serial = _store_snapshot(prefix)
    serial_prefix = prefix.rename(prefix.with_name("serial"))
    proc = run_installer(chunked.installer, "-y", "-q", "-j", "4", "-p", str(prefix))
    assert proc.returncode == 0, proc.stderr
    assert _store_snapshot(prefix) == serial
    assert len(serial) > len(chunked.roots)
    env = prefix_env(prefix, home=prefix / "var" / "nix-prefix" / "home")
    verify = subprocess.run(["nix-store", "--verify", "--check-contents"], env=env,
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and "corrupt" not in verify.stderr, verify.stderr
    assert _store_snapshot(serial_prefix) == serial


def _store_snapshot(prefix: Path) -> dict[str, tuple]:
    """The store paths as installed (Nix's own .links dir left out)."""
    return {k: v for k, v in tree_snapshot(prefix / "store").items()
            if not k.startswith(".links")}


def _corrupt_chunk(installer: Path, index: int, out: Path) -> str:
    """A copy of ``installer`` with one byte of chunk ``index`` flipped and the seal
    made anew, so that only the chunk's own checks can notice."""
    data = bytearray(installer.read_bytes())
    with zipfile.ZipFile(installer) as zf:
        info = sorted((i for i in zf.infolist() if i.filename.startswith("payload/")),
                      key=lambda i: i.filename)[index]
    with open(installer, "rb") as f:
        f.seek(info.header_offset + 26)
        start = info.header_offset + 30 + sum(int.from_bytes(f.read(2), "little")
                                              for _ in range(2))
    data[start + info.compress_size // 2] ^= 0x55
    out.write_bytes(seal.masked(bytes(data)))
    seal.seal(str(out))
    return info.filename


def test_a_corrupt_chunk_stops_every_worker_and_writes_nothing(chunked: Built,
                                                               world_dir: Path) -> None:
    chunked.move_build_away()
    damaged = world_dir / "damaged.sh"
    name = _corrupt_chunk(chunked.installer, 2, damaged)
    proc = run_installer(damaged, "-y", "-j", "3", "-p", str(chunked.prefix))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 3 and len(lines) == 1, proc.stderr
    assert name in lines[0] and "Traceback" not in proc.stderr
    store = chunked.prefix / "store"
    assert not store.exists() or list(store.iterdir()) == []

    before = threading.active_count()
    source = InstallerFile(str(damaged))
    try:
        with pytest.raises(CorruptInstaller, match=name):
            source.unpack(lambda _: _Nothing(), jobs=3)
    finally:
        source.close()
    assert threading.active_count() == before


class _Nothing:
    def __getattr__(self, name):
        return lambda *args: None


def test_check_verifies_in_parallel(chunked: Built, world_dir: Path) -> None:
    proc = run_installer(chunked.installer, "--check", "-j", "3")
    assert proc.returncode == 0, proc.stderr
    damaged = world_dir / "damaged.sh"
    _corrupt_chunk(chunked.installer, 1, damaged)
    proc = run_installer(damaged, "--check", "-j", "3")
    assert proc.returncode == 3, proc.stderr


def test_bad_jobs_value_is_a_usage_error(chunked: Built) -> None:
    proc = run_installer(chunked.installer, "--list", "-j", "0")
    assert proc.returncode == 2 and "not a positive number" in proc.stderr

