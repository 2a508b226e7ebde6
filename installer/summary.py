"""What the installer says when it is done: what, where, how to start, update, undo."""

import os

from ..payload.machine import human_size
from . import nixstore

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import List, Optional, Sequence  # noqa: F401

    from ..payload.manifest import Manifest  # noqa: F401
    from .envfiles import Caches  # noqa: F401
    from .prefix import Prefix  # noqa: F401


def conf_text(nix_conf):
    # type: (str) -> str
    """What --info says of the nix.conf ``nix_conf`` an install would write (if the
    prefix has none): its settings, the installer's and --extra-conf's."""
    settings = [line for line in nix_conf.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    return "nix.conf it writes (if there is none):\n" + "".join(
        "  %s\n" % line for line in settings)


def summary_lines(manifest, prefix, installer, rc_files, caches=None, conf_lines=()):
    # type: (Manifest, Prefix, str, List[str], Optional[Caches], Sequence[str]) -> List[str]
    """The closing summary of an install into ``prefix`` by the file ``installer``;
    ``caches``: the binary caches its nix.conf was asked to use; ``conf_lines``:
    the lines of --extra-conf and --nix-conf."""
    names = ", ".join(r.partition("-")[2] for r in manifest.roots) or "(no roots)"
    script = os.path.join(prefix.profile_d, "nix.sh")
    again = "sh %s -p %s" % (installer, prefix.root)
    lines = [
        "",
        "Installed %s (%d store paths, %s) in %s" % (
            names, len(manifest.paths), human_size(manifest.total_nar_size),
            prefix.root),
        "  profile:   %s (generation %s)" % (prefix.profile,
                                            nixstore.profile_generation(prefix) or "?"),
        "Start using it in this shell:",
        "  . %s" % script,
        "  (fish: source %s/nix.fish)" % prefix.profile_d,
    ]
    if rc_files:
        lines.append("New shells do it already: the line is in %s (undo: %s --unmodify-profile)"
                     % (", ".join(rc_files), again))
    else:
        lines.append("For every new shell: %s --modify-profile (adds it to ~/.profile etc.)"
                     % again)
    if caches is not None and caches.substituters:
        lines.append(_caches_line(prefix, caches))
    if conf_lines:
        lines.append(_settings_line(prefix, conf_lines))
    lines += [
        "Update later:  sh NEWER-INSTALLER -u -p %s" % prefix.root,
        "Uninstall:     %s --uninstall" % again,
    ]
    return lines



def _conf(prefix):
    # type: (Prefix) -> List[str]
    try:
        with open(prefix.nix_conf) as f:
            return f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return []


def _settings_line(prefix, conf_lines):
    # type: (Prefix, Sequence[str]) -> str
    missing = [line for line in conf_lines if line not in _conf(prefix)]
    if not missing:
        return "Your nix.conf settings: %s (in %s)" % ("; ".join(conf_lines), prefix.nix_conf)
    return ("Your nix.conf settings: %s is yours and was kept, so they are not set: add to "
            "it  %s" % (prefix.nix_conf, "; ".join(missing)))


def _caches_line(prefix, caches):
    # type: (Prefix, Caches) -> str
    names = ", ".join(k.partition(":")[0] for k in caches.trusted_keys)
    if all(line in _conf(prefix) for line in caches.conf_lines()):
        return ("More software: nix-build and nix-env fetch from %s instead of building, "
                "taking only paths signed by %s (require-sigs on, in %s)"
                % (" ".join(caches.substituters), names, prefix.nix_conf))
    return ("Binary caches: %s is not the one this install writes, so the caches are not "
            "set: add to it  %s" % (prefix.nix_conf, "; ".join(caches.conf_lines())))
