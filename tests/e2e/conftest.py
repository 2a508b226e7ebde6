"""The end-to-end tests' set-up: they drive a real Nix, so a machine without one stops
here with the fix, not with a traceback in every test; and the machine's Nix as a fixture."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nix_prefix.builder.localnix import LocalNix


def pytest_configure(config: pytest.Config) -> None:
    if shutil.which("nix-store") is None:
        raise pytest.UsageError(
            "these tests drive a real Nix: run .ci/setup.sh (installs Debian's nix-bin); "
            "the unit tests (pytest tests/unit) need none")


@pytest.fixture
def local_nix(world_dir: Path) -> LocalNix:
    """The machine's Nix bound to a fresh store at WORLD_DIR/build/store."""
    return LocalNix(world_dir / "build")
