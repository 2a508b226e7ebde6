"""Receipts: what one installer added to a prefix, so that it can be taken out again.

One JSON file per installer under ``P/var/nix-prefix/receipts/``, named by
the installer's payload sha256, in the spirit of nix-installer's receipt: the
store paths this installer placed and registered (paths already valid before
it ran are not its to remove), the profile generations and user
environments it made, and the files outside the store it wrote.  Re-running
an installer merges into its receipt.
"""

import json
import os

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Dict, Iterable, List, Optional  # noqa: F401

    from ..payload.manifest import Manifest  # noqa: F401
    from .prefix import Prefix  # noqa: F401

VERSION = 1


def receipts_dir(prefix):
    # type: (Prefix) -> str
    return os.path.join(prefix.data_dir, "receipts")


def path_for(prefix, manifest):
    # type: (Prefix, Manifest) -> str
    return os.path.join(receipts_dir(prefix), manifest.payload_sha256[:32] + ".json")


def load(path):
    # type: (str) -> Optional[dict]
    """The receipt at ``path``, or None if there is none (or it is unreadable)."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        return None
    return doc


def others(prefix, path):
    # type: (Prefix, str) -> List[str]
    """Receipts of other installers in the prefix."""
    try:
        names = os.listdir(receipts_dir(prefix))
    except OSError:
        return []
    return sorted(os.path.join(receipts_dir(prefix), n) for n in names
                  if n.endswith(".json") and os.path.join(receipts_dir(prefix), n) != path)


def record(prefix, manifest, added, generation, environment, files):
    # type: (Prefix, Manifest, Iterable[str], Optional[int], Optional[str], Dict[str, str]) -> None
    """Merge this run's additions into the installer's receipt (written atomically)."""
    path = path_for(prefix, manifest)
    doc = load(path) or {"version": VERSION, "payloadSha256": manifest.payload_sha256,
                         "storeDir": manifest.store_dir, "added": [], "generations": [],
                         "environments": [], "files": {}}
    doc["added"] = sorted(set(doc["added"]) | set(added))
    if generation is not None:
        doc["generations"] = sorted(set(doc["generations"]) | {generation})
    if environment:
        doc["environments"] = sorted(set(doc["environments"]) | {environment})
    doc["files"].update(files)
    os.makedirs(receipts_dir(prefix), exist_ok=True)
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def remove(path):
    # type: (str) -> None
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
