"""payload.archive's test trees as the real Nix stores them: the paths and NAR hashes
tests/unit/payload/test_archive.py makes without Nix are those of ``nix-store --add``,
and packing the paths Nix added checks each NAR hash against the store's narHash."""

from __future__ import annotations

from pathlib import Path

from nix_prefix.builder.localnix import LocalNix

from tests.unit.payload.test_archive import MAKERS, StorePath, as_added, pack


def added_by_nix(work: Path) -> list[tuple[StorePath, StorePath]]:
    """MAKERS' trees added to a private store at WORK/p/store by ``nix-store --add``,
    each with what tests/unit/payload/test_archive.py's ``as_added`` says of it."""
    nix = LocalNix(work / "p")
    out = []
    for name, make in MAKERS.items():
        src = work / "src" / name
        src.parent.mkdir(exist_ok=True)
        make(src)
        path = nix.run("nix-store", ["--add", str(src)]).stdout.decode().strip()
        (nar_hash,) = nix.run("nix-store", ["-q", "--hash", path]).stdout.decode().split()
        ours = as_added(src, Path(path).parent)
        out.append((StorePath(path.rpartition("/")[2], path, nar_hash), ours))
    return out


def test_the_unit_tests_store_paths_are_what_nix_store_add_gives(tmp_path: Path) -> None:
    for by_nix, ours in added_by_nix(tmp_path):
        assert ours == by_nix


def test_packing_the_paths_nix_added_gives_their_nar_hashes(tmp_path: Path) -> None:
    by_nix = [sp for sp, _ in added_by_nix(tmp_path)]
    _, recorders, _ = pack(by_nix)  # pack checks each NAR hash against Nix's
    assert len(recorders) == len(MAKERS)
