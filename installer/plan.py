"""An install as a plan of steps that can each be undone.

The idea is DeterminateSystems/nix-installer's (``src/action/mod.rs``: every
action is a record of its parameters that describes itself, executes and
reverts, and describes its revert; ``src/plan.rs``: the plan is shown before
it runs, written as the receipt on every exit path, and reverted in reverse
order), fitted to a prefix install:

- a ``Step`` says in one line what it will do (``describe``) and what undoing
  it will do (``describe_revert``), whether it is already so (``is_done``),
  does it (``execute``) and undoes it (``revert``);
- what a step creates is recorded in its ``owned`` dict *before* it creates
  it and saved in the receipt (``receipt.save()``), so a kill at any moment
  leaves a receipt naming everything there is to undo; revert removes only
  what ``owned`` names, never anything that was there before;
- ``Plan.execute`` runs the steps in order; on a failure or an interrupt it
  reverts the steps of this run in reverse order, then re-raises;
- the receipt (receipt.py) is the plan written down: each step's kind,
  params, state and owned.

States: ``planned`` → ``started`` → ``done`` (or ``reverted``).  A step found
already done by another run is ``done`` with nothing owned.
"""

from .errors import InstallError
from .signals import signals_held

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Any, Callable, Dict, Iterable, List, Optional  # noqa: F401

    from .run import Run  # noqa: F401

PLANNED = "planned"
STARTED = "started"
DONE = "done"
REVERTED = "reverted"


class Reverted(object):
    """What reverting steps took away and what it had to keep (uninstall's report)."""

    def __init__(self, removed=(), kept=(), files_removed=(), files_kept=()):
        # type: (Iterable[str], Iterable[str], Iterable[str], Iterable[str]) -> None
        self.removed = list(removed)  # store paths
        self.kept = list(kept)  # store paths still alive through another install
        self.files_removed = list(files_removed)
        self.files_kept = list(files_kept)  # changed since written: the user's now

    def add(self, other):
        # type: (Optional[Reverted]) -> None
        if other is not None:
            self.removed += other.removed
            self.kept += other.kept
            self.files_removed += other.files_removed
            self.files_kept += other.files_kept


class Record(object):
    """Where a plan is recorded: what a Plan and its steps ask of a receipt.  This one
    records nothing (a plan of fake steps; a receipt already removed)."""

    last = True  # no other installer's receipt is in the prefix
    revert_all = False  # a failure reverts what unfinished earlier runs made too

    def open(self):
        # type: () -> None
        """Called before the first step that needs the prefix's lock."""

    def save(self, reverted=None):
        # type: (Optional[Reverted]) -> None
        """Write the plan as it stands now (and what reverting kept so far)."""

    def drop(self):
        # type: () -> None
        """No trace of this run stays: the receipt goes (or is as it was before)."""

    def release(self):
        # type: () -> None
        """Let go of the prefix's lock, if ``open`` took it."""


class Step(object):
    """One revertible part of an install: a record of its parameters (``params``, what
    a receipt rebuilds it from), its ``state`` and what it ``owned``.  Subclasses set
    ``kind`` and implement describe, describe_revert, is_done, execute and revert."""

    kind = ""
    locked = True  # runs with the prefix's lock held (Record.open)

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
        """One line: what execute will do."""
        raise NotImplementedError

    def describe_revert(self, run):
        # type: (Run) -> Optional[str]
        """One line: what revert will undo of what the step owns (None: nothing)."""
        raise NotImplementedError

    def is_done(self, run):
        # type: (Run) -> bool
        raise NotImplementedError

    def execute(self, run, receipt):
        # type: (Run, Record) -> Optional[Run]
        """Do it, saving ``receipt`` after recording in ``owned`` what it is about to
        make; return the Run the steps after it get, if it learnt something."""
        raise NotImplementedError

    def already(self, run):
        # type: (Run) -> None
        """Called instead of execute when the step is found done: may say why."""

    def revert(self, run, receipt):
        # type: (Run, Record) -> Optional[Reverted]
        """Undo what ``owned`` names, and only that."""
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
    """The steps of one install or uninstall, in order, and the receipt they are recorded in."""

    def __init__(self, steps, receipt=None):
        # type: (List[Step], Optional[Record]) -> None
        self.steps = steps
        self.receipt = receipt if receipt is not None else Record()
        # Called as the last thing of a plan that succeeded, before anything can
        # interrupt it: a Ctrl-C after it is too late to undo (signals.outcome_decided).
        self.on_done = None  # type: Optional[Callable[[], None]]
        self.reverted = Reverted()

    def lines(self, run):
        # type: (Run) -> List[str]
        """The numbered steps, as the question before an install shows them."""
        return ["  %d. %s" % (i + 1, s.describe(run)) for i, s in enumerate(self.steps)]

    def revert_lines(self, run):
        # type: (Run) -> List[str]
        """What reverting the plan will undo, newest step first, numbered."""
        found = [s.describe_revert(run) for s in reversed(self.steps)]
        return ["  %d. %s" % (i + 1, line)
                for i, line in enumerate(line for line in found if line)]

    def execute(self, run):
        # type: (Run) -> bool
        """Run every step not yet done; return True if any did something.  On any
        exception (KeyboardInterrupt and SIGTERM included) revert this run's
        steps, newest first, and re-raise.  The receipt is saved on every way out."""
        ran = []  # type: List[Step]
        opened = False
        try:
            for step in self.steps:
                if step.locked and not opened:
                    opened = True
                    self.receipt.open()
                if step.is_done(run):
                    step.state = DONE
                    step.already(run)
                    continue
                step.state = STARTED
                ran.append(step)
                self.receipt.save()
                run = step.execute(run, self.receipt) or run
                step.state = DONE
                self.receipt.save()
            if self.on_done is not None:
                self.on_done()
        except BaseException as failure:
            with signals_held():
                try:
                    self.revert(run, None if self.receipt.revert_all else ran)
                    self.receipt.save(self.reverted)  # nothing left to undo: said so
                except Exception as undo:
                    raise RevertFailed(failure, undo)
            if isinstance(failure, InstallError):
                failure.reverted = True
            raise
        return bool(ran)

    def revert(self, run, steps=None):
        # type: (Run, Optional[List[Step]]) -> Reverted
        """Revert ``steps`` (default: all), newest first, saving the receipt after each;
        return what went and what stayed (also in ``self.reverted``)."""
        for step in reversed(self.steps if steps is None else steps):
            if step.state == REVERTED:
                continue
            self.reverted.add(step.revert(run, self.receipt))
            step.state = REVERTED
            self.receipt.save(self.reverted)
        return self.reverted


class RevertFailed(InstallError):
    """A step failed, and undoing the steps before it failed too."""

    def __init__(self, failure, undo):
        # type: (BaseException, BaseException) -> None
        what = "interrupted" if isinstance(failure, KeyboardInterrupt) else str(failure)
        InstallError.__init__(
            self, "%s, and undoing what it did failed too (%s)" % (what, undo),
            "run the installer again to finish, or with --uninstall to take out what it left")


def from_record(record, kinds):
    # type: (dict, Iterable[Any]) -> Optional[Step]
    """The step of one of the Step classes ``kinds`` a receipt record stands for (None
    for a kind none of them is, which the installer leaves alone)."""
    for cls in kinds:
        if cls.kind == record.get("kind"):
            try:
                step = cls(**(record.get("params") or {}))  # type: Step
            except TypeError:
                return None  # params it does not take: not one this installer wrote
            step.state = record.get("state", PLANNED)
            step.owned = record.get("owned") or {}
            return step
    return None
