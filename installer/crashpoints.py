"""Named moments of an install where a test may kill the installer (kill -9).

``NIX_PREFIX_TEST_CRASH_AT=<name>:<n>`` makes the installer SIGKILL itself
the n-th time it reaches the moment ``name``: the same as a power cut or an
OOM kill there, but repeatable.  Unset (always, outside the test suite), a
crash point costs one dict lookup.
"""

import os
import signal

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Dict, Optional, Tuple  # noqa: F401

_target = None  # type: Optional[Tuple[str, int]]
_counts = {}  # type: Dict[str, int]


def _parse(value):
    # type: (str) -> Optional[Tuple[str, int]]
    name, _, n = value.rpartition(":")
    return (name, int(n)) if name and n.isdigit() else None


_target = _parse(os.environ.get("NIX_PREFIX_TEST_CRASH_AT", ""))


def reached(name):
    # type: (str) -> None
    """Count a moment; die at once if it is the one asked for."""
    if _target is None or _target[0] != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == _target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
