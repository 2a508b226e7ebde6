"""Receipts of version 1, as installers before the plan of steps wrote them, read as plans.

A version 1 receipt (``installer/receipt.py`` before commit b5a4048) lists
what one install added, not the steps that added it::

    {"version": 1, "payloadSha256": "...", "storeDir": "P/store",
     "added": [store paths it registered, its user environments' among them],
     "generations": [profile generations it made], "environments": [...],
     "files": {"P/etc/nix/nix.conf": "<sha256 of what it wrote>", ...}}

``upgrade`` turns it into the version 2 plan (receipt.py) an install of this
installer would have left, so that ``--uninstall`` reverts exactly that and
``-u`` hands the shared records over as it does for any receipt:

- ``register`` owns ``added`` but for what nix-env made, which the
  ``profile`` step owns with the generations (reverted first: the profile
  switches back before the paths go);
- ``write-file`` owns each file of ``files`` with its sha256 (removed only
  if unchanged);
- ``make-dirs``: version 1 did not record which directories it created; it
  created those of the prefix's layout that were missing (``Prefix.directories``
  then, the receipts dir with the first receipt), so the upgrade claims the
  ones of that layout that exist.  The last uninstall removes only those
  that are empty by then (``os.rmdir``), and Nix's database only when no
  path is valid in it: nothing a user put there can go with them.
"""

import os

from .nixstore import NIX_ENV_NAMES
from .prefix import Prefix

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Any, Dict, List, Optional  # noqa: F401

VERSION = 1

# The kinds of the steps (steps/__init__.py KINDS) a version 1 receipt stands for:
# the receipt's own words, spelled out so that reading a receipt needs no step.
MAKE_DIRS, PLACE_PATHS, WRITE_FILE, REGISTER, PROFILE = (
    "make-dirs", "place-paths", "write-file", "register", "profile")


def _strings(value):
    # type: (Any) -> List[str]
    return sorted(set(v for v in value if isinstance(v, str))) if isinstance(value, list) else []


def _record(kind, owned, params=None):
    # type: (str, Dict[str, Any], Optional[Dict[str, Any]]) -> Dict[str, Any]
    return {"kind": kind, "params": params or {}, "state": "done", "owned": owned}


def upgrade(doc):
    # type: (Dict[str, Any]) -> Optional[Dict[str, Any]]
    """The version 2 receipt for the version 1 receipt ``doc`` (None if it is malformed)."""
    store_dir = doc.get("storeDir")
    if not isinstance(store_dir, str) or not os.path.isabs(store_dir):
        return None
    prefix = Prefix(os.path.dirname(store_dir))
    added = _strings(doc.get("added"))
    made_by_nix_env = [p for p in added if p.endswith(NIX_ENV_NAMES)]
    generations = sorted(set(g for g in doc.get("generations") or []
                             if isinstance(g, int) and not isinstance(g, bool)))
    files = doc.get("files")
    if not isinstance(files, dict):
        files = {}
    records = [_record(MAKE_DIRS, {"created": [
        d for d in prefix.directories() if os.path.isdir(d) and not os.path.islink(d)]}),
        _record(PLACE_PATHS, {})]
    records += [_record(WRITE_FILE, {"sha256": digest}, {"path": path})
                for path, digest in sorted(files.items())
                if isinstance(path, str) and isinstance(digest, str)]
    records.append(_record(REGISTER, {
        "registered": [p for p in added if p not in made_by_nix_env]}))
    # Which of its generations each environment was made for is not recorded;
    # reverting the profile step takes the paths of all of them at once.
    by_generation = dict((str(g), {"paths": made_by_nix_env if i == 0 else []})
                         for i, g in enumerate(generations))
    if made_by_nix_env and not generations:
        by_generation["0"] = {"paths": made_by_nix_env}  # a generation nix-env never finished
    records.append(_record(PROFILE, {"generations": by_generation}))
    return {"version": 2, "upgradedFrom": VERSION, "payloadSha256": doc.get("payloadSha256"),
            "storeDir": store_dir, "complete": True, "steps": records}
