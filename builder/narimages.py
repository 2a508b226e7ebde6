"""A master's store paths kept as NAR files; a retargeted NAR as their bytes plus patches.

``serve`` answers every store dir Q from one master.  Serialising a path's NAR
from a tree and rewriting it piece by piece is Python work per file and per
piece (issue 25 measured it at a tenth of a static cache).  So each path's
NAR is written once, at start, into a private directory: an ``Image``, the
file and where each regular file's and symlink's length field and bytes lie
in it.  At a store dir Q the retargeted NAR is then that file with a few
patches (``Patched``): the replacements the reference map gives
(payload/refmap.py ``FilePatch.whole``: the rules of every other rewrite),
and, for a text file or symlink whose length changes, its length field and
its padding (src/libutil/archive.cc: contents follow their u64 length and are
padded with zeros to 8 bytes).  Reading it is large ``pread``s and joins; its
NarHash one sha256 pass.

A path the map does not cover (the exact plan's own texts, a renaming with
hash parts the map did not look for) has no patched image, nor has a master
whose NARs do not fit the bound: ``serve`` streams those through their
retarget sink as before (builder/master.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..payload import nar
from ..payload.refmap import FilePatch, PathRefs, RefMapError, Rewrite
from ..payload.rewrite import is_archive
from .errors import BuildError
from .leftovers import remove_stale
from .sources import Source

IMAGES_PREFIX = "nix-prefix-nars-"  # + pid: the directories of Images
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
    """One store path's NAR on disk, and its files and symlinks in NAR order."""

    file: Path
    size: int
    places: tuple[Place, ...]


class _ImageWriter(nar.NarWriter):
    """Tree events in; the NAR into ``tmp``, renamed ``final`` at ``finish`` (sent by the
    source only once the path matched its NAR hash)."""

    def __init__(self, tmp: Path, final: Path, done: dict[str, Image], name: str,
                 lock: threading.Lock) -> None:
        self._file = open(tmp, "wb", buffering=PIECE)  # noqa: SIM115 - closed at finish
        nar.NarWriter.__init__(self, self._file.write)
        self._tmp, self._final, self._done, self._name, self._lock = tmp, final, done, name, lock
        self._places: list[Place] = []

    def regular(self, rel: bytes, executable: bool, size: int) -> None:
        nar.NarWriter.regular(self, rel, executable, size)
        self._places.append(Place(rel, False, self.length_at, size))

    def symlink(self, rel: bytes, target: bytes) -> None:
        nar.NarWriter.symlink(self, rel, target)
        self._places.append(Place(rel, True, self.length_at, len(target)))

    def finish(self) -> None:
        self._file.close()
        os.replace(self._tmp, self._final)
        with self._lock:
            self._done[self._name] = Image(self._final, self.size, tuple(self._places))


class Images:
    """The images of every path of some sources, in one private directory (mode 0700,
    removed on ``close`` and at exit)."""

    def __init__(self, sources: Sequence[Source], into: Path, jobs: int) -> None:
        self._into = into
        self._removed = weakref.finalize(self, shutil.rmtree, into, True)
        self.by_source: list[dict[str, Image]] = []
        lock = threading.Lock()
        for i, source in enumerate(sources):
            done: dict[str, Image] = {}
            names = [p.name for p in source.manifest.paths]
            source.replay(names, lambda name, i=i, done=done: _ImageWriter(  # type: ignore[misc]
                into / f"{i}-{name}.tmp", into / f"{i}-{name}.nar", done, name, lock), jobs)
            self.by_source.append(done)

    @classmethod
    def made(cls, sources: Sequence[Source], limit: int, jobs: int) -> Images | None:
        """The images of ``sources``, or None when their NARs take more than ``limit``
        bytes or half the free space of the temporary directory."""
        size = sum(s.manifest.total_nar_size for s in sources)
        if size > limit:
            return None
        remove_stale(Path(tempfile.gettempdir()), IMAGES_PREFIX)  # a serve killed -9
        into = Path(tempfile.mkdtemp(prefix=f"{IMAGES_PREFIX}{os.getpid()}-"))  # 0700
        try:
            if size > shutil.disk_usage(into).free // 2:
                shutil.rmtree(into, ignore_errors=True)
                return None
            return cls(sources, into, jobs)
        except BaseException:
            shutil.rmtree(into, ignore_errors=True)
            raise

    def close(self) -> None:
        self._removed()

    def forked(self) -> None:
        """In a forked worker: the directory stays the supervisor's to remove."""
        self._removed.detach()


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


class Patched:
    """A retargeted NAR: ``image``'s bytes with ``patches`` applied."""

    def __init__(self, image: Image, patches: list[Patch]) -> None:
        self.image = image
        self.patches = patches
        self.size = image.size + sum(len(new) - n for _, n, new in patches)

    def pieces(self, size: int = PIECE) -> Iterator[bytes]:
        """The NAR in pieces of about ``size`` bytes (a patch is joined to the bytes
        around it, not handed on alone)."""
        with open(self.image.file, "rb", buffering=0) as f:
            fd = f.fileno()
            parts: list[bytes] = []
            held = pos = 0
            for off, n, new in [*self.patches, (self.image.size, 0, b"")]:
                while pos < off:
                    data = os.pread(fd, min(off - pos, max(size - held, 1 << 16)), pos)
                    if not data:
                        raise BuildError(f"{self.image.file} was cut short while served",
                                         "restart the server")
                    parts.append(data)
                    held += len(data)
                    pos += len(data)
                    if held >= size:
                        yield parts[0] if len(parts) == 1 else b"".join(parts)
                        parts, held = [], 0
                if new:
                    parts.append(new)
                    held += len(new)
                pos = off + n
            if parts:
                yield b"".join(parts)

    def digest(self) -> bytes:
        """The sha256 of the NAR (its NarHash): one pass over big pieces."""
        h = hashlib.sha256()
        for piece in self.pieces():
            h.update(piece)
        return h.digest()
