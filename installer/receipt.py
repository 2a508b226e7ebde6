"""Receipts: the plan an installer ran in a prefix, with each step's state and what it made.

One JSON file per installer under ``P/var/nix-prefix/receipts/``, named by
the installer's payload sha256, in the spirit of nix-installer's
``receipt.json``: the plan (plan.py) as it stands, written atomically before
and after every step, so that whatever moment the installer is killed at,
the receipt names everything there is to finish or to undo::

    {"version": 2, "payloadSha256": "...", "storeDir": "P/store",
     "complete": true,
     "steps": [{"kind": "place-paths", "state": "done", "params": {...},
                "owned": {"placed": {"P/store/...-hello": ["sha256:...", 1234]}}},
               ...]}

``owned`` holds only what the step created (store paths placed and
registered, profile generations, files and directories): an uninstall
reverts the steps from it and touches nothing else.
"""

import json
import os

from . import receipt_v1, staging

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Dict, Iterable, List, Optional  # noqa: F401

    from ..payload.manifest import Manifest  # noqa: F401
    from .prefix import Prefix  # noqa: F401

VERSION = 2


def receipts_dir(prefix):
    # type: (Prefix) -> str
    return prefix.receipts_dir


def path_for(prefix, manifest):
    # type: (Prefix, Manifest) -> str
    return os.path.join(receipts_dir(prefix), manifest.payload_sha256[:32] + ".json")


def load(path):
    # type: (str) -> Optional[dict]
    """The receipt at ``path``, or None if there is none (or it is unreadable); one an
    older installer wrote (version 1) comes as the plan it stands for."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    if isinstance(doc, dict) and doc.get("version") == receipt_v1.VERSION:
        # An older installer's: read as the plan it stands for (receipt_v1.py).
        doc = receipt_v1.upgrade(doc)
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        return None
    if not isinstance(doc.get("steps"), list):
        return None
    return doc


def new(manifest, prefix):
    # type: (Manifest, Prefix) -> dict
    return {"version": VERSION, "payloadSha256": manifest.payload_sha256,
            "storeDir": prefix.store_dir, "complete": False, "steps": []}


def others(prefix, path):
    # type: (Prefix, str) -> List[str]
    """Receipts of other installers in the prefix."""
    try:
        names = os.listdir(receipts_dir(prefix))
    except OSError:
        return []
    return sorted(os.path.join(receipts_dir(prefix), n) for n in names
                  if n.endswith(".json") and os.path.join(receipts_dir(prefix), n) != path)


def write(path, doc):
    # type: (str, dict) -> None
    """Write ``doc`` at ``path`` atomically (temporary file, fsync, rename); the
    receipts dir is made with the first receipt (steps.make_receipts_dir)."""
    staging.write_atomically(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def remove(path):
    # type: (str) -> None
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
