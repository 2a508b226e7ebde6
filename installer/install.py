"""The install as a plan of revertible steps: build it, show it, run it.

``install_steps`` and ``receipt_plan`` build the plan (plan.py, steps/)
without writing anything; the caller shows ``plan_lines`` and asks;
``execute`` runs that same plan.
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
from . import nixstore, plan, preflight, staging, steps
from .errors import EnvironmentProblem, InstallError, UpdateNeeded
from .prefix import Prefix, user_name
from .receipt import Receipt
from .run import Run
from .steps import install_steps

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Dict, List, Optional, Sequence  # noqa: F401

    from ..payload.container import InstallerFile  # noqa: F401
    from ..payload.manifest import Manifest  # noqa: F401
    from . import envfiles  # noqa: F401
    from .ui import UI  # noqa: F401


def plan_lines(run, the_plan):
    # type: (Run, plan.Plan) -> List[str]
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


def at_prefix(installer, prefix, ui, jobs=1):
    # type: (InstallerFile, Prefix, UI, int) -> retarget.Retarget
    """How the payload of ``installer`` gets to ``prefix`` (payload/retarget.py ``choose``),
    and so the manifest as installed there (``.manifest``): as it is at the store dir it
    was built for, recomputed exactly when the payload holds the derivations, else the
    store dir rewritten in place.  An exact retarget reads part of the payload first
    (``jobs`` chunks at once), after the prefix's length is checked.  An installer for
    another machine is refused first.  Raises InstallError (one line): EnvironmentProblem
    for a prefix too long, CorruptInstaller if the payload is damaged."""
    manifest = installer.manifest
    preflight.check_system(manifest)
    try:
        found = retarget.choose(manifest, prefix.store_dir,
                                lambda: _read_derivations(installer, prefix, ui, jobs),
                                derivations=manifest.derivations)
    except retarget.TooLong as e:
        raise EnvironmentProblem(e.args[0], e.hint)
    except retarget.RetargetError as e:  # the installer's closure cannot be planned
        raise InstallError(e.args[0], "install into %s, the prefix this installer was built "
                           "for" % manifest.prefix)
    # A payload with its reference map (format 4) is patched at known offsets, not scanned.
    found.use_refs(installer.ref_map())
    return found


def _read_derivations(installer, prefix, ui, jobs):
    # type: (InstallerFile, Prefix, UI, int) -> Dict[str, bytes]
    """The chunks holding ``.drv`` files and other one-file paths, read through the
    verifying path (every NAR hash checked, nothing written) for the exact planner."""
    manifest = installer.manifest
    chunks = retarget.contents_chunks(manifest)
    progress = ui.progress("reading the derivations",
                           sum(manifest.chunks[i].tar_size for i in chunks))
    ui.say("reading the derivations: the %d store paths get the paths Nix computes for %s"
           % (len(manifest.paths), prefix.store_dir))
    try:
        return retarget.read_contents(installer, progress.update, jobs)
    finally:
        progress.close()


def new_run(installer, prefix, ui, target, update=False, jobs=1, caches=None,
            signature_names=(), extra_conf=()):
    # type: (InstallerFile, Prefix, UI, retarget.Retarget, bool, int, Optional[envfiles.Caches], Sequence[str], Sequence[str]) -> Run
    """The inputs the steps of an install (or uninstall) of ``installer`` through
    ``target`` share; ``caches`` (--substituter) and ``extra_conf`` go into a new
    nix.conf.  ``signature_names`` names the keys whose signature of the installer
    holds: the Register step records their signatures of its paths in the
    prefix's Nix database."""
    manifest = target.manifest
    # A rewritten path is another path: no signature of the publisher covers it
    # (and the retargeted manifest carries none).
    return Run(prefix, ui, manifest, lambda tool: nix_tool(manifest, prefix, tool), installer,
               target, jobs, update, caches, extra_conf,
               () if target.rewrites else tuple(signature_names))


def install(installer, prefix_root, ui, update=False, jobs=1, target=None, caches=None,
            signature_names=()):
    # type: (InstallerFile, str, UI, bool, int, Optional[retarget.Retarget], Optional[envfiles.Caches], Sequence[str]) -> bool
    """Install ``installer`` into ``prefix_root`` without asking (the preflight checks
    are the caller's); returns True if anything changed.  ``target`` is what
    ``at_prefix`` gave for this prefix (computed here if not given)."""
    prefix = Prefix(prefix_root)
    if target is None:
        target = at_prefix(installer, prefix, ui, jobs)
    run = new_run(installer, prefix, ui, target, update, jobs, caches, signature_names)
    return execute(run, receipt_plan(run, install_steps(run)))


def receipt_plan(run, step_list):
    # type: (Run, List[plan.Step]) -> plan.Plan
    """``step_list`` as a plan whose receipt (receipt.py) is saved before and after
    every step, and read again under the lock before the first step."""
    return plan.Plan(step_list, Receipt(run.prefix, run.manifest, steps.KINDS, step_list,
                                        run.ui))


def execute(run, the_plan):
    # type: (Run, plan.Plan) -> bool
    """Run the plan shown to the user; returns True if anything changed."""
    started = time.time()
    try:
        try:
            changed = the_plan.execute(run)
        except plan.RevertFailed:
            raise  # the receipt names what is left to undo
        except BaseException:
            the_plan.receipt.drop()  # all undone: no trace of this run stays
            raise
    finally:
        the_plan.receipt.release()
    elapsed = time.time() - started
    manifest, prefix = run.manifest, run.prefix
    if changed:
        placed = sum(s.placed_now for s in the_plan.steps if isinstance(s, steps.PlacePaths))
        run.ui.say("installed %d store paths (%d new) into %s in %.1f s"
                   % (len(manifest.paths), placed, prefix.store_dir, elapsed))
    else:
        run.ui.say("nothing to do: all %d store paths are already installed and registered "
                   "in %s" % (len(manifest.paths), prefix.root))
    return changed
