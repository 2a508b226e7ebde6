"""The benchmark script runs (on a tiny closure) and reports every figure it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_runs_on_a_tiny_closure(tmp_path: Path) -> None:
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--size-mb", "3",
                           "--paths", "4", "--rounds", "1", "--jobs", "1,2",
                           "--json", str(out), "--markdown", str(md)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    c = r["closure"]
    assert c["paths"] == 4 and c["nar_bytes"] > 2 << 20
    assert c["big_path_share"] >= 0.5  # shaped like real closures: one path dominates
    for codec in ("ours_xz", "ours_zstd"):
        assert set(r[codec]["build_s"]) == {"1", "2"}
        assert r[codec]["identical_across_jobs"] is True, codec
        assert r[codec]["size_bytes"] > 0 and r[codec]["builder_rss_mb"] > 0
    steps = {f"{s}_{codec}_j{j}" for s in ("install", "check") for codec in ("xz", "zstd")
             for j in (1, 2)} | {"official", "cp_a", "zstd_tar"}
    assert set(r["install"]) == steps
    for key, v in r["install"].items():
        assert v["disk_s"] >= v["s"] > 0, key
    assert all(len(runs) == 1 for runs in r["rounds"].values()), r["rounds"]
    # The installer's own phase timings: every serial part, and they add up.
    for key in (k for k in steps if k.startswith("install_")):
        p = r["phases"][key]
        for name in ("start-up", "manifest", "preflight", "unpack", "load-db", "profile"):
            assert p[name] > 0, (key, name)
        assert sum(p.values()) <= r["install"][key]["s"] + 0.05, key
    for key in ("check_xz_j1", "check_zstd_j2"):
        assert r["phases"][key]["check"] > 0 and r["phases"][key]["manifest"] > 0
    assert r["seal_sha256_pass_s"] > 0
    assert {"install_xz_j2_vs_official", "install_zstd_j2_vs_cp_a", "speedup_unpack_xz_j2",
            "speedup_check_xz_j2", "speedup_build_xz_j2", "size_xz_vs_official",
            "installer_rss_mb"} <= set(r["ratios"])
    text = md.read_text()
    assert text in proc.stdout
    for heading in ("install -j2 / official", "phase of the install", "| load-db |",
                    "speedup_build_xz_j2"):
        assert heading in text, heading
    # Every table row has as many cells as its header.
    for table in text.split("\n\n"):
        rows = [line for line in table.splitlines() if line.startswith("|")]
        widths = {line.replace("\\|", "").count("|") for line in rows}
        assert len(widths) <= 1, table


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


@pytest.mark.slow
def test_cache_bench_runs_on_a_tiny_closure(tmp_path: Path) -> None:
    out = tmp_path / "cache.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "cache.py"), "--size-mb", "2",
                           "--paths", "3", "--level", "1", "--json", str(out)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["closure"]["paths"] == 3 and r["closure"]["nar_bytes"] > 1 << 20
    assert r["verified"], r["problem"]
    for key in ("nix_copy", "ours_same_length", "ours_exact"):
        assert r[key]["s"] > 0 and r[key]["bytes"] > 0, key
    assert r["ours_exact_rerun_s"] > 0
    assert set(r["ratios"]) == {"time_exact_vs_nix_copy", "time_same_length_vs_nix_copy",
                                "size_exact_vs_nix_copy", "size_same_length_vs_nix_copy"}
    assert "substitutes everything, builds nothing: yes" in proc.stdout


@pytest.mark.slow
def test_pieces_runs_on_a_tiny_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "big").write_bytes(bytes(range(256)) * 4096)
    (tree / "small").write_bytes(b"small\n")
    out = tmp_path / "pieces.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "pieces.py"), "--tree", str(tree),
                           "--mb", "1", "--pieces", "1,4", "--jobs", "1,2", "--codecs", "xz,zstd",
                           "--json", str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["hash_tree_s"] > 0 and r["chain_sha256_s"] > 0
    for codec in ("xz", "zstd"):
        rows = r["codecs"][codec]
        assert [row["pieces"] for row in rows] == [1, 4]
        for row in rows:
            assert row["size_bytes"] > 0
            assert all(row[k] > 0 for k in ("encode_j1_s", "encode_j2_s", "decode_j1_s",
                                            "decode_j2_s"))
    assert "size / 1 piece" in proc.stdout


@pytest.mark.slow
def test_serve_bench_runs_on_a_tiny_closure(tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "serve.py"), "--size-mb", "2",
                           "--paths", "3", "--seconds", "1", "--json", str(out)],
                          capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["closure"]["paths"] == 3
    for key in ("static", "ours"):
        for clients in (1, 8):
            assert r[key][f"narinfo_per_s_{clients}"] > 0
            assert r[key][f"nar_{clients}"]["nar_mb_s"] > 0
    assert r["ours"]["cold_narinfo_per_s"] > 0
    assert r["ours"]["server_rss_mb"] > 0 and r["static"]["server_rss_mb"] > 0
    assert set(r["ratios"]) == {"narinfo_1", "nar_1", "narinfo_8", "nar_8"}
    assert "nix-prefix serve (zstd)" in proc.stdout


def test_verify_bench_measures_each_python(tmp_path: Path) -> None:
    out = tmp_path / "verify.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "verify.py"), "--rounds", "2",
                           "--python", sys.executable, "--json", str(out)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["pythons"]
    assert row["python"] == sys.executable and 0 < row["mean_ms"] <= row["max_ms"]
    assert f"Python {sys.version.split()[0]}" in proc.stdout
