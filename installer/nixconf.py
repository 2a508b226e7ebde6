"""nix.conf lines: read them as Nix does, and refuse settings that break a prefix.

Nix reads nix.conf line by line (``applyConfig`` in src/libutil/config.cc of
2.8, ``parseConfigFiles`` in src/libutil/configuration.cc of 2.34): ``#``
starts a comment, blank
lines are skipped, ``include FILE`` and ``!include FILE`` read another file,
anything else is ``NAME = VALUE`` with the value split on whitespace; a later
assignment overrides an earlier one and ``extra-NAME`` appends to NAME.

One place for the rule "which settings a single-user prefix cannot take", so
that the install's ``--extra-conf``/``--nix-conf`` and the check of a nix.conf
kept from before share it.
"""

import os
import re

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Callable, List, Optional, Tuple  # noqa: F401


_NAME = re.compile(r"^!?[a-z][a-z0-9-]*\Z")


class ConfError(Exception):
    """A nix.conf line Nix would not read (the message names it)."""


def parse_line(line):
    # type: (str) -> Optional[Tuple[str, str]]
    """``(name, value)`` of one nix.conf line, ``("include", FILE)`` or
    ``("!include", FILE)`` for an include, None for a blank or comment line;
    ConfError for what Nix rejects ("illegal configuration line")."""
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    words = text.split()
    if words[0] in ("include", "!include"):
        if len(words) != 2:
            raise ConfError("`%s` takes one file name" % words[0])
        return words[0], words[1]
    if len(words) < 2 or words[1] != "=":
        # Named by its first word only if that is a setting's name: the rest may
        # be a secret (access-tokens, a store URL with a password).
        what = "the line of `%s`" % words[0] if _NAME.match(words[0]) else "a line"
        raise ConfError("%s is not a nix.conf line (NAME = VALUE, spaces around =)" % what)
    return words[0], " ".join(words[2:])


def settings(lines):
    # type: (List[str]) -> List[Tuple[str, str]]
    """Every ``(name, value)`` the lines set, in order (ConfError on a bad line)."""
    out = []
    for line in lines:
        parsed = parse_line(line)
        if parsed is not None:
            out.append(parsed)
    return out


def user_namespaces():
    # type: () -> bool
    """Whether an unprivileged process may make a user namespace, which Nix's
    sandbox needs for a non-root user (``userNamespacesSupported``,
    src/libutil/linux/linux-namespaces.cc): the kernel's knobs for it."""
    for knob, off in (("/proc/sys/user/max_user_namespaces", "0"),
                      ("/proc/sys/kernel/unprivileged_userns_clone", "0"),
                      ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1")):
        try:
            with open(knob) as f:
                if f.read().strip() == off:
                    return False
        except (OSError, UnicodeDecodeError):
            continue  # no such knob here: not what stops it
    return True


def _true(value):
    # type: (str) -> bool
    return value.strip() == "true"


def problem(name, value, has_user_namespaces=user_namespaces):
    # type: (str, str, Callable[[], bool]) -> Optional[str]
    """Why the setting ``name = value`` breaks a single-user prefix, or None.

    - ``store``: the prefix's Nix must use the local store at the prefix
      (NIX_STORE_DIR, NIX_STATE_DIR); another store (``daemon``, ``/nix``...)
      is not this prefix's.
    - ``build-users-group`` set: builds as the nixbld users, who do not exist
      for a prefix (and as soon as root runs the prefix's Nix, it needs them:
      ``useBuildUsers``, src/libstore/unix/user-lock.cc in 2.34).
    - ``sandbox = true`` without user namespaces: Nix quietly builds without
      it (``sandbox-fallback``) or, with that off, fails every build.
    """
    # The values are not repeated: a store URL may hold a password.
    base = name[len("extra-"):] if name.startswith("extra-") else name
    if base == "store":
        return ("`%s` would point the prefix's Nix at another store than the prefix's "
                "(it uses PREFIX/store through NIX_STORE_DIR)" % name)
    if base == "build-users-group" and value.strip():
        return ("`%s` set to a group would make Nix build as that group's users, which a "
                "prefix without root has not" % name)
    if base == "sandbox" and _true(value) and not has_user_namespaces():
        return ("`%s = true`: this machine does not let you make user namespaces, which "
                "Nix's sandbox needs without root" % name)
    return None


def first_problem(lines, has_user_namespaces=user_namespaces):
    # type: (List[str], Callable[[], bool]) -> Optional[str]
    """The first reason the nix.conf ``lines`` break a prefix (a malformed line
    included), or None if a prefix can take them."""
    try:
        pairs = settings(lines)
    except ConfError as e:
        return str(e)
    for name, value in pairs:
        why = problem(name, value, has_user_namespaces)
        if why is not None:
            return why
    return None


def read_lines(path):
    # type: (str) -> List[str]
    """The lines of the nix.conf file ``path``; ConfError naming it if unreadable."""
    try:
        with open(path) as f:
            return f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else "not a text file"
        raise ConfError("cannot read %s: %s" % (os.path.abspath(path), why))
