"""The Nix versions the end-to-end tests ship inside an installer, and where each comes from.

2.8 is the machine's own Nix (Debian bookworm's nix-bin); 2.26 and 2.34 are
trixie's and sid's nix-bin, which .ci/setup.sh fetches with
.ci/debian-fetch.sh into a cache outside the repository (never installed).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nix-prefix-ci/debian"

# version -> the Debian release whose nix-bin it is (None: the machine's Nix)
SUITES = {"2.8": None, "2.26": "trixie", "2.34": "sid"}
VERSIONS = list(SUITES)


def nix_source(version: str) -> Path | None:
    """What ``build_nix_closure`` packages for ``version``: None (the machine's
    Nix) or the unpacked Debian tree; a missing tree fails the test, with the fix."""
    suite = SUITES[version]
    if suite is None:
        return None
    tree = CACHE / suite / "root"
    if not (tree / "usr/bin/nix").exists():
        pytest.fail(f"Nix {version} ({suite}'s nix-bin) is not in {tree}: run .ci/setup.sh")
    return tree
