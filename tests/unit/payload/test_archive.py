"""payload.archive: canonical tar chunks written by TarWriter and replayed by unpack().

The trees are put at the paths the real ``nix-store --add`` gives them in a private
store, without Nix (tests/e2e/test_archive_against_nix.py adds them with Nix and checks
that paths and NAR hashes agree); the NAR hashes computed while packing and while
unpacking must equal the store's narHash.  Hostile streams are built with the standard
``tarfile`` module.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nix_prefix.payload import archive, hashes, nar, nix32, storepaths_ca, tree
from nix_prefix.payload.archive import ArchiveError, Cut

# -- recording visitors -------------------------------------------------------------------------


class Recorder:
    """Records every event (and hashes them as a NAR); ``finish`` is recorded too."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.hasher = nar.NarHasher()

    def __getattr__(self, name: str) -> Callable[..., None]:
        def call(*args: object) -> None:
            self.events.append((name, *args))
            if name != "finish":
                getattr(self.hasher, name)(*args)
        return call

    def merged(self) -> list[tuple]:
        """Events with consecutive ``contents`` joined (read sizes may differ)."""
        out: list[tuple] = []
        for event in self.events:
            if event[0] == "contents" and out and out[-1][0] == "contents":
                out[-1] = ("contents", out[-1][1] + event[1])
            else:
                out.append(event)
        return out


class Opener:
    """``open_path`` for unpack(): one Recorder per store path, in order."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, Recorder]] = []

    def __call__(self, name: str) -> Recorder:
        rec = Recorder()
        self.opened.append((name, rec))
        return rec


# -- real store paths ---------------------------------------------------------------------------

def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def _tree(root: Path) -> None:
    root.mkdir()
    (root / "bin").mkdir()
    _write(root / "bin" / "tool", b"#!/bin/sh\necho tool\n", 0o755)
    _write(root / "bin" / "group-x", b"x", 0o654)
    (root / "empty-dir").mkdir()
    _write(root / "empty", b"")
    _write(root / "eight", b"12345678")
    _write(root / "big", os.urandom(3000) + bytes(70000))
    for name in ("B", "_", "a", "a.b", "a-b", "ab"):
        _write(root / name, name.encode())
    (root / "a-dir").mkdir()
    _write(root / "a-dir" / "x", b"x")
    (root / "link-rel").symlink_to("bin/tool")
    (root / "link-abs").symlink_to("/etc/passwd")
    (root / "link-dangling").symlink_to("nowhere")
    (root / "link-long").symlink_to("t" * 150)
    deep = root / ("d" * 60) / ("e" * 60) / ("f" * 60)
    deep.mkdir(parents=True)
    _write(deep / ("g" * 90), b"deep")
    odd = root / os.fsdecode(b"caf\xe9")
    odd.mkdir()
    _write(odd / os.fsdecode(b"\xff\xfe"), b"non-utf8")
    os.symlink(b"\xe9t\xe9", os.fsencode(odd / "link"))


def _file(root: Path) -> None:
    _write(root, b"hello\n")


def _exe(root: Path) -> None:
    _write(root, b"#!/bin/sh\n", 0o744)


def _link(root: Path) -> None:
    root.symlink_to("../dangling/target")


MAKERS = {"tree": _tree, "hello.txt": _file, "run.sh": _exe, "link": _link}


@dataclass
class StorePath:
    base: str
    path: str
    nar_hash: str  # as nix-store -q --hash prints it


@pytest.fixture(scope="module")
def store_paths(tmp_path_factory: pytest.TempPathFactory) -> list[StorePath]:
    work = tmp_path_factory.mktemp("archive")
    return made_store_paths(work / "src", work / "p" / "store")


def made_store_paths(src_dir: Path, store: Path) -> list[StorePath]:
    """MAKERS' trees, made in SRC_DIR, moved to the paths ``nix-store --add`` gives them
    in STORE."""
    store.mkdir(parents=True)
    src_dir.mkdir()
    out = []
    for name, make in MAKERS.items():
        src = src_dir / name
        make(src)
        sp = as_added(src, store)
        os.rename(src, sp.path)
        out.append(sp)
    return out


def as_added(src: Path, store: Path) -> StorePath:
    """The store path and NAR hash ``nix-store --add SRC`` gives in STORE: a source path
    over the NAR hash, as Nix's addToStore makes it."""
    digest, _ = nar.hash_path(str(src))
    path = storepaths_ca.make_source_path(str(store), src.name, digest)
    return StorePath(path.rpartition("/")[2], path, hashes.format_sha256(digest))


def pack(paths: list[StorePath]) -> tuple[bytes, list[Recorder], archive.TarWriter]:
    """Pack like the builder (Tee of TarWriter and NarHasher); also record the events."""
    parts: list[bytes] = []
    tar = archive.TarWriter(parts.append)
    recorders = []
    for sp in paths:
        tar.top = sp.base
        rec = Recorder()
        hasher = nar.NarHasher()
        nar.dump_path(os.fsencode(sp.path), tree.Tee(tar, hasher, rec))
        assert hashes.format_sha256(hasher.digest()) == sp.nar_hash
        recorders.append(rec)
    tar.close()
    return b"".join(parts), recorders, tar


# -- the happy path -----------------------------------------------------------------------------

def test_unpack_replays_dump_path_events(store_paths: list[StorePath]) -> None:
    data, packed, _ = pack(store_paths)
    assert len(data) % tarfile.RECORDSIZE == 0 or len(data) % tarfile.BLOCKSIZE == 0
    opener = Opener()
    archive.unpack(io.BytesIO(data), [sp.base for sp in store_paths], opener)
    assert [name for name, _ in opener.opened] == [sp.base for sp in store_paths]
    for sp, rec, (_, got) in zip(store_paths, packed, opener.opened, strict=True):
        assert got.merged() == rec.merged() + [("finish",)], sp.base
        assert got.merged().count(("finish",)) == 1
        assert got.hasher.digest() == rec.hasher.digest()
        assert got.hasher.size == rec.hasher.size
        assert hashes.format_sha256(got.hasher.digest()) == sp.nar_hash


@pytest.mark.parametrize("index", range(4))
def test_each_path_alone(store_paths: list[StorePath], index: int) -> None:
    sp = store_paths[index]
    data, _, _ = pack([sp])
    opener = Opener()
    archive.unpack(io.BytesIO(data), [sp.base], opener)
    ((name, rec),) = opener.opened
    assert name == sp.base
    assert "sha256:" + nix32.encode(rec.hasher.digest()) == sp.nar_hash


def test_tar_entries_are_canonical(store_paths: list[StorePath]) -> None:
    data, _, writer = pack(store_paths)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8",
                      errors="surrogateescape") as tf:
        members = tf.getmembers()
    assert members, "no entries"
    tops = [m.name for m in members if "/" not in m.name]
    assert tops == [sp.base for sp in store_paths]
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (1, 0, 0, "", ""), m.name
        if m.isdir():
            assert m.mode == 0o555, m.name
        elif m.isfile():
            assert m.mode in (0o444, 0o555), m.name
        else:
            assert m.issym(), m.name
    by_name = {m.name: m for m in members}
    tree = store_paths[0].base
    assert by_name[tree + "/bin/tool"].mode == 0o555
    assert by_name[tree + "/bin/group-x"].mode == 0o444
    assert by_name[tree + "/link-long"].linkname == "t" * 150
    assert by_name[tree + "/" + os.fsdecode(b"caf\xe9") + "/link"].linkname == \
        os.fsdecode(b"\xe9t\xe9")
    assert writer.longest == max(len(os.fsencode(m.name)) for m in members)


def test_same_bytes_every_time(store_paths: list[StorePath]) -> None:
    one, _, _ = pack(store_paths)
    two, _, _ = pack(store_paths)
    assert hashlib.sha256(one).digest() == hashlib.sha256(two).digest()


# -- hostile streams ----------------------------------------------------------------------------

TOP = nix32.encode(hashlib.sha1(b"top").digest()) + "-top"
TWO = nix32.encode(hashlib.sha1(b"two").digest()) + "-two"
DEFAULT_MODE = {tarfile.DIRTYPE: 0o555, tarfile.REGTYPE: 0o444, tarfile.SYMTYPE: 0o777}


def entry(name: str, kind: bytes = tarfile.DIRTYPE, *, mode: int | None = None,
          data: bytes = b"", linkname: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = DEFAULT_MODE.get(kind, 0o444) if mode is None else mode
    info.mtime = 1
    info.linkname = linkname
    if kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
        info.size = len(data)
        return info, data
    return info, None


def file(name: str, data: bytes = b"data", mode: int = 0o444) -> tuple[tarfile.TarInfo, bytes]:
    info, payload = entry(name, tarfile.REGTYPE, mode=mode, data=data)
    assert payload is not None
    return info, payload


def tar_of(*entries: tuple[tarfile.TarInfo, bytes | None],
           fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8",
                      errors="surrogateescape") as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def good_entries() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [
        entry(TOP),
        file(TOP + "/a", b"a"),
        entry(TOP + "/d"),
        file(TOP + "/d/x", b"#!/bin/sh\n", mode=0o555),
        entry(TOP + "/l", tarfile.SYMTYPE, linkname="d/x"),
        file(TWO, b"two"),
    ]


def unpack_bytes(data: bytes, expected: list[str] | None = None) -> Opener:
    opener = Opener()
    archive.unpack(io.BytesIO(data), [TOP, TWO] if expected is None else expected, opener)
    return opener


def test_baseline_stream_is_accepted() -> None:
    """The hostile cases below each change one thing in this stream."""
    opener = unpack_bytes(tar_of(*good_entries()))
    (top, rec), (two, rec2) = opener.opened
    assert (top, two) == (TOP, TWO)
    assert rec.merged() == [
        ("begin_directory", b""),
        ("begin_entry", b"a"), ("regular", b"a", False, 1), ("contents", b"a"),
        ("end_regular",), ("end_entry",),
        ("begin_entry", b"d"), ("begin_directory", b"d"),
        ("begin_entry", b"x"), ("regular", b"d/x", True, 10), ("contents", b"#!/bin/sh\n"),
        ("end_regular",), ("end_entry",),
        ("end_directory",), ("end_entry",),
        ("begin_entry", b"l"), ("symlink", b"l", b"d/x"), ("end_entry",),
        ("end_directory",), ("finish",)]
    assert rec2.merged() == [("regular", b"", False, 3), ("contents", b"two"),
                             ("end_regular",), ("finish",)]


def replaced(index: int, *new: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    entries = good_entries()
    entries[index:index + 1] = list(new)
    return tar_of(*entries)


def inserted(index: int, *new: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    entries = good_entries()
    entries[index:index] = list(new)
    return tar_of(*entries)


def _swap_a_and_d() -> bytes:
    e = good_entries()
    return tar_of(e[0], e[2], e[3], e[1], e[4], e[5])


def _paths_swapped() -> bytes:
    e = good_entries()
    return tar_of(e[5], *e[:5])


def _pax_path(name: str) -> bytes:
    info, data = file(TOP + "/harmless")
    info.pax_headers = {"path": name}
    e = good_entries()
    return tar_of(e[0], (info, data), *e[1:], fmt=tarfile.PAX_FORMAT)


def _raw(*entries: tuple[tarfile.TarInfo, bytes | None]) -> list[bytes]:
    """Each entry's header and padded data, with no end marker."""
    out = []
    for info, data in entries:
        out.append(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
        if data:
            out.append(data + bytes(-len(data) % 512))
    return out


def _with_data(kind: bytes) -> bytes:
    """An entry of ``kind`` whose header claims a data block (tarfile would read it as
    the next header): here the block is a valid header, so only the claim is wrong."""
    info, _ = entry(TOP + "/c", kind, linkname="a" if kind == tarfile.SYMTYPE else "")
    info.size = 512
    e = good_entries()
    smuggled = (entry(TOP + "/d")[0], None)  # a header where the claimed data would be
    return b"".join(_raw(e[0], e[1], (info, None), smuggled, *e[3:])) + bytes(1024)


def _long_name_record(size: int, rest: bool = True) -> bytes:
    """A GNU long name record claiming ``size`` bytes, then (``rest``) its entry."""
    info = tarfile.TarInfo("././@LongLink")
    info.type = tarfile.GNUTYPE_LONGNAME
    info.size = size
    name = (TOP + "/" + "n" * 200).encode() + b"\0"
    body = [info.tobuf(tarfile.USTAR_FORMAT), name + bytes(-len(name) % 512)]
    e = good_entries()
    tail = _raw(file(TOP + "/" + "n" * 200)) if rest else []
    return b"".join(_raw(e[0]) + body + tail) + bytes(1024)


HOSTILE: dict[str, Callable[[], bytes]] = {
    "directory with data": lambda: _with_data(tarfile.DIRTYPE),
    "symlink with data": lambda: _with_data(tarfile.SYMTYPE),
    "huge long name record": lambda: _long_name_record(1 << 30),
    "long name record with no entry": lambda: _long_name_record(202, rest=False),
    "hard link": lambda: inserted(2, entry(TOP + "/b", tarfile.LNKTYPE, linkname=TOP + "/a")),
    "character device": lambda: inserted(2, entry(TOP + "/c", tarfile.CHRTYPE)),
    "block device": lambda: inserted(2, entry(TOP + "/c", tarfile.BLKTYPE)),
    "fifo": lambda: inserted(2, entry(TOP + "/c", tarfile.FIFOTYPE)),
    "contiguous file": lambda: inserted(2, entry(TOP + "/c", tarfile.CONTTYPE, data=b"x")),
    "fifo as a whole store path": lambda: replaced(5, entry(TWO, tarfile.FIFOTYPE)),
    "absolute name": lambda: replaced(1, file("/" + TOP + "/a", b"a")),
    "absolute top": lambda: replaced(5, file("/" + TWO, b"two")),
    "'..' component": lambda: inserted(2, file(TOP + "/../etc")),
    "'..' inside": lambda: inserted(4, file(TOP + "/d/../b")),
    "'..' as a top": lambda: replaced(5, file("..")),
    "'.' component": lambda: inserted(2, file(TOP + "/./b")),
    "empty component": lambda: inserted(2, file(TOP + "//b")),
    "entries out of order": _swap_a_and_d,
    "store paths out of order": _paths_swapped,
    "duplicate entry": lambda: inserted(2, file(TOP + "/a", b"a")),
    "duplicate directory": lambda: inserted(4, entry(TOP + "/d")),
    "duplicate store path": lambda: tar_of(*good_entries(), file(TWO, b"two")),
    "parent dir entry missing": lambda: inserted(4, file(TOP + "/e/x")),
    "parent of a top missing": lambda: replaced(0),
    "entry below a symlink": lambda: inserted(5, file(TOP + "/l/x")),
    "entry below a file": lambda: inserted(2, file(TOP + "/a/x")),
    "entry back in a closed directory": lambda: inserted(5, file(TOP + "/d/y")),
    "unexpected top-level name": lambda: inserted(5, file(TWO + "x")),
    "unexpected first top-level name": lambda: replaced(0, entry(TWO)),
    "extra store path": lambda: tar_of(*good_entries(), entry(TWO + "-extra")),
    "store path missing from the chunk": lambda: tar_of(*good_entries()[:5]),
    "empty chunk": lambda: tar_of(),
    "setuid file": lambda: replaced(3, file(TOP + "/d/x", mode=0o4755)),
    "setuid canonical file": lambda: replaced(3, file(TOP + "/d/x", mode=0o4555)),
    "mode 0644": lambda: replaced(1, file(TOP + "/a", b"a", mode=0o644)),
    "mode 0755": lambda: replaced(3, file(TOP + "/d/x", mode=0o755)),
    "mode 0000": lambda: replaced(1, file(TOP + "/a", b"a", mode=0)),
    "writable directory": lambda: replaced(2, entry(TOP + "/d", mode=0o755)),
    "sticky directory": lambda: replaced(2, entry(TOP + "/d", mode=0o1555)),
    "setgid top directory": lambda: replaced(0, entry(TOP, mode=0o2555)),
    "newline in a name": lambda: inserted(2, file(TOP + "/b\nc")),
    "newline in a top name": lambda: replaced(5, file(TWO + "\n", b"two")),
    "pax path with '..'": lambda: _pax_path(TOP + "/../../etc/passwd"),
    "pax absolute path": lambda: _pax_path("/etc/passwd"),
    "not a tar": lambda: b"\x89PNG" + bytes(1020),
    "truncated in a file": lambda: tar_of(*good_entries())[:512 * 3 + 100],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_unpack_rejects(case: str) -> None:
    data = HOSTILE[case]()
    with pytest.raises(ArchiveError):
        unpack_bytes(data)


def test_expected_names_must_all_be_present() -> None:
    data = tar_of(*good_entries())
    with pytest.raises(ArchiveError, match="lacks store path"):
        unpack_bytes(data, [TOP, TWO, TWO + "-more"])
    with pytest.raises(ArchiveError):
        unpack_bytes(data, [TOP])
    with pytest.raises(ArchiveError):
        unpack_bytes(data, [TWO, TOP])


def test_no_event_reaches_an_unexpected_path() -> None:
    """A rejected top-level entry is never opened."""
    opener = Opener()
    with pytest.raises(ArchiveError):
        archive.unpack(io.BytesIO(replaced(0, entry(TWO))), [TOP, TWO], opener)
    assert opener.opened == []


def _hostile_via_writer(events: Iterator[tuple]) -> bytes:
    parts: list[bytes] = []
    writer = archive.TarWriter(parts.append)
    writer.top = TOP
    for name, *args in events:
        getattr(writer, name)(*args)
    writer.close()
    return b"".join(parts)


def test_out_of_order_events_from_the_writer_are_rejected() -> None:
    """The writer trusts its caller; the reader must not trust the writer."""
    data = _hostile_via_writer(iter([
        ("begin_directory", b""),
        ("regular", b"b", False, 1), ("contents", b"b"), ("end_regular",),
        ("regular", b"a", False, 1), ("contents", b"a"), ("end_regular",),
    ]))
    with pytest.raises(ArchiveError, match="out of order"):
        unpack_bytes(data, [TOP])


# -- tarfile ends its iteration silently on a truncated or corrupt header and on a
#    missing end-of-archive marker; unpack() must not finish the last store path then.

def _top_only() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return good_entries()[:5]


def _corrupt_last_header() -> bytes:
    data = bytearray(tar_of(*_top_only()))
    # The entries are TOP, TOP/a (+1 data block), TOP/d, TOP/d/x (+1), TOP/l: the 7th
    # block is the symlink's header.  Flip one bit of its name: the checksum breaks.
    data[6 * 512 + 10] ^= 0x01
    return bytes(data)


TRUNCATED_LAST_PATH: dict[str, Callable[[], bytes]] = {
    "cut between two entries": lambda: tar_of(*_top_only())[:3 * 512],
    "cut inside a header": lambda: tar_of(*_top_only())[:3 * 512 + 100],
    "no end-of-archive marker": lambda: tar_of(*_top_only())[:7 * 512],
    "corrupt header": _corrupt_last_header,
    "garbage after the end marker": lambda: tar_of(*_top_only()) + b"junk" * 128,
}


@pytest.mark.parametrize("case", sorted(TRUNCATED_LAST_PATH))
def test_unpack_rejects_a_damaged_end(case: str) -> None:
    data = TRUNCATED_LAST_PATH[case]()
    opener = Opener()
    with pytest.raises(ArchiveError):
        archive.unpack(io.BytesIO(data), [TOP], opener)
    # The incomplete store path must not be reported as complete.
    assert all(("finish",) not in rec.events for _, rec in opener.opened)


def test_damaged_end_baseline() -> None:
    """The stream the cases above damage is itself fine, and ends where they assume."""
    data = tar_of(*_top_only())
    assert len(data) >= 9 * 512 and data[7 * 512:9 * 512] == bytes(1024)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert tf.getmembers()[4].offset == 6 * 512
    opener = unpack_bytes(data, [TOP])
    assert opener.opened[0][1].events[-1] == ("finish",)


def test_a_long_name_record_names_the_next_entry() -> None:
    """The baseline of the long-name hostile cases: GNU 'L' records are honoured."""
    opener = unpack_bytes(_long_name_record(202), [TOP])
    ((_, rec),) = opener.opened
    assert ("regular", b"n" * 200, False, 4) in rec.merged()


# -- the reader, one method per entry type (archive._Reader) ---------------------------------
# Without Nix: a tree with each entry type, dumped by nar.dump_path; each type's events,
# and the stream cut anywhere read back the same.

TREE_PATH = "0" * 32 + "-tree"
FILE_PATH = "1" * 32 + "-file"
LINK_PATH = "2" * 32 + "-link"


def _joined(rec: Recorder) -> list[tuple]:
    """``rec``'s events with end_part dropped and contents joined: a path read across
    chunks looks as one read whole."""
    whole = Recorder()
    whole.events = [e for e in rec.events if e[0] != "end_part"]
    return whole.merged()


def _each_type(root: Path) -> Path:
    """A directory with each entry type: a file, an executable, a symlink, a subdirectory."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "run").write_bytes(b"#!/bin/sh\necho run\n" * 40)
    (root / "bin" / "run").chmod(0o755)
    (root / "data").write_bytes(bytes(range(256)) * 9)
    (root / "data").chmod(0o644)
    (root / "empty").write_bytes(b"")
    (root / "link").symlink_to("data")
    (root / "zz").write_bytes(b"last\n")
    (root / "zz").chmod(0o644)
    return root


@pytest.fixture
def typed_sources(tmp_path: Path) -> list[tuple[str, Path]]:
    """TREE_PATH (the tree), FILE_PATH (one file) and LINK_PATH (one symlink) on disk."""
    (tmp_path / "f").write_bytes(b"file\n" * 300)
    (tmp_path / "l").symlink_to("/elsewhere")
    return [(TREE_PATH, _each_type(tmp_path / "t")), (FILE_PATH, tmp_path / "f"),
            (LINK_PATH, tmp_path / "l")]


def _cut_stream(typed_sources: list[tuple[str, Path]],
                chunk_size: int = 0) -> tuple[list[bytearray], list[tuple]]:
    """The tar stream of ``typed_sources``, cut every ``chunk_size`` bytes: each chunk's bytes,
    and per chunk (its start, its paths)."""
    chunks = [bytearray()]
    layout: list[tuple] = [[None, []]]

    def on_cut(where: Cut | None, paths: list[str]) -> None:
        layout[-1][1] = list(paths)
        chunks.append(bytearray())
        layout.append([where, []])

    tar = archive.TarWriter(lambda data: chunks[-1].extend(data), chunk_size, on_cut)
    for name, path in typed_sources:
        tar.top = name
        nar.dump_path(os.fsencode(path), tar)
    tar.close()
    layout[-1][1] = list(tar.paths)
    return chunks, [tuple(x) for x in layout]


def _read_chunks(chunks: list[bytearray], layout: list[tuple]) -> dict[str, Recorder]:
    """unpack() each chunk in order, a path's events going to one recorder throughout."""
    seen: dict[str, Recorder] = {}
    for i, (data, (start, paths)) in enumerate(zip(chunks, layout, strict=True)):
        end = layout[i + 1][0] if i + 1 < len(layout) else None
        archive.unpack(io.BytesIO(bytes(data)), paths, lambda n: seen.setdefault(n, Recorder()),
                       start, end, last=i == len(chunks) - 1)
    return seen


def test_each_entry_type_gives_its_events(typed_sources: list[tuple[str, Path]]) -> None:
    chunks, layout = _cut_stream(typed_sources)
    assert len(chunks) == 1
    seen = _read_chunks(chunks, layout)
    assert _joined(seen[TREE_PATH]) == [
        ("begin_directory", b""),
        ("begin_entry", b"bin"), ("begin_directory", b"bin"),
        ("begin_entry", b"run"), ("regular", b"bin/run", True, 760),
        ("contents", b"#!/bin/sh\necho run\n" * 40), ("end_regular",), ("end_entry",),
        ("end_directory",), ("end_entry",),
        ("begin_entry", b"data"), ("regular", b"data", False, 2304),
        ("contents", bytes(range(256)) * 9), ("end_regular",), ("end_entry",),
        ("begin_entry", b"empty"), ("regular", b"empty", False, 0), ("end_regular",),
        ("end_entry",),
        ("begin_entry", b"link"), ("symlink", b"link", b"data"), ("end_entry",),
        ("begin_entry", b"zz"), ("regular", b"zz", False, 5), ("contents", b"last\n"),
        ("end_regular",), ("end_entry",),
        ("end_directory",), ("finish",)]
    assert _joined(seen[FILE_PATH]) == [("regular", b"", False, 1500),
                                        ("contents", b"file\n" * 300), ("end_regular",),
                                        ("finish",)]
    assert _joined(seen[LINK_PATH]) == [("symlink", b"", b"/elsewhere"), ("finish",)]


def test_a_stream_cut_anywhere_reads_back_the_same(typed_sources: list[tuple[str, Path]]) -> None:
    """Chunk sizes from a few bytes to the whole: cuts after a directory, a file, a
    symlink, between store paths and inside files; each path's events are those of the
    uncut stream."""
    whole = {name: _joined(r) for name, r in _read_chunks(*_cut_stream(typed_sources)).items()}
    kinds = set()
    size = len(_cut_stream(typed_sources)[0][0])
    for chunk_size in range(64, size, 37):
        chunks, layout = _cut_stream(typed_sources, chunk_size)
        kinds.update((s.kind, s.offset is not None) for s, _ in layout if s is not None)
        seen = _read_chunks(chunks, layout)
        assert {name: _joined(r) for name, r in seen.items()} == whole, chunk_size
        ends = [e for r in seen.values() for e in r.events if e[0] == "end_part"]
        assert len(ends) == sum(1 for s, _ in layout if s is not None)
    assert kinds == {("directory", False), ("regular", False), ("regular", True),
                     ("symlink", False)}


def _header_of(name: str, kind: bytes, mode: int = 0o444) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    return info.tobuf(tarfile.GNU_FORMAT, archive.ENCODING, archive.ERRORS)


@pytest.mark.parametrize(("kind", "what"), [
    (tarfile.LNKTYPE, "a hard link"), (tarfile.CHRTYPE, "a character device"),
    (tarfile.FIFOTYPE, "a FIFO"), (b"Z", "an entry of unknown type"),
])
def test_an_entry_of_another_type_is_refused_by_name(kind: bytes, what: str) -> None:
    data = _header_of(TREE_PATH, kind) + bytes(1024)
    with pytest.raises(ArchiveError, match=f"is {what}.*only files, directories and symlinks"):
        archive.unpack(io.BytesIO(data), [TREE_PATH], lambda n: Recorder())


def test_a_chunk_that_stops_where_the_next_does_not_start_is_refused(
        typed_sources: list[tuple[str, Path]]) -> None:
    chunks, layout = _cut_stream(typed_sources, 1024)
    wrong = Cut(TREE_PATH, "zzz", "regular")
    with pytest.raises(ArchiveError, match="but the next chunk starts"):
        archive.unpack(io.BytesIO(bytes(chunks[0])), layout[0][1], lambda n: Recorder(),
                       None, wrong, last=False)
