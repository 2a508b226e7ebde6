"""What the worker processes of one ``nix-prefix serve`` share: a private dir on disk.

Workers answer on one socket, so the narinfo request of a path and the NAR
request that follows may reach different workers; the NAR's worker needs the
narinfo (its NarHash names the URL) and would read and rewrite the whole path
again to make it.  So a worker that computed a narinfo writes it here, and
the others read it before computing it themselves.  A narinfo is filed under
the master's identity (``master_id``: its paths and NAR hashes, the
compression and the keys), the store dir and the hash part: after a SIGHUP
a worker with a new master never reads an old master's narinfo.

Each worker also writes its figures for ``/metrics`` here (builder/metrics.py),
so that whichever worker answers a scrape sums them all.

The dir is made by the supervisor (builder/workers.py), mode 0700, and removed
when it stops; its files are written whole (a rename), so a reader sees an old
file or a new one, never half of one.  What it may hold is bounded: at most
``MAX_NARINFOS`` narinfo files a worker (about 1.5 KiB each).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

MAX_NARINFOS = 32768  # narinfo files one worker writes: about 50 MiB of disk


def master_id(master: Any) -> str:
    """A digest of what a master serves (its paths, their NAR hashes, the store dirs)
    and how (compression, level, signing keys): equal masters, equal narinfos."""
    h = hashlib.sha256()
    options = master.options
    h.update(f"{options.compression}\0{options.level}\0".encode())
    for key in options.sign_keys:
        h.update(f"{key.public_key}\0".encode())
    for source in master.sources:
        manifest = source.manifest
        h.update(f"{manifest.store_dir}\0{manifest.embedded_store_dir}\0".encode())
        for entry in manifest.paths:
            h.update(f"{entry.name}\0{entry.nar_hash}\0".encode())
    return h.hexdigest()[:32]


def _write(path: Path, data: bytes) -> None:
    """``data`` into ``path`` whole: written aside, then renamed over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Shared:
    """One worker's view of the shared dir ``root``; ``slot`` names the worker."""

    def __init__(self, root: Path, slot: int) -> None:
        self.root = root
        self.slot = slot
        self._narinfos = 0

    def _narinfo_file(self, master: str, store_dir: str, hash_part: str) -> Path:
        where = hashlib.sha256(store_dir.encode()).hexdigest()[:32]
        return self.root / "narinfo" / master / where / hash_part

    def narinfo(self, master: str, store_dir: str, hash_part: str) -> bytes | None:
        """A narinfo another worker computed, or None."""
        try:
            return self._narinfo_file(master, store_dir, hash_part).read_bytes()
        except OSError:
            return None

    def keep_narinfo(self, master: str, store_dir: str, hash_part: str, text: bytes) -> None:
        """File a computed narinfo for the other workers (while under the bound)."""
        if self._narinfos >= MAX_NARINFOS:
            return
        path = self._narinfo_file(master, store_dir, hash_part)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write(path, text)
            self._narinfos += 1
        except OSError:
            pass  # a full disk costs the others a computation, nothing more

    def _figures_file(self, slot: int) -> Path:
        return self.root / f"figures-{slot}.json"

    def write_figures(self, figures: dict[str, Any]) -> None:
        """This worker's figures, for whichever worker answers a scrape."""
        written = {"pid": os.getpid(), "at": time.time(), "figures": figures}
        try:
            _write(self._figures_file(self.slot), json.dumps(written).encode())
        except OSError:
            pass

    def previous_figures(self) -> dict[str, Any] | None:
        """The figures of the worker this one replaces (its counters carry on)."""
        written = _read_json(self._figures_file(self.slot))
        return written.get("figures") if written else None

    def _all(self) -> list[dict[str, Any]]:
        return [w for w in map(_read_json, sorted(self.root.glob("figures-*.json")))
                if w is not None and isinstance(w.get("figures"), dict)]

    def all_figures(self) -> list[dict[str, Any]]:
        """The figures every worker wrote last."""
        return [w["figures"] for w in self._all()]

    def siblings(self) -> list[int]:
        """The pids of the other workers (children of this one's parent) that wrote."""
        parent = os.getppid()
        return [w["pid"] for w in self._all()
                if w.get("pid") != os.getpid() and _parent_of(w.get("pid")) == parent]

    def written_since(self, when: float) -> bool:
        """Whether every worker that wrote has written again at ``when`` or later."""
        return all(w.get("at", 0) >= when for w in self._all())


def _parent_of(pid: object) -> int | None:
    """The parent of process ``pid`` (Linux /proc), None if it is not running."""
    if not isinstance(pid, int):
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
