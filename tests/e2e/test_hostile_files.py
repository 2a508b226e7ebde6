"""Hostile installer files (issue 28, items 1-4): nothing unbounded happens before
the file is verified.

Every file here is a real installer changed the way an attacker would change it
and sealed again, so only the deeper checks stand in the way; every bound is
asserted on what the kernel measured of the process (peak RSS, bytes written or
read), not on a mock.  The runs over large bombs (hundreds of MiB decoded, an
8 GiB sparse file) are marked slow.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import lzma
import os
import re
import stat
import subprocess
import tarfile
import zipfile
from pathlib import Path
from typing import IO

import pytest
from nacl.signing import SigningKey

from nix_prefix.builder.errors import BuildError
from nix_prefix.payload import container, nix32, trust
from nix_prefix.payload.container import CorruptInstaller, InstallerFile
from nix_prefix.payload.manifest import Chunk, Manifest, PathEntry
from nix_prefix.payload.signing import SecretKey
from nix_prefix.payload.tree import Sink

from tests.hostile_files import NIX_PREFIX, Measured, installer_of, measured, rezip
from tests.support import tmpfs
from tests.unit.payload.test_archive import TOP, entry, file, tar_of

MiB = 1 << 20
# What a refused file may cost at most: a Python with the builder's imports is
# ~60 MiB; the bombs below cost 600 MiB and more when they are read.
RSS_BOUND = 200 * MiB
BOMB = 384 * MiB  # the manifest's padding, compressed to ~0.4 MiB
FILE_SIZE = 64 * 1024  # TOP/a: what the manifest announces


def _keys() -> tuple[SecretKey, str]:
    signing_key = SigningKey.generate()
    public = bytes(signing_key.verify_key)
    return (SecretKey("test-1", bytes(signing_key) + public),
            "test-1:" + base64.b64encode(public).decode())


# Long enough for any test dir's prefix to be reached by a same-length retarget.
STORE_DIR = "/tmp/np-hostile-files-" + "x" * 60 + "/store"


@pytest.fixture(scope="module")
def signed(module_dir: Path) -> tuple[Path, str]:
    """A signed installer of one store path (TOP, a directory with a 64 KiB file) for
    STORE_DIR, and the public key that signed it."""
    key, public = _keys()
    out = module_dir / "signed.sh"
    installer_of(out, STORE_DIR,
                 [entry(TOP), file(TOP + "/a", b"x" * FILE_SIZE)], [TOP], keys=[key])
    return out, public


def _padded_manifest(source: Path, padding: int) -> object:
    """A writer of ``source``'s manifest.json with ``padding`` spaces after its first
    brace: the same JSON, as large as one likes."""
    with zipfile.ZipFile(source) as zf:
        original = zf.read(container.MANIFEST)

    def write(member: IO[bytes]) -> None:
        member.write(original[:1])
        spaces = b" " * MiB
        for _ in range(padding // MiB):
            member.write(spaces)
        member.write(original[1:])
    return write


@pytest.fixture(scope="module")
def bomb(signed: tuple[Path, str], module_dir: Path) -> Path:
    """The signed installer with its manifest padded by BOMB bytes and deflated:
    the file grows by some 400 KiB."""
    out = module_dir / "bomb.sh"
    rezip(signed[0], out, writers={container.MANIFEST: _padded_manifest(signed[0], BOMB)},
          methods={container.MANIFEST: zipfile.ZIP_DEFLATED})
    assert out.stat().st_size < signed[0].stat().st_size + 2 * MiB
    return out


def _assert_refused(m: Measured, pattern: str, *, code: int) -> None:
    """It ended with ``code`` and one error line (after what an install says on its way)
    matching ``pattern``."""
    assert not m.timed_out, "it did not end"
    assert m.returncode == code, m.stderr
    errors = [line for line in m.lines() if "error:" in line]
    assert "Traceback" not in m.stderr and len(errors) == 1, m.stderr
    assert errors[0] == m.lines()[-1] and re.search(pattern, errors[0]), m.stderr


# The damage a tampered chunk is refused for: the first bound it reaches.
DAMAGE = r"decodes to more than its \d+ bytes \(tarSize|larger than its narSize"


# -- 1. compressed-member bombs --------------------------------------------------------------


def _serve(path: Path) -> list[str]:
    return [str(NIX_PREFIX), "serve", str(path), "--listen", "127.0.0.1:0"]


# The command, and its exit code for a damaged file (the builder's serve: 1).
BOMB_RUNS = {
    "nix-prefix inspect": (lambda p, key: [str(NIX_PREFIX), "inspect", str(p)], 3),
    "sh FILE --info": (lambda p, key: ["/bin/sh", str(p), "--info"], 3),
    "sh FILE --check --trusted-key": (lambda p, key: ["/bin/sh", str(p), "--check",
                                                      "--trusted-key", key], 3),
    "nix-prefix serve": (lambda p, key: _serve(p), 1),
}


@pytest.mark.slow
@pytest.mark.parametrize("run", sorted(BOMB_RUNS))
def test_a_compressed_manifest_is_refused_in_bounded_memory(
        run: str, bomb: Path, signed: tuple[Path, str]) -> None:
    command, code = BOMB_RUNS[run]
    m = measured(command(bomb, signed[1]), timeout=120)
    _assert_refused(m, "manifest.json is compressed", code=code)
    assert m.max_rss < RSS_BOUND, f"peak RSS {m.max_rss / MiB:.0f} MiB"


@pytest.mark.slow
def test_members_stored_as_they_are_are_read_whole(signed: tuple[Path, str]) -> None:
    """The intact file opens: what the bounds let through (the baseline of the above)."""
    m = measured(["/bin/sh", str(signed[0]), "--check", "--trusted-key", signed[1]])
    assert m.returncode == 0, m.stderr
    assert m.max_rss < RSS_BOUND


def test_a_manifest_larger_than_the_bound_is_refused_unread(
        signed: tuple[Path, str], world_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stored, but larger than MAX_MANIFEST (lowered here, so the file stays small):
    refused from its size before a byte of it is read."""
    out = world_dir / "large.sh"
    rezip(signed[0], out, writers={container.MANIFEST: _padded_manifest(signed[0], 2 * MiB)})
    monkeypatch.setattr(container, "MAX_MANIFEST", MiB)
    with pytest.raises(CorruptInstaller, match="manifest.json is .* bytes, more than"):
        InstallerFile(str(out))


def test_a_zip_directory_larger_than_the_bound_is_refused_unread(
        signed: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """zipfile reads the central directory whole (an object per member): its size is
    checked from the end record first (lowered here: the real one is 16 MiB)."""
    monkeypatch.setattr(trust, "MAX_DIRECTORY", 1000)  # the bound's home (container uses it)
    with pytest.raises(CorruptInstaller, match="zip directory is .* bytes, more than the 1000"):
        InstallerFile(str(signed[0]))


def test_build_refuses_a_manifest_no_reader_would_take(
        world_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(container, "MAX_MANIFEST", 1000)
    with pytest.raises(BuildError, match="the manifest would be .* bytes, more than the 1000"):
        installer_of(world_dir / "big.sh", STORE_DIR, [entry(TOP), file(TOP + "/a")], [TOP])
    assert not (world_dir / "big.sh").exists()


# -- 2. a tampered chunk is bounded by the sizes the manifest announces --------------------------


def _bomb_chunk(size: int) -> bytes:
    """The xz of a tar whose TOP/a is ``size`` zero bytes (instead of 64 KiB): a few
    KiB of chunk that unpacks to anything."""
    head = tar_of(entry(TOP), file(TOP + "/a", b""))
    # TOP/a's header with the size changed, then the zeros (tar pads with zeros anyway).
    info = tarfile.TarInfo(TOP + "/a")
    info.size, info.mode, info.mtime = size, 0o444, 1
    header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    compressor = lzma.LZMACompressor(preset=1)
    parts = [compressor.compress(head[:512] + header)]
    zeros = bytes(MiB)
    for _ in range(size // MiB):
        parts.append(compressor.compress(zeros))
    parts.append(compressor.compress(bytes(2 * 512)))  # the end-of-archive marker
    parts.append(compressor.flush())
    return b"".join(parts)


@pytest.fixture(scope="module")
def tampered(signed: tuple[Path, str], module_dir: Path) -> Path:
    """The signed installer with its one chunk replaced by one that unpacks TOP/a to
    256 MiB; manifest and signatures unchanged (so they no longer match the chunk)."""
    out = module_dir / "tampered.sh"
    chunk = _bomb_chunk(256 * MiB)

    rezip(signed[0], out, writers={_chunk_name(signed[0]): lambda m: m.write(chunk)})
    return out


def _chunk_name(installer: Path) -> str:
    with zipfile.ZipFile(installer) as zf:
        return next(n for n in zf.namelist() if n.startswith("payload/"))


@pytest.mark.slow
def test_a_tampered_chunk_writes_no_more_than_announced(
        tampered: Path, signed: tuple[Path, str], world_dir: Path) -> None:
    """On a disk with room for the announced sizes (and the installer's margin) but not
    for what the chunk unpacks to: exit 3 naming the damage, not a full disk, and
    little written."""
    where = world_dir / "small"
    where.mkdir()
    with tmpfs(where, "size=48m"):
        m = measured(["/bin/sh", str(tampered), "-y", "-p", str(where / "p"),
                      "--trusted-key", signed[1]], timeout=300)
        store = where / "p" / "store"
        left = list(store.iterdir()) if store.exists() else []
    _assert_refused(m, DAMAGE, code=3)
    assert "full" not in m.stderr
    assert m.written < 4 * MiB, f"{m.written / MiB:.1f} MiB written"
    assert left == [], left


@pytest.mark.slow
def test_cache_and_retarget_stop_at_the_announced_size(
        tampered: Path, world_dir: Path) -> None:
    """``cache`` (uncompressed NARs) writes nothing of the oversized path, ``retarget``
    holds none of it in memory."""
    m = measured([str(NIX_PREFIX), "cache", str(tampered), "-p", str(world_dir / "q"),
                  "-o", str(world_dir / "cache"), "--compression", "none"], timeout=300)
    _assert_refused(m, DAMAGE, code=1)
    assert m.written < 4 * MiB, f"{m.written / MiB:.1f} MiB written"
    m = measured([str(NIX_PREFIX), "retarget", str(tampered), "-p", str(world_dir / "q"),
                  "-o", str(world_dir / "out.sh")], timeout=300)
    _assert_refused(m, DAMAGE, code=1)
    assert m.max_rss < RSS_BOUND and m.written < 4 * MiB, (m.max_rss, m.written)


class _Written(Sink):
    """Counts the contents bytes that reach the caller's sink."""

    def __init__(self) -> None:
        self.bytes = 0

    def contents(self, data: bytes) -> None:
        self.bytes += len(data)


def test_a_path_stops_at_its_nar_size(world_dir: Path) -> None:
    """A manifest whose narSize is smaller than the path (an unsigned file may say
    anything, and its chunk agrees with it): not a byte of the file that does not fit
    reaches the sink."""
    again = world_dir / "lying.sh"
    installer_of(again, STORE_DIR, [entry(TOP), file(TOP + "/a", b"x" * FILE_SIZE)], [TOP],
                 nar_sizes={TOP: FILE_SIZE // 2})
    sink = _Written()
    source = InstallerFile(str(again))
    try:
        with pytest.raises(CorruptInstaller, match="larger than its narSize"):
            source.unpack(lambda name: sink)
    finally:
        source.close()
    assert sink.bytes == 0


def test_a_write_that_fails_inside_a_tampered_chunk_names_the_damage(
        signed: tuple[Path, str], world_dir: Path) -> None:
    """A full disk while a chunk streams: when the chunk is not the manifest's (here of
    the same size, other bytes), that is what is said."""
    class Full(Sink):
        def begin_directory(self, rel: bytes = b"") -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    other = lzma.compress(tar_of(entry(TOP), file(TOP + "/a", b"y" * FILE_SIZE)), preset=1)
    tampered = world_dir / "other.sh"
    rezip(signed[0], tampered, writers={_chunk_name(signed[0]): lambda m: m.write(other)})
    source = InstallerFile(str(tampered))
    try:
        with pytest.raises(CorruptInstaller, match="does not match its sha256"):
            source.unpack(lambda name: Full())
    finally:
        source.close()


# -- 4. nesting, FIFOs, devices, sparse files --------------------------------------------------


def test_a_deeply_nested_manifest_is_one_line(signed: tuple[Path, str],
                                              world_dir: Path) -> None:
    out = world_dir / "nested.sh"

    def write(member: IO[bytes]) -> None:
        member.write(b'{"format": "nix-prefix-manifest", "version": 3, "x": '
                     + b"[" * 200_000 + b"]" * 200_000 + b"}")
    rezip(signed[0], out, writers={container.MANIFEST: write})
    m = measured(["/bin/sh", str(out), "--info"])
    _assert_refused(m, "nested too deeply", code=3)


def _run_bounded(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(cmd)} hangs")


def _one_line(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _commands(source: Path, world_dir: Path) -> dict[str, list[str]]:
    q = str(world_dir / "q")
    return {
        "inspect": [str(NIX_PREFIX), "inspect", str(source)],
        "verify": [str(NIX_PREFIX), "verify", str(source)],
        "retarget": [str(NIX_PREFIX), "retarget", str(source), "-p", q,
                     "-o", str(world_dir / "out.sh")],
        "cache": [str(NIX_PREFIX), "cache", str(source), "-p", q,
                  "-o", str(world_dir / "cache")],
    }


@pytest.mark.parametrize("command", ["inspect", "verify", "retarget", "cache"])
def test_a_fifo_is_refused_before_anything_is_opened(command: str, world_dir: Path) -> None:
    fifo = world_dir / "fifo"
    os.mkfifo(fifo)
    proc = _run_bounded(_commands(fifo, world_dir)[command])
    _one_line(proc, "FIFO")
    assert not (world_dir / "cache").exists() and not (world_dir / "out.sh").exists()


@pytest.mark.parametrize("command", ["retarget", "cache"])
def test_dev_zero_is_named_for_what_it_is(command: str, world_dir: Path) -> None:
    proc = _run_bounded(_commands(Path("/dev/zero"), world_dir)[command])
    _one_line(proc, "character device")
    assert "does not exist" not in proc.stderr
    assert not (world_dir / "cache").exists()


@pytest.mark.slow
def test_a_file_longer_than_its_seal_is_refused_unread(signed: tuple[Path, str],
                                                       world_dir: Path) -> None:
    """8 GiB, sparse: refused from its size, not after hashing it all."""
    out = world_dir / "sparse.sh"
    out.write_bytes(signed[0].read_bytes())
    os.truncate(out, 8 << 30)
    out.chmod(out.stat().st_mode | stat.S_IXUSR)
    for cmd in (["/bin/sh", str(out), "--info"], [str(NIX_PREFIX), "verify", str(out)]):
        m = measured(cmd, timeout=300)
        _assert_refused(m, "longer than its seal says", code=3)
        assert m.read < 64 * MiB, f"{m.read / MiB:.0f} MiB read"


# -- 3. checking a manifest is linear in its paths ---------------------------------------------


class _Name(str):
    """A store path name that counts the comparisons made with it."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        _Name.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def _doc(count: int) -> dict:
    """A manifest document of ``count`` paths in one chunk, every name a fresh _Name
    (so that no lookup is answered by identity)."""
    names = [nix32.encode(hashlib.sha1(b"%d" % i).digest()) + f"-p{i}" for i in range(count)]
    nar_hash = "sha256:" + "0" * 52
    manifest = Manifest(STORE_DIR, "x86_64-linux", "xz", [PathEntry(n, nar_hash, 8, [])
                                                          for n in names],
                        [Chunk("payload/0000.tar.xz", 0, "0" * 64, 0, names)], names[:1])
    doc = json.loads(manifest.to_json())
    doc["chunks"][0]["paths"] = [_Name(n) for n in names]
    for p in doc["paths"]:
        p["name"] = _Name(p["name"])
    return doc


def test_manifest_checking_is_linear_in_its_paths() -> None:
    """Comparisons of names made while checking n and 4n paths: 4 times as many, not 16."""
    counts = []
    for n in (1000, 4000):
        doc = _doc(n)
        _Name.compared = 0
        Manifest._from_doc(doc)
        counts.append(_Name.compared)
    assert counts[1] < 6 * counts[0], counts
