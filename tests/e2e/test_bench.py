"""The benchmark script runs (on a tiny closure) and reports every figure it promises."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.measure import measured

REPO = Path(__file__).resolve().parents[2]


def assert_targets(r: dict, figures: set[str], may_be_absent: frozenset[str] = frozenset()) -> \
        None:
    """The bench's targets block holds exactly ``figures``, each a finite number (those of
    ``may_be_absent``: or None, "n/a"), with its target and verdict, and the load average
    at the start and the end (whether the targets are met is no unit test's business)."""
    block = r["targets"]
    for when in ("load_start", "load_end"):
        assert set(block[when]) == {"1min", "5min", "15min"}, block[when]
        assert all(math.isfinite(v) and v >= 0 for v in block[when].values()), block[when]
    assert set(block["figures"]) == figures
    for name, t in block["figures"].items():
        if t["value"] is None:
            assert name in may_be_absent and t["met"] is None, (name, t)
            continue
        assert isinstance(t["value"], (int, float)) and math.isfinite(t["value"]), (name, t)
        assert math.isfinite(t["target"]) and t["met"] in (True, False), (name, t)
        assert t["met"] == (t["value"] <= t["target"] if t["at_most"]
                            else t["value"] >= t["target"]), (name, t)


def test_a_measured_command_is_not_charged_the_benchs_own_memory() -> None:
    """bench/common.Run's peak RSS is the command's own, not the bench's: a child of a
    bench holding 300 MiB reads as small as it is (wait4 in the bench itself counted the
    bench's memory in every child's peak)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import common; "
            "held = b'x' * (300 << 20); "
            "run = common.Run([sys.executable, '-c', 'pass']); "
            "print(run.rss_mb, run.seconds, len(held))")
    proc = subprocess.run([sys.executable, "-c", code, str(REPO / "bench")],
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rss_mb, seconds, _ = proc.stdout.split()
    assert 0 < float(rss_mb) < 100, proc.stdout
    assert float(seconds) > 0


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
             for j in (1, 2)} | {"official", "cp_a", "zstd_tar", "tar_into_store",
                                 "install_xz_j2_other_prefix", "install_zstd_j2_other_prefix"}
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
    assert_targets(r, {
        # issue 25's
        "install_xz_j2_other_prefix_vs_built_prefix",
        "install_zstd_j2_other_prefix_vs_built_prefix", "install_zstd_j2_vs_cp_a",
        "install_xz_j2_vs_tar_into_store", "reference_map_share_of_installer",
        # issues 4's and 15's
        "install_xz_j2_vs_official", "install_xz_j2_vs_official_on_disk",
        "size_xz_vs_official", "size_zstd_vs_official", "build_xz_vs_official",
        "installer_rss_mb", "builder_rss_mb", "speedup_unpack_xz_j2", "speedup_check_xz_j2",
        "speedup_build_xz_j2"}, may_be_absent=frozenset({"reference_map_share_of_installer"}))
    assert "targets (one run; load average" in proc.stdout
    text = md.read_text()
    assert text in proc.stdout
    for heading in ("install -j2 / official", "phase of the install", "| load-db |",
                    "speedup_build_xz_j2", "install_xz_j2_vs_tar_into_store"):
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
    assert_targets(r, {"build_per_file_ratio", "install_per_file_ratio"})
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
    assert_targets(r, {"time_exact_vs_nix_copy", "time_same_length_vs_nix_copy"})
    assert "targets (one run; load average" in proc.stdout
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
                           "--paths", "3", "--seconds", "1", "--stalled", "2", "--rounds", "2",
                           "--json", str(out)],
                          capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["closure"]["paths"] == 3
    for name in ("installer", "tree"):
        m = r["masters"][name]
        # What ours served at the static cache's store dir is what the static cache holds.
        assert m["same_as_static"] is True, name
        closure = m["static_1"]["nar_bytes"]  # the NARs at the new store dirs
        assert closure > 1 << 20
        for key in ("static", "ours", "ours_zstd"):
            for clients in (1, 8):
                p = m[f"{key}_{clients}"]
                # Every client got every NAR: uncompressed, exactly the NarSizes.
                assert p["nar_bytes"] == clients * closure, (name, key)
                if key != "ours_zstd":
                    assert p["wire_bytes"] == p["nar_bytes"], (name, key)
        assert m["zstd_alone"]["nar_bytes"] == closure
    for key in ("alone", "stalled"):
        for clients in (1, 8):
            assert r["warm"][key][f"narinfo_per_s_{clients}"] > 0
            assert r["warm"][key][f"nar_{clients}"]["nar_mb_s"] > 0
    assert_targets(r, {f"{name}_master_{n}_clients_{vs}" for name in ("installer", "tree")
                       for n in (1, 8) for vs in ("vs_static", "zstd_vs_zstd_alone")})
    assert "targets (one run; load average" in proc.stdout


def test_verify_bench_measures_each_python(tmp_path: Path) -> None:
    out = tmp_path / "verify.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "verify.py"), "--rounds", "2",
                           "--python", sys.executable, "--json", str(out)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["pythons"]
    assert row["python"] == sys.executable and 0 < row["mean_ms"] <= row["max_ms"]
    assert f"Python {sys.version.split()[0]}" in proc.stdout


def test_a_measured_command_past_its_timeout_is_killed_and_says_so() -> None:
    """tests/measure.py, which the benches and the hostile tests share: the command is
    killed at its timeout (exit 137, timed_out), and its own time and RSS are reported."""
    m = measured(["sleep", "60"], timeout=1)
    assert m.timed_out and m.returncode == 137, m
    done = measured([sys.executable, "-c", "import sys; sys.stderr.write('said')"],
                    input=b"", cwd=REPO)
    assert not done.timed_out and done.returncode == 0 and done.stderr == "said"
    assert done.seconds > 0 and done.started_at > 0 and done.max_rss > 0


def test_rewrite_bench_runs_on_a_tiny_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "lib.so").write_bytes(b"\x7fELF" + bytes(range(256)) * 4096)
    (tree / "script").write_bytes(b"#!/bin/sh\necho hello\n" * 500)
    out = tmp_path / "rewrite.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "rewrite.py"), "--tree",
                           str(tree), "--mb", "2", "--rounds", "1", "--json", str(out)],
                          capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["files"] == 2 and r["occurrences"] > 2 and 0 < r["map_bytes"] < r["bytes"] / 100
    for kind in ("same_length", "exact"):
        for key in ("map_gb_s", "scan_gb_s", "map_nar_hash_gb_s"):
            assert r[kind][key] > 0, (kind, key)
    assert "| exact |" in proc.stdout and "load" in proc.stdout
