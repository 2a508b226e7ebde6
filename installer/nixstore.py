"""Talk to the prefix's Nix: which paths are valid, the lock, ``--load-db``, profiles."""

import errno
import fcntl
import os
import re
import subprocess

from .errors import InstallError


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


def _query(prefix, sql, args):
    # type: (Prefix, str, List[object]) -> List[tuple]
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
        raise InstallError("cannot read the Nix database %s (%s)" % (prefix.db, e),
                           "check the prefix's var/nix/db")


class PrefixLock(object):
    """An exclusive lock on the prefix, so two installers never interleave."""

    def __init__(self, path, on_wait=None):
        self._path = path
        self._on_wait = on_wait
        self._fd = None

    def __enter__(self):
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            if self._on_wait:
                self._on_wait()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self._fd)
        self._fd = None


def run_nix(prefix, argv, stdin_text=None, started=None):
    # type: (Prefix, List[str], Optional[str], Optional[Callable[[int], None]]) -> str
    """Run a Nix command on the prefix; return stdout or raise with Nix's last line.
    ``started`` is given the process id (to tell its own runtime roots)."""
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=prefix.nix_env(), cwd=prefix.home)
    except OSError as e:
        raise InstallError("cannot run %s (%s)" % (argv[0], e.strerror),
                           "the installer's Nix may not suit this machine")
    if started is not None:
        started(proc.pid)
    out, err = proc.communicate(stdin_text.encode() if stdin_text is not None else None)
    if proc.returncode != 0:
        lines = [line for line in err.decode("utf-8", "replace").splitlines() if line.strip()]
        last = lines[-1].strip() if lines else "exit code %d" % proc.returncode
        raise InstallError("%s %s failed: %s" % (os.path.basename(argv[0]), argv[1], last))
    return out.decode("utf-8", "replace")


def load_db(prefix, nix_store, registration_text):
    # type: (Prefix, str, str) -> None
    """Register paths with ``nix-store --load-db`` (src/nix-store/nix-store.cc ``opLoadDB``)."""
    run_nix(prefix, [nix_store, "--load-db"], registration_text)


def profile_paths(prefix, nix_env):
    # type: (Prefix, str) -> Set[str]
    """Store paths installed in the default profile (empty if there is none)."""
    if not os.path.lexists(prefix.profile):
        return set()
    out = run_nix(prefix, [nix_env, "-p", prefix.profile, "-q", "--out-path", "--no-name"])
    return set(line.strip() for line in out.splitlines() if line.strip())


def profile_manifest_paths(prefix):
    # type: (Prefix) -> Set[str]
    """Store paths in the default profile, read from its ``manifest.nix`` without
    running Nix (so a check before the install writes nothing, not even Nix's
    locks).  nix-env writes one ``outPath = "...";`` per package and output
    (src/nix-env/user-env.cc); an unreadable manifest reads as empty."""
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


def set_profile(prefix, nix_env, store_paths, keep_others=False):
    # type: (Prefix, str, List[str], bool) -> None
    """Make a new profile generation holding exactly ``store_paths`` (with
    ``keep_others``: those plus the other packages it had, minus same-named ones).

    ``nix-env -i`` builds the user environment with Nix's builtin buildenv and
    links it from ``var/nix/profiles/default``, which Nix's
    ``gcroots/profiles`` link makes a GC root; the previous generation stays
    for ``nix-env --rollback``.
    """
    replace = [] if keep_others else ["--remove-all"]
    run_nix(prefix, [nix_env, "-p", prefix.profile] + replace + ["-i"] + list(store_paths))
