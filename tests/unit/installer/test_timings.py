"""The installer's phase timings (NIX_PREFIX_TIMINGS), which bench/run.py reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nix_prefix.installer import timings


def test_phases_are_written_only_when_asked(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "t.jsonl"
    monkeypatch.delenv(timings.ENV, raising=False)
    timings.start()
    with timings.phase("manifest"):
        pass
    timings.write()
    assert not out.exists()

    monkeypatch.setenv(timings.ENV, str(out))
    timings.start()
    with timings.phase("manifest"):
        pass
    with pytest.raises(ValueError), timings.phase("unpack"):
        raise ValueError("a failed phase is still timed")
    timings.write()
    run = json.loads(out.read_text())
    assert [p[0] for p in run["phases"]] == ["manifest", "unpack"]
    assert run["started"] <= run["phases"][0][1] <= run["phases"][0][2] <= run["ended"]


def test_an_unwritable_timings_file_does_not_fail_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(timings.ENV, str(tmp_path / "no-such-dir" / "t.jsonl"))
    timings.start()
    timings.write()  # no exception: a benchmark hook never breaks an install
