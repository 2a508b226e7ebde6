"""Temporaries named for the pid that made them, removed by a later run once that
pid is gone.

A run removes its own temporaries on any error, Ctrl-C or SIGTERM (cli.py), but
not when it is killed with SIGKILL or loses its machine.  Every temporary of the
builder therefore carries its pid right after a fixed prefix (``PREFIX<pid>`` or
``PREFIX<pid>-<anything>``): the installer ``.OUT.tmp-PID`` beside ``-o``, the
``.nix-prefix-fetch-PID-*`` store of ``build --from-cache``, the ``.store.tmp-PID`` of
``closure --from-cache``, the ``.tmp-PID-N`` files of ``cache``.  A later run
writing to the same place removes those whose pid no longer runs
(payload/machine.py ``process_alive``); a live pid's, another run's, is left alone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..payload.machine import process_alive


def pid_of(name: str, prefix: str) -> int | None:
    """The pid in a temporary's name ``PREFIX<pid>[-...]``, or None if it is not one."""
    if not name.startswith(prefix):
        return None
    digits = name[len(prefix):].partition("-")[0]
    return int(digits) if digits.isdigit() and digits[0] != "0" else None


def remove_stale(directory: Path, prefix: str) -> list[Path]:
    """Remove the temporaries ``directory/PREFIX<pid>...`` of pids that no longer run;
    return them.  A symlink is removed, never followed; what cannot be removed stays
    (a later run tries again)."""
    removed: list[Path] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        pid = pid_of(name, prefix)
        if pid is None or pid == os.getpid() or process_alive(pid):
            continue
        path = directory / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed
