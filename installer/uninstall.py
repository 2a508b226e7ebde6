"""``--uninstall`` and ``--rollback``: undo what an installer did, and only that.

Uninstall rebuilds the plan from the installer's receipt (receipt.py,
steps/) and reverts it, newest step first, saving the receipt after each
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
from .signals import signals_held

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import List, Optional  # noqa: F401

    from .prefix import Prefix  # noqa: F401
    from .run import Run  # noqa: F401
    from .ui import UI  # noqa: F401

# Steps whose work every install of the prefix shares: reverted with the last receipt.
SHARED = (steps.MakeDirs.kind, steps.WriteFile.kind, steps.ShellStartup.kind)


def rollback(prefix, nix_env, ui):
    # type: (Prefix, str, UI) -> None
    """Switch the default profile back to its previous generation."""
    before = nixstore.profile_generation(prefix)
    try:
        nixstore.run_nix(prefix, [nix_env, "-p", prefix.profile, "--rollback"])
    except KeyboardInterrupt:
        # Ctrl-C once nix-env had switched: switched back, so that "undone" holds.
        with signals_held():
            if before is not None and nixstore.profile_generation(prefix) != before:
                nixstore.run_nix(prefix, [nix_env, "-p", prefix.profile,
                                          "--switch-generation", str(before)])
        raise
    ui.say("rolled %s back from generation %s to %s"
           % (prefix.profile, before, nixstore.profile_generation(prefix)))


def read_plan(run):
    # type: (Run) -> plan.Plan
    """The plan this installer's receipt in the prefix records, with that receipt: what
    an uninstall reverts.  InstallError if there is none."""
    the_receipt = receipt.Receipt(run.prefix, run.manifest, steps.KINDS)
    return plan.Plan(the_receipt.read(), the_receipt)


def question(run, name):
    # type: (Run, str) -> Optional[str]
    """What ``--uninstall`` asks before it goes on: what reverting each step of the
    receipt will undo, in the order it will (None without a receipt to read)."""
    try:
        the_plan = read_plan(run)
    except InstallError:
        return None
    own = [s for s in the_plan.steps if s.kind not in SHARED]
    shared = [s for s in the_plan.steps if s.kind in SHARED]
    lines = ["Remove what %s installed in %s:" % (name, run.prefix.root)]
    if the_plan.receipt.last:
        lines += plan.Plan(shared + own).revert_lines(run)
    else:
        lines += plan.Plan(own).revert_lines(run)
        lines.append("What the prefix's installs share (its directories, nix.conf, the env "
                     "scripts, the shell start-up line) stays: another installer's receipt "
                     "takes over its record.")
    lines.append("Store paths other profiles or roots still need are kept, and so is a file "
                 "changed since the install.")
    return "\n".join(lines)


def uninstall(run, ui):
    # type: (Run, UI) -> None
    """Revert the plan in this installer's receipt, newest step first; say what went.

    With other installers' receipts left, the prefix's directories stay and
    the record of which ones an install created passes to one of them, so
    that the last uninstall still removes them.
    """
    prefix = run.prefix
    stale = receipt.remove_stale_new_dirs(prefix)
    if stale and not os.path.lexists(prefix.root):
        # An install killed before its first directory was in place: that was all.
        for p in stale:
            ui.say("removed %s, left by an interrupted install" % p)
        return
    the_receipt = receipt.Receipt(prefix, run.manifest, steps.KINDS)
    the_receipt.read()  # none: said before the lock is taken
    the_receipt.lock_prefix()
    try:
        staging.remove_stale_staging(prefix.store_dir)  # a killed install's, not to be kept
        # Read again under the lock: another uninstall may have got there first.
        reverted = _revert(run, the_receipt, the_receipt.read())
    finally:
        the_receipt.release()
    _report(ui, prefix, reverted, not the_receipt.last)


def _revert(run, the_receipt, step_list):
    # type: (Run, receipt.Receipt, List[plan.Step]) -> plan.Reverted
    """Revert this installer's own steps; then the shared ones if it is the last
    installer in the prefix, else hand their records over to another's receipt."""
    shared = [s for s in step_list if s.kind in SHARED]
    with signals_held():
        reverted = plan.Plan([s for s in step_list if s not in shared], the_receipt).revert(run)
        if not the_receipt.last:
            the_receipt.hand_over(shared + _keeper(the_receipt.kept(reverted)))
            the_receipt.drop()
        else:
            the_receipt.drop()
            envfiles.remove_profile_link(run.prefix)
            reverted.add(plan.Plan(shared, the_receipt).revert(run))
    return reverted


def _keeper(kept):
    # type: (List[str]) -> List[plan.Step]
    """The store paths ``kept`` (made by this install, still alive through another's
    profile) as a register step's: the other installer's register step deletes them
    with its own paths, after its profile generations are gone (reverted first)."""
    if not kept:
        return []
    register = steps.Register()
    register.state = plan.DONE
    register.owned = {"registered": kept}
    return [register]


def _report(ui, prefix, reverted, others):
    # type: (UI, Prefix, plan.Reverted, bool) -> None
    ui.say("removed %d store paths from %s" % (len(reverted.removed), prefix.store_dir))
    for p in sorted(reverted.removed):
        ui.say("  - %s" % p)
    if reverted.kept:
        ui.say("kept %d store paths that other profiles or roots still need%s:" % (
            len(reverted.kept), "; they go with the last uninstall" if others else ""))
        for p in sorted(reverted.kept):
            ui.say("  - %s" % p)
    for f in reverted.files_removed:
        ui.say("removed %s" % f)
    for f in reverted.files_kept:
        ui.say("kept %s: it was changed since the install, so it is yours now" % f)
