"""Exact retarget at install time: the store a native build at the prefix would give.

When the payload holds the derivations of its paths (the manifest says
``derivations``: ``nix-prefix build --with-derivations``) and the prefix's
store dir S2 differs from the one the closure was built for, every store path
is recomputed for S2 the way Nix computes it (payload/exact.py), instead of
keeping the hash parts (plain relocation, payload/relocate.py):

1. ``prepare`` reads the chunks that hold ``.drv`` files and other one-file
   paths through the installer's verifying path (every NAR hash checked,
   nothing written) and plans the new names.  The plan also gives the
   "installed manifest": the paths, references, derivers, roots and
   ``nixStore`` under their new names, used by everything after it (the
   preflight checks, ``-u``, receipts, uninstall).
2. While unpacking, ``ExactRelocation.open_path`` stages each path under its
   new name, its bytes verified against the original NAR hash on the way in
   and rewritten (``exact.PathRewriter``) on the way to the disk, where they
   are hashed again for the registration.

Plain relocation is no option for such a payload: Nix's ``--load-db``
checks that each ``.drv`` it registers names the output paths it computes
for them at the store dir, and a ``.drv`` that kept its hash parts fails.

The first pass is done once per installer file and store dir: main.py,
install.py and the uninstall share it through ``prepare`` (kept by the
manifest object, see ``prepared``).
"""

import weakref

from ..payload import exact, nar
from ..payload.container import CountingVisitor
from . import preflight, staging
from .errors import InstallError

# source manifest -> {store dir: ExactRelocation}
_PREPARED = weakref.WeakKeyDictionary()  # type: weakref.WeakKeyDictionary


def applies(manifest, prefix):
    # type: (Manifest, Prefix) -> bool
    """Whether installing ``manifest`` into ``prefix`` recomputes its store paths."""
    return bool(manifest.derivations) and prefix.store_dir != manifest.store_dir


def prepare(source, prefix, ui, jobs=1):
    # type: (InstallerFile, Prefix, UI, int) -> Optional[ExactRelocation]
    """The exact relocation of ``source`` into ``prefix``, or None if it does not apply.

    The first call for a store dir reads the payload (``jobs`` chunks at
    once); later calls return the same result.  Raises InstallError (one
    line) if the prefix is too long or the closure cannot be planned,
    CorruptInstaller if the payload is damaged.
    """
    manifest = source.manifest
    if not applies(manifest, prefix):
        return None
    memo = _PREPARED.setdefault(manifest, {})
    if prefix.store_dir not in memo:
        # The checks that need only the manifest come before reading the payload.
        preflight.check_system(manifest)
        relocation = preflight.relocation(manifest, prefix)  # refuses a longer store dir
        memo[prefix.store_dir] = ExactRelocation(manifest, prefix.store_dir, relocation[1],
                                                 _read_texts(source, prefix.store_dir, ui, jobs))
    return memo[prefix.store_dir]


def prepared(manifest, prefix):
    # type: (Manifest, Prefix) -> Optional[ExactRelocation]
    """What ``prepare`` gave for ``manifest`` (the source's) and ``prefix``, if it ran."""
    return _PREPARED.get(manifest, {}).get(prefix.store_dir)


def _read_texts(source, store_dir, ui, jobs):
    # type: (InstallerFile, str, UI, int) -> Dict[str, bytes]
    """The contents the planner needs, read through the verifying path, writing nothing."""
    manifest = source.manifest
    wanted = exact.needs_contents(manifest)
    chunks = sorted(set(p.chunk for p in manifest.paths if p.name in wanted))
    progress = ui.progress("reading the derivations",
                           sum(manifest.chunks[i].nar_size for i in chunks))
    contents = {}  # type: Dict[str, bytes]

    def open_path(name):
        count = CountingVisitor(progress.update)
        if name not in wanted:
            return count
        return nar.Tee(exact.Collector(name, contents), count)

    ui.say("reading the derivations: the %d store paths get the paths Nix computes for %s"
           % (len(manifest.paths), store_dir))
    try:
        source.unpack(open_path, chunks, jobs)
    finally:
        progress.close()
    return contents


class ExactRelocation(object):
    """The plan for one store dir and what the unpacking needs of it.

    ``manifest`` is the installed manifest (new names; the NAR hash and size
    of each rewritten path are recorded as it is unpacked).
    """

    def __init__(self, source_manifest, store_dir, padded_store_dir, contents):
        # type: (Manifest, str, str, Dict[str, bytes]) -> None
        self.old_store_dir = source_manifest.store_dir
        self.store_dir = store_dir
        try:
            self.plan = exact.plan_manifest(source_manifest, contents, store_dir)
        except exact.ExactError as e:
            raise InstallError(
                "cannot recompute the store paths for %s: %s" % (store_dir, e),
                "install into %s, the prefix this installer was built for"
                % source_manifest.prefix)
        self.manifest = exact.retargeted_manifest(source_manifest, self.plan, store_dir,
                                                  padded_store_dir)
        # A text's NAR size is known now (its hash once it is written): a file's
        # bytes are padded to 8 in a NAR.
        for i, old in enumerate(source_manifest.paths):
            text = self.plan.texts.get(old.name)
            if text is not None:
                self.manifest.paths[i].nar_size += (_padded(len(text))
                                                    - _padded(len(contents[old.name])))
        self._binary = (source_manifest.embedded_store_dir.encode(),
                        padded_store_dir.encode(), self.plan.hashes)

    def plan_line(self):
        # type: () -> str
        return ("  recompute every store path exactly for %s from the derivations it holds "
                "(built for %s)" % (self.store_dir, self.old_store_dir))

    def open_path(self, name, wanted, stage, writers, count):
        # type: (str, Dict[str, PathEntry], str, List[object], object) -> object
        """The visitor for the payload's path ``name`` (its old name) while unpacking.

        ``wanted`` maps the new names of the paths to place to their entries
        in the installed manifest; each is staged as ``stage``/<new name>
        (its writer appended to ``writers``), the others are only verified.
        """
        new = self.plan.names[name]
        entry = wanted.get(new)
        if entry is None:
            return count
        writer = staging.DiskWriter(stage, new)
        writers.append(writer)
        hasher = nar.NarHasher()
        rewriter = exact.PathRewriter(nar.Tee(writer, hasher), self.plan.kinds[name],
                                      self.plan.texts.get(name), *self._binary)
        return staging.StagedPath(nar.Tee(rewriter, count), writer, hasher, entry)


def _padded(n):
    # type: (int) -> int
    return (n + 7) // 8 * 8
