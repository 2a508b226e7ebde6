"""Named moments of an install where a test may kill the installer (kill -9).

``NIX_PREFIX_TEST_CRASH_AT=<name>:<n>`` makes the installer SIGKILL itself
the n-th time it reaches the moment ``name``: the same as a power cut or an
OOM kill there, but repeatable.  ``<name>:<n>:TERM`` (or ``INT``) sends
that signal instead, as a ``kill`` or Ctrl-C would.  Unset (always, outside
the test suite), a crash point costs one dict lookup.
"""

import os
import signal

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Dict, Optional, Tuple  # noqa: F401

_target = None  # type: Optional[Tuple[str, int, int]]
_counts = {}  # type: Dict[str, int]
_SIGNALS = {"TERM": signal.SIGTERM, "INT": signal.SIGINT}


def _parse(value):
    # type: (str) -> Optional[Tuple[str, int, int]]
    parts = value.split(":")
    if len(parts) == 3 and parts[2] in _SIGNALS:
        signum = _SIGNALS[parts.pop()]
    else:
        signum = signal.SIGKILL
    if len(parts) != 2 or not parts[0] or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), signum


_target = _parse(os.environ.get("NIX_PREFIX_TEST_CRASH_AT", ""))


def reached(name):
    # type: (str) -> None
    """Count a moment; die at once if it is the one asked for."""
    if _target is None or _target[0] != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == _target[1]:
        os.kill(os.getpid(), _target[2])
