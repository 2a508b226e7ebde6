"""The reference map of a master on disk (a closureInfo dir with its store): its
sidecar read, or the map made from the store and the sidecar written (payload/refmap.py).

The sidecar of ``MASTER`` is ``MASTER.nix-prefix-refmap`` beside it (a closureInfo dir
is often a symlink into a read-only store: the file goes beside the link).  It is
checked against the master's registration (store dir, paths, NAR hashes) on every
start; one that does not fit (the closure changed) is made again.  Where it cannot be
written, the map lives in memory for this run only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from ..payload import refmap
from ..payload import retarget as retargets
from ..payload.hashes import parse_sha256
from ..payload.manifest import Manifest, has_derivations
from ..payload.tree import Sink
from .pack import drv_outputs

# A tree source's replay (builder/sources.py TreeSource.replay): named here, not
# imported, because sources.py asks this module for its map.
Replay = Callable[[Iterable[str], Callable[[str], Sink], int], None]


def sidecar_of(master: Path) -> Path:
    """Where the map of the master ``master`` is kept."""
    return master.parent / (master.name.rstrip("/") + refmap.SIDECAR_SUFFIX)


def tree_ref_map(m: Manifest, root: Path, replay: Replay, master: Path) -> refmap.RefMap:
    """The map of the tree source of manifest ``m`` under ``root`` (the master
    ``master``): its sidecar if that fits, else made with one read of the store through
    ``replay`` (every path checked against its NAR hash) and saved as the sidecar."""
    path = sidecar_of(master)
    try:
        found = refmap.read_sidecar(str(path))
        if found is not None:
            retargets.check_refs(found, m)
            return found
    except refmap.RefMapError:
        pass  # damaged or stale: made again below
    extra = drv_outputs(root, m.store_dir, m.paths) if has_derivations(m.paths) else []
    embedded = m.embedded_store_dir.encode()
    candidates = refmap.candidates([p.name for p in m.paths], extra)
    recorders: dict[str, refmap.Recorder] = {}

    def open_path(name: str) -> Sink:
        return recorders.setdefault(name, refmap.Recorder(name, embedded, candidates))

    replay({p.name for p in m.paths}, open_path, 1)
    refs = refmap.RefMap(embedded, [recorders[p.name].result(parse_sha256(p.nar_hash))
                                    for p in m.paths], extra)
    refmap.write_sidecar(str(path), refs)
    return refs
