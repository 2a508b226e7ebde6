"""The files an install writes besides the store: nix.conf and the env scripts."""

import os

from . import nixconf
from .staging import write_atomically, write_error

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import List, Optional, Sequence, Tuple  # noqa: F401

    from .prefix import Prefix  # noqa: F401

MARKER = "# Written by nix-prefix."

NIX_CONF = """\
{marker} Settings for a single-user Nix store without root:
# builds run as you (no nixbld group), without a sandbox (user namespaces are
# often unavailable), and no binary cache (cache.nixos.org only serves /nix/store).
# The nix command and flakes are on (docs/installing.md says why).
build-users-group =
sandbox = false
substituters =
experimental-features = nix-command flakes
"""

NIX_SH = """\
{marker} Use the Nix in {root}: . {root}/etc/profile.d/nix.sh
export NIX_STORE_DIR='{root}/store'
export NIX_STATE_DIR='{root}/var/nix'
export NIX_LOG_DIR='{root}/var/log/nix'
export NIX_CONF_DIR='{root}/etc/nix'
export NIX_PROFILES='{root}/var/nix/profiles/default'
# nix-env's profile (every Nix reads NIX_PROFILE: src/nix-env/nix-env.cc).
export NIX_PROFILE='{root}/var/nix/profiles/default'
# Nix >= 2.25 keeps its caches (the flakes' eval cache, the fetcher cache, the
# binary caches' narinfos), its per-user state (profiles, channels) and data
# (trusted flake settings, repl history) where these say (getCacheDir,
# getStateDir, getDataDir: src/libutil/users.cc), not in ~/.cache/nix and the
# like, which every prefix used from this HOME would share: an eval cache names
# store paths of the store that filled it.
export NIX_CACHE_HOME='{home}/.cache/nix'
export NIX_STATE_HOME='{home}/.local/state/nix'
export NIX_DATA_HOME='{home}/.local/share/nix'
case ":$PATH:" in
    *':{root}/var/nix/profiles/default/bin:'*) ;;
    *) export PATH='{root}/var/nix/profiles/default/bin'"${{PATH:+:$PATH}}" ;;
esac
# `nix profile` has no setting for its default profile: every Nix takes it
# from $HOME/.nix-profile and creates that link if missing (getDefaultProfile,
# src/libstore/profiles.cc).  It runs with a HOME in the prefix whose
# .nix-profile is this prefix's default profile; nothing else sees that HOME.
# Nix before 2.25 reads only XDG_CACHE_HOME and XDG_DATA_HOME (getCacheDir,
# getDataDir: src/libutil/util.cc in 2.8): set for `nix` alone, and not for the
# commands that hand their environment to your programs (develop, shell, run).
nix() {{
    case " $* " in
        *" profile "*) HOME='{home}' XDG_CACHE_HOME='{home}/.cache' \
            XDG_DATA_HOME='{home}/.local/share' command nix "$@" ;;
        *" develop "*|*" shell "*|*" run "*|*" env "*) command nix "$@" ;;
        *) XDG_CACHE_HOME='{home}/.cache' XDG_DATA_HOME='{home}/.local/share' \
            command nix "$@" ;;
    esac
}}
"""

NIX_FISH = """\
{marker} Use the Nix in {root}: source {root}/etc/profile.d/nix.fish
set -gx NIX_STORE_DIR '{root}/store'
set -gx NIX_STATE_DIR '{root}/var/nix'
set -gx NIX_LOG_DIR '{root}/var/log/nix'
set -gx NIX_CONF_DIR '{root}/etc/nix'
set -gx NIX_PROFILES '{root}/var/nix/profiles/default'
set -gx NIX_PROFILE '{root}/var/nix/profiles/default'
set -gx NIX_CACHE_HOME '{home}/.cache/nix'
set -gx NIX_STATE_HOME '{home}/.local/state/nix'
set -gx NIX_DATA_HOME '{home}/.local/share/nix'
if not contains '{root}/var/nix/profiles/default/bin' $PATH
    set -gx PATH '{root}/var/nix/profiles/default/bin' $PATH
end
# `nix profile` runs with a HOME in the prefix, and an older Nix with its
# caches there (see nix.sh).
function nix --wraps nix
    set -l dirs XDG_CACHE_HOME='{home}/.cache' XDG_DATA_HOME='{home}/.local/share'
    set -l runs (string match -r -- '^(develop|shell|run|env)$' $argv)
    if contains -- profile $argv
        env HOME='{home}' $dirs nix $argv
    else if set -q runs[1]
        command nix $argv
    else
        env $dirs nix $argv
    end
end
"""


# With --substituter: the prefix's own caches, and only signed paths from them.
NIX_CONF_CACHES = """\
{marker} Settings for a single-user Nix store without root:
# builds run as you (no nixbld group), without a sandbox (user namespaces are
# often unavailable).  Binary caches for this prefix's store (cache.nixos.org
# only serves /nix/store); a path comes from them only if it is signed by one of
# the trusted keys.  The nix command and flakes are on (docs/installing.md).
build-users-group =
sandbox = false
substituters = {substituters}
trusted-public-keys = {keys}
require-sigs = true
experimental-features = nix-command flakes
"""

# What --extra-conf and --nix-conf add, after the lines above; a setting given
# there replaces ours of the same name (Nix would take the later one anyway).
GIVEN = "# Given at install time (--extra-conf, --nix-conf):\n"


class Caches(object):
    """The binary caches the prefix's Nix substitutes from, and the keys it trusts
    (nix.conf ``substituters``, ``trusted-public-keys``; src/libstore/globals.hh)."""

    def __init__(self, substituters=(), trusted_keys=()):
        # type: (Sequence[str], Sequence[str]) -> None
        self.substituters = list(substituters)
        self.trusted_keys = list(trusted_keys)

    def conf_lines(self):
        # type: () -> List[str]
        """The nix.conf lines that set them."""
        return ["substituters = " + " ".join(self.substituters),
                "trusted-public-keys = " + " ".join(self.trusted_keys),
                "require-sigs = true"]


def nix_conf(prefix, caches=None, extra=()):
    # type: (Prefix, Optional[Caches], Sequence[str]) -> str
    """The nix.conf an install writes (if there is none); ``extra``: the lines of
    --extra-conf and --nix-conf (checked already: nixconf.first_problem)."""
    if caches is None or not caches.substituters:
        text = NIX_CONF.format(marker=MARKER)
    else:
        text = NIX_CONF_CACHES.format(marker=MARKER, substituters=" ".join(caches.substituters),
                                      keys=" ".join(caches.trusted_keys))
    if not extra:
        return text
    given = set(name for name, _ in nixconf.settings(list(extra)))
    ours = [line for line in text.splitlines(True)
            if (nixconf.parse_line(line) or ("", ""))[0] not in given]
    return "".join(ours) + GIVEN + "".join(line + "\n" for line in extra)


def planned_files(prefix, caches=None, extra=()):
    # type: (Prefix, Optional[Caches], Sequence[str]) -> List[Tuple[str, str]]
    """(path, content) of every file the install writes outside the store."""
    fmt = {"marker": MARKER, "root": prefix.root, "home": prefix.home}
    return [
        (prefix.nix_conf, nix_conf(prefix, caches, extra)),
        (os.path.join(prefix.profile_d, "nix.sh"), NIX_SH.format(**fmt)),
        (os.path.join(prefix.profile_d, "nix.fish"), NIX_FISH.format(**fmt)),
    ]


def make_profile_link(prefix):
    # type: (Prefix) -> None
    """Link ``P/var/nix-prefix/home/.nix-profile`` to the default profile.

    That dir is HOME for every Nix the installer runs and for ``nix profile``
    after sourcing nix.sh; Nix reads its default profile from
    ``$HOME/.nix-profile`` and would otherwise point it at a per-user profile
    (``getDefaultProfile``, src/libstore/profiles.cc).  Made before any Nix runs.
    """
    link = os.path.join(prefix.home, ".nix-profile")
    if os.path.lexists(link):
        return
    try:
        os.symlink(prefix.profile, link)
    except OSError as e:
        raise write_error(e, link)


def remove_profile_link(prefix):
    # type: (Prefix) -> bool
    """Remove the link ``make_profile_link`` made, if it is still ours; say whether."""
    link = os.path.join(prefix.home, ".nix-profile")
    try:
        if os.readlink(link) != prefix.profile:
            return False
        os.unlink(link)
    except OSError:
        return False
    return True


def write_file(path, content):
    # type: (str, str) -> str
    """Write ``path`` unless it exists: returns "written", "unchanged" or "kept".

    A file that already exists with other content is the user's ("kept"):
    we never clobber a user's nix.conf or edited script.
    """
    if os.path.lexists(path):
        try:
            with open(path) as f:
                current = f.read()
        except (OSError, UnicodeDecodeError):
            return "kept"
        return "unchanged" if current == content else "kept"
    try:
        write_atomically(path, content, mode=0o644)
    except OSError as e:
        raise write_error(e, path)
    return "written"
