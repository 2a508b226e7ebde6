"""payload.nar against the real Nix: ``nix-store --dump``, ``nix-hash`` and the store.

docs/nix-formats.md section 4: the NAR must be byte-identical to Nix's, narHash
is its sha256 and narSize its length.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nix_prefix.builder.localnix import LocalNix, NixCommandError
from nix_prefix.payload import hashes, nar, nix32

from tests.support import nar_bytes
from tests.unit.payload.test_nar import TREES, make, write


@pytest.fixture(scope="module")
def nix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNix]:
    """One private store for the whole module (opening a fresh one per test is slower)."""
    yield LocalNix(tmp_path_factory.mktemp("nar-nix") / "p")


def nix_dump(nix: LocalNix, path: Path) -> bytes:
    return nix.run("nix-store", ["--dump", str(path)]).stdout


def nix_hash_base32(nix: LocalNix, path: Path) -> str:
    return nix.run("nix-hash", ["--type", "sha256", "--base32", str(path)]).stdout.decode().strip()


# -- tree makers -------------------------------------------------------------------------------


# -- tests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(TREES))
def test_nar_bytes_equal_nix_store_dump(nix: LocalNix, tmp_path: Path, case: str) -> None:
    root = make(tmp_path, case)
    expected = nix_dump(nix, root)
    assert expected.startswith(b"\x0d" + bytes(7) + b"nix-archive-1")
    got = nar_bytes(str(root))
    assert got == expected


@pytest.mark.parametrize("case", sorted(TREES))
def test_hash_path_equals_nix_hash(nix: LocalNix, tmp_path: Path, case: str) -> None:
    root = make(tmp_path, case)
    digest, size = nar.hash_path(str(root))
    assert nix32.encode(digest) == nix_hash_base32(nix, root)
    assert size == len(nix_dump(nix, root))
    assert digest == hashlib.sha256(nix_dump(nix, root)).digest()


def test_only_owner_x_counts(nix: LocalNix, tmp_path: Path) -> None:
    """0654 is dumped like 0644, 0744 like 0755 (and Nix agrees)."""
    dumps = {}
    for mode in (0o644, 0o654, 0o611, 0o744, 0o755, 0o700):
        path = tmp_path / f"f{mode:o}"
        write(path, b"same\n", mode)
        dumps[mode] = nar_bytes(str(path))
        assert dumps[mode] == nix_dump(nix, path)
    assert dumps[0o644] == dumps[0o654] == dumps[0o611]
    assert dumps[0o744] == dumps[0o755] == dumps[0o700]
    assert dumps[0o644] != dumps[0o744]
    assert b"executable" in dumps[0o744] and b"executable" not in dumps[0o644]


def test_metadata_other_than_x_is_ignored(nix: LocalNix, tmp_path: Path) -> None:
    """mtimes and the permission bits other than owner x do not reach the NAR."""
    one = make(tmp_path / "one", "nested")
    two = make(tmp_path / "two", "nested")
    for dirpath, _, filenames in os.walk(two):
        for name in filenames:
            full = os.path.join(dirpath, name)
            os.utime(full, (1, 1), follow_symlinks=False)
            if not os.path.islink(full):
                os.chmod(full, os.stat(full).st_mode & 0o100 | 0o404)
    os.utime(two, (12345, 12345))
    assert nar.hash_path(str(one)) == nar.hash_path(str(two))
    assert nix_hash_base32(nix, one) == nix_hash_base32(nix, two)


@pytest.mark.parametrize("where", ["top", "inside"])
def test_fifo_raises_nar_error(nix: LocalNix, tmp_path: Path, where: str) -> None:
    if where == "top":
        root = tmp_path / "fifo"
        os.mkfifo(root)
    else:
        root = make(tmp_path, "nested")
        os.mkfifo(root / "a" / "fifo")
    with pytest.raises(NixCommandError):
        nix_dump(nix, root)  # Nix refuses it too ("unsupported type")
    with pytest.raises(nar.NarError):
        nar_bytes(str(root))
    with pytest.raises(nar.NarError):
        nar.hash_path(str(root))


STORE_CASES = ["single_file", "single_empty_file", "single_executable", "single_symlink_dangling",
               "empty_dir", "sizes", "modes", "nested", "symlinks", "name_order",
               "non_utf8_names"]


def test_paths_added_to_a_real_store(nix: LocalNix, tmp_path: Path) -> None:
    """``nix-store --add`` then compare narHash and narSize with the store's DB."""
    added = []
    for i, case in enumerate(STORE_CASES):
        root = make(tmp_path / str(i), case)
        store_path = nix.run("nix-store", ["--add", str(root)]).stdout.decode().strip()
        added.append((case, root, store_path))
    paths = [p for _, _, p in added]
    db_hashes = nix.run("nix-store", ["-q", "--hash", *paths]).stdout.decode().split()
    db_sizes = nix.run("nix-store", ["-q", "--size", *paths]).stdout.decode().split()
    assert len(db_hashes) == len(db_sizes) == len(added)
    for (case, root, store_path), db_hash, db_size in zip(added, db_hashes, db_sizes, strict=True):
        assert store_path.startswith(str(nix.store_dir) + "/"), case
        digest, size = nar.hash_path(store_path)
        assert hashes.format_sha256(digest) == db_hash, case
        assert hashes.parse_sha256(db_hash) == digest, case
        assert size == int(db_size), case
        # The canonicalised store copy has the same NAR as the original tree.
        assert nar.hash_path(str(root)) == (digest, size), case
        assert nar_bytes(store_path) == nix_dump(nix, Path(store_path)), case

