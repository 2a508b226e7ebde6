"""The install as a plan of revertible steps: build it, show it, run it.

``prepare`` builds the plan (plan.py, steps.py) without writing anything;
the caller shows ``plan_lines`` and asks; ``execute`` runs that same plan.
Each step's state and what it made go into the receipt before and after it
runs, so a kill at any moment leaves a prefix that a re-run finishes or an
``--uninstall`` takes back, and any failure reverts this run's steps:
the prefix is as it was, database rows included.

Nothing is moved into the store before the whole payload needed has been
unpacked into a staging dir and verified, and ``nix-store --load-db`` runs
only once every path is in place.
"""

import os
import time

from ..payload import retarget, storepath
from ..payload.machine import human_size
from ..payload.tree import Count, Tee
from . import crashpoints, envfiles, nixstore, plan, preflight, receipt, staging, steps, timings
from .errors import EnvironmentProblem, InstallError, UpdateNeeded
from .prefix import Prefix, user_name

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple  # noqa: F401

    from ..payload.container import InstallerFile  # noqa: F401
    from ..payload.manifest import Manifest, PathEntry  # noqa: F401
    from ..payload.tree import Sink  # noqa: F401
    from .ui import UI  # noqa: F401


def plan_lines(run, the_plan):
    # type: (steps.Run, plan.Plan) -> List[str]
    """What the install will do, shown before it asks to proceed: the plan's steps."""
    manifest, prefix = run.manifest, run.prefix
    lines = ["Install %d store paths (%s) into %s:" % (
        len(manifest.paths), human_size(manifest.total_nar_size), prefix.store_dir)]
    lines += the_plan.lines(run)
    line = run.target.describe() if run.target is not None else None
    if line is not None:
        lines.append(line)
    outside = any(isinstance(s, steps.ShellStartup) for s in the_plan.steps)
    lines.append("Nothing %soutside %s is changed; if a step fails, the ones before it are "
                 "undone." % ("else " if outside else "", prefix.root))
    return lines


def preflight_checks(manifest, prefix):
    # type: (Manifest, Prefix) -> None
    """Every check that needs no writing; raises InstallError on the first failure."""
    preflight.check_system(manifest)
    user_name()
    preflight.check_retarget(manifest, prefix)
    preflight.check_no_symlinks(prefix)
    preflight.check_writable(prefix)
    preflight.check_owner(prefix)
    preflight.check_parents(prefix)
    preflight.check_store_is_nix(prefix, staging.STAGING_PREFIX)
    preflight.check_nix_conf(prefix)
    preflight.check_path_length(manifest, prefix)
    missing = [p for p in manifest.paths
               if not os.path.lexists(os.path.join(prefix.store_dir, p.name))]
    preflight.check_space(prefix, sum(p.nar_size for p in missing))


def check_update(manifest, prefix, update):
    # type: (Manifest, Prefix, bool) -> None
    """Refuse to replace another install's profile unless ``update`` (-u) is given.

    The prefix holds another install when its default profile exists and lacks
    some of this installer's roots (the same installer run again, with or
    without packages the user added since, or a first install that stopped
    before the profile, is not another install).
    """
    if update:
        return
    roots = set(os.path.join(prefix.store_dir, r) for r in manifest.roots)
    current = nixstore.profile_paths(prefix)
    if current and not roots <= current:
        names = ", ".join(sorted(os.path.basename(p).partition("-")[2] for p in current))
        raise UpdateNeeded(
            "%s already has a nix-prefix install (profile generation %s with %s)" % (
                prefix.root, nixstore.profile_generation(prefix) or "?", names),
            "pass -u (--update) to add this installer's paths and make a new profile "
            "generation; the old one stays for a rollback")


def nix_tool(manifest, prefix, tool):
    # type: (Manifest, Prefix, str) -> str
    """The closure's own Nix tool (a regular file of the closure in the prefix's store,
    never one a symlink leads to elsewhere), else, for a closure without Nix, one on
    PATH, else a clear error (InstallError)."""
    nix_store = manifest.nix_store or ""
    base = nix_store.partition("/")[0]
    # (Its store path gone, as late in an uninstall, the Nix on PATH does.)
    if base and os.path.lexists(os.path.join(prefix.store_dir, base)):
        rel = "%s/bin/%s" % (nix_store.rpartition("/bin/")[0], tool)
        if storepath.shipped_file(prefix.store_dir, prefix.store_dir,
                                  (p.name for p in manifest.paths), rel) is None:
            raise InstallError(
                "the installer's Nix, %s/%s, is not a file of its closure (a symlink out of "
                "it, or missing): it would run a Nix nothing verified"
                % (prefix.store_dir, rel),
                "use an installer whose closure holds Nix itself (nix-prefix build refuses "
                "this one now)")
        # Run by its own name: Nix's tools are one program that reads its argv[0].
        return os.path.join(prefix.store_dir, rel)
    for d in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(d, tool)
        if d and os.access(candidate, os.X_OK):
            return candidate
    raise InstallError("the closure has no Nix and there is no %s on PATH" % tool,
                       "build the installer from a closure that includes Nix")


def at_prefix(source, prefix, ui, jobs=1):
    # type: (InstallerFile, Prefix, UI, int) -> retarget.Retarget
    """How the payload of ``source`` gets to ``prefix`` (payload/retarget.py ``choose``),
    and so the manifest as installed there (``.manifest``): as it is at the store dir it
    was built for, recomputed exactly when the payload holds the derivations, else the
    store dir rewritten in place.  An exact retarget reads part of the payload first
    (``jobs`` chunks at once), after the prefix's length is checked.  An installer for
    another machine is refused first.  Raises InstallError (one line): EnvironmentProblem
    for a prefix too long, CorruptInstaller if the payload is damaged."""
    manifest = source.manifest
    preflight.check_system(manifest)
    try:
        return retarget.choose(manifest, prefix.store_dir,
                               lambda: _read_derivations(source, prefix, ui, jobs),
                               derivations=manifest.derivations)
    except retarget.TooLong as e:
        raise EnvironmentProblem(e.args[0], e.hint)
    except retarget.RetargetError as e:  # the installer's closure cannot be planned
        raise InstallError(e.args[0], "install into %s, the prefix this installer was built "
                           "for" % manifest.prefix)


def _read_derivations(source, prefix, ui, jobs):
    # type: (InstallerFile, Prefix, UI, int) -> Dict[str, bytes]
    """The chunks holding ``.drv`` files and other one-file paths, read through the
    verifying path (every NAR hash checked, nothing written) for the exact planner."""
    manifest = source.manifest
    chunks = retarget.contents_chunks(manifest)
    progress = ui.progress("reading the derivations",
                           sum(manifest.chunks[i].tar_size for i in chunks))
    ui.say("reading the derivations: the %d store paths get the paths Nix computes for %s"
           % (len(manifest.paths), prefix.store_dir))
    try:
        return retarget.read_contents(source, progress.update, jobs)
    finally:
        progress.close()


def new_run(source, prefix, ui, target, update=False, jobs=1, caches=None,
            signature_names=()):
    # type: (InstallerFile, Prefix, UI, retarget.Retarget, bool, int, Optional[envfiles.Caches], Sequence[str]) -> steps.Run
    """The context the steps of an install (or uninstall) through ``target`` share;
    ``caches`` go into a new nix.conf (--substituter).  ``signature_names`` names
    the keys whose signature of the installer holds: the Register step records
    their signatures of its paths in the prefix's Nix database."""
    def place(run, to_place, before_renames):
        if run.target.rewrites:
            run.ui.say("relocating %d store paths from %s to %s"
                       % (len(to_place), run.source.manifest.store_dir, run.prefix.store_dir))
            _warn_hidden_refs(run.manifest, run.ui)
        return _unpack_and_place(run.source, run.target, run.prefix, to_place, run.ui,
                                 run.jobs, before_renames)

    manifest = target.manifest
    run = steps.Run(prefix, ui, manifest, lambda tool: nix_tool(manifest, prefix, tool),
                    source, target, jobs, update, place)
    run.caches = caches
    # A rewritten path is another path: no signature of the publisher covers it
    # (and the retargeted manifest carries none).
    run.signature_names = () if target.rewrites else tuple(signature_names)
    return run


def install(source, prefix_root, ui, update=False, jobs=1, target=None, caches=None,
            signature_names=()):
    # type: (InstallerFile, str, UI, bool, int, Optional[retarget.Retarget], Optional[envfiles.Caches], Sequence[str]) -> bool
    """Install ``source`` into ``prefix_root`` without asking (the preflight checks
    are the caller's); returns True if anything changed.  ``target`` is what
    ``at_prefix`` gave for this prefix (computed here if not given)."""
    prefix = Prefix(prefix_root)
    if target is None:
        target = at_prefix(source, prefix, ui, jobs)
    run = new_run(source, prefix, ui, target, update, jobs, caches, signature_names)
    return execute(run, receipt_plan(run, install_steps(run)))


def install_steps(run, home=None):
    # type: (steps.Run, Optional[str]) -> List[plan.Step]
    """The steps of an install, in order (``home``: --modify-profile's home dir)."""
    out = [steps.MakeDirs(), steps.PlacePaths()]
    out += [steps.WriteFile(path=path)
            for path, _ in envfiles.planned_files(run.prefix, run.caches, run.extra_conf)]
    out += [steps.Register(), steps.MakeProfile()]
    if home is not None:
        out.append(steps.ShellStartup(home=home))
    return out


def receipt_plan(run, step_list):
    # type: (steps.Run, List[plan.Step]) -> plan.Plan
    """``step_list`` as a plan whose receipt is saved before and after every step.

    Under the lock (taken before the first step that needs it), the receipt
    this installer left earlier is read again: an unfinished one's steps are
    adopted (a failure now undoes them too, and the prefix is as it was
    before the first try); a complete one's records are kept beside this
    run's, which alone a failure undoes.
    """
    prefix = run.prefix
    path = receipt.path_for(prefix, run.manifest)
    state = {"prior": None, "base": {}, "loaded": False}  # type: Dict[str, Any]

    def save():
        if not state["loaded"]:
            # Before the lock, and the receipt read under it, nothing is written:
            # a receipt of an earlier run must not be overwritten unread.
            return
        if not os.path.isdir(prefix.receipts_dir):
            return  # reverted to before the first install: nothing to record it in
        prior = state["prior"]
        doc = receipt.new(run.manifest, prefix)
        doc["complete"] = bool(prior and prior.get("complete")) or all(
            s.state == plan.DONE for s in step_list)
        records, keys = [], set()
        for step in step_list:
            rec = step.to_record()
            base = state["base"].get(step.key())
            if base:
                rec["owned"] = plan.merge(base.get("owned") or {}, rec["owned"])
            records.append(rec)
            keys.add(step.key())
        records += [rec for key, rec in sorted(state["base"].items()) if key not in keys]
        doc["steps"] = records
        receipt.write(path, doc)

    def first_receipt(where, created):
        doc = receipt.new(run.manifest, prefix)
        doc["steps"] = [{"kind": steps.MakeDirs.kind, "params": {}, "state": plan.STARTED,
                         "owned": {"created": created}}]
        receipt.write(where, doc)

    def on_locked():
        made = []  # type: List[str]
        try:
            # The directories the lock and the receipt live in, made with the first
            # receipt; a Ctrl-C waits until what they are is known.
            with plan.signals_deferred():
                made = steps.make_receipts_dir(prefix, os.path.basename(path), first_receipt)
            load_under_lock()
        except BaseException:
            if not state["loaded"]:  # no step knows of them yet: take them back here
                if run.lock is not None:
                    run.lock.__exit__(None, None, None)
                    run.lock = None
                steps.unmake_receipts_dir(prefix, made, path)
            raise

    def load_under_lock():
        run.lock = nixstore.PrefixLock(
            prefix.lock_file, on_wait=lambda: run.ui.say(
                "waiting for another installer on %s..." % prefix.root)).__enter__()
        for stale in staging.remove_stale_staging(prefix.store_dir):
            run.ui.say("removed %s, left by an interrupted install" % stale)
        if os.path.isdir(prefix.home):
            envfiles.make_profile_link(prefix)  # before any Nix runs (envfiles.py)
        prior = receipt.load(path)
        state["prior"] = prior
        by_key = dict((record_key(r), r) for r in (prior or {}).get("steps", []))
        if prior and prior.get("complete"):
            state["base"] = by_key
        else:
            the_plan.revert_all = True  # a failure takes back the unfinished runs too
            keys = set(s.key() for s in step_list)
            for step in step_list:
                if step.key() in by_key:
                    step.adopt(by_key[step.key()].get("owned") or {})
            state["base"] = dict((k, r) for k, r in by_key.items() if k not in keys)
        run.last = not receipt.others(prefix, path)
        state["loaded"] = True

    def drop_receipt():
        if not state["loaded"]:
            return  # never read: whatever receipt is there is not this run's
        prior = state["prior"]
        if prior and prior.get("complete"):
            receipt.write(path, prior)
        else:
            receipt.remove(path)

    run.save = save
    run.drop_receipt = drop_receipt
    run.last = not receipt.others(prefix, path)  # again under the lock
    the_plan = plan.Plan(step_list, save, on_locked)
    return the_plan


def record_key(record):
    # type: (dict) -> str
    """The key (Step.key) of a receipt record."""
    step = steps.from_record(record)
    return step.key() if step is not None else "%s ?" % record.get("kind")


def execute(run, the_plan):
    # type: (steps.Run, plan.Plan) -> bool
    """Run the plan shown to the user; returns True if anything changed."""
    started = time.time()
    try:
        try:
            changed = the_plan.execute(run)
        except plan.RevertFailed:
            raise  # the receipt names what is left to undo
        except BaseException:
            run.drop_receipt()  # all undone: no trace of this run stays
            raise
    finally:
        if run.lock is not None:
            run.lock.__exit__(None, None, None)
            run.lock = None
    elapsed = time.time() - started
    manifest, prefix = run.manifest, run.prefix
    if changed:
        run.ui.say("installed %d store paths (%d new) into %s in %.1f s"
                   % (len(manifest.paths), run.placed_count, prefix.store_dir, elapsed))
    else:
        run.ui.say("nothing to do: all %d store paths are already installed and registered "
                   "in %s" % (len(manifest.paths), prefix.root))
    return changed


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


def _unpack_and_place(source, target, prefix, to_place, ui, jobs, before_renames):
    # type: (InstallerFile, retarget.Retarget, Prefix, List[PathEntry], UI, int, Callable[[Dict[str, Tuple[str, int]]], None]) -> Dict[str, Tuple[str, int]]
    """Unpack the paths ``to_place`` through ``target`` into a staging dir, verified,
    then rename them into the store; return the (narHash, narSize) of each path
    the retarget rewrote, by its new name.  ``before_renames`` is given those once
    every path is unpacked and verified, before the first rename."""
    wanted = set(p.name for p in to_place)
    spans = target.manifest.chunk_spans()  # by position: right for renamed paths too
    chunks = sorted(set(i for p in to_place for i in spans[p.name]))
    total = sum(target.manifest.chunks[i].tar_size for i in chunks)
    progress = ui.progress("unpacking and verifying", total)
    # Named before it is made, so that the finally below removes it whenever a
    # Ctrl-C comes (just after the mkdir too).
    stage = staging.staging_dir(prefix.store_dir)
    writers = []  # type: List[staging.DiskWriter]
    placed = []  # type: List[retarget.Retargeted]

    def open_path(name):
        # type: (str) -> Sink
        # The payload's bytes are verified against the original NAR hash on the
        # way in (InstallerFile.unpack); what reaches the disk may be rewritten.
        count = Count(progress.update)
        new = target.name(name)
        if new not in wanted:
            return count
        writer = staging.DiskWriter(stage, new)
        writers.append(writer)
        # Files held back by a rewrite wait in the staging dir, inside the prefix.
        path = retarget.Retargeted(target, name, writer, stage)
        placed.append(path)
        return Tee(path, count)

    try:
        staging.make_staging_dir(stage)
        try:
            with timings.phase("unpack"):
                source.unpack(open_path, chunks, jobs)
        except OSError as e:
            raise staging.write_error(e, prefix.store_dir)
        finally:
            for w in writers:
                w.abort()
            progress.close()
        infos = {}  # type: Dict[str, Tuple[str, int]]
        for path in placed:
            info = path.nar_info()
            if info is not None:
                infos[path.name] = info
        # Everything needed is unpacked and verified: only now touch the store.
        before_renames(infos)
        with timings.phase("place"):
            for entry in to_place:
                src = os.path.join(stage, entry.name)
                dst = target.manifest.store_path(entry.name)
                os.rename(src, dst)
                crashpoints.reached("renamed")
                staging.seal_top(dst)
                crashpoints.reached("placed")
    finally:
        staging.remove_tree(stage)
    return infos
