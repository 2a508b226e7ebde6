"""The reference map in real installers (format 4), with real Nix: `build` and
`retarget` write it, it stays under 1% of the file, a retarget or an install with it
gives exactly what the scan gives (same-length and exact), and a map that lies is
refused with one line before anything lands in the prefix."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.builder.retarget import retarget, retarget_exact
from nix_prefix.payload import refmap
from nix_prefix.payload import retarget as retargets
from nix_prefix.payload.container import InstallerFile

from .test_exact_retarget import build_at_s1
from tests.support import build_small, run_installer

LONG = "a-build-prefix-long-enough-to-relocate-from"


def opened(installer: Path) -> tuple[dict | None, refmap.RefMap | None]:
    f = InstallerFile(str(installer))
    try:
        return f.manifest.ref_map, f.ref_map()
    finally:
        f.close()


def spied(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What each Retarget.use_refs returns from now on: whether the map is used."""
    used: list[bool] = []
    real = retargets.Retarget.use_refs

    def use_refs(self: retargets.Retarget, refs: refmap.RefMap | None) -> bool:
        used.append(real(self, refs))
        return used[-1]
    monkeypatch.setattr(retargets.Retarget, "use_refs", use_refs)
    return used


def without_map(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installers read as if they carried no map (format 3): the scan does the work."""
    monkeypatch.setattr(InstallerFile, "ref_map", lambda self: None)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory):
    return build_small(tmp_path_factory.mktemp("refmap"), name=LONG)


@pytest.mark.slow
def test_build_writes_a_small_map_and_retarget_gives_the_bytes_the_scan_gives(
        small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry, refs = opened(small.installer)
    assert entry is not None and refs is not None
    assert entry["size"] <= small.installer.stat().st_size / 100
    assert sum(len(f.offsets) for p in refs.paths.values() for f in p.files.values()) >= 2
    with zipfile.ZipFile(small.installer) as zf:
        assert refmap.MEMBER in zf.namelist()
    prefix = str(tmp_path / "short")
    used = spied(monkeypatch)
    mapped = retarget(small.installer, prefix, tmp_path / "mapped.sh")
    assert used == [True]
    with monkeypatch.context() as m:
        without_map(m)
        scanned = retarget(small.installer, prefix, tmp_path / "scanned.sh")
    assert mapped.manifest.to_json() == scanned.manifest.to_json()
    assert (tmp_path / "mapped.sh").read_bytes() == (tmp_path / "scanned.sh").read_bytes()
    assert opened(tmp_path / "mapped.sh")[1] is not None  # retarget writes a map too
    # and the retargeted installer retargets again, with its own map, as the scan would
    again = str(tmp_path / "s")
    twice = retarget(tmp_path / "mapped.sh", again, tmp_path / "twice.sh")
    with monkeypatch.context() as m:
        without_map(m)
        assert retarget(tmp_path / "mapped.sh", again,
                        tmp_path / "twice-scanned.sh").manifest.to_json() == \
            twice.manifest.to_json()


@pytest.mark.slow
def test_exact_retarget_with_the_map_gives_what_the_scan_gives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, _, _, _, closure, roots = build_at_s1(tmp_path, "s1-a-build-prefix-longer-than-s2")
    installer = tmp_path / "drvs.sh"
    build_installer(closure, installer, BuildOptions(compression="xz", level=1, roots=roots,
                                                     derivations=True))
    _, refs = opened(installer)
    assert refs is not None
    used = spied(monkeypatch)
    mapped = retarget_exact(installer, str(tmp_path / "s2"), tmp_path / "m.sh", level=1)
    assert used == [True]  # the renaming's hash parts are all ones the map looked for
    with monkeypatch.context() as m:
        without_map(m)
        scanned = retarget_exact(installer, str(tmp_path / "s2"), tmp_path / "s.sh", level=1)
    assert mapped.manifest.to_json() == scanned.manifest.to_json()
    assert (tmp_path / "m.sh").read_bytes() == (tmp_path / "s.sh").read_bytes()


def lying_installer(small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installer of ``small`` whose map points one byte past each first occurrence
    (its code members and seal are whole: only the map lies)."""
    real = refmap.Recorder.result

    def shifted(self: refmap.Recorder, nar_hash: bytes) -> refmap.PathRefs:
        refs = real(self, nar_hash)
        for f in refs.files.values():
            f.offsets[0] += 1
        return refs

    with monkeypatch.context() as m:
        m.setattr(refmap.Recorder, "result", shifted)
        lying = tmp_path / "lying.sh"
        build_installer(read_closure(small.closure_info), lying,
                        BuildOptions(compression="xz", level=1))
    return lying


@pytest.mark.slow
def test_an_installer_whose_map_lies_is_refused_and_installs_nothing(
        small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lying = lying_installer(small, tmp_path, monkeypatch)
    prefix = tmp_path / "short"
    proc = run_installer(lying, "-y", "-p", str(prefix))
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "reference map" in lines[0], proc.stderr
    assert not (prefix / "store").exists() or not [
        p for p in (prefix / "store").iterdir() if not p.name.startswith(".")]
    # `retarget` says the same in one line, as an integrity error
    with pytest.raises(refmap.RefMapError) as e:
        retarget(lying, str(tmp_path / "r"), tmp_path / "r.sh")
    assert e.value.exit_code == 3 and "reference map" in str(e.value)
    assert "\n" not in str(e.value)


# -- a tree master's sidecar, made by `cache` ---------------------------------------------------

def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.slow
def test_cache_from_a_closure_makes_the_sidecar_and_writes_what_the_scan_writes(
        small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nix_prefix.builder.cache import CacheOptions, write_cache
    from nix_prefix.builder.refmaps import sidecar_of
    from nix_prefix.builder.sources import ClosureSource

    info = small.closure_info
    sidecar = sidecar_of(info)
    sidecar.unlink(missing_ok=True)
    q = str(tmp_path / "q")
    write_cache([info], q, tmp_path / "mapped", CacheOptions(level=1))
    assert sidecar.exists()
    made = sidecar.stat().st_mtime_ns
    with monkeypatch.context() as m:
        m.setattr(ClosureSource, "ref_map", lambda self: None)
        write_cache([info], q, tmp_path / "scanned", CacheOptions(level=1))
    assert files_of(tmp_path / "mapped") == files_of(tmp_path / "scanned")
    write_cache([info], str(tmp_path / "q2"), tmp_path / "again", CacheOptions(level=1))
    assert sidecar.stat().st_mtime_ns == made  # read, not made again

    # A sidecar that lies (offsets moved, its own sha256 made to match) is refused.
    refs = refmap.read_sidecar(str(sidecar))
    assert refs is not None
    for p in refs.paths.values():
        for f in p.files.values():
            f.offsets[0] += 1
    assert refmap.write_sidecar(str(sidecar), refs)
    with pytest.raises(refmap.RefMapError) as e:
        write_cache([info], str(tmp_path / "q3"), tmp_path / "lied", CacheOptions(level=1))
    assert e.value.exit_code == 3 and "\n" not in str(e.value)
    sidecar.unlink()  # made again once deleted
    write_cache([info], str(tmp_path / "q3"), tmp_path / "remade", CacheOptions(level=1))
    assert sidecar.exists()


# -- `serve`'s masters ---------------------------------------------------------------------------

@pytest.mark.slow
def test_serve_maps_its_masters_and_serves_what_the_scan_serves(
        small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nix_prefix.builder.master import Master, ServeOptions
    from nix_prefix.builder.refmaps import sidecar_of
    from nix_prefix.builder.sources import ClosureSource

    sidecar_of(small.closure_info).unlink(missing_ok=True)
    options = ServeOptions(compression="none")
    store_dir = str(tmp_path / "q" / "store")

    def nars(master: Master) -> dict[str, bytes]:
        view = master.view(store_dir)
        out = {}
        for hash_part in sorted(view._by_hash):
            parts: list[bytes] = []
            view.stream(hash_part, parts.append)
            out[hash_part] = b"".join(parts)
        return out

    for source in (small.closure_info, small.installer):
        mapped = Master([source], options)
        assert mapped.ref_maps[0] is not None
        with monkeypatch.context() as m:
            used = spied(m)
            got = nars(mapped)
        assert used == [True], source
        with monkeypatch.context() as m:
            m.setattr(ClosureSource, "ref_map", lambda self: None)
            m.setattr(InstallerFile, "ref_map", lambda self: None)
            assert nars(Master([source], options)) == got, source
    assert sidecar_of(small.closure_info).exists()  # made at start


@pytest.mark.slow
def test_serve_refuses_a_master_whose_map_lies_at_start(
        small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installer whose map points one byte past each first occurrence: ``serve``
    stops at start with one line (exit 3), not at some request later."""
    from nix_prefix.builder.master import Master, ServeOptions

    lying = lying_installer(small, tmp_path, monkeypatch)
    with pytest.raises(refmap.RefMapError) as e:
        Master([lying], ServeOptions())
    assert e.value.exit_code == 3 and "\n" not in str(e.value)
    assert str(e.value).startswith("reference map: ")
    proc = subprocess.run([str(Path(sys.executable).parent / "nix-prefix"), "serve",
                           str(lying), "--listen", "127.0.0.1:0"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 3, proc.stderr
    assert "reference map" in proc.stderr and "Traceback" not in proc.stderr
