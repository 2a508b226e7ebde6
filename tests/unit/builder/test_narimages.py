"""NAR images (builder/narimages.py): a retargeted NAR made as the image plus patches is
byte for byte the NAR the retarget sink makes, for every kind of file of the reference
map's corpus, same-length and exact; a map that does not fit the image is refused."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from nix_prefix.builder import narimages
from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.errors import BuildError
from nix_prefix.builder.sources import CACHE, CLOSURE, INSTALLER, open_source
from nix_prefix.payload import refmap, retarget
from nix_prefix.payload.container import InstallerFile
from nix_prefix.payload.rewrite import PathRewriter

from tests.support import tmpfs
from tests.unit.builder.test_sources import (
    APP,
    DEP,
    kinds,  # noqa: F401 - the sources' fixture
    nar_hashes,
)
from tests.unit.payload.test_refmap import (
    EXTRA,
    NAMES,
    RENAMING,
    Events,
    lying,
    map_of,
    nar_of,
    tree,  # noqa: F401 - the corpus's fixture
)

NEW_DIRS = ["/home/u/n/store", "/q/store"]


def image_of(ev: Events, into: Path) -> narimages.Image:
    done: dict[str, narimages.Image] = {}
    digest = hashlib.sha256(nar_of(ev, lambda out: out)).digest()
    writer = narimages._ImageWriter(into / "p.tmp", into / "p.nar", done, "p", digest,
                                    threading.Lock())
    ev.replay(writer, 1 << 16)  # its events end with finish
    return done["p"]


@pytest.mark.parametrize("renaming", [{}, RENAMING], ids=["same-length", "exact"])
@pytest.mark.parametrize("new_dir", NEW_DIRS)
def test_image_plus_patches_is_the_sinks_nar(tree, renaming, new_dir: str,  # noqa: F811
                                             tmp_path: Path) -> None:
    store_dir, ev = tree
    new = retarget.padded_store_dir(store_dir.decode(), new_dir).encode()
    scanned = nar_of(ev, lambda out: PathRewriter(out, store_dir, new, renaming))
    image = image_of(ev, tmp_path)
    assert image.file.read_bytes() == nar_of(ev, lambda out: out)  # the original NAR
    refs = map_of(ev, store_dir)
    rw = refmap.Rewrite(store_dir, new, renaming, refmap.candidates(NAMES, [EXTRA]))
    patched = narimages.Patched(image, narimages.patches(image, refs, rw))
    for piece in (1 << 20, 65_536, 4093):
        assert b"".join(patched.pieces(piece)) == scanned
    # From any byte on: in the image's bytes, at a patch, inside one, at the end.
    starts = {0, 1, len(scanned) - 1, len(scanned)}
    shift = 0  # from the image's offsets to the NAR's
    for at, n, new in patched.patches[:12]:
        o = at + shift
        starts |= {o - 1, o, o + 1, o + len(new) // 2}
        shift += len(new) - n
    for start in sorted(starts):
        assert b"".join(patched.pieces(65_536, start)) == scanned[start:], start
    assert patched.size == len(scanned)
    assert patched.digest() == hashlib.sha256(scanned).digest()
    assert patched.digest() == hashlib.sha256(scanned).digest()  # from the kept state
    # Text got the canonical dir, so some lengths changed: the length fields were patched.
    assert any(n == 8 and at in {p.length_at for p in image.places}
               for at, n, _ in patched.patches)


def test_no_patches_is_the_image(tree, tmp_path: Path) -> None:  # noqa: F811
    _, ev = tree
    image = image_of(ev, tmp_path)
    patched = narimages.Patched(image, [])
    assert b"".join(patched.pieces(1000)) == image.file.read_bytes()
    assert patched.size == image.size
    assert patched.digest() == hashlib.sha256(image.file.read_bytes()).digest()


@pytest.mark.parametrize("how", ["past-the-end", "wrong-bytes", "hash-not-a-hash", "kind",
                                 "more-files", "overlapping"])
def test_a_lying_map_is_refused_with_one_line(tree, how: str,  # noqa: F811
                                              tmp_path: Path) -> None:
    store_dir, ev = tree
    new = retarget.padded_store_dir(store_dir.decode(), "/home/u/n/store").encode()
    rw = refmap.Rewrite(store_dir, new, RENAMING, refmap.candidates(NAMES, [EXTRA]))
    image = image_of(ev, tmp_path)
    with pytest.raises(refmap.RefMapError) as e:
        narimages.patches(image, lying(ev, store_dir, how), rw)
    assert "\n" not in str(e.value) and e.value.exit_code == 3
    assert str(e.value).startswith("reference map: ")


@pytest.mark.parametrize("kind", [INSTALLER, CLOSURE, CACHE])
def test_a_source_imaged_once_reads_as_it_did(kinds: dict[str, Path],  # noqa: F811
                                              kind: str, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    """Each kind of source, imaged: every later read comes from the images (no installer
    chunk decoded again), checked against the NAR hash; the private dir (0700, named
    for this pid) goes with ``close``."""
    registered = {i.path.rpartition("/")[2]: i.nar_hash
                  for i in read_closure(kinds[CLOSURE]).infos}
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # gettempdir() caches it
    source = narimages.imaged(open_source(kinds[kind]), limit=1 << 30, jobs=2)
    assert isinstance(source, narimages.ImagedSource)
    into = source.image(DEP).file.parent
    assert into.parent == tmp_path
    assert into.name.startswith(f"{narimages.IMAGES_PREFIX}{os.getpid()}-")
    assert (into.stat().st_mode & 0o777) == 0o700
    unpacked: list[object] = []
    monkeypatch.setattr(InstallerFile, "unpack", lambda *a, **k: unpacked.append(a))
    with source:
        for _ in range(2):
            assert nar_hashes(source, jobs=2) == registered
        assert unpacked == []  # no chunk decoded again
        image = source.image(DEP).file
        data = bytearray(image.read_bytes())
        data[-20] ^= 1
        image.write_bytes(bytes(data))
        with pytest.raises(BuildError, match="NAR image .* changed"):
            nar_hashes(source, [DEP])
    assert not into.exists()


def test_a_source_larger_than_the_limit_stays_as_it_is(kinds: dict[str, Path]) -> None:  # noqa: F811
    with open_source(kinds[INSTALLER]) as installer:
        assert narimages.imaged(installer, limit=1) is installer


@pytest.mark.parametrize("kind", [INSTALLER, CLOSURE, CACHE])
def test_a_full_disk_leaves_the_source_as_it_is(kinds: dict[str, Path],  # noqa: F811
                                                kind: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Images that do not fit after all (the free space looked enough: a disk filled
    meanwhile) leave nothing behind, and the source is served as it is."""
    small = tmp_path / "small"
    small.mkdir()
    with tmpfs(small, "size=4k"):  # one page: the second image finds no room
        monkeypatch.setattr(tempfile, "tempdir", str(small))  # gettempdir() caches it
        monkeypatch.setattr(narimages.shutil, "disk_usage",
                            lambda p: shutil._ntuple_diskusage(1 << 40, 0, 1 << 40))
        with open_source(kinds[kind]) as source:
            assert narimages.imaged(source, limit=1 << 30, jobs=2) is source
            assert list(small.iterdir()) == []
            assert set(nar_hashes(source)) == {DEP, APP}
