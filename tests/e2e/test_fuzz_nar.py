"""Property test: random trees serialised by payload.nar are byte-identical to what
``nix-store --dump`` gives for the same tree added to a real store, and hash to the
narHash the store recorded.  The strategies and the case counts are those of
tests/unit/payload/test_fuzz.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from nix_prefix.builder.localnix import LocalNix
from nix_prefix.payload import hashes, nar

from tests.support import nar_bytes
from tests.unit.payload.test_fuzz import (  # noqa: F401 - report_counts prints COUNTS
    COUNTS,
    materialise,
    report_counts,
    trees,
)

NAR_CASES = 120


@pytest.fixture(scope="module")
def nix() -> Iterator[LocalNix]:
    base = Path(tempfile.mkdtemp(prefix="np-fuzz-", dir="/tmp"))
    try:
        yield LocalNix(base / "s")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
@settings(max_examples=NAR_CASES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(tree=trees)
def test_nar_serialiser_equals_nix_store_dump(nix: LocalNix, tree: tuple) -> None:
    work = Path(tempfile.mkdtemp(prefix="np-fuzz-tree-", dir="/tmp"))
    try:
        root = work / "t"
        materialise(tree, root)
        ours = nar_bytes(os.fsencode(root))
        added = nix.run("nix-store", ["--add", str(root)]).stdout.decode().strip()
        assert nix.run("nix-store", ["--dump", added]).stdout == ours
        (recorded,) = nix.run("nix-store", ["-q", "--hash", added]).stdout.decode().split()
        digest, size = nar.hash_path(os.fsencode(root))
        assert hashes.format_sha256(digest) == hashes.normalise_sha256(recorded)
        assert size == len(ours)
    finally:
        shutil.rmtree(work)
    COUNTS["nar"] = COUNTS.get("nar", 0) + 1
