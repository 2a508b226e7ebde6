"""The benchmark script runs (on a tiny closure) and reports every figure it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_runs_on_a_tiny_closure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--size-mb", "2",
                           "--paths", "3", "--rounds", "2", "--json", str(out)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["closure"]["paths"] == 3 and r["closure"]["nar_bytes"] > 1 << 20
    for codec in ("ours_xz", "ours_zstd"):
        for field in ("build_s", "size_bytes", "install_s", "builder_rss_mb",
                      "installer_rss_mb"):
            assert r[codec][field] > 0, (codec, field)
    assert r["official"]["pack_s"] > 0 and r["official"]["install_s"] > 0
    assert r["limit_cp_a_s"] > 0 and r["limit_zstd_tar_s"] > 0
    for key in ("ours_xz", "ours_zstd", "official"):
        assert r[key]["install_disk_s"] >= r[key]["install_s"] > 0, key
    assert all(len(runs) == 2 for runs in r["rounds"].values()), r["rounds"]
    assert set(r["ratios"]) == {"install_xz_vs_official", "install_zstd_vs_cp_a",
                                "install_xz_vs_official_on_disk",
                                "install_zstd_vs_cp_a_on_disk", "size_xz_vs_official",
                                "size_zstd_vs_official",
                                "build_xz_vs_official", "installer_rss_mb", "builder_rss_mb"}
    assert "ratio" in proc.stdout and "official-style tar.xz" in proc.stdout


@pytest.mark.slow
def test_scale_runs_on_tiny_closures(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "scale.py"), "--sizes", "20,60",
                           "--files-per-path", "12", "--level", "1",
                           "--json", str(out)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["code"] == str(REPO)  # this checkout's builder and installer, not another one's
    assert [(s["paths"], s["files"]) for s in r["sizes"]] == [(20, 240), (60, 720)]
    for s in r["sizes"]:
        assert s["verified"], s["problem"]
        for field in ("nar_bytes", "make_closure_s", "build_s", "install_s", "size_bytes",
                      "builder_rss_mb", "installer_rss_mb"):
            assert s[field] > 0, (s["paths"], field)
    assert set(r["linearity"]) == {"build_per_file_ratio", "install_per_file_ratio"}
    assert "linearity" in proc.stdout and "pass" in proc.stdout
