"""The reference map of a master on disk (a closureInfo dir with its store, or a binary
cache dir): its sidecar read, or the map made from the master's own paths and the
sidecar written (payload/refmap.py).

The sidecar of ``MASTER`` is ``MASTER.nix-prefix-refmap`` beside it: a closureInfo
dir is often a symlink into a read-only store (the file goes beside the link); a
binary cache dir is a publication, served and mirrored file by file, which the map,
this machine's own working state, is no part of (and a cache that grows would carry
a stale map to its mirrors).  It is checked against the master's registration or
narinfos (store dir, paths in order, NAR hashes) on every start; one that does not fit
(the closure changed, the cache grew) or is damaged is made again, with one read of
every path (each checked against its NAR hash).  Where it cannot be written, the map
lives in memory for this run only.  A sidecar that fits but whose offsets lie is
caught only where the rewrite meets them: refused there (RefMapError, exit 3).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ..payload import derivation, refmap, storepath
from ..payload import retarget as retargets
from ..payload.hashes import parse_sha256
from ..payload.manifest import Manifest, PathEntry, has_derivations
from ..payload.tree import Sink

# A source's replay (builder/sources.py ``Source.replay``): named here, not imported,
# because sources.py asks this module for its map.
Replay = Callable[[Iterable[str], Callable[[str], Sink], int], None]


def sidecar_of(master: Path) -> Path:
    """Where the map of the master ``master`` is kept (``.``, ``..`` and a trailing slash
    spelled out first, so that the file is beside the master, never inside it)."""
    whole = Path(os.path.abspath(master))
    return whole.parent / (whole.name + refmap.SIDECAR_SUFFIX)


def fitting_sidecar(master: Path, m: Manifest, padded_ok: bool = False) -> refmap.RefMap | None:
    """The map in the sidecar of ``master`` if it describes the paths of ``m`` (store
    dir, names in order, NAR hashes), else None (absent, damaged or stale).
    ``padded_ok``: the map may name any spelling of ``m``'s store dir with more slashes
    (a binary cache's NARs tell which only when read: the map tells it instead)."""
    try:
        found = refmap.read_sidecar(str(sidecar_of(master)))
        if found is None:
            return None
        if padded_ok and refmap.canonical(found.store_dir) == m.store_dir.encode():
            m = m.replaced(embedded_store_dir=found.store_dir.decode())
        retargets.check_refs(found, m)
        return found
    except (refmap.RefMapError, UnicodeDecodeError):
        return None  # made again by the caller


def made_ref_map(m: Manifest, replay: Replay, master: Path,
                 extra: Iterable[bytes] = ()) -> refmap.RefMap:
    """The map of the paths of ``m`` (``extra``: more hash parts to look for), made with
    one read of each through ``replay`` (every path checked against its NAR hash) and
    saved as the sidecar of ``master`` where that can be written."""
    extra = sorted(extra)
    embedded = m.embedded_store_dir.encode()
    candidates = refmap.candidates([p.name for p in m.paths], extra)
    recorders: dict[str, refmap.Recorder] = {}

    def open_path(name: str) -> Sink:
        return recorders.setdefault(name, refmap.Recorder(name, embedded, candidates))

    replay({p.name for p in m.paths}, open_path, 1)
    refs = refmap.RefMap(embedded, [recorders[p.name].result(parse_sha256(p.nar_hash))
                                    for p in m.paths], extra)
    refmap.write_sidecar(str(sidecar_of(master)), refs)
    return refs


def tree_ref_map(m: Manifest, root: Path, replay: Replay, master: Path) -> refmap.RefMap:
    """The map of the tree source of manifest ``m`` under ``root`` (the master
    ``master``): its sidecar if that fits, else made with one read of the store."""
    found = fitting_sidecar(master, m)
    if found is not None:
        return found
    extra = drv_outputs(root, m.store_dir, m.paths) if has_derivations(m.paths) else []
    return made_ref_map(m, replay, master, extra)


def cache_ref_map(m: Manifest, replay: Replay, master: Path) -> refmap.RefMap:
    """The map of the binary cache dir ``master`` (manifest ``m``, its embedded store
    dir known): made with one read of every NAR and saved as its sidecar (a fitting
    sidecar is the caller's to read first, before it knows the embedded store dir)."""
    drvs = [p.name for p in m.paths if storepath.is_derivation(p.name)]
    texts: dict[str, bytes] = {}
    if drvs:  # their outputs are renamed too (exact.py): the map looks for them
        replay(drvs, lambda name: retargets.Collector(name, texts), 1)
    return made_ref_map(m, replay, master, derivation_outputs(texts.values()))


def derivation_outputs(drvs: Iterable[bytes]) -> set[bytes]:
    """The hash parts of the outputs the ``.drv`` files ``drvs`` name (one that does not
    parse names none: a map without its outputs is only unused by an exact rewrite)."""
    found = set()
    for text in drvs:
        try:
            outputs = derivation.parse(text).outputs
        except derivation.DerivationError:
            continue
        for _, path, _, _ in outputs:
            found.add(path.rpartition("/")[2][:storepath.HASH_LENGTH].encode())
    return found


def drv_outputs(store_root: Path, store_dir: str, entries: Sequence[PathEntry]) -> list[bytes]:
    """The hash parts of the outputs the closure's ``.drv`` files name (read at
    ``store_root``): what an exact retarget renames, and so what the reference map looks
    for besides the closure's.  One unreadable is derivations.py's to name."""
    texts = []
    for e in entries:
        if storepath.is_derivation(e.name):
            try:
                texts.append((store_root / e.name).read_bytes())
            except OSError:
                continue
    return sorted(derivation_outputs(texts))
