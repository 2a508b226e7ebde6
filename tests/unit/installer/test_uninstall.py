"""installer/uninstall.py's question: what undoing each step of the receipt will do."""

from __future__ import annotations

import os
from pathlib import Path

from nix_prefix.installer import receipt, uninstall
from nix_prefix.installer.prefix import Prefix
from nix_prefix.installer.run import Run
from nix_prefix.installer.ui import UI


class Manifest:
    def __init__(self, sha: str) -> None:
        self.payload_sha256 = sha * 64


def _run(root: Path, sha: str = "a") -> Run:
    def no_nix(tool: str) -> str:
        raise AssertionError("the question runs no Nix")

    return Run(Prefix(str(root)), UI(quiet=True), Manifest(sha), no_nix)


def _write(run: Run, sha: str = "a") -> None:
    prefix = run.prefix
    os.makedirs(prefix.receipts_dir, exist_ok=True)
    doc = receipt.new(Manifest(sha), prefix)
    done = {"state": "done", "params": {}}
    doc["steps"] = [
        dict(done, kind="make-dirs", owned={"created": [prefix.root]}),
        dict(done, kind="place-paths", owned={"placed": {}}),
        dict(done, kind="write-file", params={"path": prefix.nix_conf},
             owned={"sha256": "0" * 64}),
        dict(done, kind="register", owned={"registered": [prefix.store_dir + "/a-x",
                                                          prefix.store_dir + "/b-y"]}),
        dict(done, kind="profile", owned={"generations": {"3": {"paths": []}}}),
    ]
    receipt.write(receipt.path_for(prefix, Manifest(sha)), doc)


def test_the_question_lists_what_each_revert_does_newest_first(tmp_path: Path) -> None:
    run = _run(tmp_path / "p")
    assert uninstall.question(run, "inst.sh") is None  # no receipt: nothing to list
    _write(run)
    lines = (uninstall.question(run, "inst.sh") or "").splitlines()
    prefix = run.prefix
    assert lines[0] == f"Remove what inst.sh installed in {prefix.root}:"
    assert lines[1:5] == [
        f"  1. remove generation 3 of the profile {prefix.profile} (it goes back to the "
        "newest other one) and the store paths nix-env made for it",
        "  2. delete the 2 store paths it registered with nix-store --delete, except those "
        "other profiles or roots still need",
        f"  3. remove {prefix.nix_conf} if it is as the install wrote it (else it is yours "
        "now)",
        f"  4. remove the directories the installs created in {prefix.root} once they are "
        "empty, and the Nix database once no path is valid in it"]
    # place-paths placed nothing that is not registered: nothing of it to list.
    assert not any("placed" in line for line in lines)


def test_with_another_install_left_the_shared_steps_are_handed_over(tmp_path: Path) -> None:
    run = _run(tmp_path / "p")
    _write(run)
    _write(_run(tmp_path / "p", "b"), "b")
    lines = (uninstall.question(run, "inst.sh") or "").splitlines()
    assert [line[:5] for line in lines[1:3]] == ["  1. ", "  2. "]
    assert "profile" in lines[1] and "delete the 2 store paths" in lines[2]
    assert not any(run.prefix.nix_conf in line for line in lines)
    assert any("another installer's receipt takes over" in line for line in lines)
