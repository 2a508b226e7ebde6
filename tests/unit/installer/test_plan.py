"""installer/plan.py with fake steps: no Nix, no prefix."""

from __future__ import annotations

import pytest

from nix_prefix.installer import plan
from nix_prefix.installer.errors import InstallError


class FakeRun:
    """A Run stand-in: steps only log to it."""

    def __init__(self, log: list[str], generation: int = 0) -> None:
        self.log = log
        self.generation = generation


class Fake(plan.Step):
    """A step that logs what it does; ``fail`` (an exception) is raised by execute,
    ``revert_fails`` by revert; ``done`` makes it found done."""

    kind = "fake"

    def __init__(self, name: str = "", fail: BaseException | None = None,
                 revert_fails: bool = False, done: bool = False, locked: bool = True,
                 passes_on: bool = False) -> None:
        plan.Step.__init__(self, name=name)
        self.fail = fail
        self.revert_fails = revert_fails
        self.done = done
        self.locked = locked
        self.passes_on = passes_on
        self.seen_generation = -1

    def key(self) -> str:
        return "fake " + self.params["name"]

    def describe(self, run):
        return "make " + self.params["name"]

    def describe_revert(self, run):
        return "remove " + self.params["name"] if self.owned else None

    def is_done(self, run):
        return self.done

    def execute(self, run, receipt):
        self.seen_generation = run.generation
        self.owned["made"] = [self.params["name"]]
        receipt.save()
        run.log.append("execute " + self.params["name"])
        if self.fail is not None:
            raise self.fail
        if self.passes_on:
            return FakeRun(run.log, run.generation + 1)
        return None

    def revert(self, run, receipt):
        run.log.append("revert " + self.params["name"])
        if self.revert_fails:
            raise OSError("disk gone")
        return plan.Reverted(removed=self.owned.get("made", []))


class FakeRecord(plan.Record):
    """Records every save as (state of each step, kept)."""

    def __init__(self, steps: list[plan.Step], revert_all: bool = False) -> None:
        self.steps = steps
        self.revert_all = revert_all
        self.saves: list[tuple[list[str], list[str]]] = []
        self.opened = 0

    def open(self) -> None:
        self.opened += 1

    def save(self, reverted=None) -> None:
        self.saves.append(([s.state for s in self.steps],
                           list(reverted.kept) if reverted is not None else []))


def test_runs_each_step_in_order_and_says_whether_anything_changed() -> None:
    log: list[str] = []
    steps = [Fake("a"), Fake("b", done=True), Fake("c")]
    record = FakeRecord(steps)
    assert plan.Plan(steps, record).execute(FakeRun(log))
    assert log == ["execute a", "execute c"]
    assert [s.state for s in steps] == [plan.DONE] * 3
    assert record.saves[-1][0] == [plan.DONE] * 3
    assert not plan.Plan([Fake("d", done=True)]).execute(FakeRun(log))


def test_the_receipt_is_opened_once_before_the_first_locked_step() -> None:
    steps = [Fake("a", locked=False), Fake("b"), Fake("c")]
    record = FakeRecord(steps)
    the_plan = plan.Plan(steps, record)
    the_plan.execute(FakeRun([]))
    assert record.opened == 1
    # A plan of unlocked steps never takes the lock.
    record2 = FakeRecord([Fake("x", locked=False, done=True)])
    plan.Plan(record2.steps, record2).execute(FakeRun([]))
    assert record2.opened == 0


def test_a_step_passes_what_it_learnt_to_the_next_through_a_new_run() -> None:
    first, second = Fake("a", passes_on=True), Fake("b")
    run = FakeRun([])
    plan.Plan([first, second]).execute(run)
    assert (first.seen_generation, second.seen_generation) == (0, 1)
    assert run.generation == 0  # the run given is not changed


def test_a_failure_reverts_this_runs_steps_newest_first_and_is_raised() -> None:
    log: list[str] = []
    steps = [Fake("a"), Fake("old", done=True), Fake("b"), Fake("c", fail=InstallError("no"))]
    record = FakeRecord(steps)
    with pytest.raises(InstallError) as caught:
        plan.Plan(steps, record).execute(FakeRun(log))
    assert caught.value.reverted
    assert log == ["execute a", "execute b", "execute c", "revert c", "revert b", "revert a"]
    assert [s.state for s in steps] == [plan.REVERTED, plan.DONE, plan.REVERTED,
                                        plan.REVERTED]
    # The plan is written on the way out too: the last save has every revert.
    assert record.saves[-1][0] == [s.state for s in steps]


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), SystemExit(1), MemoryError()])
def test_an_interrupt_reverts_too(stop: BaseException) -> None:
    log: list[str] = []
    with pytest.raises(type(stop)):
        plan.Plan([Fake("a"), Fake("b", fail=stop)]).execute(FakeRun(log))
    assert log[-2:] == ["revert b", "revert a"]


def test_with_revert_all_a_failure_reverts_the_steps_earlier_runs_made_too() -> None:
    log: list[str] = []
    steps = [Fake("a", done=True), Fake("b", fail=InstallError("no"))]
    steps[0].owned = {"made": ["a"]}  # adopted from an unfinished run
    with pytest.raises(InstallError):
        plan.Plan(steps, FakeRecord(steps, revert_all=True)).execute(FakeRun(log))
    assert log == ["execute b", "revert b", "revert a"]


def test_a_failed_revert_says_both() -> None:
    log: list[str] = []
    steps = [Fake("a", revert_fails=True), Fake("b", fail=InstallError("no space"))]
    with pytest.raises(plan.RevertFailed) as caught:
        plan.Plan(steps).execute(FakeRun(log))
    assert "no space, and undoing what it did failed too (disk gone)" in str(caught.value)
    assert log == ["execute a", "execute b", "revert b", "revert a"]


def test_revert_collects_what_went_and_saves_after_each_step() -> None:
    steps = [Fake("a"), Fake("b"), Fake("c")]
    for s in steps:
        s.owned = {"made": [s.params["name"]]}
        s.state = plan.DONE
    steps[1].state = plan.REVERTED  # reverted before a kill
    record = FakeRecord(steps)
    reverted = plan.Plan(steps, record).revert(FakeRun([]))
    assert reverted.removed == ["c", "a"]
    assert len(record.saves) == 2


def test_the_lines_shown_are_the_descriptions_in_order_and_reverts_newest_first() -> None:
    steps = [Fake("a"), Fake("b"), Fake("c")]
    steps[0].owned = {"made": ["a"]}
    steps[2].owned = {"made": ["c"]}
    the_plan = plan.Plan(steps)
    assert the_plan.lines(FakeRun([])) == ["  1. make a", "  2. make b", "  3. make c"]
    # A step that owns nothing has nothing to undo: not listed.
    assert the_plan.revert_lines(FakeRun([])) == ["  1. remove c", "  2. remove a"]


def test_on_done_is_called_last_and_only_on_success() -> None:
    called: list[str] = []
    the_plan = plan.Plan([Fake("a")])
    the_plan.on_done = lambda: called.append("done")
    the_plan.execute(FakeRun(called))
    assert called == ["execute a", "done"]
    failing = plan.Plan([Fake("b", fail=InstallError("no"))])
    failing.on_done = lambda: called.append("done")
    with pytest.raises(InstallError):
        failing.execute(FakeRun(called))
    assert called.count("done") == 1


def test_merge_unites_lists_and_dicts() -> None:
    a = {"placed": {"p": [1]}, "created": ["x", "y"], "home": "h"}
    b = {"placed": {"q": [2]}, "created": ["y", "z"], "home": None}
    assert plan.merge(a, b) == {"placed": {"p": [1], "q": [2]}, "created": ["x", "y", "z"],
                                "home": "h"}


def test_a_step_comes_back_from_its_record() -> None:
    step = Fake("a")
    step.state = plan.DONE
    step.owned = {"made": ["a"]}
    again = plan.from_record(step.to_record(), [Fake])
    assert again is not None and again.to_record() == step.to_record()
    assert plan.from_record({"kind": "unknown"}, [Fake]) is None


def test_a_record_with_params_its_kind_does_not_take_is_left_alone() -> None:
    assert plan.from_record({"kind": "fake", "params": {"colour": "red"}}, [Fake]) is None
