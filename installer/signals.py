"""Ctrl-C, SIGTERM and SIGHUP during an install: each stops it, and what it did is undone.

From ``handle_stops`` on, the three raise KeyboardInterrupt wherever the
installer is, and the plan (plan.py) reverts this run's steps.  While it
reverts they are ignored (``signals_held``); around two things that must not
be parted (starting a Nix and taking it in hand) they wait
(``signals_deferred``); once the outcome is said they are ignored for good
(``outcome_decided``).
"""

import os
import signal

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import List  # noqa: F401

# The signals that stop an install like Ctrl-C.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def handle_stops():
    # type: () -> None
    """Make SIGTERM and SIGHUP (a closed terminal) stop the installer like Ctrl-C: a
    KeyboardInterrupt, so that what this run did is undone (only SIGKILL leaves work
    for the next run).  Until this is called a Ctrl-C is the sh preamble's
    (builder/preamble.sh)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _interrupt(signum, frame):
    raise KeyboardInterrupt()


def outcome_decided():
    # type: () -> None
    """Ignore Ctrl-C, SIGTERM and SIGHUP from now on: the run is done (or its failure
    said), and a late signal must not be reported as an undo that never happened."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


class signals_held(object):
    """Ignore Ctrl-C, SIGTERM and SIGHUP while undoing: a second Ctrl-C must not leave the
    revert half done (a kill -9 still can; the receipt then says what is left)."""

    def __enter__(self):
        self._old = [(s, signal.signal(s, signal.SIG_IGN)) for s in STOP_SIGNALS]
        return self

    def __exit__(self, *exc):
        for s, old in self._old:
            signal.signal(s, old)


class signals_deferred(object):
    """Ctrl-C, SIGTERM and SIGHUP that arrive inside are acted on as it ends: for two
    things that must not be parted, such as starting a child and taking it in hand.
    (Handled, not ignored, so that a child started inside gets the default action
    back at exec.)"""

    def __enter__(self):
        self._got = []  # type: List[int]
        # One that is ignored (signals_held) stays so, for a child started inside too.
        self._old = [(s, signal.signal(s, self._note)) for s in STOP_SIGNALS
                     if signal.getsignal(s) is not signal.SIG_IGN]
        return self

    def _note(self, signum, frame):
        self._got.append(signum)

    def __exit__(self, *exc):
        for s, old in self._old:
            signal.signal(s, old)
        if self._got:
            os.kill(os.getpid(), self._got[0])  # now, to the handler it was meant for
