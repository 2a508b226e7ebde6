"""``--uninstall`` and ``--rollback``: undo what an installer did, and only that.

Uninstall reads the installer's receipt (receipt.py), drops the profile
generations it made (switching the profile back to the newest other one),
then deletes exactly the store paths it added (the user environments it
made among them) except any still alive (deletion.py).  The files
outside the store go only with the last receipt, and only if unchanged.
"""

import hashlib
import os
import re

from . import deletion, envfiles, nixstore, receipt
from .errors import InstallError

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Dict, List  # noqa: F401

    from ..payload.manifest import Manifest  # noqa: F401
    from .prefix import Prefix  # noqa: F401
    from .ui import UI  # noqa: F401


def rollback(prefix, nix_env, ui):
    # type: (Prefix, str, UI) -> None
    """Switch the default profile back to its previous generation."""
    before = nixstore.profile_generation(prefix)
    nixstore.run_nix(prefix, [nix_env, "-p", prefix.profile, "--rollback"])
    ui.say("rolled %s back from generation %s to %s"
           % (prefix.profile, before, nixstore.profile_generation(prefix)))


def _generations(prefix):
    # type: (Prefix) -> List[int]
    pattern = re.compile(r"^%s-(\d+)-link$" % re.escape(os.path.basename(prefix.profile)))
    try:
        names = os.listdir(prefix.profiles_dir)
    except OSError:
        return []
    return sorted(int(m.group(1)) for m in map(pattern.match, names) if m)


def _link(prefix, generation):
    # type: (Prefix, int) -> str
    return "%s-%d-link" % (prefix.profile, generation)


def _drop_generations(prefix, nix_env, ours, ui):
    # type: (Prefix, str, List[int], UI) -> None
    current = nixstore.profile_generation(prefix)
    others = [g for g in _generations(prefix) if g not in ours]
    if current in ours:
        if others:
            nixstore.run_nix(prefix, [nix_env, "-p", prefix.profile,
                                      "--switch-generation", str(others[-1])])
            ui.say("switched %s back to generation %d" % (prefix.profile, others[-1]))
        elif os.path.lexists(prefix.profile):
            os.unlink(prefix.profile)
    for generation in ours:
        if os.path.lexists(_link(prefix, generation)):
            os.unlink(_link(prefix, generation))


def uninstall(manifest, prefix, nix_store, nix_env, ui):
    # type: (Manifest, Prefix, str, str, UI) -> None
    """Remove what the installer of ``manifest`` added to ``prefix``; say what."""
    path = receipt.path_for(prefix, manifest)
    doc = receipt.load(path)
    if doc is None:
        raise InstallError("%s holds no record of this installer" % prefix.root,
                           "uninstall with the installer that installed it")
    with nixstore.PrefixLock(prefix.lock_file):
        _drop_generations(prefix, nix_env, doc["generations"], ui)
        # Exactly the paths the receipt says this installer added (its user
        # environments among them), never one that was valid before it ran.
        doomed, kept = deletion.delete_store_paths(prefix, nix_store, doc["added"])
        files = []
        if not receipt.others(prefix, path):
            files = _remove_unchanged(doc["files"])
            envfiles.remove_profile_link(prefix)
        receipt.remove(path)
    ui.say("removed %d store paths from %s" % (len(doomed), prefix.store_dir))
    for p in doomed:
        ui.say("  - %s" % p)
    if kept:
        ui.say("kept %d store paths that other profiles or roots still need" % len(kept))
    for f in files:
        ui.say("removed %s" % f)


def _remove_unchanged(files):
    # type: (Dict[str, str]) -> List[str]
    removed = []
    for path, digest in sorted(files.items()):
        try:
            with open(path, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != digest:
                    continue  # edited since: the user's now
            os.unlink(path)
            removed.append(path)
        except OSError:
            continue
    return removed
