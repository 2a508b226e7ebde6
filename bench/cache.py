"""Benchmark ``nix-prefix cache`` against ``nix copy --to file://``, on one closure.

    .venv/bin/python bench/cache.py [--size-mb 300] [--paths 60] [--compression xz]
                                    [--json out.json]

Builds the closure of bench/run.py (the machine's own files in a chain of
derivations) with the machine's Nix at a long store dir S1, then measures:

* ``nix copy --to file://DIR?secret-key=K&compression=C ROOT`` at S1: the
  binary cache Nix itself writes, for S1's store (the only store it can write
  one for), with ``--compression`` C (xz by default, what ``nix copy`` uses);
* ``nix-prefix cache`` for a new, shorter prefix Q, signed with the same key,
  with the same compression (and level: nix copy's, unless ``--level``):
  from the closureInfo (same-length retarget, hash parts kept) and from an
  installer built ``--with-derivations`` (exact retarget: the paths a Nix at
  Q computes), and a re-run of the latter into the same dir (nothing to add);
* then checks the exact cache with real Nix: a fresh store at Q trusting the
  key runs ``nix-build --max-jobs 0`` of the same expression, which must
  substitute everything and build nothing, and verifies its store.

Times are wall clock of one run each, on a machine shared with others;
sizes are the bytes of every file in the cache dir.  Prints the targets block
(common.py: issue 25, ``cache`` at most 0.5 the time of ``nix copy``) and
writes everything as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import (  # first: nix_prefix = this checkout
    CLI,
    REPO,
    Run,
    Target,
    load,
    machine,
    targets_block,
    work_dir,
)
from run import plan_groups

from nix_prefix.builder.localnix import LocalNix, prefix_env


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=300, help="closure size to aim for")
    ap.add_argument("--paths", type=int, default=60, help="number of store paths")
    ap.add_argument("--compression", default="xz", choices=("xz", "zstd", "none"),
                    help="NAR compression, both sides (default: %(default)s, nix copy's)")
    ap.add_argument("--level", type=int, help="our level (default: nix copy's, xz 6, zstd 3)")
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--workdir", type=Path, help="default: a new dir under /tmp")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args()
    with work_dir(args.workdir, args.keep, "np-cache-bench-") as base:
        results = bench(base, args.size_mb, args.paths, args.level, args.compression)
    print_table(results)
    print(results.pop("targets_text"))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


def bench(base: Path, size_mb: int, paths: int, level: int | None,
          compression: str = "xz") -> dict:
    s1 = base / "a-publisher-build-prefix-longer-than-the-users"
    q = base / "users-prefix"
    nix = LocalNix(s1)
    groups = json.dumps(plan_groups(size_mb, paths))
    expr = REPO / "bench" / "closure.nix"
    t = time.perf_counter()
    root = nix.build_file(expr, argstrs={"groups": groups})[0]
    info = nix.write_closure_info([root], base / "closure-info")
    nar = int((info / "total-nar-size").read_text())
    count = len((info / "store-paths").read_text().split())
    print(f"closure: {count} store paths, {nar / 2**20:.1f} MiB NAR (built in "
          f"{time.perf_counter() - t:.1f} s)", file=sys.stderr)
    secret, public = base / "key.sec", base / "key.pub"
    nix.run("nix-store", ["--generate-binary-cache-key", "bench-1", str(secret), str(public)])
    r: dict = {"machine": machine(), "closure": {"paths": count, "nar_bytes": nar},
               "load_start": load(), "compression": compression}

    copy_dir = base / "nix-copy"
    run = Run([str(nix.bin_dir / "nix"), "--extra-experimental-features", "nix-command", "copy",
               "--to", f"file://{copy_dir}?secret-key={secret}&compression={compression}",
               root], env=nix.env())
    r["nix_copy"] = {"s": run.seconds, "bytes": dir_bytes(copy_dir), "rss_mb": run.rss_mb}
    print(f"nix copy: {run.seconds:.1f} s", file=sys.stderr)

    drv_installer = base / "with-drvs.sh"
    run = Run([*CLI, "build", "--store-dir", str(s1 / "store"), "--roots", root,
               "--with-derivations", "-o", str(drv_installer), "-q", "--level", "0"])
    r["installer_with_derivations_s"] = run.seconds
    level_args = ["--compression", compression]
    level_args += ["--level", str(level)] if level is not None else []
    for key, source in (("ours_same_length", info), ("ours_exact", drv_installer)):
        out = base / key
        run = Run([*CLI, "cache", str(source), "--prefix", str(q), "-o", str(out),
                   "--sign-key", str(secret), "-q", *level_args])
        r[key] = {"s": run.seconds, "bytes": dir_bytes(out), "rss_mb": run.rss_mb}
        print(f"{key}: {run.seconds:.1f} s", file=sys.stderr)
    run = Run([*CLI, "cache", str(drv_installer), "--prefix", str(q), "-o",
               str(base / "ours_exact"), "-q", *level_args])
    r["ours_exact_rerun_s"] = run.seconds

    r["verified"], r["problem"] = verify_at(q, expr, groups, base / "ours_exact",
                                            public.read_text().strip())
    copy, exact, same = r["nix_copy"], r["ours_exact"], r["ours_same_length"]
    r["ratios"] = {
        "time_exact_vs_nix_copy": exact["s"] / copy["s"],
        "time_same_length_vs_nix_copy": same["s"] / copy["s"],
        "size_exact_vs_nix_copy": exact["bytes"] / copy["bytes"],
        "size_same_length_vs_nix_copy": same["bytes"] / copy["bytes"],
    }
    r["load_end"] = load()
    r["targets_text"], r["targets"] = targets_block(
        [Target(key, r["ratios"][key], 0.5) for key in ("time_same_length_vs_nix_copy",
                                                        "time_exact_vs_nix_copy")],
        r["load_start"], r["load_end"])
    return r


def verify_at(q: Path, expr: Path, groups: str, cache: Path, key: str) -> tuple[bool, str]:
    """A fresh Nix at Q substitutes the whole expression from CACHE, building nothing."""
    env = prefix_env(q, home=q / "home")
    LocalNix(q)  # the store, state and config dirs, and a nix.conf
    built = Run(["nix-build", "--no-out-link", "--max-jobs", "0", str(expr), "--argstr",
                 "groups", groups, "--option", "substituters", f"file://{cache}", "--option",
                 "trusted-public-keys", key], env=env)
    if "building '" in built.stderr:
        return False, "nix-build at Q built something"
    check = Run(["nix-store", "--verify", "--check-contents"], env=env)
    if "error" in check.stderr:
        return False, check.stderr.strip()[-300:]
    return True, ""


def print_table(r: dict) -> None:
    mib = 2 ** 20
    c = r["closure"]
    print(f"\nclosure: {c['paths']} store paths, {c['nar_bytes'] / mib:.1f} MiB NAR; machine: "
          f"{r['machine']['cpus']} CPUs; compression {r['compression']}, both sides")
    print(f"{'':46}{'time s':>8}{'size MiB':>10}{'RSS MiB':>9}")
    for key, label in (("nix_copy", "nix copy --to file:// (S1's own store)"),
                       ("ours_same_length", "nix-prefix cache, same-length (new prefix)"),
                       ("ours_exact", "nix-prefix cache, exact (new prefix)")):
        v = r[key]
        print(f"{label:46}{v['s']:8.1f}{v['bytes'] / mib:10.1f}{v['rss_mb']:9.0f}")
    print(f"{'nix-prefix cache, exact, re-run (nothing new)':46}{r['ours_exact_rerun_s']:8.1f}")
    print(f"(the installer --with-derivations the exact cache reads took "
          f"{r['installer_with_derivations_s']:.1f} s to build, at --level 0)")
    for key, value in r["ratios"].items():
        print(f"{key:40}{value:8.2f}")
    print("a fresh Nix at the new prefix substitutes everything, builds nothing: "
          + ("yes" if r["verified"] else "NO: " + r["problem"]))


if __name__ == "__main__":
    main()
