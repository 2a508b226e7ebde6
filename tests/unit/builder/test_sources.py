"""builder/sources.py: ``open_source`` for an installer, a closureInfo dir with its store
and a binary cache dir, one ``Source`` interface (no Nix: a store made of plain files)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nix_prefix.builder.cache import CacheOptions, write_cache
from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.errors import BuildError
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.builder.sources import (
    CACHE,
    CLOSURE,
    INSTALLER,
    CacheSource,
    ClosureSource,
    InstallerSource,
    TreeSource,
    kind_of,
    open_source,
)
from nix_prefix.payload import hashes, nar
from nix_prefix.payload.container import CorruptInstaller, InstallerFile

from tests.support import PLAIN_APP, PLAIN_DEP, plain_closure

DEP, APP = PLAIN_DEP, PLAIN_APP


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One closure as each kind of source: closureInfo dir, installer, binary cache."""
    tmp = tmp_path_factory.mktemp("sources")
    ci, store = plain_closure(tmp)
    installer = tmp / "app.sh"
    build_installer(read_closure(ci), installer, BuildOptions(compression="xz", level=0))
    cache = tmp / "cache"
    write_cache([ci], str(tmp / "p"), cache, CacheOptions(level=0))
    return {CLOSURE: ci, INSTALLER: installer, CACHE: cache, "store": store}


def nar_hashes(source, names=(APP, DEP), jobs: int = 1) -> dict[str, str]:
    """The NAR hash of what ``replay`` sends for each path, once finished."""
    got: dict[str, str] = {}

    class Hashing(nar.NarHasher):
        def __init__(self, name: str) -> None:
            nar.NarHasher.__init__(self)
            self.name = name

        def finish(self) -> None:
            got[self.name] = hashes.format_sha256(self.digest())

    source.replay(names, Hashing, jobs)
    return got


def test_kind_of_tells_the_three_kinds_apart(kinds: dict[str, Path]) -> None:
    for kind in (CLOSURE, INSTALLER, CACHE):
        assert kind_of(kinds[kind]) == kind
    assert kind_of(kinds[CLOSURE] / "registration") == CLOSURE  # a --dump-db file


def test_a_fifo_is_refused_before_it_is_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(BuildError, match="FIFO"):
        open_source(fifo)
    with pytest.raises(BuildError, match="does not exist"):
        open_source(tmp_path / "missing")


def test_every_kind_gives_the_same_paths_verified(kinds: dict[str, Path]) -> None:
    registered = {i.path.rpartition("/")[2]: i.nar_hash
                  for i in read_closure(kinds[CLOSURE]).infos}
    for kind, cls in ((CLOSURE, ClosureSource), (INSTALLER, InstallerSource),
                      (CACHE, CacheSource)):
        with open_source(kinds[kind]) as source:
            assert type(source) is cls
            assert sorted(p.name for p in source.manifest.paths) == [DEP, APP]
            assert nar_hashes(source, jobs=2) == registered
            assert nar_hashes(source, [DEP])[DEP] == registered[DEP]
            # What the exact planner reads: the one-file paths no derivation made.
            assert source.contents() == {DEP: (kinds["store"] / DEP).read_bytes()}


def test_an_installer_source_is_read_by_several_threads_at_once(
        kinds: dict[str, Path]) -> None:
    with open_source(kinds[INSTALLER]) as source:
        results: list[dict[str, str]] = []
        threads = [threading.Thread(target=lambda: results.append(nar_hashes(source)))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(results) == 4 and all(r == results[0] for r in results)


def test_a_modified_store_path_is_refused_in_one_line(kinds: dict[str, Path],
                                                      tmp_path: Path) -> None:
    with open_source(kinds[CLOSURE]) as source:
        dep = kinds["store"] / DEP
        kept = dep.read_bytes()
        dep.write_bytes(kept + b"x")
        try:
            with pytest.raises(BuildError, match="does not match its registration") as e:
                nar_hashes(source, [DEP])
        finally:
            dep.write_bytes(kept)
    assert "\n" not in str(e.value)


def test_a_damaged_installer_is_one_line_naming_it(kinds: dict[str, Path],
                                                   tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.sh"
    data = bytearray(kinds[INSTALLER].read_bytes())
    data[len(data) // 2] ^= 1
    damaged.write_bytes(bytes(data))
    with pytest.raises(BuildError) as e:
        open_source(damaged)
    assert str(damaged) in str(e.value) and "\n" not in str(e.value)


def test_cache_reads_a_binary_cache_as_a_source(kinds: dict[str, Path],
                                                tmp_path: Path) -> None:
    # A binary cache dir is a source of `cache` too, as of `serve`.
    out = tmp_path / "again"
    result = write_cache([kinds[CACHE]], str(kinds["store"].parent), out,
                         CacheOptions(level=0))
    assert sorted(result.written) == [DEP, APP]
    files = sorted(p.name for p in out.glob("*.narinfo"))
    assert files == sorted(p.name for p in kinds[CACHE].glob("*.narinfo"))
    for name in files:
        assert hashlib.sha256((out / name).read_bytes()).digest() == hashlib.sha256(
            (kinds[CACHE] / name).read_bytes()).digest()


def test_build_names_the_kind_of_a_source_it_cannot_pack(kinds: dict[str, Path],
                                                         tmp_path: Path) -> None:
    code = "from nix_prefix.builder.cli import main; main()"
    for kind, said in ((INSTALLER, "is an installer"), (CACHE, "is a binary cache")):
        done = subprocess.run([sys.executable, "-c", code, "build", str(kinds[kind]), "-o",
                               str(tmp_path / "out.sh")], capture_output=True, text=True,
                              check=False, env={**os.environ, "NO_COLOR": "1"}, timeout=120)
        assert done.returncode != 0 and said in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and not (tmp_path / "out.sh").exists()


def test_an_installer_file_is_closed_on_leaving_its_with(kinds: dict[str, Path]) -> None:
    with InstallerFile(str(kinds[INSTALLER])) as opened:
        assert opened.manifest.paths
    with pytest.raises(CorruptInstaller, match="closed"):
        opened.check(None)


def test_a_tree_source_without_verify_sends_a_modified_path(kinds: dict[str, Path]) -> None:
    """``build --no-verify`` packs through the same TreeSource, which then skips the
    NAR hash check (and only then): the modified path comes whole."""
    with open_source(kinds[CLOSURE]) as checked:
        unchecked = TreeSource(checked.path, checked.manifest, checked.root, verify=False,
                               mismatch_hint="pass --no-verify")
        dep = kinds["store"] / DEP
        kept = dep.read_bytes()
        dep.write_bytes(kept + b"x")
        try:
            modified = hashes.format_sha256(nar.hash_path(str(dep))[0])
            got = nar_hashes(unchecked, [DEP])
            with pytest.raises(BuildError, match="does not match its registration") as e:
                nar_hashes(TreeSource(checked.path, checked.manifest, checked.root,
                                      mismatch_hint="pass --no-verify"), [DEP])
        finally:
            dep.write_bytes(kept)
    assert got == {DEP: modified}
    assert e.value.hint == "pass --no-verify"
