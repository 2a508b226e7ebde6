"""The files an install writes besides the store: nix.conf and the env scripts."""

import os

from .staging import write_error

MARKER = "# Written by nix-prefix."

NIX_CONF = """\
{marker} Settings for a single-user Nix store without root:
# builds run as you (no nixbld group), without a sandbox (user namespaces are
# often unavailable), and no binary cache (cache.nixos.org only serves /nix/store).
build-users-group =
sandbox = false
substituters =
"""

NIX_SH = """\
{marker} Use the Nix in {root}: . {root}/etc/profile.d/nix.sh
export NIX_STORE_DIR='{root}/store'
export NIX_STATE_DIR='{root}/var/nix'
export NIX_LOG_DIR='{root}/var/log/nix'
export NIX_CONF_DIR='{root}/etc/nix'
export NIX_PROFILES='{root}/var/nix/profiles/default'
case ":$PATH:" in
    *':{root}/var/nix/profiles/default/bin:'*) ;;
    *) export PATH='{root}/var/nix/profiles/default/bin'"${{PATH:+:$PATH}}" ;;
esac
"""

NIX_FISH = """\
{marker} Use the Nix in {root}: source {root}/etc/profile.d/nix.fish
set -gx NIX_STORE_DIR '{root}/store'
set -gx NIX_STATE_DIR '{root}/var/nix'
set -gx NIX_LOG_DIR '{root}/var/log/nix'
set -gx NIX_CONF_DIR '{root}/etc/nix'
set -gx NIX_PROFILES '{root}/var/nix/profiles/default'
if not contains '{root}/var/nix/profiles/default/bin' $PATH
    set -gx PATH '{root}/var/nix/profiles/default/bin' $PATH
end
"""


def planned_files(prefix):
    # type: (Prefix) -> List[Tuple[str, str]]
    """(path, content) of every file the install writes outside the store."""
    fmt = {"marker": MARKER, "root": prefix.root}
    return [
        (prefix.nix_conf, NIX_CONF.format(**fmt)),
        (os.path.join(prefix.profile_d, "nix.sh"), NIX_SH.format(**fmt)),
        (os.path.join(prefix.profile_d, "nix.fish"), NIX_FISH.format(**fmt)),
    ]


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
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        with open(tmp, "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise write_error(e, path)
    return "written"
