"""Receipts: the plan an installer ran in a prefix, with each step's state and what it made.

One JSON file per installer under ``P/var/nix-prefix/receipts/``, named by
the installer's payload sha256, in the spirit of nix-installer's
``receipt.json``: the plan (plan.py) as it stands, written atomically before
and after every step, so that whatever moment the installer is killed at,
the receipt names everything there is to finish or to undo::

    {"version": 2, "payloadSha256": "...", "storeDir": "P/store",
     "complete": true,
     "steps": [{"kind": "place-paths", "state": "done", "params": {...},
                "owned": {"placed": {"P/store/...-hello": ["sha256:...", 1234]}}},
               ...]}

``owned`` holds only what the step created (store paths placed and
registered, profile generations, files and directories): an uninstall
reverts the steps from it and touches nothing else.

``Receipt`` is this installer's receipt in one prefix, the ``Record`` a
plan (plan.py) is written to: it makes the directories down to the
receipts dir with the first receipt in them (``make_receipts_dir``), takes
the lock, reads the receipt an earlier run left and adopts its steps,
saves, drops, and at an uninstall hands what the prefix's installs share
over to another installer's receipt.
"""

import errno
import json
import os

from ..payload.machine import process_alive
from . import crashpoints, envfiles, nixstore, receipt_v1, staging
from .errors import InstallError
from .plan import DONE, STARTED, Record, from_record, merge
from .signals import signals_deferred

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Type  # noqa: F401

    from ..payload.manifest import Manifest  # noqa: F401
    from .plan import Reverted, Step  # noqa: F401
    from .prefix import Prefix  # noqa: F401
    from .ui import UI  # noqa: F401

VERSION = 2


def path_for(prefix, manifest):
    # type: (Prefix, Manifest) -> str
    """Where the receipt of the installer of ``manifest`` is in ``prefix``."""
    return os.path.join(prefix.receipts_dir, manifest.payload_sha256[:32] + ".json")


def load(path):
    # type: (str) -> Optional[dict]
    """The receipt at ``path``, or None if there is none (or it is unreadable); one an
    older installer wrote (version 1) comes as the plan it stands for."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    if isinstance(doc, dict) and doc.get("version") == receipt_v1.VERSION:
        # An older installer's: read as the plan it stands for (receipt_v1.py).
        doc = receipt_v1.upgrade(doc)
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        return None
    if not isinstance(doc.get("steps"), list):
        return None
    return doc


def new(manifest, prefix):
    # type: (Manifest, Prefix) -> dict
    """An empty receipt of the installer of ``manifest`` in ``prefix``."""
    return {"version": VERSION, "payloadSha256": manifest.payload_sha256,
            "storeDir": prefix.store_dir, "complete": False, "steps": []}


def others(prefix, path):
    # type: (Prefix, str) -> List[str]
    """Receipts of other installers in the prefix."""
    try:
        names = os.listdir(prefix.receipts_dir)
    except OSError:
        return []
    return sorted(os.path.join(prefix.receipts_dir, n) for n in names
                  if n.endswith(".json") and os.path.join(prefix.receipts_dir, n) != path)


def write(path, doc):
    # type: (str, dict) -> None
    """Write ``doc`` at ``path`` atomically (temporary file, fsync, rename); the
    receipts dir is made with the first receipt (make_receipts_dir)."""
    staging.write_atomically(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def remove(path):
    # type: (str) -> None
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Receipt(Record):
    """This installer's receipt in ``prefix``: the plan of ``steps`` as it stands.

    ``kinds`` are the Step classes a record can be (in plan order): the
    receipt rebuilds steps from records with them.  An install's receipt is
    opened (``open``) before its first step under the lock; an uninstall's
    is read (``read``), which gives the steps to revert.
    """

    def __init__(self, prefix, manifest, kinds, steps=(), ui=None):
        # type: (Prefix, Manifest, Sequence[Type[Step]], Iterable[Step], Optional[UI]) -> None
        self.prefix = prefix
        self.manifest = manifest
        self.path = path_for(prefix, manifest)
        self.kinds = list(kinds)
        self.steps = list(steps)
        self.ui = ui
        self.doc = None  # type: Optional[dict]
        self.prior = None  # type: Optional[dict]
        # Records of the receipt read that no step of this plan is, kept as they are:
        # of a complete earlier run (merged into a step of the same key), and of kinds
        # this installer does not know (an uninstall's).
        self.base = {}  # type: Dict[str, dict]
        self.unknown = []  # type: List[dict]
        self.loaded = False
        self.dropped = False
        self.lock = None  # type: Optional[nixstore.PrefixLock]
        self.last = not others(prefix, self.path)

    def key(self, record):
        # type: (dict) -> str
        """The key (Step.key) of a receipt record."""
        step = from_record(record, self.kinds)
        return step.key() if step is not None else "%s ?" % record.get("kind")

    def open(self):
        # type: () -> None
        """Before the first step that needs the lock: make the directories the lock and
        the receipt live in (with the first receipt), take the lock, and read the
        receipt this installer left earlier.  An unfinished one's steps are adopted
        (a failure now undoes them too, and the prefix is as it was before the first
        try); a complete one's records are kept beside this run's, which alone a
        failure undoes."""
        made = []  # type: List[str]
        try:
            # A Ctrl-C waits until what the directories are is known.
            with signals_deferred():
                made = make_receipts_dir(self.prefix, os.path.basename(self.path),
                                         self._write_first)
            self._take_lock()
            self._adopt(load(self.path))
        except BaseException:
            if not self.loaded:  # no step knows of them yet: take them back here
                self.release()
                unmake_receipts_dir(self.prefix, made, self.path)
            raise

    def _write_first(self, where, created):
        # type: (str, List[str]) -> None
        """The first receipt: the plan's first kind (the step that makes the prefix's
        directories) started, owning the directories made with it."""
        doc = new(self.manifest, self.prefix)
        make_dirs = self.kinds[0]()
        make_dirs.state = STARTED
        make_dirs.owned = {"created": created}
        doc["steps"] = [make_dirs.to_record()]
        write(where, doc)

    def _take_lock(self):
        # type: () -> None
        prefix = self.prefix
        self.lock = nixstore.PrefixLock(prefix.lock_file, on_wait=lambda: self._say(
            "waiting for another installer on %s..." % prefix.root)).acquire()
        for stale in staging.remove_stale_staging(prefix.store_dir):
            self._say("removed %s, left by an interrupted install" % stale)
        if os.path.isdir(prefix.home):
            envfiles.make_profile_link(prefix)  # before any Nix runs (envfiles.py)

    def _say(self, message):
        # type: (str) -> None
        if self.ui is not None:
            self.ui.say(message)

    def _adopt(self, prior):
        # type: (Optional[dict]) -> None
        self.prior = prior
        by_key = dict((self.key(r), r) for r in (prior or {}).get("steps", []))
        if prior and prior.get("complete"):
            self.base = by_key
        else:
            self.revert_all = True  # a failure takes back the unfinished runs too
            keys = set(s.key() for s in self.steps)
            for step in self.steps:
                if step.key() in by_key:
                    step.adopt(by_key[step.key()].get("owned") or {})
            self.base = dict((k, r) for k, r in by_key.items() if k not in keys)
        self.last = not others(self.prefix, self.path)  # again, under the lock
        self.loaded = True

    def release(self):
        # type: () -> None
        """Let go of the prefix's lock, if held."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def save(self, reverted=None):
        # type: (Optional[Reverted]) -> None
        """Write the steps as they stand (with the store paths reverting kept so far).
        Nothing is written before the receipt was read under the lock (one of an
        earlier run must not be overwritten unread), nor once it was dropped."""
        if not self.loaded or self.dropped:
            return
        if not os.path.isdir(self.prefix.receipts_dir):
            return  # reverted to before the first install: nothing to record it in
        records = [s.to_record() for s in self.steps]
        if self.doc is not None:  # an uninstall's: the receipt read, as it progresses
            doc = self.doc
            if reverted is not None:
                # What the steps owned but had to keep (alive in another install's
                # profile): recorded with the steps' progress, so that a kill before
                # the hand-over loses none of it.
                doc["kept"] = self.kept(reverted)
        else:
            doc = new(self.manifest, self.prefix)
            doc["complete"] = bool(self.prior and self.prior.get("complete")) or all(
                s.state == DONE for s in self.steps)
            for record in records:
                base = self.base.get(self.key(record))
                if base:
                    record["owned"] = merge(base.get("owned") or {}, record["owned"])
            keys = set(s.key() for s in self.steps)
            records += [r for k, r in sorted(self.base.items()) if k not in keys]
        doc["steps"] = records + self.unknown
        write(self.path, doc)

    def kept(self, reverted):
        # type: (Reverted) -> List[str]
        """The store paths kept alive by another install: recorded ones and ``reverted``'s."""
        return sorted(set((self.doc or {}).get("kept") or []) | set(reverted.kept))

    def drop(self):
        # type: () -> None
        """No trace of this run stays: the receipt as it was before it (a complete one),
        else none."""
        if not self.loaded or self.dropped:
            return  # never read: whatever receipt is there is not this run's
        self.dropped = True
        if self.prior and self.prior.get("complete"):
            write(self.path, self.prior)
        else:
            remove(self.path)

    def read(self):
        # type: () -> List[Step]
        """An uninstall's: the receipt as it is now, and its steps rebuilt (records of
        kinds this installer does not know are kept as they are).  InstallError if
        there is none, or it is of another store dir."""
        doc = load(self.path)
        if doc is None:
            raise InstallError("%s holds no record of this installer" % self.prefix.root,
                               "uninstall with the installer that installed it")
        if doc.get("storeDir") != self.prefix.store_dir:
            raise InstallError("the receipt %s is for %s, not %s" % (
                self.path, doc.get("storeDir"), self.prefix.store_dir), "uninstall with -p %s" % (
                    os.path.dirname(str(doc.get("storeDir")))))
        self.doc = doc
        self.unknown = [r for r in doc["steps"] if from_record(r, self.kinds) is None]
        self.steps = [s for s in (from_record(r, self.kinds) for r in doc["steps"])
                      if s is not None]
        self.last = not others(self.prefix, self.path)
        self.loaded = True
        return self.steps

    def lock_prefix(self):
        # type: () -> None
        """An uninstall's: take the prefix's lock (``release`` lets go)."""
        self.lock = nixstore.PrefixLock(self.prefix.lock_file).acquire()

    def hand_over(self, steps):
        # type: (List[Step]) -> None
        """Merge what ``steps`` own into another installer's receipt (a step it has of
        the same key gets the records too; a new one goes where the plan has it):
        whichever uninstall comes last then removes it."""
        for other_path in others(self.prefix, self.path):
            other = load(other_path)
            if other is not None:
                break
        else:
            return
        records = other["steps"]
        by_key = dict((self.key(r), r) for r in records)
        order = [cls.kind for cls in self.kinds]

        def rank(kind):
            # type: (Any) -> int
            return order.index(kind) if kind in order else len(order)

        for step in steps:
            if not step.owned:
                continue
            record = by_key.get(step.key())
            if record is None:
                at = [i for i, r in enumerate(records) if rank(r.get("kind")) > rank(step.kind)]
                records.insert(at[0] if at else len(records), step.to_record())
            else:
                record["owned"] = merge(record.get("owned") or {}, step.owned)
        write(other_path, other)


# The name a chain of new directories is made under, before it is renamed into place.
NEW_DIRS_PREFIX = ".nix-prefix-new-"


def _receipts_chain(prefix):
    # type: (Prefix) -> List[str]
    """The missing directories from the prefix's first missing parent down to its
    receipts dir, outermost first (each inside the one before)."""
    chain = prefix.missing_parents() + [prefix.root, os.path.dirname(prefix.data_dir),
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
        staging.rmdir_quietly(path)


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
