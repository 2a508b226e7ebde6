"""The payload cut into chunks anywhere: TarWriter's cuts, unpack() resuming from them,
and payload.split putting each store path's parts back in order.

The store paths are test_archive's (real ``nix-store --add``); every way of
cutting them must give each path the same events and NAR hash as the uncut
stream, whatever order the chunks are read in; and a stream whose chunks do
not join up (a piece missing, out of order, overlapping, a split file whose
pieces disagree in size) is refused.
"""

from __future__ import annotations

import io
import random
import threading

import pytest

from nix_prefix.payload import archive, split
from nix_prefix.payload.archive import ArchiveError, Cut

from .test_archive import Opener, Recorder, StorePath, pack, store_paths  # noqa: F401


class Chunk:
    def __init__(self, start: Cut | None) -> None:
        self.data = bytearray()
        self.paths: list[str] = []
        self.start = start


def cut_stream(paths: list[StorePath], chunk_size: int) -> list[Chunk]:
    """Pack ``paths`` as the builder does, cut every ``chunk_size`` bytes."""
    chunks = [Chunk(None)]

    def on_cut(where: Cut | None, names: list[str]) -> None:
        chunks[-1].paths = list(names)
        chunks.append(Chunk(where))

    tar = archive.TarWriter(lambda data: chunks[-1].data.extend(data), chunk_size, on_cut)
    import os

    from nix_prefix.payload import nar
    for sp in paths:
        tar.top = sp.base
        nar.dump_path(os.fsencode(sp.path), tar)
    tar.close()
    chunks[-1].paths = list(tar.paths)
    return chunks


class Reader:
    """unpack() for each chunk of ``chunks``; split paths go through split.SplitPath."""

    def __init__(self, chunks: list[Chunk]) -> None:
        self.chunks = chunks
        self.visitors: dict[str, Recorder] = {}
        spans: dict[str, list[int]] = {}
        for i, c in enumerate(chunks):
            for name in c.paths:
                spans.setdefault(name, []).append(i)
        self.splits = {name: split.SplitPath(s[0], s[-1], lambda name=name: self._open(name))
                       for name, s in spans.items() if len(s) > 1}

    def _open(self, name: str) -> Recorder:
        self.visitors[name] = Recorder()
        return self.visitors[name]

    def read(self, i: int) -> None:
        c = self.chunks[i]

        def open_path(name: str) -> object:
            return self.splits[name].part(i) if name in self.splits else self._open(name)

        end = self.chunks[i + 1].start if i + 1 < len(self.chunks) else None
        archive.unpack(io.BytesIO(bytes(c.data)), c.paths, open_path, c.start, end,
                       last=i == len(self.chunks) - 1)


def read_chunks(chunks: list[Chunk], order: list[int]) -> dict[str, Recorder]:
    """unpack() every chunk in ``order``: each path's recorded events."""
    reader = Reader(chunks)
    for i in order:
        reader.read(i)
    return reader.visitors


@pytest.mark.parametrize("chunk_size", [600, 1000, 4096, 30000, 1 << 20])
def test_every_cut_gives_each_path_its_events_in_order(
        store_paths: list[StorePath], chunk_size: int) -> None:  # noqa: F811
    whole, packed, _ = pack(store_paths)
    chunks = cut_stream(store_paths, chunk_size)
    assert b"".join(bytes(c.data) for c in chunks) == whole  # cutting moves no byte
    if chunk_size < len(whole):
        assert len(chunks) > 1
    assert sum(len(c.data) for c in chunks[:-1]) <= (len(chunks) - 1) * (chunk_size + 3 * 512)
    orders = [list(range(len(chunks))), list(reversed(range(len(chunks))))]
    orders.append(random.Random(chunk_size).sample(range(len(chunks)), len(chunks)))
    for order in orders:
        got = read_chunks(chunks, order)
        assert list(got) == [sp.base for sp in store_paths] or order != orders[0]
        for sp, rec in zip(store_paths, packed, strict=True):
            assert got[sp.base].merged() == rec.merged() + [("finish",)], (sp.base, order)
            assert got[sp.base].hasher.digest() == rec.hasher.digest()


def test_small_chunks_cut_inside_files_and_between_entries(
        store_paths: list[StorePath]) -> None:  # noqa: F811
    starts = [c.start for c in cut_stream(store_paths, 1000) if c.start is not None]
    inside = [s for s in starts if s.offset is not None]
    assert inside and all(0 <= s.offset < s.size and s.kind == "regular" for s in inside)
    assert any(s.kind == "directory" for s in starts)
    assert any(s.offset is None and s.kind != "directory" for s in starts)


def test_chunks_read_in_threads(store_paths: list[StorePath]) -> None:  # noqa: F811
    """Four threads, chunks taken in order (as installer/source.py does)."""
    _, packed, _ = pack(store_paths)
    chunks = cut_stream(store_paths, 700)
    queue = list(range(len(chunks)))
    lock = threading.Lock()
    errors: list[BaseException] = []
    reader = Reader(chunks)

    def worker() -> None:
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    i = queue.pop(0)
                reader.read(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for sp, rec in zip(store_paths, packed, strict=True):
        assert reader.visitors[sp.base].merged() == rec.merged() + [("finish",)]


def test_a_part_over_the_hold_limit_waits_for_its_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(split, "HOLD_LIMIT", 4)
    rec = Recorder()
    path = split.SplitPath(0, 1, lambda: rec)
    first = path.part(0)
    second = path.part(1)
    done = threading.Event()

    def later() -> None:
        second.contents(b"0123456789")  # over the limit: waits for part 0
        second.finish()
        done.set()

    t = threading.Thread(target=later)
    t.start()
    assert not done.wait(0.3)
    first.regular(b"", False, 13)
    first.contents(b"abc")
    first.end_part()
    t.join(60)  # returns as soon as it is done; the bound is for a stalled machine
    assert done.is_set()
    assert rec.events == [("regular", b"", False, 13), ("contents", b"abc"),
                          ("contents", b"0123456789"), ("finish",)]


def test_a_waiting_part_gives_up_when_told_to_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(split, "HOLD_LIMIT", 4)
    stop = threading.Event()

    class Stopped(Exception):
        pass

    def check() -> None:
        if stop.is_set():
            raise Stopped()

    path = split.SplitPath(0, 1, Recorder, check)
    path.part(0)
    stop.set()
    with pytest.raises(Stopped):
        path.part(1).contents(b"0123456789")


# -- chunks that do not join up -----------------------------------------------------------------

def _read_in_order(chunks: list[Chunk]) -> None:
    read_chunks(chunks, list(range(len(chunks))))


def _cut_inside(store_paths: list[StorePath]) -> tuple[list[Chunk], int]:  # noqa: F811
    chunks = cut_stream(store_paths, 1000)
    i = next(i for i, c in enumerate(chunks) if c.start is not None and c.start.offset)
    return chunks, i


def test_a_missing_piece_is_refused(store_paths: list[StorePath]) -> None:  # noqa: F811
    chunks, i = _cut_inside(store_paths)
    with pytest.raises(ArchiveError, match="next chunk starts|lacks|not the next|truncated"):
        _read_in_order(chunks[:i] + chunks[i + 1:])


def test_a_missing_last_piece_is_refused(store_paths: list[StorePath]) -> None:  # noqa: F811
    chunks = cut_stream(store_paths, 1000)
    assert chunks[-1].start is not None  # the last path goes on into the last chunk
    with pytest.raises(ArchiveError, match="truncated|end-of-archive"):
        _read_in_order(chunks[:-1])


def test_pieces_out_of_order_are_refused(store_paths: list[StorePath]) -> None:  # noqa: F811
    chunks, i = _cut_inside(store_paths)
    swapped = chunks[:i] + [chunks[i + 1], chunks[i]] + chunks[i + 2:]
    with pytest.raises(ArchiveError):
        _read_in_order(swapped)


def test_overlapping_pieces_are_refused(store_paths: list[StorePath]) -> None:  # noqa: F811
    chunks, i = _cut_inside(store_paths)
    start = chunks[i].start
    # The next chunk claims to go on from an earlier byte of the same file.
    chunks[i].start = Cut(start.path, start.entry, start.kind, start.offset - 1, start.size)
    with pytest.raises(ArchiveError, match="next chunk starts|byte"):
        _read_in_order(chunks)


def test_split_file_pieces_that_disagree_in_size_are_refused(
        store_paths: list[StorePath]) -> None:  # noqa: F811
    chunks, i = _cut_inside(store_paths)
    start = chunks[i].start
    chunks[i].start = Cut(start.path, start.entry, start.kind, start.offset, start.size + 7)
    with pytest.raises(ArchiveError, match="bytes here, but the next chunk"):
        _read_in_order(chunks)


def test_a_chunk_that_goes_on_past_the_cut_is_refused(
        store_paths: list[StorePath]) -> None:  # noqa: F811
    chunks, i = _cut_inside(store_paths)
    chunks[i - 1].data += b"\0" * 512
    with pytest.raises(ArchiveError, match="goes on past"):
        _read_in_order(chunks)


def test_an_end_marker_before_the_last_chunk_is_refused(
        store_paths: list[StorePath]) -> None:  # noqa: F811
    chunks = cut_stream(store_paths, 4096)
    i = next(i for i, c in enumerate(chunks) if i and c.start is None)
    chunks[i - 1].data += b"\0" * 1024
    with pytest.raises(ArchiveError, match="end-of-archive marker before the last"):
        _read_in_order(chunks)


def test_a_start_the_stream_does_not_match_is_refused(
        store_paths: list[StorePath]) -> None:  # noqa: F811
    chunks = cut_stream(store_paths, 1000)
    i = next(i for i, c in enumerate(chunks) if c.start is not None and c.start.offset is None)
    chunks[i].start = Cut(chunks[i].start.path, "zzz", "symlink")
    with pytest.raises(ArchiveError):
        _read_in_order(chunks)
