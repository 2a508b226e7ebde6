"""Checks made before anything is written: is this prefix and machine fit?"""

import grp
import os
import pwd
import stat

from ..payload import retarget, storepath
from ..payload.machine import available_memory, host_system, human_size, usable_cpus
from . import nixconf
from .errors import BadUsage, EnvironmentProblem, UsageProblem

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import List, Optional  # noqa: F401

    from ..payload.manifest import Manifest  # noqa: F401
    from .prefix import Prefix  # noqa: F401

PATH_MAX = 4096  # Linux's limit on a path name, NUL included
# Room for the Nix database, logs and the profile on top of the store paths.
SPACE_MARGIN = 32 << 20


def resolve_prefix(text):
    # type: (str) -> str
    """The absolute, canonical prefix for a --prefix argument (``~`` expanded)."""
    if not text.strip():
        # -p "$PREFIX" with PREFIX unset: never fall back to the default silently.
        raise BadUsage("the prefix given with -p is empty (an unset variable?)",
                       "give the directory to install into, or leave -p out for the "
                       "default")
    path = os.path.abspath(os.path.expanduser(text))
    if path == "/":
        raise EnvironmentProblem("the prefix cannot be /", "choose a directory such as ~/.nix")
    try:
        storepath.check_store_dir(path)
    except storepath.StorePathError:
        raise EnvironmentProblem(
            "prefix %r has characters Nix-based tools cannot take (spaces, quotes, "
            "non-ASCII...)" % text,
            "choose a prefix of letters, digits and + - . _ = @ , ~")
    return path


def check_system(manifest):
    # type: (Manifest) -> None
    host = host_system()
    if manifest.system != host:
        raise EnvironmentProblem(
            "this installer is for %s, but this machine is %s" % (manifest.system, host),
            "download the installer built for %s" % host)


def check_retarget(manifest, prefix):
    # type: (Manifest, Prefix) -> None
    """Refuse a prefix whose store dir is longer than the one inside the payload
    (payload/retarget.py ``check_length``, the rule every retarget's choice applies)."""
    try:
        retarget.check_length(manifest, prefix.store_dir)
    except retarget.TooLong as e:
        raise EnvironmentProblem(e.args[0], e.hint)


def check_no_symlinks(prefix):
    # type: (Prefix) -> None
    """Nix refuses a store whose path has a symlink in it (local-store.cc)."""
    path = existing_ancestor(prefix.store_dir)
    real = os.path.realpath(path)
    if real != path:
        # normpath: the prefix itself as the existing part gives "real/.", not a path
        # to show (relpath is "." then, or ".." when P/store is the link).
        raise EnvironmentProblem(
            "%s is reached through a symlink (%s); Nix refuses a symlinked store" % (path, real),
            "use the real path, e.g. --prefix %s" % os.path.normpath(os.path.join(
                real, os.path.relpath(prefix.root, path))))


def existing_ancestor(path):
    # type: (str) -> str
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_owner(prefix):
    # type: (Prefix) -> None
    """Refuse a prefix that belongs to another user (root included): what the
    install writes would belong to the wrong user, and their own uninstall
    would be stuck on it.  As root, --as-owner runs the install as them."""
    me = os.geteuid()
    for path in (prefix.root, prefix.store_dir, prefix.state_dir,
                 os.path.join(prefix.state_dir, "db"), prefix.data_dir, prefix.lock_file):
        try:
            uid = os.lstat(path).st_uid
        except OSError:
            continue
        if uid != me:
            how = "run the installer as %s" % _user(uid)
            if me == 0 and path == prefix.root:
                how += ", or add --as-owner to run it as them"
            elif uid == 0 and path == prefix.root and not os.path.lexists(prefix.data_dir):
                # /tmp, /scratch, a group share: root's, not an install of root's to
                # take over; the prefix is a directory of the user's own inside it.
                how = "choose a prefix of your own, such as --prefix %s" % os.path.join(
                    prefix.root, "nix-" + _name(me))
            raise EnvironmentProblem("%s belongs to %s, not to you, %s"
                                     % (path, _user(uid), _user(me)), how)


def check_parents(prefix):
    # type: (Prefix) -> None
    """Refuse a prefix that another user could swap: one with a directory on its way
    (from /, every symlink followed, down to the prefix itself if it exists) that
    belongs to another user than you or root, or that others may write without
    the sticky bit.  Whoever can rename entries there can put a prefix of their
    own in its place, whose ``etc/profile.d/nix.sh`` you then source.  The rule
    is OpenSSH's StrictModes and sudo's path check, with Debian OpenSSH's
    exception (user-group-modes.patch) for a user private group: a directory
    writable by a group that holds you alone."""
    me = os.geteuid()
    for path in _looked_up(prefix.root):
        try:
            st = os.stat(path)
        except OSError:
            return  # gone meanwhile: check_writable and the install say so
        why = ""
        if st.st_uid not in (0, me):
            why = "belongs to %s" % _user(st.st_uid)
        elif st.st_mode & stat.S_ISVTX:
            continue  # /tmp, /scratch: others may add entries, never move yours
        elif st.st_mode & stat.S_IWOTH:
            why = "is writable by every user (mode %04o, no sticky bit)" % (st.st_mode & 0o7777)
        elif st.st_mode & stat.S_IWGRP and not _private_group(path, st, me):
            why = "is writable by the group %s (mode %04o, no sticky bit)" % (
                _group(st.st_gid), st.st_mode & 0o7777)
        if why:
            raise EnvironmentProblem(
                "%s %s, who could replace %s with a prefix of their own" % (
                    path, why, "it" if path == prefix.root else prefix.root),
                "install under directories only you (or root) can change, e.g. ~/.nix or "
                "a directory of your own in /tmp or /scratch (docs/installing.md)")


def _looked_up(path):
    # type: (str) -> List[str]
    """The existing directories the kernel looks through to reach ``path`` (absolute),
    from /, each symlink on the way followed as it is met, ``path`` last if it exists:
    realpath, keeping the directories the links themselves sit in too."""
    found = ["/"]
    current = "/"
    todo = [c for c in path.split("/") if c]
    links = 0
    while todo:
        name = todo.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        nxt = os.path.join(current, name)
        try:
            st = os.lstat(nxt)
        except OSError:
            break  # the rest is made by the install, inside the last one found
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 40:  # Linux's MAXSYMLINKS: the kernel gives up there too
                break
            target = os.readlink(nxt)
            if target.startswith("/"):
                current = "/"
            todo = [c for c in target.split("/") if c] + todo
            continue
        current = nxt
        found.append(current)
    return found


def _private_group(path, st, me):
    # type: (str, os.stat_result, int) -> bool
    """Is the group of ``path`` a user private group of yours (your primary group, named
    as you, with no other member), whose write bit umask 002 sets harmlessly?  Not if an
    ACL may grant more than the mode shows (the group bits are then its mask)."""
    try:
        me_entry = pwd.getpwuid(me)
        group = grp.getgrgid(st.st_gid)
    except KeyError:
        return False
    if (st.st_uid != me or group.gr_name != me_entry.pw_name or st.st_gid != me_entry.pw_gid
            or any(m != me_entry.pw_name for m in group.gr_mem)):
        return False
    if any(p.pw_gid == st.st_gid and p.pw_uid != me for p in pwd.getpwall()):
        return False
    try:
        os.getxattr(path, "system.posix_acl_access")
        return False
    except OSError:
        return True


def _group(gid):
    # type: (int) -> str
    try:
        return "%s (gid %d)" % (grp.getgrgid(gid).gr_name, gid)
    except KeyError:
        return "gid %d" % gid


def become_owner(prefix):
    # type: (Prefix) -> None
    """--as-owner: as root, take the uid and gid of the prefix's owner before
    anything is written, so that every file in it is theirs."""
    if os.geteuid() != 0:
        raise UsageProblem("--as-owner is for root", "leave it out")
    try:
        uid = os.lstat(prefix.root).st_uid
    except OSError:
        raise UsageProblem("--as-owner needs an existing prefix: %s does not exist" % prefix.root,
                           "leave it out, or create the prefix as its owner first")
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise EnvironmentProblem("%s belongs to uid %d, which has no user name" % (
            prefix.root, uid), "run the installer as that user")
    try:
        # Imported where it is first used (nixstore.py), by when this Python's own
        # library may be unreadable to the owner (root's ~/.pyenv is 0700): the
        # queries that find what nix-env made would read nothing.
        import sqlite3  # noqa: F401
    except ImportError:
        pass
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(uid)
    os.environ.update(USER=entry.pw_name, LOGNAME=entry.pw_name, HOME=entry.pw_dir)


def _user(uid):
    # type: (int) -> str
    name = _name(uid)
    return "uid %d" % uid if name == str(uid) else "%s (uid %d)" % (name, uid)


def _name(uid):
    # type: (int) -> str
    """The user name of ``uid``, or the number where it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_writable(prefix):
    # type: (Prefix) -> None
    for path in [prefix.root] + prefix.directories():
        if os.path.lexists(path):
            if not os.path.isdir(path):
                raise EnvironmentProblem("%s exists and is not a directory" % path,
                                         "move it away or choose another --prefix")
            continue
        parent = existing_ancestor(path)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise EnvironmentProblem("cannot create %s: %s is not writable by you"
                                     % (path, parent),
                                     "choose a --prefix you own, e.g. ~/.nix")
        break
    if os.path.isdir(prefix.store_dir) and not os.access(prefix.store_dir, os.W_OK | os.X_OK):
        raise EnvironmentProblem("%s is not writable by you" % prefix.store_dir,
                                 "choose a --prefix you own")


# Entries of a store dir that are not store paths but belong to Nix or to us:
# Nix's hard-link dir (auto-optimise-store) and our staging dirs.
_STORE_OWN_ENTRIES = (".links",)


def check_store_is_nix(prefix, staging_prefix):
    # type: (Prefix, str) -> None
    """Refuse a P/store holding anything but store paths: it is not a Nix store,
    and Nix (whose garbage collector deletes every entry of the store dir that
    is not a valid path) must never be let loose on it."""
    try:
        names = sorted(os.listdir(prefix.store_dir))
    except OSError:
        return  # absent (created later) or unreadable (check_writable says so)
    strangers = []
    for name in names:
        if name in _STORE_OWN_ENTRIES or name.startswith(staging_prefix):
            continue
        try:
            storepath.check_base_name(name)
        except storepath.StorePathError:
            strangers.append(name)
    if strangers:
        more = " and %d more" % (len(strangers) - 1) if len(strangers) > 1 else ""
        raise EnvironmentProblem(
            "%s is not a Nix store: it holds %s%s, which is not a store path"
            % (prefix.store_dir, os.path.join(prefix.store_dir, strangers[0]), more),
            "move your files out of it, or choose another --prefix (PREFIX/store must be "
            "empty or a Nix store)")


MAX_NIX_CONF = 1 << 20
_MAX_INCLUDES = 8


def check_nix_conf(prefix):
    # type: (Prefix) -> None
    """Refuse a kept ``P/etc/nix/nix.conf`` that sends the prefix's Nix to another store
    (or loads plugins), in it or in a file it includes, or that another user can
    change (a symlink to their file): the installed Nix would register, and keep,
    the prefix's paths elsewhere.  The installer's own Nix runs are pinned to the
    prefix anyway (prefix.py); this says so before anything is written."""
    _check_conf_file(prefix.nix_conf, prefix, 0)


def _check_conf_file(path, prefix, depth):
    # type: (str, Prefix, int) -> None
    try:
        st = os.stat(path)
    except OSError:
        return  # none (an !include of a missing file is no error to Nix either)
    hint = "remove that line, or choose another --prefix (this prefix's store is %s)" \
        % prefix.store_dir
    if st.st_uid not in (os.geteuid(), 0) or st.st_mode & 0o002:
        raise EnvironmentProblem(
            "%s%s can be changed by another user (%s), and it sets what the prefix's Nix "
            "does" % (path, " (through a symlink)" if os.path.islink(path) else "",
                      "writable by all" if st.st_mode & 0o002 else "owned by %s"
                      % _user(st.st_uid)),
            "replace it with a file of your own, or remove it")
    if depth > _MAX_INCLUDES:
        raise EnvironmentProblem("%s includes files more than %d deep" % (path, _MAX_INCLUDES),
                                 "flatten the includes of %s" % prefix.nix_conf)
    if not stat.S_ISREG(st.st_mode):  # told before it is opened: a FIFO would hang
        raise EnvironmentProblem("%s is not a nix.conf (not a regular file)" % path,
                                 "remove it")
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_NIX_CONF + 1)
    except OSError as e:
        raise EnvironmentProblem("cannot read %s (%s)" % (path, e.strerror),
                                 "make it readable, or remove it")
    if len(text) > MAX_NIX_CONF:
        raise EnvironmentProblem("%s is not a nix.conf (longer than %d bytes)"
                                 % (path, MAX_NIX_CONF), "remove it")
    # Read as Nix reads it (nixconf.py); the values are never shown: a store URL
    # may carry credentials.
    for number, line in enumerate(text.decode("utf-8", "replace").splitlines(), 1):
        try:
            parsed = nixconf.parse_line(line)
        except nixconf.ConfError as e:
            raise EnvironmentProblem("%s line %d: %s" % (path, number, e),
                                     "fix or remove that line")
        if parsed is None:
            continue
        name, value = parsed
        base = name[len("extra-"):] if name.startswith("extra-") else name
        if name in ("include", "!include"):
            _check_conf_file(os.path.join(os.path.dirname(path), value), prefix, depth + 1)
        elif base == "store":
            raise EnvironmentProblem("%s line %d: %s" % (path, number,
                                                         nixconf.problem(name, value)), hint)
        elif base == "plugin-files":
            raise EnvironmentProblem("%s line %d: `%s` would load plugins into this prefix's "
                                     "Nix" % (path, number, name), hint)


def check_space(prefix, needed):
    # type: (Prefix, int) -> None
    st = os.statvfs(existing_ancestor(prefix.store_dir))
    free = st.f_bavail * st.f_frsize
    if free < needed + SPACE_MARGIN:
        raise EnvironmentProblem(
            "not enough free space for %s: %s needed, %s free"
            % (prefix.root, human_size(needed + SPACE_MARGIN), human_size(free)),
            "free some space or choose another --prefix")


def check_path_length(manifest, prefix):
    # type: (Manifest, Prefix) -> None
    longest = len(prefix.store_dir.encode()) + 1 + manifest.longest_path + 1
    if longest > PATH_MAX:
        raise EnvironmentProblem(
            "the longest file of this closure would have a %d-byte path under %s, over "
            "Linux's limit of %d" % (longest, prefix.store_dir, PATH_MAX),
            "choose a shorter --prefix")


# What one chunk's unpacking holds, whatever the builder's level: the decoder's
# window (xz -9: a 64 MiB dictionary; the builder's zstd: 16 MiB, ZSTD_WINDOW_LOG
# in builder/compress.py) and the read buffers.  The default of -j keeps that
# many within half of the memory available.
JOB_MEMORY = {"xz": 72 << 20, "zstd": 24 << 20}


def default_jobs(env_value=None, manifest=None):
    # type: (Optional[str], Optional[Manifest]) -> int
    """How many chunks to unpack at once: NIX_PREFIX_JOBS if set to a number,
    else the CPUs this process may run on (its affinity mask, which batch
    schedulers set), no more than the payload has chunks nor half the memory
    available holds."""
    if env_value is not None and env_value.strip():
        jobs = positive_number(env_value.strip())
        if jobs is None:
            raise BadUsage("NIX_PREFIX_JOBS=%r is not a positive number" % env_value,
                           "set it to a number of threads such as 2, or unset it")
        return jobs
    jobs = usable_cpus()
    if manifest is not None:
        jobs = min(jobs, len(manifest.chunks))
        memory = available_memory()
        if memory is not None:
            jobs = min(jobs, memory // 2 // JOB_MEMORY.get(manifest.compression,
                                                          JOB_MEMORY["xz"]))
    return max(1, jobs)


def positive_number(text):
    # type: (str) -> Optional[int]
    """``text`` as a number of at least 1, else None: the rule for -j and
    NIX_PREFIX_JOBS."""
    return int(text) if text.isdigit() and int(text) >= 1 else None
