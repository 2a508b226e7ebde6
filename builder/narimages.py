"""A master's store paths kept as NAR files; a retargeted NAR as their bytes plus patches.

``serve`` answers every store dir Q from one master.  Serialising a path's NAR
from a tree and rewriting it piece by piece is Python work per file and per
piece (issue 25 measured it at a tenth of a static cache).  So each path's
NAR is written once, at start, into a private directory: its ``Image``, the
file and where each regular file's and symlink's length field and bytes lie
in it.  An ``ImagedSource`` is a source read from its images from then on:
an installer's xz, a tree's walk or a cache's compression happen once.  At a
store dir Q the retargeted NAR is then that file with a few patches
(``Patched``): the replacements the reference map gives (payload/refmap.py
``FilePatch.whole``: the rules of every other rewrite), and, for a text file
or symlink whose length changes, its length field and its padding
(src/libutil/archive.cc: contents follow their u64 length and are padded
with zeros to 8 bytes).  Reading it is large ``pread``s and joins; its
NarHash one sha256 pass.

A path the map does not cover (the exact plan's own texts, a renaming with
hash parts the map did not look for) has no patched image: ``serve`` parses
its image through the retarget sink instead.  A master whose NARs do not fit
the bound is not imaged: every request reads its source (builder/master.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..payload import hashes, nar
from ..payload.refmap import FilePatch, PathRefs, RefMap, RefMapError, Rewrite
from ..payload.retarget import check_refs
from ..payload.rewrite import is_archive
from ..payload.tree import Sink, Tee
from .errors import BuildError
from .leftovers import remove_stale
from .sources import Source

IMAGES_PREFIX = "nix-prefix-nars-"  # + pid: the directories of ImagedSource
PIECE = 1 << 20  # bytes read (and handed on) at a time

Patch = tuple[int, int, bytes]  # (offset in the NAR, bytes replaced, new bytes)


@dataclass(frozen=True)
class Place:
    """A regular file or symlink in a NAR: its path, and where its u64 length is."""

    rel: bytes
    symlink: bool
    length_at: int
    size: int

    @property
    def data_at(self) -> int:
        return self.length_at + 8


@dataclass(frozen=True)
class Image:
    """One store path's NAR on disk, its sha256 (``digest``), and its files and symlinks
    in NAR order."""

    file: Path
    size: int
    digest: bytes
    places: tuple[Place, ...]
    # The sha256 state of the first N bytes, by N: the bytes before a retarget's first
    # patch are the same at every store dir, and hashed once.
    _states: dict[int, Any] = field(default_factory=dict, compare=False, repr=False)

    def hash_to(self, offset: int) -> Any:
        """A sha256 object fed the first ``offset`` bytes of the image (a copy of one kept)."""
        state = self._states.get(offset)
        if state is None:
            state = hashlib.sha256()
            with open(self.file, "rb", buffering=0) as f:
                for pos in range(0, offset, PIECE):
                    state.update(_read(f.name, f.fileno(), pos, min(PIECE, offset - pos)))
            if len(self._states) < 4:  # a few kinds of retarget, not one per store dir
                self._states[offset] = state
        return state.copy()


class _NoRoom(Exception):
    """An image could not be written (a full disk, a quota): not an OSError, which a
    source would report as its own read failing."""


class _ImageWriter(nar.NarWriter):
    """Tree events in; the NAR into ``tmp``, renamed ``final`` at ``finish`` (sent by the
    source only once the path matched its NAR hash)."""

    def __init__(self, tmp: Path, final: Path, done: dict[str, Image], name: str,
                 digest: bytes, lock: threading.Lock) -> None:
        try:
            self._file = open(tmp, "wb", buffering=PIECE)  # noqa: SIM115 - closed at finish
        except OSError as e:
            raise _NoRoom(e) from None
        nar.NarWriter.__init__(self, self._write_file)
        self._tmp, self._final, self._done, self._name = tmp, final, done, name
        self._digest, self._lock = digest, lock
        self._places: list[Place] = []

    def regular(self, rel: bytes, executable: bool, size: int) -> None:
        nar.NarWriter.regular(self, rel, executable, size)
        self._places.append(Place(rel, False, self.length_at, size))

    def symlink(self, rel: bytes, target: bytes) -> None:
        nar.NarWriter.symlink(self, rel, target)
        self._places.append(Place(rel, True, self.length_at, len(target)))

    def _write_file(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as e:
            raise _NoRoom(e) from None

    def finish(self) -> None:
        try:
            self._file.close()
            os.replace(self._tmp, self._final)
        except OSError as e:
            raise _NoRoom(e) from None
        with self._lock:
            self._done[self._name] = Image(self._final, self.size, self._digest,
                                           tuple(self._places))


class ImagedSource(Source):
    """``source`` with every path written once as a NAR image, in a private directory
    (mode 0700, removed on ``close`` and at exit): every later read is of an image,
    checked against its NAR hash as any source's read is.  What the source gives at
    start (``contents``, ``ref_map``) still comes from it."""

    def __init__(self, source: Source, into: Path, jobs: int) -> None:
        self.path = source.path
        self.manifest = source.manifest
        self._source = source
        self._into = into
        self._removed = weakref.finalize(self, shutil.rmtree, into, True)
        self._images: dict[str, Image] = {}
        lock = threading.Lock()
        # The source checks each path against this NAR hash before ``finish``.
        digests = {p.name: hashes.parse_sha256(p.nar_hash) for p in source.manifest.paths}

        def writer(name: str) -> _ImageWriter:
            return _ImageWriter(into / f"{name}.tmp", into / f"{name}.nar", self._images,
                                name, digests[name], lock)
        source.replay(list(digests), writer, jobs)

    def image(self, name: str) -> Image:
        return self._images[name]

    def contents(self) -> dict[str, bytes]:
        return self._source.contents()

    def ref_map(self) -> RefMap | None:
        return self._source.ref_map()

    def replay(self, names: Iterable[str], open_path: Callable[[str], Sink],
               jobs: int = 1) -> None:
        """Every path of ``names``, in the manifest's order, parsed from its image and
        checked against its NAR hash, then finished."""
        wanted = set(names)
        for entry in self.manifest.paths:
            if entry.name in wanted:
                self._one(entry.name, open_path(entry.name))

    def _one(self, name: str, visitor: Sink) -> None:
        image = self._images[name]
        hasher = nar.NarHasher()
        try:
            with open(image.file, "rb") as f:
                nar.parse(f.read, Tee(visitor, hasher))
            same = hasher.digest() == image.digest
        except (OSError, nar.NarError):
            same = False
        if not same:
            raise BuildError(f"{self.manifest.store_dir}/{name}: its NAR image in "
                             f"{self._into} changed", "restart the server")
        visitor.finish()

    def check(self, refs: RefMap) -> None:
        """Refuse now (RefMapError, one line) a reference map that does not fit the
        images: another payload's, or one whose offsets point outside a file or at
        bytes that are not what it says.  Every occurrence is read once, as any
        retarget would read it; a map that leaves one out is not caught (docs:
        payload/refmap.py)."""
        check_refs(refs, self.manifest)
        old = self.manifest.embedded_store_dir.encode()
        identity = Rewrite(old, old, {}, refs.candidates)
        for name, image in self._images.items():
            patches(image, refs.paths[name], identity)

    def close(self) -> None:
        self._source.close()
        self._removed()

    def forked(self) -> None:
        """In a forked worker: the images stay the supervisor's to remove."""
        self._source.forked()
        self._removed.detach()


def imaged(source: Source, limit: int, jobs: int = 1) -> Source:
    """``source`` as an ImagedSource, or as it is when its NARs take more than
    ``limit`` bytes or half the free space of the temporary directory, or when
    writing them fails all the same (a disk filled meanwhile, a quota): then every
    request reads it (an installer's chunks are decoded again each time)."""
    size = source.manifest.total_nar_size
    if size > limit:
        return source
    remove_stale(Path(tempfile.gettempdir()), IMAGES_PREFIX)  # a serve killed with -9
    into = Path(tempfile.mkdtemp(prefix=f"{IMAGES_PREFIX}{os.getpid()}-"))  # 0700
    try:
        if size > shutil.disk_usage(into).free // 2:
            shutil.rmtree(into, ignore_errors=True)
            return source
        return ImagedSource(source, into, jobs)
    except _NoRoom:
        shutil.rmtree(into, ignore_errors=True)
        return source
    except BaseException:
        shutil.rmtree(into, ignore_errors=True)
        raise


def patches(image: Image, refs: PathRefs, rewrite: Rewrite) -> list[Patch]:
    """The patches that retarget ``image`` by ``rewrite`` at the offsets of ``refs``, in
    order; RefMapError when the map does not fit the image (as PathRewriter says it)."""
    if refs.files and max(refs.files) >= len(image.places):
        raise RefMapError(f"{refs.name}: the map names more files than it has")
    found: list[Patch] = []
    with open(image.file, "rb", buffering=0) as f:
        fd = f.fileno()
        for ordinal in sorted(refs.files):
            file_refs, place = refs.files[ordinal], image.places[ordinal]
            where = f"{refs.name}/{place.rel.decode('utf-8', 'replace')}" if place.rel \
                else refs.name
            if file_refs.symlink != place.symlink:
                kind = "a symlink" if file_refs.symlink else "a regular file"
                raise RefMapError(f"{where}: the map says it is {kind}")
            if not place.symlink and is_archive(place.rel):
                continue  # left as it is by every rewrite (rewrite.py PathRewriter)
            patch = FilePatch(file_refs, place.size, rewrite, where)
            at = place.data_at

            def read_at(off: int, n: int) -> bytes:
                return os.pread(fd, n, at + off)  # noqa: B023 - used before the loop goes on
            replaced = patch.whole(read_at)
            if patch.new_size == place.size:
                found.extend((at + off, n, new) for off, n, new in replaced)
                continue
            found.append((place.length_at, 8, struct.pack("<Q", patch.new_size)))
            found.extend((at + off, n, new) for off, n, new in replaced)
            found.append((at + place.size, _padding(place.size),
                          b"\0" * _padding(patch.new_size)))
    return found


def _padding(n: int) -> int:
    return -n % 8


def _read(name: str, fd: int, pos: int, n: int) -> bytes:
    data = os.pread(fd, n, pos)
    if len(data) != n:
        raise BuildError(f"{name} was cut short while served", "restart the server")
    return data


class Patched:
    """A retargeted NAR: ``image``'s bytes with ``patches`` applied."""

    def __init__(self, image: Image, patches: list[Patch]) -> None:
        self.image = image
        self.patches = patches
        self.size = image.size + sum(len(new) - n for _, n, new in patches)

    def pieces(self, size: int = PIECE, start: int = 0) -> Iterator[bytes]:
        """The NAR from byte ``start`` on, in pieces of about ``size`` bytes: each one
        read of the image with the patches inside it applied (a few slices each)."""
        patches, total = self.patches, self.image.size
        pos, k, head = self._seek(start)
        with open(self.image.file, "rb", buffering=0) as f:
            fd = f.fileno()
            while pos < total or head:
                end = min(total, pos + size)
                last = k
                while last < len(patches) and patches[last][0] < end:
                    end = max(end, patches[last][0] + patches[last][1])  # none cut in two
                    last += 1
                data = _read(f.name, fd, pos, end - pos)
                if last == k and not head:
                    yield data
                else:
                    view = memoryview(data)
                    parts: list[bytes | memoryview] = [head] if head else []
                    cur = pos
                    for off, n, new in patches[k:last]:
                        parts += (view[cur - pos:off - pos], new)
                        cur = off + n
                    parts.append(view[cur - pos:])
                    yield b"".join(parts)
                pos, k, head = end, last, b""

    def _seek(self, start: int) -> tuple[int, int, bytes]:
        """Where the NAR's byte ``start`` comes from: (offset in the image, first patch
        after it, the part of a patch's new bytes that comes first)."""
        pos = out = 0
        for k, (off, n, new) in enumerate(self.patches):
            if start < out + off - pos:
                return pos + start - out, k, b""
            out += off - pos
            if start < out + len(new):
                return off + n, k + 1, new[start - out:]
            out += len(new)
            pos = off + n
        return pos + start - out, len(self.patches), b""

    def digest(self) -> bytes:
        """The sha256 of the NAR (its NarHash): one pass over what differs from the
        image, the hash of what comes before the first patch kept with the image."""
        if not self.patches:
            return self.image.digest
        first = self.patches[0][0]
        h = self.image.hash_to(first)
        for piece in self.pieces(start=first):
            h.update(piece)
        return h.digest()
