"""payload.retarget: the padded store dir of a same-length retarget, and ``choose``, the
one choice of a retarget for the installer and every builder command (no Nix: manifests
and a .drv made here).  Real closures retargeted and installed are in
tests/e2e/test_relocation.py."""

from __future__ import annotations

import pytest

from nix_prefix.payload import retarget, storepaths_ca
from nix_prefix.payload.errors import OneLineError
from nix_prefix.payload.manifest import Manifest, PathEntry
from nix_prefix.payload.retarget import RetargetError, padded_store_dir

OLD = "/old-long-store-dir/store"  # 25 bytes
NEW = "/new/store"
DRV = b'Derive([],[],[],"x86_64-linux","/bin/sh",[],[])'
DRV_NAME = storepaths_ca.make_text_path(OLD, "x.drv", DRV, []).rpartition("/")[2]
APP = "0" * 31 + "2-app"


def test_padded_store_dir_keeps_length_and_shape() -> None:
    padded = padded_store_dir("/tmp/nix-build-longprefix/store", "/home/u/n/store")
    assert padded == "/home/u/n/////////////////store"
    assert len(padded) == len("/tmp/nix-build-longprefix/store")
    with pytest.raises(RetargetError, match="longer"):
        padded_store_dir("/a/store", "/abc/store")


def manifest(*names: str, derivations: bool = False) -> Manifest:
    return Manifest(OLD, "x86_64-linux", "xz",
                    [PathEntry(n, "sha256:" + "1" * 52, 8, []) for n in names], [], [],
                    derivations=derivations)


class Reads:
    """read_contents that counts its calls."""

    def __init__(self, contents: dict[str, bytes]) -> None:
        self.contents = contents
        self.calls = 0

    def __call__(self) -> dict[str, bytes]:
        self.calls += 1
        return self.contents


def test_the_built_store_dir_is_identity_and_reads_nothing() -> None:
    reads = Reads({})
    assert type(retarget.choose(manifest(APP, DRV_NAME), OLD, reads)) is retarget.Identity
    assert type(retarget.choose(manifest(APP), OLD, reads)) is retarget.Identity
    assert reads.calls == 0


def test_another_store_dir_without_derivations_is_same_length() -> None:
    reads = Reads({})
    chosen = retarget.choose(manifest(APP), NEW, reads)
    assert type(chosen) is retarget.SameLength and chosen.store_dir == NEW
    assert reads.calls == 0


def test_derivations_that_travel_give_an_exact_retarget_read_once() -> None:
    reads = Reads({DRV_NAME: DRV})
    chosen = retarget.choose(manifest(DRV_NAME), NEW, reads)
    assert type(chosen) is retarget.Exact and reads.calls == 1
    assert chosen.name(DRV_NAME) != DRV_NAME and chosen.name(DRV_NAME).endswith("-x.drv")


def test_the_caller_says_whether_derivations_travel() -> None:
    # The installer goes by its manifest's flag, a build never recomputes.
    reads = Reads({DRV_NAME: DRV})
    flagged = manifest(DRV_NAME, derivations=True)
    assert type(retarget.choose(flagged, NEW, reads, derivations=False)) is retarget.SameLength
    assert type(retarget.choose(flagged, NEW, reads, derivations=True)) is retarget.Exact


def test_a_longer_store_dir_is_refused_before_anything_is_read() -> None:
    reads = Reads({DRV_NAME: DRV})
    longer = "/a/prefix/longer/than/the/old/one/store"
    for m in (manifest(APP), manifest(DRV_NAME)):
        with pytest.raises(retarget.TooLong) as e:
            retarget.choose(m, longer, reads)
        line = str(e.value)
        assert "too long" in line and "at most 19 bytes" in line and "longer than" in line
        assert "\n" not in line and "--prefix" in e.value.hint
        assert isinstance(e.value, OneLineError)
    assert reads.calls == 0


def test_a_same_length_retarget_asked_for_derivations_is_refused() -> None:
    with pytest.raises(retarget.RetargetError, match="holds .drv files") as e:
        retarget.choose(manifest(DRV_NAME), NEW, Reads({}), want=retarget.SAME_LENGTH)
    assert "--exact" in e.value.hint


def test_an_exact_retarget_asked_for_without_derivations_is_refused() -> None:
    with pytest.raises(retarget.RetargetError, match="no .drv files") as e:
        retarget.choose(manifest(APP), NEW, Reads({}), want=retarget.EXACT)
    assert "--with-derivations" in e.value.hint


def test_an_exact_retarget_asked_for_at_the_built_store_dir_renames_nothing() -> None:
    # cache and serve: the plan gives the content addresses their narinfos carry.
    chosen = retarget.choose(manifest(DRV_NAME), OLD, Reads({DRV_NAME: DRV}),
                             want=retarget.EXACT)
    assert type(chosen) is retarget.Exact and chosen.name(DRV_NAME) == DRV_NAME


def test_a_closure_the_planner_cannot_plan_is_one_line() -> None:
    with pytest.raises(retarget.RetargetError, match="cannot recompute the store paths") as e:
        retarget.choose(manifest(DRV_NAME), NEW, Reads({DRV_NAME: b"Derive(garbage"}))
    assert "\n" not in str(e.value) and e.value.hint
