"""builder/sharing.py: the dir the workers of one server share (narinfos, figures)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from nix_prefix.builder import sharing
from nix_prefix.builder.sharing import Shared, master_id


def _master(nar_hash: str, compression: str = "zstd") -> SimpleNamespace:
    entry = SimpleNamespace(name="a" * 32 + "-x", nar_hash=nar_hash)
    manifest = SimpleNamespace(store_dir="/s/store", embedded_store_dir="/s/store",
                               paths=[entry])
    options = SimpleNamespace(compression=compression, level=None, sign_keys=[])
    return SimpleNamespace(options=options, sources=[SimpleNamespace(manifest=manifest)])


def test_narinfos_are_shared_per_master_and_store_dir(tmp_path: Path) -> None:
    one, two = Shared(tmp_path, 0), Shared(tmp_path, 1)
    old = master_id(_master("sha256:1"))
    assert old == master_id(_master("sha256:1"))
    new = master_id(_master("sha256:2"))
    assert len({old, new, master_id(_master("sha256:1", "xz"))}) == 3
    assert two.narinfo(old, "/q/store", "h" * 32) is None
    one.keep_narinfo(old, "/q/store", "h" * 32, b"StorePath: x\n")
    assert two.narinfo(old, "/q/store", "h" * 32) == b"StorePath: x\n"
    # Another master (after a SIGHUP) or another store dir: not that narinfo.
    assert two.narinfo(new, "/q/store", "h" * 32) is None
    assert two.narinfo(old, "/r/store", "h" * 32) is None


def test_narinfo_files_are_bounded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sharing, "MAX_NARINFOS", 2)
    one = Shared(tmp_path, 0)
    for n in range(4):
        one.keep_narinfo("m", "/q/store", str(n) * 32, b"x")
    assert len(list((tmp_path / "narinfo").rglob("*"))) == 2 + 2  # two dirs, two files


def test_figures_of_every_worker(tmp_path: Path) -> None:
    Shared(tmp_path, 0).write_figures({"a": 1})
    Shared(tmp_path, 1).write_figures({"a": 2})
    (tmp_path / "figures-2.json").write_text("{half")  # never seen: written by rename
    assert Shared(tmp_path, 1).all_figures() == [{"a": 1}, {"a": 2}]
    assert Shared(tmp_path, 1).previous_figures() == {"a": 2}
    assert Shared(tmp_path, 3).previous_figures() is None
