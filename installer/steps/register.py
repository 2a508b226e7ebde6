"""Registering the placed paths with Nix (``nix-store --load-db``), with the publisher's
signatures of them."""

from ...payload import registration
from .. import crashpoints, deletion, nixstore, timings
from ..plan import Reverted, Step

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import List, Optional, Tuple  # noqa: F401

    from ...payload.manifest import Manifest, PathEntry  # noqa: F401
    from ..plan import Record  # noqa: F401
    from ..run import Run  # noqa: F401


class Register(Step):
    """Register the paths not yet valid with ``nix-store --load-db`` (one SQLite
    transaction: all rows or none), then record the publisher's signatures of
    the paths (``Run.signature_names``) in the database.  Owned: those paths,
    claimed before the load.  Reverted with ``nix-store --delete`` on exactly
    them (their rows, signatures and all, go with them); signatures added to
    the rows of paths that were valid before stay, as do those rows."""

    kind = "register"

    def describe(self, run):
        text = "register them in %s with nix-store --load-db (paths valid already keep " \
               "their rows)" % run.prefix.state_dir
        if run.signature_names:
            text += ", with the publisher's signatures (%s)" % ", ".join(
                sorted(run.signature_names))
        return text

    def describe_revert(self, run):
        registered = self.owned.get("registered") or []
        if not registered:
            return None
        return "delete the %d store paths it registered with nix-store --delete, except " \
               "those other profiles or roots still need" % len(registered)

    def is_done(self, run):
        if len(nixstore.valid_paths(run.prefix, run.paths())) != len(run.paths()):
            return False
        # Checked every run, not only the one that registered: a crash may have
        # come between the load and the signatures.
        return not _signatures_missing(run)

    def execute(self, run, receipt):
        valid = nixstore.valid_paths(run.prefix, run.paths())
        entries = [p for p in run.manifest.paths if run.manifest.store_path(p.name) not in valid]
        if entries:
            # Before anything is recorded: a Nix that is not the closure's own is refused
            # with nothing to undo here.
            nix_store = run.nix_tool("nix-store")
            self.owned["registered"] = sorted(
                set(self.owned.get("registered", [])) |
                set(run.manifest.store_path(p.name) for p in entries))
            receipt.save()
            run.ui.say("registering %d paths with nix-store --load-db" % len(entries))
            crashpoints.reached("before-load-db")
            with timings.phase("load-db"):
                nixstore.load_db(run.prefix, nix_store, registration_text(run.manifest, entries))
            crashpoints.reached("after-load-db")
        record_signatures(run)
        return None

    def revert(self, run, receipt):
        removed, kept = deletion.delete_installed(run.prefix, run.nix_tool,
                                                  self.owned.get("registered", []))
        return Reverted(removed=removed, kept=kept)


def _signed(run):
    # type: (Run) -> List[Tuple[str, str, int, List[str], List[str]]]
    """What nixstore.add_signatures takes: each path with a signature by one of
    ``run.signature_names``, with what that signature covers."""
    names = set(run.signature_names)
    manifest = run.manifest
    signed = []
    for p in manifest.paths:
        sigs = [s for s in p.sigs if s.partition(":")[0] in names]
        if sigs:
            signed.append((manifest.store_path(p.name), p.nar_hash, p.nar_size,
                           [manifest.store_path(r) for r in p.references], sigs))
    return signed


def _signatures_missing(run):
    # type: (Run) -> bool
    signed = _signed(run)
    if not signed:
        return False
    try:
        return nixstore.add_signatures(run.prefix, signed, dry_run=True) > 0
    except ImportError:
        return False  # no sqlite3: nothing this Python can record (record_signatures says so)


def record_signatures(run):
    # type: (Run) -> int
    """Put the publisher's path signatures by the keys ``run.signature_names`` into
    the prefix's Nix database, so that ``nix path-info --sigs`` shows them and
    ``nix store verify`` checks them; returns how many paths got one."""
    signed = _signed(run)
    if not signed:
        return 0
    try:
        added = nixstore.add_signatures(run.prefix, signed)
    except ImportError:
        run.ui.say("warning: this Python has no sqlite3 module, so the publisher's signatures "
                   "of the store paths are not recorded in the Nix database")
        return 0
    if added:
        run.ui.say("recorded the publisher's signatures of %d store paths (%s) in the Nix "
                   "database" % (added, ", ".join(sorted(run.signature_names))))
    return added


def registration_text(manifest, entries):
    # type: (Manifest, List[PathEntry]) -> str
    """The --load-db input for ``entries`` as installed here (payload/registration.py)."""
    return registration.format(p.registration(manifest.store_dir) for p in entries)
