"""Write store paths into a staging dir inside the store, then move them in place.

Extraction never follows a name it did not create: the archive reader only
hands over entries in NAR order below a directory it opened, and files are
created with O_EXCL|O_NOFOLLOW, so a hostile payload cannot write outside
the staging dir.  Each path gets Nix's canonical metadata
(src/libstore/local-store.cc ``canonicaliseTimestampAndPermissions``):
0444, or 0555 for executables and directories, mtime 1.  The path's top
directory stays writable until it has been renamed into the store, because
Linux needs write access to a directory to move it to another parent.
"""

import errno
import os
import shutil
import stat

from ..payload.tree import Sink
from . import crashpoints
from .errors import EnvironmentProblem, InstallError

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import List, Optional  # noqa: F401

STAGING_PREFIX = ".nix-prefix-staging-"
_MTIME = (1, 1)


def _space_error(e, where):
    # type: (OSError, str) -> InstallError
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return EnvironmentProblem("the disk holding %s is full" % where,
                                  "free some space or choose another --prefix")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return EnvironmentProblem("cannot write %s (%s)" % (where, e.strerror),
                                  "choose a --prefix you can write to")
    if e.errno == errno.ENAMETOOLONG:
        return EnvironmentProblem("a file name under %s is too long for this system" % where,
                                  "choose a shorter --prefix")
    return InstallError("cannot write %s (%s)" % (where, e.strerror or e))


class DiskWriter(Sink):
    """A tree sink that materialises one store path under ``root``/``name``;
    ``finish`` seals every directory but the top one."""

    def __init__(self, root, name):
        # type: (str, str) -> None
        self.top = os.path.join(os.fsencode(root), os.fsencode(name))
        self._dirs = []  # type: List[bytes]  # to seal, parents before children
        self._fd = -1  # the open regular file, -1 between files
        self._executable = False

    def _path(self, rel):
        # type: (bytes) -> bytes
        return os.path.join(self.top, rel) if rel else self.top

    def begin_directory(self, rel=b""):
        # type: (bytes) -> None
        path = self._path(rel)
        os.mkdir(path, 0o755)
        self._dirs.append(path)

    def regular(self, rel, executable, size):
        # type: (bytes, bool, int) -> None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        self._fd = os.open(self._path(rel), flags, 0o644)
        self._executable = executable

    def contents(self, data):
        # type: (bytes) -> None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        crashpoints.reached("write")

    def end_regular(self):
        # type: () -> None
        fd, self._fd = self._fd, -1
        try:
            os.fchmod(fd, 0o555 if self._executable else 0o444)
            os.utime(fd, _MTIME)
        finally:
            os.close(fd)

    def symlink(self, rel, target):
        # type: (bytes, bytes) -> None
        path = self._path(rel)
        os.symlink(target, path)
        os.utime(path, _MTIME, follow_symlinks=False)

    def finish(self):
        # type: () -> None
        """Seal every directory but the top one (0555, mtime 1), children first."""
        for path in reversed(self._dirs[1:]):
            os.chmod(path, 0o555)
            os.utime(path, _MTIME)
        crashpoints.reached("unpacked")

    def abort(self):
        # type: () -> None
        """Close a file left open by a failure (the staging dir is removed next)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def seal_top(path):
    # type: (str) -> None
    """Give a placed store path's top its canonical mode and mtime."""
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        os.chmod(path, 0o555)
    if not stat.S_ISLNK(st.st_mode):
        os.utime(path, _MTIME)


def staging_dir(store_dir):
    # type: (str) -> str
    """This process's staging dir inside the store (same filesystem, so rename works)."""
    return os.path.join(store_dir, "%s%d" % (STAGING_PREFIX, os.getpid()))


def make_staging_dir(path):
    # type: (str) -> None
    """Make ``path`` (from staging_dir) a fresh, empty dir."""
    if os.path.lexists(path):
        remove_tree(path)
    try:
        os.mkdir(path, 0o700)
    except OSError as e:
        raise _space_error(e, os.path.dirname(path))


def remove_stale_staging(store_dir):
    # type: (str) -> List[str]
    """Remove staging dirs left by installers that died (call with the lock held)."""
    removed = []  # type: List[str]
    try:
        names = os.listdir(store_dir)
    except OSError:
        return removed
    for name in names:
        if name.startswith(STAGING_PREFIX):
            path = os.path.join(store_dir, name)
            remove_tree(path)
            removed.append(path)
    return removed


def remove_tree(path):
    # type: (str) -> None
    """Remove a tree even where Nix's read-only modes would stop rmtree."""
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
        return
    for dirpath, dirnames, _ in os.walk(path):
        os.chmod(dirpath, 0o700)
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not os.path.islink(full):
                os.chmod(full, 0o700)
    shutil.rmtree(path)


def rmdir_quietly(path):
    # type: (str) -> None
    """Remove the directory ``path`` if it is empty; leave it otherwise."""
    try:
        os.rmdir(path)
    except OSError:
        pass  # not empty (someone else's files are in it) or gone: leave it


def write_atomically(path, text, mode=None):
    # type: (str, str, Optional[int]) -> None
    """Write ``text`` at ``path`` through a temporary file beside it (fsync, then
    rename): the file is complete or not there, and the temporary file goes on any
    exception, a Ctrl-C too.  It is made never writable by others (0644 less the
    umask; uninstall acts on what a receipt says); ``mode``, if given, is set exactly.
    An OSError is raised as it is (``write_error`` words it)."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        if os.path.lexists(tmp):  # left by a killed run of the same pid
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def write_error(e, where):
    # type: (OSError, str) -> InstallError
    """Turn an OSError from writing under ``where`` into a one-line install error."""
    return _space_error(e, where)
