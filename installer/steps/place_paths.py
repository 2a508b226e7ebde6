"""Placing the store paths: unpacked and verified into a staging dir, renamed into the store."""

import os

from ...payload import hashes, nar, retarget
from ...payload.machine import human_size
from ...payload.tree import Count, Tee
from .. import crashpoints, deletion, nixstore, staging, timings
from ..errors import EnvironmentProblem
from ..plan import Reverted, Step

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Callable, Dict, List, Optional, Tuple  # noqa: F401

    from ...payload.manifest import Manifest, PathEntry  # noqa: F401
    from ...payload.tree import Sink  # noqa: F401
    from ..plan import Record  # noqa: F401
    from ..run import Run  # noqa: F401
    from ..ui import UI  # noqa: F401


class PlacePaths(Step):
    """Unpack and verify the missing store paths into a staging dir, then rename
    each into the store.  Owned: every path it placed, with the NAR hash it has
    here (recorded before the first rename), so that a re-run keeps a retargeted
    copy it can check and an uninstall removes one that never got registered.
    The Run it gives the steps after it has those NAR hashes (what --load-db
    registers: the hashes of the bytes written)."""

    kind = "place-paths"

    def __init__(self, **params):
        Step.__init__(self, **params)
        self.placed_now = 0  # how many paths this run placed (not recorded)

    def describe(self, run):
        m = run.manifest
        return "unpack, verify against its NAR hash and move into %s each missing store path " \
               "(%d in all, %s)" % (run.prefix.store_dir, len(m.paths),
                                    human_size(m.total_nar_size))

    def describe_revert(self, run):
        # Said without reading Nix's database: asking must not change a byte of the
        # prefix (SQLite makes its -shm and -wal files even for a reader).
        placed = self.owned.get("placed") or {}
        if not placed:
            return None
        return "remove those of the %d store paths it placed in %s that never got " \
               "registered (the registered ones go with the register step)" % (
                   len(placed), run.prefix.store_dir)

    def is_done(self, run):
        present = [p for p in run.paths() if os.path.lexists(p)]
        return len(present) == len(run.paths()) and \
            len(nixstore.valid_paths(run.prefix, present)) == len(present)

    def execute(self, run, receipt):
        placed = self.owned.setdefault("placed", {})
        to_place, kept = self._missing(run, placed)
        manifest = run.manifest.with_nar_info(kept) if kept else run.manifest
        if not to_place:
            return run.with_manifest(manifest)

        def before_renames(infos):
            # type: (Dict[str, Tuple[str, int]]) -> None
            # Every path is unpacked and verified, its final hash known: claim them
            # all before the first one enters the store.
            for entry in to_place:
                info = infos.get(entry.name, (entry.nar_hash, entry.nar_size))
                placed[manifest.store_path(entry.name)] = [info[0], info[1]]
            receipt.save()

        if run.target is not None and run.target.rewrites and run.installer is not None:
            run.ui.say("retargeting %d store paths from %s to %s" % (
                len(to_place), run.installer.manifest.store_dir, run.prefix.store_dir))
            _warn_hidden_refs(run.manifest, run.ui)
        infos = unpack_and_place(run, to_place, before_renames)
        self.placed_now = len(to_place)
        return run.with_manifest(manifest.with_nar_info(infos))

    def _missing(self, run, placed):
        # type: (Run, Dict[str, List]) -> Tuple[List[PathEntry], Dict[str, Tuple[str, int]]]
        """The paths to unpack, and the NAR info of those a stopped run of this step
        placed that are kept as they are."""
        manifest = run.manifest
        valid = nixstore.valid_paths(run.prefix, run.paths())
        to_place = []
        kept = {}  # type: Dict[str, Tuple[str, int]]
        for entry in manifest.paths:
            path = manifest.store_path(entry.name)
            if path in valid and os.path.lexists(path):
                continue
            if os.path.lexists(path):
                if path not in placed:
                    raise EnvironmentProblem(
                        "%s is in the store but not registered with Nix, and this installer "
                        "did not put it there" % path,
                        "move it out of the store (or uninstall whatever left it) and run "
                        "the installer again")
                # Ours, from a run that stopped before registering: keep it if its
                # bytes are what that run wrote (a rewritten path's hash is known
                # only from the receipt), else unpack it again.
                if _on_disk_matches(path, placed[path]):
                    kept[entry.name] = (placed[path][0], placed[path][1])
                    staging.seal_top(path)
                    continue
                run.ui.say("replacing %s, which does not match its NAR hash" % path)
                staging.remove_tree(path)
            to_place.append(entry)
        return to_place, kept

    def revert(self, run, receipt):
        # This run's staging dir, should a Ctrl-C have cut short its removal in
        # unpack_and_place (a revert runs with the signals held).
        staging.remove_tree(staging.staging_dir(run.prefix.store_dir))
        paths = sorted(self.owned.get("placed", {}))
        valid = nixstore.valid_paths(run.prefix, paths)
        removed = []
        for path in deletion.own_store_paths(run.prefix, paths):
            # A valid one is the Register step's to delete, through Nix.
            if path not in valid and os.path.lexists(path):
                staging.remove_tree(path)
                removed.append(path)
        return Reverted(removed=removed)


def _on_disk_matches(path, recorded):
    # type: (str, list) -> bool
    try:
        digest, size = nar.hash_path(path)
    except (OSError, nar.NarError):
        return False
    return [hashes.format_sha256(digest), size] == list(recorded)


def _warn_hidden_refs(manifest, ui):
    # type: (Manifest, UI) -> None
    """Name the files a same-length rewrite cannot fix (found when the installer was built)."""
    if not manifest.hidden_refs:
        return
    ui.say("warning: %d file(s) keep the old store dir hidden in compressed or checksummed "
           "content; they are installed unchanged:" % len(manifest.hidden_refs))
    for line in manifest.hidden_refs[:20]:
        ui.say("  %s" % line)
    if len(manifest.hidden_refs) > 20:
        ui.say("  ... and %d more (nix-prefix inspect lists them all)"
               % (len(manifest.hidden_refs) - 20))


def unpack_and_place(run, to_place, before_renames):
    # type: (Run, List[PathEntry], Callable[[Dict[str, Tuple[str, int]]], None]) -> Dict[str, Tuple[str, int]]
    """Unpack the paths ``to_place`` of ``run.installer`` through ``run.target`` into a
    staging dir, verified, then rename them into the store; return the (narHash,
    narSize) of each path the retarget rewrote, by its new name.  ``before_renames``
    is given those once every path is unpacked and verified, before the first rename."""
    target, prefix = run.target, run.prefix
    assert target is not None and run.installer is not None, "placing needs what to place"
    spans = target.manifest.chunk_spans()  # by position: right for renamed paths too
    chunks = sorted(set(i for p in to_place for i in spans[p.name]))
    progress = run.ui.progress("unpacking and verifying",
                               sum(target.manifest.chunks[i].tar_size for i in chunks))
    # Named before it is made, so that the finally below removes it whenever a
    # Ctrl-C comes (just after the mkdir too).
    stage = staging.staging_dir(prefix.store_dir)
    opener = _Opener(target, set(p.name for p in to_place), stage, progress.update)
    try:
        staging.make_staging_dir(stage)
        try:
            with timings.phase("unpack"):
                run.installer.unpack(opener.open_path, chunks, run.jobs)
        except OSError as e:
            raise staging.write_error(e, prefix.store_dir)
        finally:
            opener.abort()
            progress.close()
        infos = opener.nar_infos()
        # Everything needed is unpacked and verified: only now touch the store.
        before_renames(infos)
        with timings.phase("place"):
            for entry in to_place:
                dst = target.manifest.store_path(entry.name)
                os.rename(os.path.join(stage, entry.name), dst)
                crashpoints.reached("renamed")
                staging.seal_top(dst)
                crashpoints.reached("placed")
    finally:
        staging.remove_tree(stage)
    return infos


class _Opener(object):
    """Where each path of the payload is unpacked: the ``wanted`` ones into the staging
    dir ``stage`` through the retarget, every byte counted for the progress line."""

    def __init__(self, target, wanted, stage, count):
        # type: (retarget.Retarget, set, str, Callable[[int], None]) -> None
        self.target = target
        self.wanted = wanted
        self.stage = stage
        self.count = count
        self.writers = []  # type: List[staging.DiskWriter]
        self.placed = []  # type: List[retarget.Retargeted]

    def open_path(self, name):
        # type: (str) -> Sink
        # The payload's bytes are verified against the original NAR hash on the
        # way in (InstallerFile.unpack); what reaches the disk may be rewritten.
        count = Count(self.count)
        new = self.target.name(name)
        if new not in self.wanted:
            return count
        writer = staging.DiskWriter(self.stage, new)
        self.writers.append(writer)
        # Files held back by a rewrite wait in the staging dir, inside the prefix.
        path = retarget.Retargeted(self.target, name, writer, self.stage)
        self.placed.append(path)
        return Tee(path, count)

    def abort(self):
        # type: () -> None
        for w in self.writers:
            w.abort()

    def nar_infos(self):
        # type: () -> Dict[str, Tuple[str, int]]
        infos = {}  # type: Dict[str, Tuple[str, int]]
        for path in self.placed:
            info = path.nar_info()
            if info is not None:
                infos[path.name] = info
        return infos
