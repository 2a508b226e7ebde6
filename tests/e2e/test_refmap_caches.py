"""The reference map of a binary cache dir, on caches real Nix wrote (``nix copy --to
file://``): ``serve CACHE_DIR`` and ``cache CACHE_DIR`` make its sidecar once and serve
and write with it exactly what the scan gives, same-length and exact; and
``build --from-cache``, which rewrites nothing it fetches, gives an installer whose
own map its retargets use, with the scan's bytes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nix_prefix.builder.cache import CacheOptions, write_cache
from nix_prefix.builder.fromcache import fetch_closure
from nix_prefix.builder.master import Master, ServeOptions
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.builder.refmaps import sidecar_of
from nix_prefix.builder.retarget import retarget
from nix_prefix.builder.sources import CacheSource
from nix_prefix.payload import narinfo, refmap
from nix_prefix.payload.container import InstallerFile

from .test_exact_retarget import build_at_s1
from .test_refmap_installers import files_of, spied
from tests.support import build_small

LONG = "a-build-prefix-long-enough-to-relocate-from"


def nix_copy(nix, paths: list[str], cache: Path) -> Path:
    subprocess.run([str(nix.bin_dir / "nix"), "--extra-experimental-features", "nix-command",
                    "copy", "--to", f"file://{cache}", *paths],
                   env=nix.env(), check=True, capture_output=True)
    return cache


def served(master: Master, store_dir: str) -> dict[str, bytes]:
    """Every narinfo and every NAR the master serves at ``store_dir``."""
    view = master.view(store_dir)
    out = {}
    for hash_part in sorted(view._by_hash):
        text = view.narinfo(hash_part)
        assert text is not None
        out[hash_part + ".narinfo"] = text
        parts: list[bytes] = []
        view.stream(hash_part, parts.append)
        out[narinfo.parse(text.decode(), hash_part, store_dir).url] = b"".join(parts)
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("refmap-caches")
    built = build_small(base, name=LONG)
    return built, nix_copy(built.nix, built.roots, base / "copied")


@pytest.fixture(scope="module")
def with_drvs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("refmap-caches-exact")
    _, _, nix, _, _, closure, _ = build_at_s1(base, "s1-a-build-prefix-longer-than-s2")
    return nix_copy(nix, [i.path for i in closure.infos], base / "copied")


def check_both_routes(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve and cache of ``cache`` at a new store dir: with the map as without."""
    sidecar_of(cache).unlink(missing_ok=True)
    options = ServeOptions(compression="none")
    store_dir = str(tmp_path / "q" / "store")
    with monkeypatch.context() as m:
        used = spied(m)
        mapped = Master([cache], options)
        got = served(mapped, store_dir)
        assert sidecar_of(cache).exists()  # made at start
        write_cache([cache], str(tmp_path / "q"), tmp_path / "mapped", CacheOptions(level=1))
    assert used == [True, True]  # serve's view, then cache
    with monkeypatch.context() as m:
        m.setattr(CacheSource, "ref_map", lambda self: None)  # the scan, as before
        assert served(Master([cache], options), store_dir) == got
        write_cache([cache], str(tmp_path / "q"), tmp_path / "scanned", CacheOptions(level=1))
    assert files_of(tmp_path / "mapped") == files_of(tmp_path / "scanned")


@pytest.mark.slow
def test_a_nix_made_cache_serves_and_caches_with_its_map_what_the_scan_gives(
        small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_both_routes(small[1], tmp_path, monkeypatch)


@pytest.mark.slow
def test_exact_from_a_nix_made_cache_with_its_map_gives_what_the_scan_gives(
        with_drvs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The map looks for the outputs the .drv files name too: the renaming is covered.
    check_both_routes(with_drvs, tmp_path, monkeypatch)


@pytest.mark.slow
def test_a_stale_sidecar_of_a_nix_made_cache_is_made_again(
        small, tmp_path: Path) -> None:
    built, cache = small
    copy = nix_copy(built.nix, built.roots[:1], tmp_path / "part")
    with CacheSource(copy) as source:
        part = source.ref_map()
    nix_copy(built.nix, built.roots, copy)  # the cache grows: the sidecar no longer fits
    with CacheSource(copy) as source:
        whole = source.ref_map()
    with CacheSource(cache) as source:
        assert len(whole.order) == len(source.manifest.paths) >= len(part.order)
    assert refmap.read_sidecar(str(sidecar_of(copy))).to_bytes() == whole.to_bytes()


@pytest.mark.slow
def test_build_from_cache_rewrites_nothing_and_its_installer_retargets_with_its_map(
        small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built, cache = small
    closure, roots = fetch_closure(f"file://{cache}", built.roots, tmp_path / "fetched",
                                   say=str)
    # What was fetched is the cache's NARs byte for byte, at the cache's store dir
    # (every NAR hash is the narinfo's): nothing to map at the fetch.
    with CacheSource(cache) as source:
        assert {i.path.rpartition("/")[2]: i.nar_hash for i in closure.infos} == {
            p.name: p.nar_hash for p in source.manifest.paths}
    installer = tmp_path / "from-cache.sh"
    build_installer(closure, installer, BuildOptions(compression="xz", level=1, roots=roots,
                                                     store_root=tmp_path / "fetched"))
    with InstallerFile(str(installer)) as f:
        assert f.ref_map() is not None  # build maps what it packs
    prefix = str(tmp_path / "r")
    used = spied(monkeypatch)
    retarget(installer, prefix, tmp_path / "mapped.sh")
    assert used == [True]
    monkeypatch.setattr(InstallerFile, "ref_map", lambda self: None)
    retarget(installer, prefix, tmp_path / "scanned.sh")
    assert (tmp_path / "mapped.sh").read_bytes() == (tmp_path / "scanned.sh").read_bytes()
