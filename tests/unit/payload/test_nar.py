"""payload.nar: the NAR serialiser and its events, without Nix; the same trees against
``nix-store --dump``, ``nix-hash`` and a real store are in
tests/e2e/test_nar_against_nix.py."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from nix_prefix.payload import nar

from tests.support import nar_bytes


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


class Recorder:
    """Collects ``dump_path`` events."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args: self.events.append((name, *args))


def test_hello_file_is_120_bytes(tmp_path: Path) -> None:
    """The doc's verified example: the NAR of a file ``hello\\n`` is 120 bytes."""
    root = make(tmp_path, "single_file")
    assert len(nar_bytes(str(root))) == 120
    assert nar.hash_path(str(root))[1] == 120


def test_entries_in_byte_order(tmp_path: Path) -> None:
    """'B' < '_' < 'a' in the NAR (the doc's verified example)."""
    root = make(tmp_path, "name_order")
    data = nar_bytes(str(root))

    def where(name: bytes) -> int:
        token = len(name).to_bytes(8, "little") + name
        return data.index(b"name\0\0\0\0" + token)

    assert where(b"B") < where(b"_") < where(b"a")
    assert where(b"a") < where(b"a.b") < where(b"aa") < where(b"ab")


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


def test_socket_raises_nar_error(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "sock"))
        with pytest.raises(nar.NarError):
            nar.hash_path(str(root))
