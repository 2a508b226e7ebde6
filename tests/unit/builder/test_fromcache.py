"""--from-cache against damaged and hostile caches (file://, no Nix needed).

A two-path closure is made by hand (a store dir under tmp, its registration
from our own NAR hashes), cached with ``write_cache`` for its own prefix,
then damaged one way at a time: every damage is one BuildError naming it,
and nothing is left in the destination.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from nix_prefix.builder.cache import CacheOptions, write_cache
from nix_prefix.builder.errors import BuildError
from nix_prefix.builder.fromcache import BinaryCache, fetch_closure
from nix_prefix.payload import hashes, nar, narinfo, signing

from tests.support import PLAIN_APP, PLAIN_DEP, plain_closure

DEP, APP = PLAIN_DEP, PLAIN_APP


@pytest.fixture
def cache(tmp_path: Path) -> tuple[Path, str]:
    ci, store = plain_closure(tmp_path)
    out = tmp_path / "cache"
    write_cache([ci], str(tmp_path / "p"), out, CacheOptions(level=0))
    return out, str(store)


def _fetch(cache: Path, dest: Path, **kw) -> None:
    fetch_closure(f"file://{cache}", [APP], dest, say=str, **kw)


def _info(cache: Path, base: str) -> tuple[Path, narinfo.NarInfo]:
    file = cache / narinfo.narinfo_file(base)
    return file, narinfo.parse(file.read_text(), str(file))


def test_a_good_cache_gives_the_closure_as_it_was(cache, tmp_path: Path) -> None:
    out, store = cache
    closure, roots = fetch_closure(f"file://{out}", [f"{store}/{APP}"], tmp_path / "got",
                                   say=str)
    assert roots == [f"{store}/{APP}"] and closure.store_dir == store
    assert [i.path for i in closure.infos] == [f"{store}/{DEP}", f"{store}/{APP}"]
    for i in closure.infos:
        digest, size = nar.hash_path(str(tmp_path / "got" / i.path.rpartition("/")[2]))
        assert (hashes.format_sha256(digest), size) == (i.nar_hash, i.nar_size)
    assert os.readlink(tmp_path / "got" / APP / "dep") == f"{store}/{DEP}"
    assert os.access(tmp_path / "got" / APP / "bin" / "app", os.X_OK)


def _truncate_nar(cache: Path) -> None:
    _, info = _info(cache, DEP)
    path = cache / info.url
    path.write_bytes(path.read_bytes()[:-30])


def _grow_nar(cache: Path) -> None:
    _, info = _info(cache, DEP)
    with open(cache / info.url, "ab") as f:
        f.write(b"\0" * 64)


def _wrong_nar_hash(cache: Path) -> None:
    file, info = _info(cache, DEP)
    info.nar_hash = hashes.format_sha256(hashlib.sha256(b"other").digest())
    file.write_text(info.to_text())


def _other_store_path(cache: Path) -> None:
    file, info = _info(cache, DEP)
    file.write_text(info.to_text().replace("-dep\n", "-dep2\n", 1))


@pytest.mark.parametrize("damage, why", [
    (lambda c: (c / "nix-cache-info").unlink(), "not a Nix binary cache"),
    (lambda c: (c / "nix-cache-info").write_text("StoreDir: /elsewhere/store\n"),
     "not in the cache's store dir"),
    (lambda c: (c / narinfo.narinfo_file(DEP)).unlink(), "a reference.* is missing"),
    (lambda c: (c / _info(c, DEP)[1].url).unlink(), "is missing"),
    (lambda c: (c / narinfo.narinfo_file(DEP)).write_bytes(b"\xff" * 10), "not UTF-8"),
    (lambda c: (c / narinfo.narinfo_file(DEP)).write_text("x" * (2 << 20)), "larger than"),
    (_truncate_nar, "cannot decompress|ends early|FileHash"),
    (_grow_nar, "FileSize|FileHash|decompress"),
    (_wrong_nar_hash, "NAR hash mismatch"),
    (_other_store_path, "describes"),
])
def test_a_damaged_cache_is_refused(cache, tmp_path: Path, damage, why: str) -> None:
    out, _ = cache
    damage(out)
    dest = tmp_path / "got"
    with pytest.raises(BuildError, match=why):
        _fetch(out, dest)
    assert not dest.exists() or not any(p.name == DEP for p in dest.iterdir())


def test_signatures_are_checked_when_keys_are_given(cache, tmp_path: Path) -> None:
    out, _ = cache
    key = signing.parse_public_key("k:" + "A" * 43 + "=")
    with pytest.raises(BuildError, match="signed by nobody"):
        _fetch(out, tmp_path / "got", cache_keys=[key])
    assert not (tmp_path / "got").exists()


@pytest.mark.parametrize("url", ["s3://bucket", "ssh://host", "http://", "file://host/x",
                                 "/just/a/path"])
def test_urls_nix_prefix_cannot_read_are_refused(url: str) -> None:
    with pytest.raises(BuildError, match="URL|host"):
        BinaryCache(url)


def test_a_root_outside_the_cache_is_refused(cache, tmp_path: Path) -> None:
    out, _ = cache
    with pytest.raises(BuildError, match="is not in"):
        fetch_closure(f"file://{out}", [f"/other/store/{APP}"], tmp_path / "got", say=str)
    with pytest.raises(BuildError, match="not a store path"):
        fetch_closure(f"file://{out}", ["../../etc/passwd"], tmp_path / "got", say=str)
    with pytest.raises(BuildError, match="is not in the cache"):
        fetch_closure(f"file://{out}", ["0" * 31 + "3-none"], tmp_path / "got", say=str)
