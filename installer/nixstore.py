"""Talk to the prefix's Nix: which paths are valid, the lock, ``--load-db``, profiles."""

import errno
import fcntl
import json
import os
import re
import signal
import subprocess

from ..payload import hashes, seal, storepath
from . import crashpoints
from .errors import EnvironmentProblem, InstallError
from .signals import signals_deferred

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    import sqlite3  # noqa: F401
    from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple  # noqa: F401

    from .prefix import Prefix  # noqa: F401


def valid_paths(prefix, paths):
    # type: (Prefix, Iterable[str]) -> Set[str]
    """Which of ``paths`` the prefix's Nix database already lists as valid.

    Reads the SQLite database read-only (schema: src/libstore/schema.sql).
    Without a database nothing is valid.
    """
    paths = list(paths)
    found = set()  # type: Set[str]
    for start in range(0, len(paths), 500):
        batch = paths[start:start + 500]
        found.update(r[0] for r in _query(
            prefix, "select path from ValidPaths where path in (%s)" % ",".join("?" * len(batch)),
            batch))
    return found


def max_path_id(prefix):
    # type: (Prefix) -> int
    """The highest ValidPaths id (ids only grow: schema.sql's autoincrement), 0 if none."""
    rows = _query(prefix, "select max(id) from ValidPaths", [])
    return (rows[0][0] or 0) if rows else 0


def registered_since(prefix, path_id):
    # type: (Prefix, int) -> Set[str]
    """Paths registered after the one with id ``path_id`` (see max_path_id)."""
    return set(r[0] for r in _query(prefix, "select path from ValidPaths where id > ?",
                                    [path_id]))


def count_valid(prefix):
    # type: (Prefix) -> Optional[int]
    """How many paths the database lists as valid: 0 without one, None for a
    database without its tables (Nix failed while creating it)."""
    try:
        tables = _query(prefix, "select count(*) from sqlite_master where type = 'table' "
                                "and name = 'ValidPaths'", [])
    except InstallError as e:
        if "not a database" in str(e):
            return None
        raise
    if not tables:
        return 0
    if not tables[0][0]:
        return None
    return _query(prefix, "select count(*) from ValidPaths", [])[0][0]


def _query(prefix, sql, args):
    # type: (Prefix, str, Sequence[object]) -> List[tuple]
    """Rows of one read-only query on the prefix's database; none without one."""
    if not os.path.exists(prefix.db):
        return []
    try:
        import sqlite3
    except ImportError:
        # Without sqlite3 treat nothing as valid: everything is verified and
        # re-registered, which is slower but still correct.
        return []
    uri = "file:%s?mode=ro" % prefix.db.replace("?", "%3f").replace("#", "%23")
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=60)
        try:
            return list(conn.execute(sql, args))
        finally:
            conn.close()
    except sqlite3.Error as e:
        if "no such table" in str(e):
            return []  # a database Nix failed to create lists nothing as valid
        raise InstallError("cannot read the Nix database %s (%s)" % (prefix.db, e),
                           "check the prefix's var/nix/db")


class PrefixLock(object):
    """An exclusive lock on the prefix, so two installers never interleave: ``acquire``,
    then ``release`` (a receipt holds it across the steps of a plan, receipt.py)."""

    def __init__(self, path, on_wait=None):
        self._path = path
        self._on_wait = on_wait
        self._fd = -1

    def acquire(self):
        # type: () -> PrefixLock
        """Take the lock, waiting (``on_wait`` is told) while another installer holds it;
        EnvironmentProblem if it cannot be taken at all.  ``release`` lets go."""
        try:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise EnvironmentProblem("cannot open the lock file %s (%s)" % (self._path, e.strerror),
                                     "it belongs to another user: run the installer as the "
                                     "prefix's owner")
        try:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if self._on_wait:
                    self._on_wait()
                fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError as e:
            os.close(self._fd)
            self._fd = -1
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP):
                raise EnvironmentProblem(
                    "%s is on a filesystem without file locks (%s), which Nix needs as well "
                    "(NFS without lockd?)" % (os.path.dirname(self._path), e.strerror),
                    "choose a prefix on a local disk, e.g. /tmp/$USER/nix or /scratch/$USER/nix")
            raise EnvironmentProblem("cannot lock %s (%s)" % (self._path, e.strerror),
                                     "choose another --prefix")
        return self

    def release(self):
        # type: () -> None
        """Let go of the lock (once; again is a no-op)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def run_nix(prefix, argv, stdin_text=None, started=None):
    # type: (Prefix, List[str], Optional[str], Optional[Callable[[int], None]]) -> str
    """Run a Nix command on the prefix; return stdout or raise with Nix's own error.
    ``started`` is given the process id (to tell its own runtime roots)."""
    proc = None
    try:
        with signals_deferred():  # a Nix started is a Nix in hand
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=prefix.nix_env(),
                                    cwd=prefix.home)
        if started is not None:
            started(proc.pid)
        out, err = proc.communicate(stdin_text.encode() if stdin_text is not None else None)
    except OSError as e:
        if proc is not None:
            raise
        if seal.is_out_of_memory(e):  # fork or exec under ulimit -v
            raise InstallError("out of memory: cannot start %s (%s)" % (argv[0], e.strerror),
                               seal.memory_advice())
        if e.errno == errno.EMFILE:  # the pipes to it, under a low ulimit -n
            raise EnvironmentProblem("cannot start %s: too few files may be open at once "
                                     "here (ulimit -n)" % argv[0],
                                     "raise the limit with ulimit -n 64")
        raise InstallError("cannot run %s (%s)" % (argv[0], e.strerror),
                           "the installer's Nix may not suit this machine")
    except BaseException:
        # Ctrl-C or SIGTERM while Nix runs: Nix is told too (a terminal's Ctrl-C
        # reaches it anyway) and waited for, so that the revert that follows sees
        # what it left, not what it is still writing.
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            if proc.stdin is not None:  # no more input: Nix may be waiting for it
                try:
                    proc.stdin.close()
                except OSError:
                    pass
                proc.stdin = None
            proc.communicate()
        raise
    if proc.returncode != 0:
        # Name the operation: "nix-env -i", not "nix-env -p".
        operation = argv[3] if argv[1] == "-p" and len(argv) > 3 else argv[1]
        said = nix_error(err.decode("utf-8", "replace"), proc.returncode)
        # Nix under a memory limit: its libraries do not map, its threads do not start.
        raise InstallError("%s %s failed%s: %s" % (
            os.path.basename(argv[0]), operation,
            " (out of memory)" if seal.is_memory_text(said) else "", said),
            seal.memory_advice() if seal.is_memory_text(said) else "")
    return out.decode("utf-8", "replace")


# Nix's messages are "error: ..." followed by indented lines (the build log's
# last lines, the files in conflict, a trace): src/libutil/error.cc showErrorInfo.
MAX_ERROR_LINES = 15
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def nix_error(stderr_text, returncode):
    # type: (str, int) -> str
    """What to show of a failed Nix command's stderr: Nix's own error message,
    from its first ``error:`` line on (at most MAX_ERROR_LINES lines), else the
    last line, else the exit code."""
    lines = [_ANSI.sub("", line).rstrip() for line in stderr_text.splitlines()]
    lines = [line for line in lines if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("error:")), None)
    if start is None:
        return lines[-1].strip() if lines else "exit code %d" % returncode
    shown = [line.strip() for line in lines[start:start + MAX_ERROR_LINES]]
    if len(lines) - start > MAX_ERROR_LINES:
        shown.append("... (%d more lines)" % (len(lines) - start - MAX_ERROR_LINES))
    return "\n    ".join(shown)


def load_db(prefix, nix_store, registration_text):
    # type: (Prefix, str, str) -> None
    """Register paths with ``nix-store --load-db`` (src/nix-store/nix-store.cc ``opLoadDB``)."""
    run_nix(prefix, [nix_store, "--load-db"], registration_text)


def profile_format(profile):
    # type: (str) -> Optional[str]
    """How the profile generation ``profile`` links to was made: "nix profile"
    (a ``manifest.json``, src/nix/profile.cc ``ProfileManifest``), "nix-env" (a
    ``manifest.nix``, src/nix-env/user-env.cc), or None (no profile yet)."""
    if os.path.exists(os.path.join(profile, "manifest.json")):
        return "nix profile"
    if os.path.lexists(profile):
        return "nix-env"
    return None


def profile_paths(prefix):
    # type: (Prefix) -> Set[str]
    """Store paths installed in the default profile, in either format, read from
    its manifest without running Nix (so a check before the install writes
    nothing, not even Nix's locks); an unreadable manifest reads as empty.

    ``manifest.nix``: nix-env writes one ``outPath = "...";`` per package and
    output (src/nix-env/user-env.cc).  ``manifest.json``: ``elements``, a list
    (versions 1 and 2) or an object keyed by name (version 3), each with its
    ``storePaths`` (src/nix/profile.cc).
    """
    if profile_format(prefix.profile) == "nix profile":
        try:
            with open(os.path.join(prefix.profile, "manifest.json")) as f:
                doc = json.load(f)
            elements = doc.get("elements", [])
            if isinstance(elements, dict):
                elements = list(elements.values())
            return set(p for e in elements if e.get("active", True)
                       for p in e.get("storePaths", []) if isinstance(p, str))
        except (OSError, ValueError, AttributeError):
            return set()
    try:
        with open(os.path.join(prefix.profile, "manifest.nix")) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return set()
    return set(re.findall(r'outPath = "([^"]+)";', text))


def profile_generation(prefix):
    # type: (Prefix) -> Optional[int]
    """The current generation N of the default profile (link ``default-N-link``), if any."""
    try:
        link = os.readlink(prefix.profile)
    except OSError:
        return None
    parts = link.rpartition("/")[2].split("-")
    if len(parts) >= 3 and parts[-1] == "link" and parts[-2].isdigit():
        return int(parts[-2])
    return None


def replaced_first(prefix, store_paths, keep_others=False):
    # type: (Prefix, List[str], bool) -> List[str]
    """The packages ``set_profile`` removes from the profile before adding
    ``store_paths`` (in a generation of its own, deleted again)."""
    fmt = profile_format(prefix.profile)
    if not fmt or (not keep_others and fmt != "nix profile"):
        return []
    return _replaced(profile_paths(prefix), store_paths)


def set_profile(prefix, nix_env, store_paths, keep_others=False, between=None):
    # type: (Prefix, str, List[str], bool, Optional[Callable[[str], None]]) -> None
    """Make a new profile generation holding exactly ``store_paths`` (with
    ``keep_others``: those plus the other packages it had, minus same-named
    ones and, when ``store_paths`` bring a Nix, minus the Nix it had).

    The profile keeps its format: ``nix-env -i`` for a nix-env profile (Nix's
    builtin buildenv makes the user environment), ``nix profile install`` of
    the same Nix for one that ``nix profile`` made, which nix-env refuses
    ("incompatible with 'nix-env'").  ``var/nix/profiles/default`` is a GC root
    through Nix's ``gcroots/profiles`` link; the previous generation stays for
    a rollback.  When old packages must go first, the generation that removing
    them makes is deleted again, so one call adds one generation; ``between``
    is given that generation's user environment before its link goes (its
    store paths stay, for the caller to claim).
    """
    fmt = profile_format(prefix.profile)
    if not keep_others and fmt != "nix profile":
        run_nix(prefix, [nix_env, "-p", prefix.profile, "-i", "--remove-all"]
                + list(store_paths))
        return
    stale = replaced_first(prefix, store_paths, keep_others)
    if fmt == "nix profile":
        nix = os.path.join(os.path.dirname(nix_env), "nix")
        remove = [nix, "profile", "remove", "--profile", prefix.profile] + _NIX_COMMAND
        add = [nix, "profile", "install", "--profile", prefix.profile] + _NIX_COMMAND
    else:
        remove = [nix_env, "-p", prefix.profile, "-e"]
        add = [nix_env, "-p", prefix.profile, "-i"]
    removed = None
    if stale:
        run_nix(prefix, remove + stale)
        removed = profile_generation(prefix)
    installed = profile_paths(prefix)
    run_nix(prefix, add + [p for p in store_paths if p not in installed])
    if removed is not None and removed != profile_generation(prefix):
        if between is not None:
            between(os.path.realpath("%s-%d-link" % (prefix.profile, removed)))
        crashpoints.reached("between-generations")
        run_nix(prefix, [nix_env, "-p", prefix.profile, "--delete-generations", str(removed)])


# `nix profile` is experimental in every supported Nix (2.8 to 2.34).
_NIX_COMMAND = ["--extra-experimental-features", "nix-command"]


def is_nix(path):
    # type: (str) -> bool
    """Whether the store path ``path`` is a Nix (has ``bin/nix-store``)."""
    return os.path.lexists(os.path.join(path, "bin", "nix-store"))


def _replaced(current, new_paths):
    # type: (Iterable[str], List[str]) -> List[str]
    """Which installed paths the new ones replace: the same package name (as
    ``nix-env -i`` replaces, ``DrvName`` in src/libexpr/names.cc; ``nix profile``
    would keep both and collide), and any Nix when a new one comes (two Nixes
    collide on ``bin/nix*``, whatever their names)."""
    def name(path):
        # type: (str) -> str
        return storepath.split_drv_name(os.path.basename(path).partition("-")[2])[0]
    names = set(name(p) for p in new_paths)
    brings_nix = any(is_nix(p) for p in new_paths)
    return sorted(p for p in current if p not in new_paths
                  and (name(p) in names or (brings_nix and is_nix(p))))

def add_signatures(prefix, signed, dry_run=False):
    # type: (Prefix, List[Tuple[str, str, int, List[str], List[str]]], bool) -> int
    """Add signatures to valid paths of the prefix's database, as Nix's own
    ``LocalStore::addSignatures`` does (src/libstore/local-store.cc): the
    ``sigs`` column of ValidPaths, a space-separated sorted set.

    ``signed`` holds (store path, narHash, narSize, references, signatures).
    A path gets them only if the database has it with that NAR hash, size and
    references, which is what the signatures cover (payload/signing.py
    ``fingerprint``): a path registered from another build keeps its own.
    Returns the number of paths that got a new signature (with ``dry_run``: that
    would get one; nothing is written).  Raises ImportError when this Python
    has no sqlite3.
    """
    import sqlite3

    wanted = dict((path, (nar_hash, size, set(refs), sigs))
                  for path, nar_hash, size, refs, sigs in signed)
    paths = sorted(wanted)
    added = 0
    try:
        conn = sqlite3.connect(prefix.db, timeout=60)
        try:
            with conn:  # one transaction: all of it or nothing
                for start in range(0, len(paths), 500):
                    added += _add_signatures(conn, paths[start:start + 500], wanted, dry_run)
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise InstallError("cannot record the signatures in the Nix database %s (%s)"
                           % (prefix.db, e), "check the prefix's var/nix/db")
    return added


def _add_signatures(conn, batch, wanted, dry_run):
    # type: (sqlite3.Connection, List[str], Dict[str, Tuple[str, int, Set[str], List[str]]], bool) -> int
    marks = ",".join("?" * len(batch))
    rows = {}  # type: Dict[str, Tuple[int, str, int, str]]
    for row in conn.execute("select path, id, hash, narSize, sigs from ValidPaths "
                            "where path in (%s)" % marks, batch):
        rows[row[0]] = row[1:]
    refs = dict((path, set()) for path in rows)  # type: Dict[str, Set[str]]
    for referrer, reference in conn.execute(
            "select v.path, r.path from ValidPaths v join Refs on Refs.referrer = v.id "
            "join ValidPaths r on r.id = Refs.reference where v.path in (%s)" % marks, batch):
        refs[referrer].add(reference)
    added = 0
    for path, (row_id, db_hash, db_size, db_sigs) in rows.items():
        nar_hash, size, references, sigs = wanted[path]
        try:
            same_hash = hashes.parse_sha256(db_hash) == hashes.parse_sha256(nar_hash)
        except ValueError:
            same_hash = False
        if not same_hash or db_size != size or refs[path] != references:
            continue
        have = set((db_sigs or "").split())
        if set(sigs) <= have:
            continue
        if not dry_run:
            conn.execute("update ValidPaths set sigs = ? where id = ?",
                         (" ".join(sorted(have | set(sigs))), row_id))
        added += 1
    return added




# What nix-env names the user environment it makes for a generation, its manifest
# and its derivation (src/nix-env/user-env.cc).
NIX_ENV_NAMES = ("-env-manifest.nix", "-user-environment.drv", "-user-environment")


def generations(prefix):
    # type: (Prefix) -> List[int]
    """The numbers of the default profile's generations, oldest first."""
    pattern = re.compile(r"^%s-(\d+)-link$" % re.escape(os.path.basename(prefix.profile)))
    try:
        names = os.listdir(prefix.profiles_dir)
    except OSError:
        return []
    return sorted(int(m.group(1)) for m in map(pattern.match, names) if m)


def generation_link(prefix, generation):
    # type: (Prefix, int) -> str
    """The link of one generation of the default profile (src/libstore/profiles.cc)."""
    return "%s-%d-link" % (prefix.profile, generation)


def nix_env_strays(prefix):
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
    valid = valid_paths(prefix, found)
    return sorted([p for p in found if p not in valid] + locks)


def made_by_nix_env(prefix, nix_tool, generation, since_id, environments=()):
    # type: (Prefix, Callable[[str], str], int, int, Sequence[str]) -> List[str]
    """The paths ``nix-env`` (or ``nix profile``) registered for a generation's
    user environment (the environment, its manifest and .drv) and for the
    ``environments`` of generations made on the way to it: those of their
    closures or their derivers' registered after id ``since_id``.  One valid
    before is not ours.  ``nix_tool(name)`` is the Nix program to ask."""
    link = generation_link(prefix, generation)
    new = registered_since(prefix, since_id)
    if not new:
        return []
    if not os.path.lexists(link):
        # nix-env failed (a collision in the profile) after registering some of
        # what it builds: those are named by src/nix-env/user-env.cc.
        return sorted(p for p in new if p.endswith(NIX_ENV_NAMES))
    nix_store = nix_tool("nix-store")
    related = set()  # type: Set[str]
    for environment in [os.path.realpath(link)] + list(environments):
        related.update(run_nix(prefix, [nix_store, "-qR", environment]).split())
        deriver = run_nix(prefix, [nix_store, "-q", "--deriver", environment]).strip()
        if deriver in new:
            related.update(run_nix(prefix, [nix_store, "-qR", deriver]).split())
    return sorted(new & related)
