"""payload.nar against the real Nix: ``nix-store --dump``, ``nix-hash`` and the store.

docs/nix-formats.md section 4: the NAR must be byte-identical to Nix's, narHash
is its sha256 and narSize its length.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nix_prefix.builder.localnix import LocalNix, NixCommandError
from nix_prefix.payload import hashes, nar, nix32


@pytest.fixture(scope="module")
def nix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNix]:
    """One private store for the whole module (opening a fresh one per test is slower)."""
    yield LocalNix(tmp_path_factory.mktemp("nar-nix") / "p")


def nix_dump(nix: LocalNix, path: Path) -> bytes:
    return nix.run("nix-store", ["--dump", str(path)]).stdout


def nix_hash_base32(nix: LocalNix, path: Path) -> str:
    return nix.run("nix-hash", ["--type", "sha256", "--base32", str(path)]).stdout.decode().strip()


# -- tree makers -------------------------------------------------------------------------------

def write(path: Path, data: bytes = b"", mode: int = 0o644) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def b(path: Path, name: bytes) -> Path:
    """``path / name`` for a name that need not be UTF-8."""
    return path / os.fsdecode(name)


def t_single_file(root: Path) -> None:
    write(root, b"hello\n")


def t_single_empty_file(root: Path) -> None:
    write(root, b"")


def t_single_executable(root: Path) -> None:
    write(root, b"#!/bin/sh\necho hi\n", 0o744)


def t_single_file_group_x(root: Path) -> None:
    write(root, b"not executable for Nix\n", 0o654)


def t_single_file_size_8(root: Path) -> None:
    write(root, b"12345678")


def t_single_symlink_relative(root: Path) -> None:
    root.symlink_to("../some/where")


def t_single_symlink_absolute(root: Path) -> None:
    root.symlink_to("/etc/passwd")


def t_single_symlink_dangling(root: Path) -> None:
    root.symlink_to("does-not-exist")


def t_empty_dir(root: Path) -> None:
    root.mkdir()


def t_sizes(root: Path) -> None:
    root.mkdir()
    for size in (0, 1, 7, 8, 9, 15, 16, 17, 24, 63, 64, 65, 4096, (1 << 20) + 3):
        write(root / f"size-{size}", bytes(i % 251 for i in range(size)))


def t_modes(root: Path) -> None:
    root.mkdir()
    write(root / "rw-r--r--", b"a", 0o644)
    write(root / "rw-r-xr--", b"a", 0o654)  # group x only: not executable
    write(root / "rw---x--x", b"a", 0o611)  # group and other x: not executable
    write(root / "rwxr--r--", b"a", 0o744)  # owner x only: executable
    write(root / "r-x------", b"a", 0o500)
    write(root / "r--r--r--", b"a", 0o444)
    write(root / "r-xr-xr-x", b"a", 0o555)
    write(root / "setuid", b"a", 0o4755)
    write(root / "empty-exec", b"", 0o755)


def t_nested(root: Path) -> None:
    (root / "a" / "b" / "c" / "d").mkdir(parents=True)
    (root / "a" / "empty").mkdir()
    (root / "z-empty").mkdir()
    write(root / "a" / "b" / "c" / "d" / "deep", b"deep\n")
    write(root / "a" / "b" / "file", b"x" * 8)
    write(root / "a" / "b" / "c" / "run", b"#!/bin/sh\n", 0o755)
    write(root / "top", b"top\n")
    (root / "a" / "b" / "up").symlink_to("../..")


def t_symlinks(root: Path) -> None:
    root.mkdir()
    (root / "dir").mkdir()
    write(root / "dir" / "f", b"f")
    (root / "relative").symlink_to("dir/f")
    (root / "parent").symlink_to("../outside")
    (root / "absolute").symlink_to("/etc/passwd")
    (root / "dangling").symlink_to("nowhere")
    (root / "to-dir").symlink_to("dir")
    (root / "dot").symlink_to(".")
    (root / "eight").symlink_to("12345678")
    (root / "long").symlink_to("x" * 300)
    os.symlink(b"\xff\xfe-not-utf8", os.fsencode(root / "non-utf8-target"))


def t_name_order(root: Path) -> None:
    root.mkdir()
    for name in ("B", "_", "a", "A", "0", "~", "a.b", "a-b", "ab", "a b", "aa", "é", "Z",
                 "-", ".hidden", "a\nb"):
        write(root / name, name.encode())
    (root / "b-dir").mkdir()
    write(root / "b-dir" / "inner", b"")
    write(root / "b", b"b")


def t_non_utf8_names(root: Path) -> None:
    root.mkdir()
    for name in (b"\xff", b"\xfe\xff", b"caf\xe9", b"\x80x", b"plain", b"\xc3\xa9"):
        write(b(root, name), name)
    sub = b(root, b"dir-\xe9")
    sub.mkdir()
    write(b(sub, b"\xff\xff"), b"inside")
    os.symlink(b"\xe9", os.fsencode(b(sub, b"link-\xe9")))


TREES: dict[str, Callable[[Path], None]] = {
    name[2:]: fn for name, fn in globals().items() if name.startswith("t_")}


def make(base: Path, case: str) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    root = base / "tree"
    TREES[case](root)
    return root


# -- tests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(TREES))
def test_nar_bytes_equal_nix_store_dump(nix: LocalNix, tmp_path: Path, case: str) -> None:
    root = make(tmp_path, case)
    expected = nix_dump(nix, root)
    assert expected.startswith(b"\x0d" + bytes(7) + b"nix-archive-1")
    got = nar.nar_bytes(str(root))
    assert got == expected


@pytest.mark.parametrize("case", sorted(TREES))
def test_hash_path_equals_nix_hash(nix: LocalNix, tmp_path: Path, case: str) -> None:
    root = make(tmp_path, case)
    digest, size = nar.hash_path(str(root))
    assert nix32.encode(digest) == nix_hash_base32(nix, root)
    assert size == len(nix_dump(nix, root))
    assert digest == hashlib.sha256(nix_dump(nix, root)).digest()


def test_hello_file_is_120_bytes(tmp_path: Path) -> None:
    """The doc's verified example: the NAR of a file ``hello\\n`` is 120 bytes."""
    root = make(tmp_path, "single_file")
    assert len(nar.nar_bytes(str(root))) == 120
    assert nar.hash_path(str(root))[1] == 120


def test_only_owner_x_counts(nix: LocalNix, tmp_path: Path) -> None:
    """0654 is dumped like 0644, 0744 like 0755 (and Nix agrees)."""
    dumps = {}
    for mode in (0o644, 0o654, 0o611, 0o744, 0o755, 0o700):
        path = tmp_path / f"f{mode:o}"
        write(path, b"same\n", mode)
        dumps[mode] = nar.nar_bytes(str(path))
        assert dumps[mode] == nix_dump(nix, path)
    assert dumps[0o644] == dumps[0o654] == dumps[0o611]
    assert dumps[0o744] == dumps[0o755] == dumps[0o700]
    assert dumps[0o644] != dumps[0o744]
    assert b"executable" in dumps[0o744] and b"executable" not in dumps[0o644]


def test_entries_in_byte_order(tmp_path: Path) -> None:
    """'B' < '_' < 'a' in the NAR (the doc's verified example)."""
    root = make(tmp_path, "name_order")
    data = nar.nar_bytes(str(root))

    def where(name: bytes) -> int:
        token = len(name).to_bytes(8, "little") + name
        return data.index(b"name\0\0\0\0" + token)

    assert where(b"B") < where(b"_") < where(b"a")
    assert where(b"a") < where(b"a.b") < where(b"aa") < where(b"ab")


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


class Recorder:
    """Collects ``dump_path`` events."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args: self.events.append((name, *args))


def test_dump_path_events(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    (root / "d").mkdir()
    write(root / "d" / "x", b"xx", 0o755)
    (root / "l").symlink_to("d/x")
    rec = Recorder()
    nar.dump_path(os.fsencode(root), rec)
    assert rec.events == [
        ("begin_directory", b""),
        ("begin_entry", b"d"),
        ("begin_directory", b"d"),
        ("begin_entry", b"x"),
        ("regular", b"d/x", True, 2),
        ("contents", b"xx"),
        ("end_regular",),
        ("end_entry",),
        ("end_directory",),
        ("end_entry",),
        ("begin_entry", b"l"),
        ("symlink", b"l", b"d/x"),
        ("end_entry",),
        ("end_directory",),
    ]


def test_nar_writer_checks_announced_size() -> None:
    writer = nar.NarWriter(lambda data: None)
    writer.regular(b"", False, 3)
    with pytest.raises(nar.NarError):
        writer.contents(b"four")
    writer = nar.NarWriter(lambda data: None)
    writer.regular(b"", False, 3)
    writer.contents(b"ab")
    with pytest.raises(nar.NarError):
        writer.end_regular()


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
        nar.nar_bytes(str(root))
    with pytest.raises(nar.NarError):
        nar.hash_path(str(root))


def test_socket_raises_nar_error(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "sock"))
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
        assert nar.nar_bytes(store_path) == nix_dump(nix, Path(store_path)), case
