"""The steps of an install (plan.py), and what each undoes.

In order: make the prefix's directories, place the store paths, write
nix.conf and the env scripts, register the paths with ``nix-store
--load-db``, make the profile, and (``--modify-profile``) add the line to
the shell start-up files.  An uninstall reverts the same steps, rebuilt from
the receipt, newest first.
"""

import errno
import hashlib
import os
import re

from ..payload import hashes, nar, registration
from ..payload.machine import human_size, process_alive
from . import crashpoints, deletion, envfiles, nixstore, receipt, shellrc, staging, timings
from .errors import EnvironmentProblem
from .plan import Step

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple  # noqa: F401

    from ..payload.container import InstallerFile  # noqa: F401
    from ..payload.manifest import Manifest, PathEntry  # noqa: F401
    from ..payload.retarget import Retarget  # noqa: F401
    from .envfiles import Caches  # noqa: F401
    from .nixstore import PrefixLock  # noqa: F401
    from .prefix import Prefix  # noqa: F401
    from .ui import UI  # noqa: F401


class Run(object):
    """What the steps of one install or uninstall share.

    ``manifest`` is the installed one (paths and, once unpacked, NAR hashes
    as they are at this prefix); ``source``, ``target`` (payload/retarget.py),
    ``jobs`` and ``place`` (install.py's unpack-and-place) are needed only to
    execute.
    """

    def __init__(self, prefix, ui, manifest, nix_tool, source=None, target=None, jobs=1,
                 update=False, place=None):
        # type: (Prefix, UI, Manifest, Callable[[str], str], Optional[InstallerFile], Optional[Retarget], int, bool, Optional[Callable]) -> None
        self.prefix = prefix
        self.ui = ui
        self.manifest = manifest
        self.nix_tool = nix_tool
        self.source = source
        self.target = target
        self.jobs = jobs
        self.update = update
        self.place = place
        self.last = False  # no other installer's receipt is left (uninstall, failed first install)
        self.lock = None  # type: Optional[PrefixLock]
        self.caches = None  # type: Optional[Caches]
        # nix.conf lines of --extra-conf and --nix-conf (nixconf.py checked them).
        self.extra_conf = []  # type: List[str]
        # The keys whose signature of the installer holds: their signatures of
        # the paths go into the Nix database (Register).
        self.signature_names = ()  # type: Sequence[str]
        self.placed_count = 0
        self.removed = []  # type: List[str]
        self.kept = []  # type: List[str]
        self.files_removed = []  # type: List[str]
        self.files_kept = []  # type: List[str]
        self.save = lambda: None  # type: Callable[[], None]
        self.drop_receipt = lambda: None  # type: Callable[[], None]

    def paths(self):
        # type: () -> List[str]
        return [self.manifest.store_path(p.name) for p in self.manifest.paths]

    def delete(self, paths):
        # type: (Iterable[str]) -> None
        """Delete exactly these store paths (deletion.py); note what went and what stays.
        The build log of each derivation among them that is gone goes too, also
        of one an earlier, killed run deleted."""
        paths = deletion.own_store_paths(self.prefix, paths)
        if not paths:
            return  # no Nix needed (nor, for a refused one, run)
        socket_dir = os.path.join(self.prefix.state_dir, "gc-socket")
        had_socket = os.path.lexists(socket_dir)
        removed, kept = deletion.delete_store_paths(self.prefix, self.nix_tool("nix-store"),
                                                    paths)
        if not had_socket and os.path.isdir(socket_dir):
            # Made by the collector's server in this nix-store --delete
            # (src/libstore/gc.cc): Nix's runtime state, not there before.
            staging.remove_tree(socket_dir)
        self.removed += removed
        self.kept += kept
        for path in paths:
            if path.endswith(".drv") and not os.path.lexists(path):
                # Nix's build log of a derivation the install built (the user
                # environment's): src/libstore/local-fs-store.cc getBuildLogExact.
                base = os.path.basename(path)
                for suffix in ("", ".bz2"):
                    log = os.path.join(self.prefix.log_dir, "drvs", base[:2], base[2:] + suffix)
                    if os.path.lexists(log):
                        os.unlink(log)
                        _rmdir_quietly(os.path.dirname(log))


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

    def _wanted(self, run):
        # type: (Run) -> List[str]
        return _missing_parents(run.prefix) + run.prefix.directories()

    def describe(self, run):
        if not os.path.lexists(run.prefix.root):
            return "create %s and its directories (store, var/nix, etc/nix...)" % run.prefix.root
        return "create the missing directories of %s (store, var/nix, etc/nix...)" % (
            run.prefix.root)

    def is_done(self, run):
        return all(os.path.isdir(d) for d in run.prefix.directories())

    def already(self, run):
        self._claim_nix_state(run)

    def _claim_nix_state(self, run):
        # type: (Run) -> None
        """Record which of Nix's entries are missing: the Nix the install runs makes them."""
        missing = [p for p in nix_state_entries(run.prefix) if not os.path.lexists(p)]
        self.owned["nixState"] = sorted(set(self.owned.get("nixState", [])) | set(missing))

    def execute(self, run):
        self._claim_nix_state(run)
        run.save()
        # Those down to the receipts dir were made with the first receipt
        # (make_receipts_dir); each of the others is claimed before it is made.
        created = self.owned.setdefault("created", [])
        for path in self._wanted(run):
            if os.path.isdir(path):
                continue  # not ours: never recorded, never removed
            # Recorded (and saved) before it is made: a kill between the two must not
            # leave a directory no receipt knows of (removing one never made is a no-op).
            if path not in created:
                created.append(path)
                run.save()
            try:
                os.mkdir(path, 0o755)
            except OSError as e:
                if e.errno == errno.EEXIST and os.path.isdir(path):
                    created.remove(path)  # made by someone else meanwhile: theirs
                    continue
                raise staging.write_error(e, path)
            crashpoints.reached("mkdir")
        envfiles.make_profile_link(run.prefix)  # before any Nix runs (envfiles.py)

    def revert(self, run):
        if not run.last:
            return
        created = self.owned.get("created", [])
        prefix = run.prefix
        # Nix's entries in a directory the install created are its own too (a
        # receipt from before nixState was recorded, or one handed over to it).
        made = set(self.owned.get("nixState", []))
        made.update(p for p in nix_state_entries(prefix) if os.path.dirname(p) in created)
        tops = [top for top in (prefix.state_dir, prefix.log_dir) if top in created]
        if made or tops:
            _remove_nix_state(run, made, tops)
        if prefix.data_dir in created:
            run.drop_receipt()
            for path in (prefix.lock_file,):
                if os.path.lexists(path):
                    os.unlink(path)
            _rmdir_quietly(prefix.receipts_dir)
            staging.remove_tree(prefix.home)
        if prefix.store_dir in created:
            _rmdir_quietly(os.path.join(prefix.store_dir, ".links"))
        for path in sorted(created, key=len, reverse=True):
            _rmdir_quietly(path)


def _missing_parents(prefix):
    # type: (Prefix) -> List[str]
    """The prefix's parent directories that do not exist, outermost first."""
    parents = []  # type: List[str]
    parent = os.path.dirname(prefix.root)
    while not os.path.lexists(parent):
        parents.insert(0, parent)
        parent = os.path.dirname(parent)
    return parents


# The name a chain of new directories is made under, before it is renamed into place.
NEW_DIRS_PREFIX = ".nix-prefix-new-"


def _receipts_chain(prefix):
    # type: (Prefix) -> List[str]
    """The missing directories from the prefix's first missing parent down to its
    receipts dir, outermost first (each inside the one before)."""
    chain = _missing_parents(prefix) + [prefix.root, os.path.dirname(prefix.data_dir),
                                        prefix.data_dir, prefix.receipts_dir]
    return [d for d in chain if not os.path.lexists(d)]


def make_receipts_dir(prefix, receipt_name, write_first):
    # type: (Prefix, str, Callable[[str, List[str]], None]) -> List[str]
    """Make the missing directories down to the receipts dir with the install's
    first receipt in it, all at once; return the directories made.

    They are made under a temporary name beside the outermost one, the receipt
    (``write_first(path, created)``) is written inside, and one rename puts
    them in place: a kill at any moment leaves either no directory of the
    prefix (only the temporary one, removed by the next run or --uninstall,
    ``remove_stale_new_dirs``) or directories that a receipt claims.
    """
    remove_stale_new_dirs(prefix)
    chain = _receipts_chain(prefix)
    if not chain:
        return []
    top = chain[0]
    temp = os.path.join(os.path.dirname(top), "%s%d-%s" % (
        NEW_DIRS_PREFIX, os.getpid(), os.path.basename(top)))
    try:
        for path in chain:
            os.mkdir(temp + path[len(top):], 0o755)
            crashpoints.reached("mkdir")
        write_first(os.path.join(temp + prefix.receipts_dir[len(top):], receipt_name), chain)
        os.rename(temp, top)
    except OSError as e:
        staging.remove_tree(temp)
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY) and os.path.isdir(top):
            return []  # another installer made them at this very moment: theirs
        raise staging.write_error(e, top)
    except BaseException:
        staging.remove_tree(temp)
        raise
    crashpoints.reached("receipts-dir")
    return chain


def unmake_receipts_dir(prefix, made, receipt_path):
    # type: (Prefix, List[str], str) -> None
    """Take back what make_receipts_dir made (``made``), when what came next failed
    before any step ran (the lock could not be taken)."""
    if not made:
        return
    for path in (receipt_path, prefix.lock_file):
        if os.path.lexists(path):
            os.unlink(path)
    for path in reversed(made):
        _rmdir_quietly(path)


def remove_stale_new_dirs(prefix):
    # type: (Prefix) -> List[str]
    """Remove what make_receipts_dir left under a temporary name when it was killed
    (one of this user's, named for a directory on the way to the receipts dir
    and for a process that is gone); return what it removed."""
    removed = []
    path = prefix.receipts_dir
    while os.path.dirname(path) != path:
        parent, name = os.path.split(path)
        path = parent
        try:
            entries = os.listdir(parent)
        except OSError:
            continue
        for entry in entries:
            pid, sep, rest = entry[len(NEW_DIRS_PREFIX):].partition("-")
            if not entry.startswith(NEW_DIRS_PREFIX) or not sep or rest != name \
                    or not pid.isdigit() or process_alive(int(pid)):
                continue
            stale = os.path.join(parent, entry)
            if os.lstat(stale).st_uid == os.geteuid():
                staging.remove_tree(stale)
                removed.append(stale)
    return removed


def _rmdir_quietly(path):
    # type: (str) -> None
    try:
        os.rmdir(path)
    except OSError:
        pass  # not empty (someone else's files are in it) or gone: leave it


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


def _remove_nix_state(run, made, tops):
    # type: (Run, Iterable[str], List[str]) -> None
    """Remove the entries ``made`` of Nix's state (nix_state_entries) that were not
    there before the install, once its database holds no valid path (or is a
    broken one Nix left when it failed to create it).  The database, the
    per-process roots and sockets go whole; gc.lock if a plain file; the other
    directories only as far as they hold nothing but empty directories (and the
    gcroots/profiles link Nix made): a link or file of the user's keeps them.  In
    the directories ``tops`` the install created, every empty directory goes."""
    prefix = run.prefix
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
        _rmdir_tree(drvs)  # the logs themselves went with their derivations (Run.delete)
    for top in tops:
        _rmdir_tree(top)


def _rmdir_tree(top):
    # type: (str) -> None
    """Remove the empty directories under ``top`` and ``top`` itself if empty then."""
    for dirpath, _, _ in sorted(os.walk(top), key=lambda t: len(t[0]), reverse=True):
        _rmdir_quietly(dirpath)


class PlacePaths(Step):
    """Unpack and verify the missing store paths into a staging dir, then rename
    each into the store.  Owned: every path it placed, with the NAR hash it has
    here (recorded before the first rename), so that a re-run keeps a relocated
    copy it can check and an uninstall removes one that never got registered."""

    kind = "place-paths"

    def describe(self, run):
        m = run.manifest
        return "unpack, verify against its NAR hash and move into %s each missing store path " \
               "(%d in all, %s)" % (run.prefix.store_dir, len(m.paths),
                                    human_size(m.total_nar_size))

    def is_done(self, run):
        present = [p for p in run.paths() if os.path.lexists(p)]
        return len(present) == len(run.paths()) and \
            len(nixstore.valid_paths(run.prefix, present)) == len(present)

    def execute(self, run):
        manifest = run.manifest
        valid = nixstore.valid_paths(run.prefix, run.paths())
        placed = self.owned.setdefault("placed", {})
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
        if kept:
            run.manifest = manifest = manifest.with_nar_info(kept)
        if not to_place:
            return

        def before_renames(infos):
            # Every path is unpacked and verified, its final hash known: claim them
            # all before the first one enters the store.
            for entry in to_place:
                info = infos.get(entry.name, (entry.nar_hash, entry.nar_size))
                placed[manifest.store_path(entry.name)] = [info[0], info[1]]
            run.save()

        # What --load-db registers: the NAR hashes of the bytes written.
        run.manifest = manifest.with_nar_info(run.place(run, to_place, before_renames))
        run.placed_count = len(to_place)

    def revert(self, run):
        # This run's staging dir, should a Ctrl-C have cut short the removal in
        # install._unpack_and_place (a revert runs with the signals held).
        staging.remove_tree(staging.staging_dir(run.prefix.store_dir))
        paths = sorted(self.owned.get("placed", {}))
        valid = nixstore.valid_paths(run.prefix, paths)
        for path in deletion.own_store_paths(run.prefix, paths):
            # A valid one is the Register step's to delete, through Nix.
            if path not in valid and os.path.lexists(path):
                staging.remove_tree(path)
                run.removed.append(path)


def _on_disk_matches(path, recorded):
    # type: (str, list) -> bool
    try:
        digest, size = nar.hash_path(path)
    except (OSError, nar.NarError):
        return False
    return [hashes.format_sha256(digest), size] == list(recorded)


class WriteFile(Step):
    """Write one of nix.conf, nix.sh, nix.fish unless it exists (a user's file is
    kept).  Reverted: removed if unchanged since, else kept and named."""

    kind = "write-file"

    def key(self):
        return "%s %s" % (self.kind, self.params["path"])

    def _content(self, run):
        # type: (Run) -> str
        return dict(envfiles.planned_files(run.prefix, run.caches,
                                           run.extra_conf))[self.params["path"]]

    def describe(self, run):
        path = self.params["path"]
        return "write %s (a file of yours there is kept as it is)" % path

    def _recorded(self, run):
        # type: (Run) -> Set[str]
        """The sha256s this file had when an install wrote it: this step's and those
        in the prefix's receipts (another installer's, before a -u)."""
        path = self.params["path"]
        digests = set([self.owned["sha256"]]) if self.owned.get("sha256") else set()
        for other in receipt.others(run.prefix, ""):
            for step in (receipt.load(other) or {}).get("steps", []):
                if isinstance(step, dict) and step.get("kind") == self.kind and \
                        (step.get("params") or {}).get("path") == path:
                    digest = (step.get("owned") or {}).get("sha256")
                    if isinstance(digest, str):
                        digests.add(digest)
        return digests

    def _asked(self, run):
        # type: (Run) -> bool
        """Whether this run asks something of the file: always of the env scripts
        (the installer's own), of nix.conf only with settings given (a plain -u
        must not drop the --substituter or --extra-conf of the first install)."""
        caches = run.caches
        return (self.params["path"] != run.prefix.nix_conf or bool(run.extra_conf) or
                (caches is not None and bool(caches.substituters)))

    def is_done(self, run):
        # Done: the file is there and is what this run would write, or it is the
        # user's.  One an install wrote and nobody changed since is rewritten when
        # this run asks for other content (a re-run with other --extra-conf, or -u
        # with newer env scripts).
        current = _read_bytes(self.params["path"])
        if current is None:
            return os.path.lexists(self.params["path"])
        if current == self._content(run).encode():
            return True
        return hashlib.sha256(current).hexdigest() not in self._recorded(run) or \
            not self._asked(run)

    def already(self, run):
        path = self.params["path"]
        if self.owned.get("sha256") and not run.extra_conf:
            return  # ours, from an earlier run
        current_bytes = _read_bytes(path)
        if current_bytes is not None and \
                hashlib.sha256(current_bytes).hexdigest() in self._recorded(run):
            return  # an install's, unchanged, and nothing asked of it: kept as it is
        try:
            current = (current_bytes or b"").decode()
        except UnicodeDecodeError:
            current = ""
        if current == self._content(run):
            return
        # Not as an install wrote it (is_done rewrites those): the user's.
        run.ui.say("keeping your %s as it is" % path)
        if path != run.prefix.nix_conf:
            return
        caches = run.caches
        if caches is not None and caches.substituters:
            run.ui.say("  for the binary caches, add these lines to it yourself:\n    "
                       + "\n    ".join(caches.conf_lines()))
        missing = [line for line in run.extra_conf if line not in current.splitlines()]
        if missing:
            run.ui.say("  for the settings you gave, add these lines to it yourself:\n    "
                       + "\n    ".join(missing))

    def execute(self, run):
        path = self.params["path"]
        content = self._content(run)
        previous = _read_bytes(path)  # set: an install's, unchanged since (is_done)
        if previous is not None:
            self.owned["previous"] = previous.decode()  # what an undo puts back
            if path == run.prefix.nix_conf:
                run.ui.say("rewriting %s (an install wrote it, unchanged since) with the "
                           "settings given now" % path)
        self.owned["sha256"] = hashlib.sha256(content.encode()).hexdigest()
        if path == run.prefix.nix_conf and run.extra_conf:
            self.owned["settings"] = list(run.extra_conf)  # what the user asked for, recorded
        run.save()
        with timings.phase("env files"):
            if previous is None:
                state = envfiles.write_file(path, content)
            else:
                _replace(path, content)
                state = "written"
        crashpoints.reached("env-file")
        if state != "written":
            self.owned.pop("sha256")
            self.owned.pop("settings", None)

    def revert(self, run):
        path = self.params["path"]
        digest = self.owned.get("sha256")
        if not digest or not os.path.lexists(path):
            return
        current = _read_bytes(path)
        if current is None or hashlib.sha256(current).hexdigest() != digest:
            run.files_kept.append(path)
            return
        previous = self.owned.get("previous")
        if previous is not None and \
                hashlib.sha256(previous.encode()).hexdigest() in self._recorded(run):
            _replace(path, previous)  # the other install's file, which it still needs
            return
        os.unlink(path)
        run.files_removed.append(path)


def _read_bytes(path):
    # type: (str) -> Optional[bytes]
    """The bytes of the regular file ``path``, or None (absent, a link, unreadable)."""
    if os.path.islink(path):
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _replace(path, content):
    # type: (str, str) -> None
    try:
        staging.write_atomically(path, content, mode=0o644)
    except OSError as e:
        raise staging.write_error(e, path)


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

    def is_done(self, run):
        if len(nixstore.valid_paths(run.prefix, run.paths())) != len(run.paths()):
            return False
        # Checked every run, not only the one that registered: a crash may have
        # come between the load and the signatures.
        return not _signatures_missing(run)

    def execute(self, run):
        valid = nixstore.valid_paths(run.prefix, run.paths())
        entries = [p for p in run.manifest.paths if run.manifest.store_path(p.name) not in valid]
        if entries:
            # Before anything is recorded: a Nix that is not the closure's own is refused
            # with nothing to undo here.
            nix_store = run.nix_tool("nix-store")
            self.owned["registered"] = sorted(
                set(self.owned.get("registered", [])) |
                set(run.manifest.store_path(p.name) for p in entries))
            run.save()
            run.ui.say("registering %d paths with nix-store --load-db" % len(entries))
            crashpoints.reached("before-load-db")
            with timings.phase("load-db"):
                nixstore.load_db(run.prefix, nix_store, registration_text(run.manifest, entries))
            crashpoints.reached("after-load-db")
        record_signatures(run)

    def revert(self, run):
        run.delete(self.owned.get("registered", []))


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


class MakeProfile(Step):
    """Make a new generation of the default profile with the roots (``nix-env -i``).

    Owned, per generation: the ValidPaths id before it (recorded before
    nix-env runs) and the paths nix-env registered for it (the user
    environment, its manifest and .drv).  Reverted: the profile goes back to
    the newest other generation (or away), the generation link goes, and so
    do those paths unless something else keeps them alive."""

    kind = "profile"

    def describe(self, run):
        roots = ", ".join(run.manifest.roots)
        how = ("with %s added to what it has" % roots if run.update
               else "holding %s" % roots)
        return "make a new generation of the profile %s %s (the previous one stays for " \
               "--rollback)" % (run.prefix.profile, how)

    def _roots(self, run):
        # type: (Run) -> List[str]
        return [run.manifest.store_path(r) for r in run.manifest.roots]

    def is_done(self, run):
        if not os.path.lexists(run.prefix.profile):
            return False
        current = nixstore.profile_paths(run.prefix)
        return set(self._roots(run)) <= current

    def execute(self, run):
        prefix = run.prefix
        generations = self.owned.setdefault("generations", {})
        nxt = max(_generations(prefix) or [0]) + 1
        since = nixstore.max_path_id(prefix)
        # An update that replaces packages removes them first, in a generation of
        # its own that set_profile deletes again: both are claimed before either
        # is made, so that a kill in between leaves nothing unclaimed.
        count = 2 if nixstore.replaced_first(prefix, self._roots(run), run.update) else 1
        claimed = [str(g) for g in range(nxt, nxt + count)]
        # Unregistered entries nix-env leaves when stopped half-way: those already
        # there are not this run's.
        strays = _nix_env_strays(prefix)
        for g in claimed:
            generations[g] = {"sinceId": since, "strays": strays}
        run.save()
        run.ui.say("making the profile %s" % prefix.profile)
        crashpoints.reached("before-profile")
        between = []  # type: List[str]
        with timings.phase("profile"):
            nixstore.set_profile(prefix, run.nix_tool("nix-env"), self._roots(run),
                                 keep_others=run.update, between=between.append)
        crashpoints.reached("after-profile")
        made = nixstore.profile_generation(prefix)
        last = str(made) if made is not None else claimed[-1]
        # Claimed too, should nix-env have numbered it otherwise.
        generations.setdefault(last, {"sinceId": since})
        # What Nix made for the generation in between goes with this one.  Until
        # that is known, the claims stay as they are: a Ctrl-C in the meantime
        # reverts every claimed generation, the one in between included (whose
        # link is gone: its paths are then found by their names).
        record = {"sinceId": since, "paths": _made_by_nix_env(run, int(last), since, between)}
        # One assignment: the record is whole whenever a Ctrl-C comes.
        self.owned["generations"] = dict(
            [(g, v) for g, v in generations.items() if g not in claimed] + [(last, record)])

    def revert(self, run):
        prefix = run.prefix
        ours = dict((int(g), v) for g, v in self.owned.get("generations", {}).items())
        doomed = set()  # type: Set[str]
        strays = set()  # type: Set[str]
        for generation, record in ours.items():
            if isinstance(record.get("strays"), list) and \
                    not isinstance(record.get("paths"), list):
                # nix-env was stopped: what it wrote but never registered (the
                # manifest or environment it was adding, their .lock files).
                strays.update(set(_nix_env_strays(prefix)) - set(record["strays"]))
            # "paths" is recorded once nix-env is done (an empty list too): only a
            # generation nix-env was stopped in is looked for.
            doomed.update(record["paths"] if isinstance(record.get("paths"), list) else
                          _made_by_nix_env(run, generation, record.get("sinceId", 0)))
        current = nixstore.profile_generation(prefix)
        others = [g for g in _generations(prefix) if g not in ours]
        if current in ours:
            if others:
                nixstore.run_nix(prefix, [run.nix_tool("nix-env"), "-p", prefix.profile,
                                          "--switch-generation", str(others[-1])])
                run.ui.say("switched %s back to generation %d" % (prefix.profile, others[-1]))
            elif os.path.lexists(prefix.profile):
                os.unlink(prefix.profile)
        for generation in ours:
            link = _link(prefix, generation)
            if os.path.lexists(link):
                os.unlink(link)
        if doomed:
            # A failed build of the environment leaves its output unregistered in
            # the store: named in the .drv (an ATerm, src/libstore/derivations.cc).
            outputs = [o for d in doomed if d.endswith(".drv") for o in _drv_outputs(d)]
            run.delete(doomed)
            leftover = [o for o in deletion.own_store_paths(prefix, outputs)
                        if os.path.lexists(o)]
            valid = nixstore.valid_paths(prefix, leftover)
            for path in leftover:
                if path not in valid:
                    staging.remove_tree(path)
                    run.removed.append(path)
            for path in deletion.own_store_paths(prefix, outputs):
                lock = path + ".lock"  # Nix's path lock (src/libstore/pathlocks.cc)
                if os.path.isfile(lock) and not os.path.islink(lock) and \
                        os.path.getsize(lock) == 0:
                    os.unlink(lock)
        for path in sorted(strays):
            if os.path.lexists(path):
                staging.remove_tree(path)
                if not path.endswith(".lock"):
                    run.removed.append(path)


def _drv_outputs(path):
    # type: (str) -> List[str]
    try:
        with open(path) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return []
    head = text.partition("],[")[0]
    return re.findall(r'\("[^"]*","(/[^"]+)"', head)


def _generations(prefix):
    # type: (Prefix) -> List[int]
    pattern = re.compile(r"^%s-(\d+)-link$" % re.escape(os.path.basename(prefix.profile)))
    try:
        names = os.listdir(prefix.profiles_dir)
    except OSError:
        return []
    return sorted(int(m.group(1)) for m in map(pattern.match, names) if m)


def _link(prefix, generation):
    # type: (Prefix, int) -> str
    return "%s-%d-link" % (prefix.profile, generation)


NIX_ENV_NAMES = ("-env-manifest.nix", "-user-environment.drv", "-user-environment")


def _nix_env_strays(prefix):
    # type: (Prefix) -> List[str]
    """Entries of the store named as nix-env names what it makes (NIX_ENV_NAMES) that
    are not valid, and the empty .lock files beside such names (src/libstore/
    pathlocks.cc): what a nix-env stopped half-way leaves unregistered."""
    try:
        names = os.listdir(prefix.store_dir)
    except OSError:
        return []
    found, locks = [], []
    for name in names:
        path = os.path.join(prefix.store_dir, name)
        if name.endswith(NIX_ENV_NAMES):
            found.append(path)
        elif name.endswith(".lock") and name[:-5].endswith(NIX_ENV_NAMES) and \
                os.path.isfile(path) and not os.path.islink(path) and \
                os.path.getsize(path) == 0:
            locks.append(path)
    valid = nixstore.valid_paths(prefix, found)
    return sorted([p for p in found if p not in valid] + locks)


def _made_by_nix_env(run, generation, since_id, environments=()):
    # type: (Run, int, int, Sequence[str]) -> List[str]
    """The paths ``nix-env`` (or ``nix profile``) registered for a generation's
    user environment (the environment, its manifest and .drv) and for the
    ``environments`` of generations made on the way to it: those of their
    closures or their derivers' registered after id ``since_id``.  One valid
    before is not ours."""
    link = _link(run.prefix, generation)
    new = nixstore.registered_since(run.prefix, since_id)
    if not new:
        return []
    if not os.path.lexists(link):
        # nix-env failed (a collision in the profile) after registering some of
        # what it builds: those are named by src/nix-env/user-env.cc.
        return sorted(p for p in new if p.endswith(NIX_ENV_NAMES))
    nix_store = run.nix_tool("nix-store")
    related = set()  # type: Set[str]
    for environment in [os.path.realpath(link)] + list(environments):
        related.update(nixstore.run_nix(run.prefix, [nix_store, "-qR", environment]).split())
        deriver = nixstore.run_nix(run.prefix,
                                   [nix_store, "-q", "--deriver", environment]).strip()
        if deriver in new:
            related.update(nixstore.run_nix(run.prefix, [nix_store, "-qR", deriver]).split())
    return sorted(new & related)


class ShellStartup(Step):
    """``--modify-profile``: the marked line sourcing nix.sh in the shell start-up
    files (shellrc.py).  Reverted: the marked block is removed again."""

    kind = "shell-startup"

    def describe(self, run):
        return "add a line sourcing %s/nix.sh to %s" % (
            run.prefix.profile_d, ", ".join(shellrc.candidates(self.params["home"])))

    def is_done(self, run):
        return all(shellrc.holds_block(path, run.prefix.root)
                   for path in shellrc.candidates(self.params["home"]))

    def execute(self, run):
        self.owned["home"] = self.params["home"]
        run.save()
        shellrc.add_block(run.prefix.root, self.params["home"])

    def revert(self, run):
        if self.owned.get("home"):
            for path in shellrc.remove_block(run.prefix.root, self.owned["home"]):
                run.ui.say("removed the nix-prefix line from %s" % path)


STEP_KINDS = dict((cls.kind, cls) for cls in (MakeDirs, PlacePaths, WriteFile, Register,
                                              MakeProfile, ShellStartup))


def from_record(record):
    # type: (dict) -> Optional[Step]
    """A step rebuilt from its receipt record (None for a kind this installer does
    not know, which it leaves alone)."""
    cls = STEP_KINDS.get(str(record.get("kind")))
    if cls is None:
        return None
    step = cls(**(record.get("params") or {}))
    step.state = record.get("state", "planned")
    step.owned = record.get("owned") or {}
    return step
