"""Scaling benchmark: build and install synthetic closures of growing size.

    .venv/bin/python bench/scale.py [--sizes 500,1500,5000] [--files-per-path 40]
                                    [--json out.json] [--workdir DIR] [--keep]

For each size, with the machine's real Nix against a private store:

* makes a synthetic closure of that many store paths (40 small files each by
  default, so 5,000 paths hold 200,000 files) with references between them,
  by one ``nix-store --import`` (bench/synthetic.py says how);
* writes its closureInfo (top root) and times ``nix-prefix build CLOSURE_INFO
  -o OUT`` (xz by default), with its peak RSS;
* moves the build store away and times ``sh OUT -y -q -p PREFIX`` into a fresh
  prefix at the same place (an identity retarget), with its peak RSS;
* checks the install with Nix: ``nix-store --verify --check-contents`` on the
  prefix, and the root's closure (``nix-store -qR``) has every path.

Prints a table (paths, files, NAR MiB, build and install seconds, seconds per
1,000 files, RSS) and the linearity figures: per-file cost at the largest size
over the smallest, and the marginal cost (extra seconds per extra file)
between the two largest sizes over the two smallest; within 1.5x reads as
"linear".  Everything is also written as JSON with ``--json``.  Absolute times
depend on the machine and its load; the ratios are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# first: nix_prefix = this checkout
from common import CLI, Run, Target, load, machine, remove, targets_block
from synthetic import make_closure

import nix_prefix.builder as builder_pkg
from nix_prefix.builder.localnix import LocalNix, prefix_env

LINEAR = 1.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="500,1500,5000",
                    help="numbers of store paths, comma-separated (default: %(default)s)")
    ap.add_argument("--files-per-path", type=int, default=40,
                    help="files (and symlinks) in each store path (default: %(default)s)")
    ap.add_argument("--compression", default="xz", choices=["xz", "zstd"])
    ap.add_argument("--level", type=int, help="compression level (default: the builder's)")
    ap.add_argument("--seed", type=int, default=1, help="for the synthetic contents")
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--workdir", type=Path, help="default: a new dir under /tmp")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work dir (stores, installers, installed prefixes)")
    args = ap.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not sizes or sizes[0] < 1:
        ap.error("--sizes takes positive whole numbers")

    base = Path(args.workdir or tempfile.mkdtemp(prefix="np-scale-", dir="/tmp")).resolve()
    base.mkdir(parents=True, exist_ok=True)
    r: dict = {"machine": machine(), "code": str(Path(builder_pkg.__file__).parent.parent),
               "compression": args.compression, "level": args.level,
               "files_per_path": args.files_per_path, "sizes": [], "load_start": load()}
    try:
        for n in sizes:
            r["sizes"].append(bench_size(base / f"n{n:07d}", n, args))
            if not args.keep:
                remove(base / f"n{n:07d}")
    finally:
        if not args.keep:
            remove(base)
    r["linearity"] = linearity(r["sizes"])
    r["load_end"] = load()
    text, r["targets"] = targets_block([Target(k, v, LINEAR) for k, v in r["linearity"].items()],
                                       r["load_start"], r["load_end"])
    print_table(r)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(r, indent=1) + "\n")
    if not all(s["verified"] for s in r["sizes"]):
        raise SystemExit("bench: Nix did not verify an installed prefix (see the table)")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def bench_size(work: Path, n: int, args: argparse.Namespace) -> dict:
    """Make, build, install and verify the closure of ``n`` paths under ``work``."""
    work.mkdir(parents=True)
    load_before = os.getloadavg()[0]  # others' work on the machine shows in the times
    prefix = work / "nix"  # the build store first, then the installed prefix
    nix = LocalNix(prefix)
    closure = make_closure(nix, n, args.files_per_path, args.seed)
    t = time.perf_counter()
    info = nix.write_closure_info([closure.root], work / "closure-info")
    info_s = time.perf_counter() - t
    listed = len((info / "store-paths").read_text().split())
    nar = int((info / "total-nar-size").read_text())
    say(f"{n} paths: {closure.files} files, {nar / 2**20:.1f} MiB NAR made with "
        f"nix-store --import in {closure.seconds:.1f} s, closureInfo in {info_s:.1f} s")
    if listed != n or nar != closure.nar_bytes:
        raise SystemExit(f"bench: closureInfo lists {listed} paths, {nar} bytes; "
                         f"made {n}, {closure.nar_bytes}")

    out = work / "installer.sh"
    cmd = [*CLI, "build", str(info), "-o", str(out), "-q", "--compression", args.compression]
    if args.level is not None:
        cmd += ["--level", str(args.level)]
    build = Run(cmd)
    say(f"{n} paths: built in {build.seconds:.1f} s ({build.rss_mb:.0f} MiB RSS)")

    os.rename(prefix, work / "build")  # the build store is gone for the install
    install = Run(["/bin/sh", str(out), "-y", "-q", "-p", str(prefix)], env=dict(os.environ))
    say(f"{n} paths: installed in {install.seconds:.1f} s ({install.rss_mb:.0f} MiB RSS)")

    verified, verify_s, problem = check_install(prefix, closure.root, n, work / "home")
    say(f"{n} paths: nix-store --verify --check-contents "
        f"{'passed' if verified else 'FAILED: ' + problem} in {verify_s:.1f} s")
    return {"paths": n, "files": closure.files, "nar_bytes": nar, "load_before": load_before,
            "make_closure_s": closure.seconds, "closure_info_s": info_s,
            "build_s": build.seconds, "builder_rss_mb": build.rss_mb,
            "size_bytes": out.stat().st_size,
            "install_s": install.seconds, "installer_rss_mb": install.rss_mb,
            "verified": verified, "verify_s": verify_s, "problem": problem}


def check_install(prefix: Path, root: str, n: int, home: Path) -> tuple[bool, float, str]:
    """Nix's own check of the installed prefix: (passed, seconds, what went wrong)."""
    env = prefix_env(prefix, home=home)
    t = time.perf_counter()
    proc = subprocess.run(["nix-store", "--verify", "--check-contents"], env=env,
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t
    bad = [line for line in proc.stderr.splitlines()
           if "error" in line or "modified" in line or "disappeared" in line]
    if proc.returncode != 0 or bad:
        return False, seconds, (bad or proc.stderr.strip().splitlines() or ["?"])[-1]
    closure = subprocess.run(["nix-store", "-qR", root], env=env, capture_output=True,
                             text=True, check=False)
    count = len(closure.stdout.split())
    if closure.returncode != 0 or count != n:
        return False, seconds, f"nix-store -qR of the root lists {count} paths, not {n}"
    return True, seconds, ""


def linearity(sizes: list[dict]) -> dict:
    """Per-file cost (largest / smallest) and marginal cost (two largest / two smallest)."""
    out: dict = {}
    if len(sizes) < 2:
        return out
    lo, hi = sizes[0], sizes[-1]
    for step in ("build", "install"):
        key = f"{step}_s"
        per_file = (hi[key] / hi["files"]) / (lo[key] / lo["files"])
        out[f"{step}_per_file_ratio"] = per_file
        if len(sizes) >= 3:
            def slope(a: dict, b: dict, key: str = key) -> float:
                return (b[key] - a[key]) / (b["files"] - a["files"])
            out[f"{step}_marginal_ratio"] = slope(sizes[-2], hi) / slope(lo, sizes[1])
    return out


def print_table(r: dict) -> None:
    m = r["machine"]
    print(f"\nsynthetic closures, {r['files_per_path']} files per path, "
          f"{r['compression']}; machine: {m['cpus']} CPUs, {m['cpu']}; code: {r['code']}")
    print(f"{'paths':>7}{'files':>9}{'NAR MiB':>9}{'make s':>8}{'build s':>9}"
          f"{'install s':>10}{'b s/1k':>8}{'i s/1k':>8}{'b RSS':>8}{'i RSS':>8}"
          f"{'inst MiB':>9}{'load':>6}  nix verify")
    for s in r["sizes"]:
        k = s["files"] / 1000
        print(f"{s['paths']:7d}{s['files']:9d}{s['nar_bytes'] / 2**20:9.1f}"
              f"{s['make_closure_s']:8.1f}{s['build_s']:9.1f}{s['install_s']:10.1f}"
              f"{s['build_s'] / k:8.3f}{s['install_s'] / k:8.3f}"
              f"{s['builder_rss_mb']:7.0f}M{s['installer_rss_mb']:7.0f}M"
              f"{s['size_bytes'] / 2**20:9.1f}{s['load_before']:6.1f}  "
              f"{'pass' if s['verified'] else 'FAIL: ' + s['problem']}")
    lin = r["linearity"]
    if lin:
        lo, hi = r["sizes"][0], r["sizes"][-1]
        print(f"\nlinearity ({lo['files']} -> {hi['files']} files; {LINEAR}x or less "
              "reads as linear):")
        for key, label in (("per_file_ratio", "per-file cost, largest / smallest"),
                           ("marginal_ratio", "marginal cost, two largest / two smallest")):
            for step in ("build", "install"):
                value = lin.get(f"{step}_{key}")
                if value is not None:
                    verdict = "linear" if value <= LINEAR else "NOT linear"
                    print(f"  {step:8}{label:44}{value:6.2f}  {verdict}")


if __name__ == "__main__":
    main()
