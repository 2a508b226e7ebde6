"""The install's first step: the prefix and its directories (and Nix's state made for it)."""

import errno
import os

from .. import crashpoints, envfiles, nixstore, staging
from ..plan import Reverted, Step

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Iterable, List, Optional  # noqa: F401

    from ..plan import Record  # noqa: F401
    from ..prefix import Prefix  # noqa: F401
    from ..run import Run  # noqa: F401


class MakeDirs(Step):
    """Create the prefix and its directories (and missing parents, like ``mkdir -p``).

    Reverted only when no other install is left: then it also removes what
    Nix made for the install (its database, once no path is valid in it, and
    its empty state directories), the installer's lock and private home, and
    every directory it created that is empty by then.  Owned: the directories
    it created, and (``nixState``) the entries of Nix's state and log dirs
    that were not there before, which Nix makes: in a ``P/var/nix`` that
    already held a file of the user's, only those go.
    """

    kind = "make-dirs"

    def describe(self, run):
        if not os.path.lexists(run.prefix.root):
            return "create %s and its directories (store, var/nix, etc/nix...)" % run.prefix.root
        return "create the missing directories of %s (store, var/nix, etc/nix...)" % (
            run.prefix.root)

    def describe_revert(self, run):
        if not self.owned.get("created") and not self.owned.get("nixState"):
            return None
        return "remove the directories the installs created in %s once they are empty, " \
               "and the Nix database once no path is valid in it" % run.prefix.root

    def is_done(self, run):
        return all(os.path.isdir(d) for d in run.prefix.directories())

    def already(self, run):
        self._claim_nix_state(run)

    def _claim_nix_state(self, run):
        # type: (Run) -> None
        """Record which of Nix's entries are missing: the Nix the install runs makes them."""
        missing = [p for p in nix_state_entries(run.prefix) if not os.path.lexists(p)]
        self.owned["nixState"] = sorted(set(self.owned.get("nixState", [])) | set(missing))

    def execute(self, run, receipt):
        self._claim_nix_state(run)
        receipt.save()
        # Those down to the receipts dir were made with the first receipt
        # (receipt.make_receipts_dir); each of the others is claimed before it is made.
        created = self.owned.setdefault("created", [])
        for path in run.prefix.missing_parents() + run.prefix.directories():
            if os.path.isdir(path):
                continue  # not ours: never recorded, never removed
            # Recorded (and saved) before it is made: a kill between the two must not
            # leave a directory no receipt knows of (removing one never made is a no-op).
            if path not in created:
                created.append(path)
                receipt.save()
            try:
                os.mkdir(path, 0o755)
            except OSError as e:
                if e.errno == errno.EEXIST and os.path.isdir(path):
                    created.remove(path)  # made by someone else meanwhile: theirs
                    continue
                raise staging.write_error(e, path)
            crashpoints.reached("mkdir")
        envfiles.make_profile_link(run.prefix)  # before any Nix runs (envfiles.py)
        return None

    def revert(self, run, receipt):
        if not receipt.last:
            return None
        created = self.owned.get("created", [])
        prefix = run.prefix
        # Nix's entries in a directory the install created are its own too (a
        # receipt from before nixState was recorded, or one handed over to it).
        made = set(self.owned.get("nixState", []))
        made.update(p for p in nix_state_entries(prefix) if os.path.dirname(p) in created)
        tops = [top for top in (prefix.state_dir, prefix.log_dir) if top in created]
        if made or tops:
            _remove_nix_state(prefix, made, tops)
        if prefix.data_dir in created:
            receipt.drop()
            if os.path.lexists(prefix.lock_file):
                os.unlink(prefix.lock_file)
            staging.rmdir_quietly(prefix.receipts_dir)
            staging.remove_tree(prefix.home)
        if prefix.store_dir in created:
            staging.rmdir_quietly(os.path.join(prefix.store_dir, ".links"))
        for path in sorted(created, key=len, reverse=True):
            staging.rmdir_quietly(path)
        return Reverted()


# What Nix makes in its state dir (src/libstore/local-store.cc, gc.cc, profiles.cc;
# from Nix 2.30 the build dirs too, src/libstore/globals.cc build-dir) and log dir
# (the build logs): removed with the last install if they were not there before it.
NIX_STATE = ("db", "gc.lock", "gcroots", "profiles", "temproots", "userpool", "gc-socket",
             "builds")


def nix_state_entries(prefix):
    # type: (Prefix) -> List[str]
    """The entries Nix makes in the prefix's state and log dirs."""
    return [os.path.join(prefix.state_dir, name) for name in NIX_STATE] + \
        [os.path.join(prefix.log_dir, "drvs")]


def _remove_nix_state(prefix, made, tops):
    # type: (Prefix, Iterable[str], List[str]) -> None
    """Remove the entries ``made`` of Nix's state (nix_state_entries) that were not
    there before the install, once its database holds no valid path (or is a
    broken one Nix left when it failed to create it).  The database, the
    per-process roots and sockets go whole; gc.lock if a plain file; the other
    directories only as far as they hold nothing but empty directories (and the
    gcroots/profiles link Nix made): a link or file of the user's keeps them.  In
    the directories ``tops`` the install created, every empty directory goes."""
    if nixstore.count_valid(prefix) not in (0, None):
        return
    made = set(made)
    for name in NIX_STATE:
        path = os.path.join(prefix.state_dir, name)
        if path not in made or not os.path.lexists(path):
            continue
        if name == "gc.lock":
            if os.path.isfile(path) and not os.path.islink(path):
                os.unlink(path)
        elif name in ("db", "temproots", "userpool", "gc-socket"):
            staging.remove_tree(path)
        else:
            link = os.path.join(path, "profiles")  # gcroots/profiles -> ../profiles
            if name == "gcroots" and os.path.islink(link):
                os.unlink(link)
            _rmdir_tree(path)
    drvs = os.path.join(prefix.log_dir, "drvs")
    if drvs in made:
        _rmdir_tree(drvs)  # the logs themselves went with their derivations
    for top in tops:
        _rmdir_tree(top)


def _rmdir_tree(top):
    # type: (str) -> None
    """Remove the empty directories under ``top`` and ``top`` itself if empty then."""
    for dirpath, _, _ in sorted(os.walk(top), key=lambda t: len(t[0]), reverse=True):
        staging.rmdir_quietly(dirpath)
