"""installer/receipt.py with fake steps: the receipt a plan is written to, no Nix."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from nix_prefix.installer import plan, receipt
from nix_prefix.installer.errors import InstallError
from nix_prefix.installer.prefix import Prefix


class Manifest:
    def __init__(self, sha: str) -> None:
        self.payload_sha256 = sha * 64


class Dirs(plan.Step):
    """Makes nothing: the first kind, which the first receipt records."""

    kind = "dirs"

    def describe(self, run):
        return self.kind

    def describe_revert(self, run):
        return None

    def is_done(self, run):
        return False

    def execute(self, run, receipt):
        return None

    def revert(self, run, receipt):
        return None


class Thing(Dirs):
    """Owns the names it makes; ``fail`` makes execute raise after claiming."""

    kind = "thing"

    def key(self):
        return "thing " + self.params["name"]

    def execute(self, run, receipt):
        self.owned.setdefault("made", []).append(self.params["name"])
        receipt.save()
        if self.params.get("fail"):
            raise InstallError("failed", "on purpose")
        return None

    def revert(self, run, receipt):
        return plan.Reverted(kept=self.owned.get("made", []))


class Last(Thing):
    kind = "last"


KINDS = (Dirs, Thing, Last)


def read(path: str) -> dict:
    return json.loads(Path(path).read_text())


def new_receipt(root: Path, steps: list[plan.Step], sha: str = "a") -> receipt.Receipt:
    return receipt.Receipt(Prefix(str(root)), Manifest(sha), KINDS, steps)


def test_the_first_receipt_comes_with_its_directories(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "nix"
    r = new_receipt(root, [Dirs(), Thing(name="x")])
    r.save()  # before open: nothing is written (an earlier receipt is read first)
    assert not root.exists()
    r.open()
    try:
        first = read(r.path)
        # The first receipt claims every directory made with it, the missing parent too.
        assert first["steps"][0]["kind"] == "dirs"
        assert first["steps"][0]["owned"]["created"] == [
            str(tmp_path / "deep"), str(root), str(root / "var"),
            str(root / "var/nix-prefix"), str(root / "var/nix-prefix/receipts")]
        assert r.loaded and r.last and r.revert_all  # no complete receipt before
        with open(r.prefix.lock_file) as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        r.release()
    with open(r.prefix.lock_file) as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released: free again
    r.release()  # again: nothing to do


def test_a_plan_is_saved_on_every_change_and_on_the_way_out(tmp_path: Path) -> None:
    steps: list[plan.Step] = [Dirs(), Thing(name="x"), Thing(name="y", fail=True)]
    r = new_receipt(tmp_path / "p", steps)
    with pytest.raises(InstallError):
        plan.Plan(steps, r).execute(object())
    r.release()
    doc = read(r.path)
    assert [s["state"] for s in doc["steps"]] == ["reverted"] * 3
    assert doc["steps"][2]["owned"] == {"made": ["y"]}  # claimed before it failed
    assert not doc["complete"]
    r.drop()
    assert not os.path.exists(r.path)
    r.save()  # a dropped receipt is not written again
    assert not os.path.exists(r.path)


def test_an_unfinished_receipt_is_adopted(tmp_path: Path) -> None:
    first = [Dirs(), Thing(name="x", fail=True)]
    r = new_receipt(tmp_path / "p", first)
    r.open()
    first[1].owned = {"made": ["old"]}
    first[1].state = plan.STARTED
    r.save()
    r.release()  # killed here: the receipt stays unfinished
    again = [Dirs(), Thing(name="x")]
    r2 = new_receipt(tmp_path / "p", again)
    plan.Plan(again, r2).execute(object())
    r2.release()
    assert r2.revert_all
    assert again[1].owned == {"made": ["old", "x"]}
    doc = read(r2.path)
    assert doc["complete"] and doc["steps"][1]["owned"] == {"made": ["old", "x"]}


def test_a_complete_receipt_is_kept_beside_a_new_run(tmp_path: Path) -> None:
    steps: list[plan.Step] = [Dirs(), Thing(name="x"), Last(name="z")]
    r = new_receipt(tmp_path / "p", steps)
    plan.Plan(steps, r).execute(object())
    r.release()
    before = read(r.path)
    assert before["complete"]
    # A re-run with another plan: a failure undoes only this run, and the receipt is
    # as the complete run left it.
    again = [Dirs(), Thing(name="x"), Thing(name="w", fail=True)]
    r2 = new_receipt(tmp_path / "p", again)
    with pytest.raises(InstallError):
        plan.Plan(again, r2).execute(object())
    assert not r2.revert_all
    during = read(r2.path)
    assert during["complete"]  # the earlier run's records stay beside
    assert "last" in [s["kind"] for s in during["steps"]]
    assert during["steps"][1]["owned"] == {"made": ["x"]}  # the two runs' records merged
    r2.drop()
    r2.release()
    assert read(r2.path) == before


def test_an_uninstall_reads_the_steps_and_keeps_unknown_records(tmp_path: Path) -> None:
    prefix = Prefix(str(tmp_path / "p"))
    r = new_receipt(tmp_path / "p", [])
    with pytest.raises(InstallError, match="holds no record of this installer"):
        r.read()
    os.makedirs(prefix.receipts_dir)
    doc = receipt.new(Manifest("a"), prefix)
    doc["steps"] = [{"kind": "thing", "params": {"name": "x"}, "state": "done",
                     "owned": {"made": ["x"]}},
                    {"kind": "from-the-future", "params": {}, "state": "done", "owned": {}}]
    receipt.write(r.path, doc)
    steps = r.read()
    assert [s.key() for s in steps] == ["thing x"]
    reverted = plan.Plan(steps, r).revert(object())
    saved = read(r.path)
    assert [s["kind"] for s in saved["steps"]] == ["thing", "from-the-future"]
    assert saved["steps"][0]["state"] == "reverted"
    assert saved["kept"] == ["x"] == r.kept(reverted)
    doc["storeDir"] = "/elsewhere/store"
    receipt.write(r.path, doc)
    with pytest.raises(InstallError, match="is for /elsewhere/store"):
        r.read()


def test_hand_over_merges_into_another_receipt_in_plan_order(tmp_path: Path) -> None:
    prefix = Prefix(str(tmp_path / "p"))
    os.makedirs(prefix.receipts_dir)
    other = receipt.new(Manifest("b"), prefix)
    other["steps"] = [{"kind": "thing", "params": {"name": "x"}, "state": "done",
                       "owned": {"made": ["b1"]}},
                      {"kind": "last", "params": {"name": "z"}, "state": "done",
                       "owned": {}}]
    other_path = receipt.path_for(prefix, Manifest("b"))
    receipt.write(other_path, other)
    mine = new_receipt(tmp_path / "p", [])
    assert not mine.last
    dirs, thing, nothing = Dirs(), Thing(name="x"), Thing(name="n")
    dirs.owned = {"created": ["/d"]}
    thing.owned = {"made": ["a1"]}
    mine.hand_over([thing, dirs, nothing])
    steps = read(other_path)["steps"]
    assert [s["kind"] for s in steps] == ["dirs", "thing", "last"]  # none for "n": owns nothing
    assert steps[0]["owned"] == {"created": ["/d"]}
    assert steps[1]["owned"] == {"made": ["a1", "b1"]}


def test_a_killed_bootstrap_leaves_nothing_the_next_run_keeps(tmp_path: Path) -> None:
    prefix = Prefix(str(tmp_path / "new" / "nix"))

    def killed(where: str, created: list[str]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        receipt.make_receipts_dir(prefix, "r.json", killed)
    assert os.listdir(tmp_path) == []  # the temporary chain went too
    # One a SIGKILL left (a process that is gone) is removed by the next run.
    stale = tmp_path / (receipt.NEW_DIRS_PREFIX + "999999999-new")
    stale.mkdir()
    assert receipt.remove_stale_new_dirs(prefix) == [str(stale)]
    made = receipt.make_receipts_dir(prefix, "r.json", lambda w, c: Path(w).write_text("{}"))
    assert made[0] == str(tmp_path / "new") and os.path.isfile(
        os.path.join(prefix.receipts_dir, "r.json"))
    receipt.unmake_receipts_dir(prefix, made, os.path.join(prefix.receipts_dir, "r.json"))
    assert os.listdir(tmp_path) == []
