"""What the installer says when it is done: what, where, how to start, update, undo."""

import os

from ..payload.machine import human_size
from . import nixstore

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import List  # noqa: F401

    from ..payload.manifest import Manifest  # noqa: F401
    from .prefix import Prefix  # noqa: F401


def summary_lines(manifest, prefix, installer, rc_files):
    # type: (Manifest, Prefix, str, List[str]) -> List[str]
    """The closing summary of an install into ``prefix`` by the file ``installer``."""
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
    lines += [
        "Update later:  sh NEWER-INSTALLER -u -p %s" % prefix.root,
        "Uninstall:     %s --uninstall" % again,
    ]
    return lines

