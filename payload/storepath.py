"""Store path rules, from NixOS/nix src/libstore/path.cc and store-api.cc.

A store path is ``<storeDir>/<hash>-<name>``: 32 nix32 characters of hash,
a dash, and a name of at most 211 characters from ``[A-Za-z0-9+-._?=]``
that does not start with a dot (path.cc ``checkName``).
"""

import os
import re
import stat

from . import nix32

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Iterable, List, Optional, Tuple  # noqa: F401

HASH_LENGTH = 32
MAX_NAME_LENGTH = 211
_NAME = re.compile(r"^[A-Za-z0-9+\-._?=]+\Z")
_HASH = re.compile(r"^[" + nix32.ALPHABET + r"]{%d}\Z" % HASH_LENGTH)


class StorePathError(ValueError):
    """A string is not a valid store path or store path base name."""


def check_base_name(base):
    # type: (str) -> str
    """Check ``<hash>-<name>`` (path.cc ``StorePath::StorePath`` and ``checkName``)."""
    if len(base) < HASH_LENGTH + 2 or base[HASH_LENGTH] != "-":
        raise StorePathError("%r is not a store path name (<32-char hash>-<name>)" % base)
    if not _HASH.match(base[:HASH_LENGTH]):
        raise StorePathError("%r has an invalid hash part" % base)
    name = base[HASH_LENGTH + 1:]
    if len(name) > MAX_NAME_LENGTH:
        raise StorePathError("%r: name longer than %d characters" % (base, MAX_NAME_LENGTH))
    if name.startswith(".") or not _NAME.match(name):
        raise StorePathError("%r: name has characters Nix does not allow" % base)
    return base


def split(path):
    # type: (str) -> Tuple[str, str]
    """Split an absolute store path into (store dir, base name), checking both."""
    if not path.startswith("/"):
        raise StorePathError("%r is not an absolute path" % path)
    store_dir, _, base = path.rpartition("/")
    if not store_dir:
        raise StorePathError("%r is not inside a store directory" % path)
    check_store_dir(store_dir)
    return store_dir, check_base_name(base)


DRV_EXTENSION = ".drv"


def is_derivation(name):
    # type: (str) -> bool
    """Whether a store path (or its base name) is a derivation (``StorePath::isDerivation``)."""
    return name.endswith(DRV_EXTENSION)


def hash_part(base):
    # type: (str) -> str
    """The 32-character hash part of a base name."""
    return base[:HASH_LENGTH]


# Characters we accept in a store dir or prefix.  Nix itself accepts more,
# but the store dir ends up unquoted in scripts, nix.conf and #! lines, so we
# keep to the characters that need no quoting anywhere.
_STORE_DIR = re.compile(r"^(/[A-Za-z0-9+\-._=@,~]+)+\Z")


def check_store_dir(store_dir):
    # type: (str) -> str
    """Check an absolute, canonical directory name (no //, ., .., or trailing /)."""
    if not _STORE_DIR.match(store_dir):
        raise StorePathError(
            "%r is not a usable store directory: use an absolute path of letters, digits "
            "and + - . _ = @ , ~ without spaces" % store_dir)
    if any(part in (".", "..") for part in store_dir.split("/")):
        raise StorePathError("%r is not canonical (contains . or ..)" % store_dir)
    return store_dir


def split_drv_name(name):
    # type: (str) -> Tuple[str, str]
    """``("nix", "2.26.3")`` from ``nix-2.26.3``: the version starts at the first
    dash not followed by a letter (``DrvName::DrvName``, src/libexpr/names.cc).
    ``nix-env -i`` replaces installed packages of the same name this way."""
    for i, c in enumerate(name):
        if c == "-" and i + 1 < len(name) and not name[i + 1].isalpha():
            return name[:i], name[i + 1:]
    return name, ""


MAX_SYMLINKS = 40  # as Linux's path resolution (MAXSYMLINKS)


def shipped_file(store_root, store_dir, names, rel):
    # type: (str, str, Iterable[str], str) -> Optional[str]
    """Where ``rel`` (``<base name>/bin/nix-store``) leads inside the store, symlinks
    followed as the kernel would at ``store_dir`` (read at ``store_root``, where that
    store physically is): ``<base name>/<path>`` of a regular file in one of the
    store paths ``names``, or None when it leads anywhere else (out of the store,
    into a path not among ``names``, to something that is not a regular file).

    What the installer runs as the closure's Nix must be the closure's own bytes:
    a store path that is a symlink to ``/usr`` is not a Nix.
    """
    closure = set(names)
    todo = [part for part in rel.split("/") if part]
    done = []  # type: List[str]  # components below the store dir, resolved
    links = 0
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        if part == "..":
            if not done:
                return None  # above the store dir
            done.pop()
            continue
        where = os.path.join(store_root, *(done + [part]))
        try:
            st = os.lstat(where)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                return None
            target = os.readlink(where)
            if target.startswith("/"):
                if not target.startswith(store_dir + "/"):
                    return None  # out of the store
                done = []
                target = target[len(store_dir) + 1:]
            todo = [p for p in target.split("/") if p] + todo
            continue
        done.append(part)
        if todo and not stat.S_ISDIR(st.st_mode):
            return None
    if not done or done[0] not in closure:
        return None
    try:
        if not stat.S_ISREG(os.stat(os.path.join(store_root, *done)).st_mode):
            return None
    except OSError:
        return None
    return "/".join(done)
