"""builder/refmaps.py: the sidecar reference map of a master on disk, here a binary
cache dir (``CacheSource.ref_map``): made once beside the cache dir from its NARs,
read (not made) while it fits the narinfos, made again when stale, refused when it
lies; ``cache`` writes with it what the scan writes.  No Nix: a store made of plain
files, the caches written by ``nix-prefix cache``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nix_prefix.builder import refmaps
from nix_prefix.builder.cache import CacheOptions, write_cache
from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.fromcache import BinaryCache
from nix_prefix.builder.sources import CacheSource
from nix_prefix.payload import hashes, nar, refmap, registration
from nix_prefix.payload.registration import ValidPathInfo

LIB = "0c6kzph7l0dcbfmjap64f0czdafn3b7x-lib"
TOOL = "1b9p07z77phvv2hh6bb1wkbfzfz0ylbh-tool"
EXTRA = "2c4r9gbhi0ln0ycbvnf8h9lnc4bhzbh8-extra"


def closure(base: Path, names: tuple[str, ...] = (LIB, TOOL)) -> Path:
    """A closure made by hand at ``base/a-long-store-prefix/store``: a library, a tool
    (a binary naming the library's store path twice, a text script, a symlink) and
    optionally one more path; its closureInfo dir ``base/ci-N``."""
    store = base / "a-long-store-prefix" / "store"
    lib = f"{store}/{LIB}".encode()
    if not (store / LIB).exists():
        (store / LIB / "lib").mkdir(parents=True)
        (store / LIB / "lib" / "libx.so").write_bytes(
            b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 40 + b"\0RUNPATH=" + lib + b"/lib\0")
        (store / TOOL / "bin").mkdir(parents=True)
        (store / TOOL / "bin" / "tool").write_bytes(
            b"\x7fELF\x02\x01\x01\0" + lib + b"/lib\0" + b"\xff" * 9000 + lib + b"\0")
        (store / TOOL / "bin" / "run").write_text(f"#!/bin/sh\nexec {store}/{TOOL}/bin/tool\n")
        (store / TOOL / "lib").symlink_to(f"{store}/{LIB}/lib")
    if EXTRA in names and not (store / EXTRA).exists():
        (store / EXTRA).write_text(f"see {store}/{LIB}\n")
    refs = {LIB: [], TOOL: [LIB], EXTRA: [LIB]}
    infos = []
    for name in names:
        digest, size = nar.hash_path(str(store / name))
        infos.append(ValidPathInfo(f"{store}/{name}", hashes.format_sha256(digest), size, "",
                                   tuple(f"{store}/{r}" for r in refs[name])))
    ci = base / f"ci-{len(names)}"
    ci.mkdir(exist_ok=True)
    (ci / "registration").write_text(registration.format(infos))
    return ci


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The closure as a cache at its own store dir (the store dir spelt canonically in
    its NARs, as Nix writes it) and at a shorter one (slash-padded in binaries)."""
    base = tmp_path_factory.mktemp("refmaps")
    ci = closure(base)
    own = base / "own"
    write_cache([ci], str(read_closure(ci).store_dir)[:-len("/store")], own,
                CacheOptions(level=0))
    padded = base / "padded"
    write_cache([ci], str(base / "short"), padded, CacheOptions(level=0))
    return {"base": base, "ci": ci, "own": own, "padded": padded}


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def copied(cache: Path, to: Path) -> Path:
    """A copy of ``cache`` (no sidecar beside it yet)."""
    to.mkdir()
    for rel, data in files_of(cache).items():
        (to / rel).parent.mkdir(parents=True, exist_ok=True)
        (to / rel).write_bytes(data)
    return to


def nar_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The NARs BinaryCache reads from now on."""
    read: list[str] = []
    real = BinaryCache.fetch_nar

    def fetch_nar(self: BinaryCache, info, sink) -> None:
        read.append(info.name)
        real(self, info, sink)
    monkeypatch.setattr(BinaryCache, "fetch_nar", fetch_nar)
    return read


@pytest.mark.parametrize("kind", ["own", "padded"])
def test_a_cache_dir_gets_a_sidecar_beside_it_and_cache_writes_what_the_scan_writes(
        caches: dict[str, Path], kind: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cache = copied(caches[kind], tmp_path / "master")
    before = files_of(cache)
    q = "/q"
    write_cache([cache], q, tmp_path / "mapped", CacheOptions(level=0))
    sidecar = tmp_path / ("master" + refmap.SIDECAR_SUFFIX)
    assert refmaps.sidecar_of(cache) == sidecar and sidecar.exists()
    assert files_of(cache) == before  # beside the cache dir, not in what it publishes
    refs = refmap.read_sidecar(str(sidecar))
    assert refs is not None
    assert sum(len(f.offsets) for p in refs.paths.values() for f in p.files.values()) >= 4
    with monkeypatch.context() as m:
        m.setattr(CacheSource, "ref_map", lambda self: None)  # the scan, as before
        write_cache([cache], q, tmp_path / "scanned", CacheOptions(level=0))
    assert files_of(tmp_path / "mapped") == files_of(tmp_path / "scanned")
    # and the retargeted cache is what a cache written from the closure itself is
    write_cache([caches["ci"]], q, tmp_path / "direct", CacheOptions(level=0))
    assert files_of(tmp_path / "mapped") == files_of(tmp_path / "direct")


def test_a_sidecar_that_fits_spares_reading_the_nars_at_start(
        caches: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = copied(caches["padded"], tmp_path / "master")
    with CacheSource(cache) as first:
        made = first.ref_map()
        embedded = first.manifest.embedded_store_dir
    assert embedded != first.manifest.store_dir  # slash-padded: told by reading the NARs
    read = nar_reads(monkeypatch)
    with CacheSource(cache) as again:
        assert again.manifest.embedded_store_dir == embedded  # told by the sidecar
        assert again.ref_map().to_bytes() == made.to_bytes()
    assert read == []


def test_a_cache_that_spells_the_store_dir_canonically_is_read_once_for_its_map(
        caches: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As Nix writes every cache: all its NARs are read at start to be sure no padded
    # spelling is there, and that one read makes the map too.
    cache = copied(caches["own"], tmp_path / "master")
    read = nar_reads(monkeypatch)
    with CacheSource(cache) as source:
        assert source.manifest.embedded_store_dir == source.manifest.store_dir
        refs = source.ref_map()
    assert sorted(read) == sorted([LIB, TOOL])
    assert refmap.read_sidecar(str(refmaps.sidecar_of(cache))).to_bytes() == refs.to_bytes()


def test_a_stale_sidecar_is_made_again_from_the_nars(
        caches: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = copied(caches["own"], tmp_path / "master")
    with CacheSource(cache) as source:
        source.ref_map()
    sidecar = refmaps.sidecar_of(cache)
    old = refmap.read_sidecar(str(sidecar))
    assert old is not None and len(old.order) == 2
    # The cache grows: one more path (its narinfo and NAR), as `cache` or `nix copy` adds it
    bigger = closure(caches["base"], (LIB, TOOL, EXTRA))
    store_dir = read_closure(bigger).store_dir
    write_cache([bigger], store_dir[:-len("/store")], cache, CacheOptions(level=0))
    read = nar_reads(monkeypatch)
    with CacheSource(cache) as source:
        refs = source.ref_map()
    assert len(refs.order) == 3 and sorted(set(read)) == sorted([LIB, TOOL, EXTRA])
    assert refmap.read_sidecar(str(sidecar)).to_bytes() == refs.to_bytes()  # saved
    # A sidecar of another cache (its NAR hashes differ) is made again too.
    lib = refs.paths[LIB]
    lib.nar_hash = bytes(32)
    assert refmap.write_sidecar(str(sidecar), refs)
    with CacheSource(cache) as source:
        assert source.ref_map().paths[LIB].nar_hash != bytes(32)
    # So is a damaged one (its own sha256 does not hold).
    sidecar.write_bytes(sidecar.read_bytes()[:-1] + b"x")
    with CacheSource(cache) as source:
        remade = source.ref_map().to_bytes()
    assert refmap.read_sidecar(str(sidecar)).to_bytes() == remade


def test_a_sidecar_that_lies_is_refused_in_one_line(
        caches: dict[str, Path], tmp_path: Path) -> None:
    cache = copied(caches["padded"], tmp_path / "master")
    with CacheSource(cache) as source:
        refs = source.ref_map()
    for p in refs.paths.values():  # each first occurrence moved a byte: it fits, and lies
        for f in p.files.values():
            f.offsets[0] += 1
    sidecar = refmaps.sidecar_of(cache)
    assert refmap.write_sidecar(str(sidecar), refs)
    with pytest.raises(refmap.RefMapError) as e:
        write_cache([cache], "/q", tmp_path / "lied", CacheOptions(level=0))
    assert e.value.exit_code == 3 and "\n" not in str(e.value)
    assert not list((tmp_path / "lied").glob("*.narinfo"))
    sidecar.unlink()  # deleted, it is made again
    write_cache([cache], "/q", tmp_path / "remade", CacheOptions(level=0))
    assert sidecar.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_beside_a_read_only_cache_dir_the_map_lives_in_memory(
        caches: dict[str, Path], tmp_path: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    cache = copied(caches["own"], parent / "master")
    parent.chmod(0o555)
    try:
        with CacheSource(cache) as source:
            assert source.ref_map() is source.ref_map()
        assert not refmaps.sidecar_of(cache).exists()
    finally:
        parent.chmod(0o755)


def test_where_no_sidecar_can_be_written_the_map_lives_in_memory(
        caches: dict[str, Path], tmp_path: Path) -> None:
    cache = copied(caches["padded"], tmp_path / "master")
    refmaps.sidecar_of(cache).mkdir()  # in the way, even of root
    with CacheSource(cache) as source:
        refs = source.ref_map()
        assert source.ref_map() is refs and len(refs.order) == 2
    write_cache([cache], "/q", tmp_path / "mapped", CacheOptions(level=0))
    write_cache([caches["ci"]], "/q", tmp_path / "direct", CacheOptions(level=0))
    assert files_of(tmp_path / "mapped") == files_of(tmp_path / "direct")


def test_the_sidecar_of_a_dir_named_dot_is_beside_it(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cache").mkdir()
    monkeypatch.chdir(tmp_path / "cache")
    assert refmaps.sidecar_of(Path(".")) == tmp_path / ("cache" + refmap.SIDECAR_SUFFIX)
    assert refmaps.sidecar_of(Path("../cache/")) == tmp_path / ("cache" + refmap.SIDECAR_SUFFIX)
