"""Wall-clock phases of one installer run, written out for ``bench/run.py``.

With ``NIX_PREFIX_TIMINGS=FILE`` in the environment, the installer appends
one JSON line to FILE as it exits::

    {"started": T0, "ended": T1, "phases": [[name, start, end], ...]}

in seconds of ``time.time()`` (so a benchmark can set them against the time
it started the process: the gap is the sh preamble and Python's start-up).
Without the variable nothing is written; a phase then costs two clock reads.
The phases are the serial steps around the parallel unpacking (the seal
check, the manifest, preflight, ``--load-db``, the profile) and the unpacking
itself, so that their share of an install can be measured, not guessed.
"""

import json
import os
import time
from contextlib import contextmanager

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Iterator, List, Tuple  # noqa: F401

ENV = "NIX_PREFIX_TIMINGS"
_STARTED = [time.time()]
_PHASES = []  # type: List[Tuple[str, float, float]]


def start():
    # type: () -> None
    """Mark the start of the run (``main()``); import time is the fallback."""
    _STARTED[0] = time.time()
    del _PHASES[:]


@contextmanager
def phase(name):
    # type: (str) -> Iterator[None]
    """Time the block as phase ``name`` (recorded also when it raises)."""
    begin = time.time()
    try:
        yield
    finally:
        _PHASES.append((name, begin, time.time()))


def write():
    # type: () -> None
    """Append this run's phases to ``$NIX_PREFIX_TIMINGS``, if it is set.

    Never fails the run: a benchmark hook must not turn an install into an error.
    """
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"started": _STARTED[0], "ended": time.time(),
                       "phases": [list(p) for p in _PHASES]})
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError:
        pass
