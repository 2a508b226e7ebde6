"""Shared test set-up: the --slow switch, hypothesis' profile and dirs other users can reach.

Nothing here needs Nix: ``pytest tests/unit`` runs on a machine without it.  The
real-Nix check and fixtures are in tests/e2e/conftest.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

NOBODY = 65534

# Property tests check results, never speed, and CI must give the same answer on every
# run: no per-example deadline (hypothesis' default of 200 ms is exceeded when a busy
# 2-core machine stalls one example) and no too_slow health check, and a fixed seed.
# That is hypothesis' own "ci" profile, here whether or not CI=true is set.
# HYPOTHESIS_PROFILE=explore draws fresh random examples on each run, to hunt for bugs.
settings.register_profile("nix-prefix", derandomize=True, database=None, deadline=None,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "nix-prefix"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true",
                     help="also run the slow end-to-end tests (CI does)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow end-to-end test: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@contextmanager
def reachable_dir(prefix: str) -> Iterator[Path]:
    """A fresh dir under /tmp that an unprivileged user can reach (pytest's tmp_path
    can't), removed afterwards even where a test left it read-only."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        _force_remove(path)


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A fresh dir under /tmp that an unprivileged user can reach, for one test."""
    with reachable_dir("np-test-") as path:
        yield path


@pytest.fixture(scope="module")
def module_dir() -> Iterator[Path]:
    """Like world_dir, shared by the tests of one module (one installer built for all)."""
    with reachable_dir("np-module-") as path:
        yield path


def _force_remove(path: Path) -> None:
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not os.path.islink(full):
                os.chmod(full, 0o755)
    shutil.rmtree(path, ignore_errors=True)

