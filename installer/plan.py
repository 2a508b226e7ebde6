"""An install as a plan of steps that can each be undone.

The idea is DeterminateSystems/nix-installer's (``src/action/mod.rs``: every
action describes itself, executes and reverts, wrapped with its state in a
``StatefulAction``; ``src/plan.rs``: the plan is shown before it runs, written
as the receipt, and reverted in reverse order), fitted to a prefix install:

- a ``Step`` says in one line what it will do (``describe``), whether that is
  already so (``is_done``), does it (``execute``) and undoes it (``revert``);
- what a step creates is recorded in its ``owned`` dict *before* it creates
  it and saved in the receipt (``save``), so a kill at any moment leaves a
  receipt naming everything there is to undo; revert removes only what
  ``owned`` names, never anything that was there before;
- ``Plan.execute`` runs the steps in order; on a failure or an interrupt it
  reverts the steps of this run in reverse order, then re-raises;
- the receipt (receipt.py) is the plan: each step's kind, state and owned.

States: ``planned`` → ``started`` → ``done`` (or ``reverted``).  A step found
already done by another run is ``done`` with nothing owned.
"""

import os
import signal

from .errors import InstallError

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Any, Callable, Dict, List, Optional  # noqa: F401

    from .steps import Run  # noqa: F401

PLANNED = "planned"
STARTED = "started"
DONE = "done"
REVERTED = "reverted"


class Step(object):
    """One revertible part of an install.  Subclasses set ``kind`` and implement
    describe, is_done, execute and revert; their constructor arguments go in
    ``params`` so that a receipt can rebuild the step for an uninstall."""

    kind = ""
    locked = True  # runs with the prefix's lock held (Plan.on_locked)

    def __init__(self, **params):
        # type: (**Any) -> None
        self.params = params  # type: Dict[str, Any]
        self.state = PLANNED
        self.owned = {}  # type: Dict[str, Any]

    def key(self):
        # type: () -> str
        """What identifies this step across runs of one installer."""
        return self.kind

    def describe(self, run):
        # type: (Run) -> str
        raise NotImplementedError

    def is_done(self, run):
        # type: (Run) -> bool
        raise NotImplementedError

    def execute(self, run):
        # type: (Run) -> None
        raise NotImplementedError

    def already(self, run):
        # type: (Run) -> None
        """Called instead of execute when the step is found done: may say why."""

    def revert(self, run):
        # type: (Run) -> None
        raise NotImplementedError

    def to_record(self):
        # type: () -> dict
        return {"kind": self.kind, "params": self.params, "state": self.state,
                "owned": self.owned}

    def adopt(self, owned):
        # type: (dict) -> None
        """Take over what an earlier, unfinished run of this step created."""
        self.owned = merge(owned, self.owned)


def merge(a, b):
    # type: (dict, dict) -> dict
    """Two ``owned`` records as one: lists are united, dicts merged key by key,
    other values taken from ``b`` when it has them."""
    out = dict(a)
    for key, value in b.items():
        old = out.get(key)
        if isinstance(value, list) and isinstance(old, list):
            out[key] = sorted(set(old) | set(value))
        elif isinstance(value, dict) and isinstance(old, dict):
            out[key] = merge(old, value)
        elif value is not None:
            out[key] = value
    return out


class Plan(object):
    """The steps of one install or uninstall, in order, and the receipt they are saved in."""

    def __init__(self, steps, save, on_locked=None):
        # type: (List[Step], Callable[[], None], Optional[Callable[[], None]]) -> None
        self.steps = steps
        self.save = save
        self.on_locked = on_locked
        # Set when no complete run came before: a failure then reverts every
        # step (what unfinished earlier runs made too), not only this run's.
        self.revert_all = False
        # Called as the last thing of a plan that succeeded, before anything can
        # interrupt it: a Ctrl-C after it is too late to undo (main: outcome_decided).
        self.on_done = None  # type: Optional[Callable[[], None]]

    def lines(self, run):
        # type: (Run) -> List[str]
        return ["  %d. %s" % (i + 1, s.describe(run)) for i, s in enumerate(self.steps)]

    def execute(self, run):
        # type: (Run) -> bool
        """Run every step not yet done; return True if any did something.  On any
        exception (KeyboardInterrupt and SIGTERM included) revert this run's
        steps, newest first, and re-raise."""
        ran = []  # type: List[Step]
        changed = False
        locked = False
        try:
            for step in self.steps:
                if step.locked and not locked:
                    locked = True
                    if self.on_locked is not None:
                        self.on_locked()
                if step.is_done(run):
                    step.state = DONE
                    step.already(run)
                    continue
                step.state = STARTED
                ran.append(step)
                self.save()
                step.execute(run)
                step.state = DONE
                self.save()
                changed = True
            if self.on_done is not None:
                self.on_done()
        except BaseException as failure:
            with signals_held():
                try:
                    self.revert(run, None if self.revert_all else ran)
                except Exception as undo:
                    raise RevertFailed(failure, undo)
            if isinstance(failure, InstallError):
                failure.reverted = True
            raise
        return changed

    def revert(self, run, steps=None):
        # type: (Run, Optional[List[Step]]) -> None
        """Revert ``steps`` (default: all), newest first, saving the state after each."""
        for step in reversed(self.steps if steps is None else steps):
            if step.state == REVERTED:
                continue
            step.revert(run)
            step.state = REVERTED
            self.save()


class RevertFailed(InstallError):
    """A step failed, and undoing the steps before it failed too."""

    def __init__(self, failure, undo):
        # type: (BaseException, BaseException) -> None
        what = "interrupted" if isinstance(failure, KeyboardInterrupt) else str(failure)
        InstallError.__init__(
            self, "%s, and undoing what it did failed too (%s)" % (what, undo),
            "run the installer again to finish, or with --uninstall to take out what it left")


# The signals that stop an install like Ctrl-C (main.py turns SIGTERM and SIGHUP
# into KeyboardInterrupt too).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
