"""``--uninstall`` and ``--rollback``: undo what an installer did, and only that.

Uninstall rebuilds the plan from the installer's receipt (receipt.py,
steps.py) and reverts it, newest step first, saving the receipt after each
step: the profile generations it made go (the profile switches back to the
newest other one), then exactly the store paths it added, through Nix,
except any still alive (deletion.py).  What the prefix's installs share
(its directories, nix.conf and the env scripts, the shell start-up line)
goes only with the last receipt, files only if unchanged; until then the
record of them passes to another receipt, and so does the record of the
store paths it added that are kept alive by another install's profile (a
``-u`` over this one): whichever uninstall comes last removes them.
"""

import os

from . import envfiles, nixstore, plan, receipt, staging, steps
from .errors import InstallError

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Dict, List  # noqa: F401

    from ..payload.manifest import Manifest  # noqa: F401
    from .plan import Step  # noqa: F401
    from .prefix import Prefix  # noqa: F401
    from .steps import Run  # noqa: F401
    from .ui import UI  # noqa: F401


def rollback(prefix, nix_env, ui):
    # type: (Prefix, str, UI) -> None
    """Switch the default profile back to its previous generation."""
    before = nixstore.profile_generation(prefix)
    try:
        nixstore.run_nix(prefix, [nix_env, "-p", prefix.profile, "--rollback"])
    except KeyboardInterrupt:
        # Ctrl-C once nix-env had switched: switched back, so that "undone" holds.
        with plan.signals_held():
            if before is not None and nixstore.profile_generation(prefix) != before:
                nixstore.run_nix(prefix, [nix_env, "-p", prefix.profile,
                                          "--switch-generation", str(before)])
        raise
    ui.say("rolled %s back from generation %s to %s"
           % (prefix.profile, before, nixstore.profile_generation(prefix)))


def uninstall(run, ui):
    # type: (Run, UI) -> None
    """Revert the plan in this installer's receipt, newest step first; say what went.

    With other installers' receipts left, the prefix's directories stay and
    the record of which ones an install created passes to one of them, so
    that the last uninstall still removes them.
    """
    prefix = run.prefix
    path = receipt.path_for(prefix, run.manifest)
    stale = steps.remove_stale_new_dirs(prefix)
    if stale and not os.path.lexists(prefix.root):
        # An install killed before its first directory was in place: that was all.
        for p in stale:
            ui.say("removed %s, left by an interrupted install" % p)
        return
    if receipt.load(path) is None:
        raise InstallError("%s holds no record of this installer" % prefix.root,
                           "uninstall with the installer that installed it")
    with nixstore.PrefixLock(prefix.lock_file):
        staging.remove_stale_staging(prefix.store_dir)  # a killed install's, not to be kept
        doc = receipt.load(path)
        if doc is None:  # another uninstall got there first
            raise InstallError("%s holds no record of this installer" % prefix.root,
                               "uninstall with the installer that installed it")
        if doc.get("storeDir") != prefix.store_dir:
            raise InstallError("the receipt %s is for %s, not %s" % (
                path, doc.get("storeDir"), prefix.store_dir), "uninstall with -p %s" % (
                    os.path.dirname(str(doc.get("storeDir")))))
        records = doc["steps"]
        unknown = [r for r in records if steps.from_record(r) is None]
        step_list = [s for s in map(steps.from_record, records) if s is not None]
        others = receipt.others(prefix, path)
        run.last = not others

        def save():
            doc["steps"] = [s.to_record() for s in step_list] + unknown
            # What the steps owned but had to keep (alive in another install's
            # profile): recorded with the steps' progress, so that a kill before
            # the hand-over below loses none of it.
            doc["kept"] = sorted(set(doc.get("kept") or []) | set(run.kept))
            receipt.write(path, doc)

        shared = [s for s in step_list if s.kind in SHARED]
        undo = plan.Plan([s for s in step_list if s not in shared], save)
        with plan.signals_held():
            undo.revert(run)
            if others:
                kept = sorted(set(doc.get("kept") or []) | set(run.kept))
                _hand_over(shared, kept, others)
                receipt.remove(path)
            else:
                receipt.remove(path)
                envfiles.remove_profile_link(prefix)
                plan.Plan(shared, lambda: None).revert(run)
    ui.say("removed %d store paths from %s" % (len(run.removed), prefix.store_dir))
    for p in sorted(run.removed):
        ui.say("  - %s" % p)
    if run.kept:
        ui.say("kept %d store paths that other profiles or roots still need%s:" % (
            len(run.kept), "; they go with the last uninstall" if others else ""))
        for p in sorted(run.kept):
            ui.say("  - %s" % p)
    for f in run.files_removed:
        ui.say("removed %s" % f)
    for f in run.files_kept:
        ui.say("kept %s: it was changed since the install, so it is yours now" % f)


# Steps whose work every install of the prefix shares: reverted with the last receipt.
SHARED = (steps.MakeDirs.kind, steps.WriteFile.kind, steps.ShellStartup.kind)


def _hand_over(shared, kept, other_paths):
    # type: (List[Step], List[str], List[str]) -> None
    """Pass what the shared steps own, and the store paths ``kept`` (made by this
    install, still alive through another's profile), to another installer's
    receipt: whichever uninstall comes last then removes them too."""
    for other_path in other_paths:
        other = receipt.load(other_path)
        if other is not None:
            break
    else:
        return
    by_key = {}
    for record in other["steps"]:
        step = steps.from_record(record)
        if step is not None:
            by_key[step.key()] = record
    for step in shared:
        if not step.owned:
            continue
        record = by_key.get(step.key())
        if record is None:
            record = step.to_record()
            other["steps"].insert(0 if step.kind == steps.MakeDirs.kind else len(other["steps"]),
                                  record)
        else:
            record["owned"] = plan.merge(record.get("owned") or {}, step.owned)
    if kept:
        # The other's register step deletes them with its own paths, after its
        # profile generations are gone (reverted first).
        register = by_key.get(steps.Register.kind)
        if register is None:
            register = steps.Register().to_record()
            register["state"] = plan.DONE
            kinds = [r.get("kind") for r in other["steps"]]
            at = kinds.index(steps.MakeProfile.kind) if steps.MakeProfile.kind in kinds \
                else len(kinds)
            other["steps"].insert(at, register)
        register["owned"] = plan.merge(register.get("owned") or {}, {"registered": kept})
    receipt.write(other_path, other)
