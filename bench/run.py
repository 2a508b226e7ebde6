"""Benchmark nix-prefix against the official-style tarball install, on one closure.

    .venv/bin/python bench/run.py [--size-mb 320] [--paths 60] [--json out.json]

Builds a closure of the machine's own files (shared libraries, Python's and
Perl's trees) with the machine's Nix, then measures, in one run:

* ours, xz and zstd: build time, installer size, install time (every NAR
  hash verified), peak RSS of the builder and of the installer;
* the official-style baseline (the Nix binary tarball's way): ``tar -cJf``
  of the store paths; install = ``tar -xJf`` + ``cp -R`` into the store +
  ``nix-store --load-db``;
* the limits: ``cp -a`` of the unpacked tree, and ``zstd -d | tar -x`` of
  the same tree compressed with zstd.

Install-side figures are the median of ``--rounds`` rounds (default 3); a
round runs every contender once, each after a ``sync``, and times it twice:
when it returns, and when a ``sync`` after it returns (the data on disk).
The page cache makes the first figure swing from run to run on a VM disk.

Prints a table with the ratios the targets of issue 4 are stated in, and
writes everything as JSON.  Absolute times depend on the machine; the
ratios are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import CLI, REPO, Run, machine, remove, sh  # first: nix_prefix = this checkout

from nix_prefix.builder.localnix import LocalNix, prefix_env

# Where the closure's bytes come from: big trees first, then libraries file by file.
TREES = ["/usr/lib/python3.11", "/usr/share/perl", "/usr/lib/gcc"]
LIB_DIR = Path("/usr/lib/x86_64-linux-gnu")


def tree_size(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            full = os.path.join(dirpath, f)
            if not os.path.islink(full):
                total += os.lstat(full).st_size
    return total


def plan_groups(size_mb: int, paths: int) -> list[dict]:
    """Split host files into ``paths`` groups of about size_mb MB in all."""
    budget = size_mb << 20
    sources: list[tuple[str, int]] = []
    for tree in TREES:
        if os.path.isdir(tree) and budget > 0 and size_mb >= 100:
            size = tree_size(tree)
            sources.append((tree, size))
            budget -= size
    for lib in sorted(LIB_DIR.iterdir()):
        if budget <= 0:
            break
        if lib.is_file() and not lib.is_symlink() and " " not in lib.name:
            size = lib.stat().st_size
            if size > budget:
                continue  # keeps small benchmarks small
            sources.append((str(lib), size))
            budget -= size
    groups: list[dict] = [{"name": f"bench-{i:03d}", "sources": []} for i in range(paths)]
    # Round-robin by size keeps the groups close in size.
    for i, (src, _) in enumerate(sorted(sources, key=lambda s: -s[1])):
        groups[i % paths]["sources"].append(src)
    return [g for g in groups if g["sources"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=320, help="closure size to aim for")
    ap.add_argument("--paths", type=int, default=60, help="number of store paths")
    ap.add_argument("--rounds", type=int, default=3,
                    help="install measurements per contender (the median counts)")
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--workdir", type=Path, help="default: a new dir under /tmp")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args()

    base = Path(args.workdir or tempfile.mkdtemp(prefix="np-bench-", dir="/tmp")).resolve()
    base.mkdir(parents=True, exist_ok=True)
    prefix = base / "nix"
    try:
        results = bench(base, prefix, args.size_mb, args.paths, args.rounds)
    finally:
        if not args.keep:
            for p in base.iterdir():
                remove(p) if p.is_dir() else p.unlink()
            base.rmdir()
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


def bench(base: Path, prefix: Path, size_mb: int, paths: int, rounds: int) -> dict:
    nix = LocalNix(prefix)
    groups = plan_groups(size_mb, paths)
    t = time.perf_counter()
    root = nix.build_file(REPO / "bench" / "closure.nix", argstrs={"groups": json.dumps(groups)})[0]
    info = nix.write_closure_info([root], base / "closure-info")
    names = [Path(p).name for p in (info / "store-paths").read_text().split()]
    nar = int((info / "total-nar-size").read_text())
    files = sum(len(fs) for _, _, fs in os.walk(prefix / "store"))
    print(f"closure: {len(names)} store paths, {files} files, {nar / 2**20:.1f} MiB NAR "
          f"(built in {time.perf_counter() - t:.1f} s)", file=sys.stderr)

    cli = CLI
    r: dict = {"machine": machine(), "closure": {"paths": len(names), "files": files,
                                                 "nar_bytes": nar}}
    for codec in ("xz", "zstd"):
        out = base / f"ours.{codec}.sh"
        run = Run([*cli, "build", str(info), "-o", str(out), "--compression", codec, "-q"])
        r[f"ours_{codec}"] = {"build_s": run.seconds, "builder_rss_mb": run.rss_mb,
                              "size_bytes": out.stat().st_size}
        print(f"ours {codec}: built in {run.seconds:.1f} s", file=sys.stderr)

    store = prefix / "store"
    name_args = " ".join(names)
    run = sh(f"tar -cJf {base}/official.tar.xz -C {store} {name_args}")
    r["official"] = {"pack_s": run.seconds,
                     "size_bytes": (base / "official.tar.xz").stat().st_size}
    sh(f"tar -cf - -C {store} {name_args} | zstd -q -19 --long=27 -T0 -o {base}/limit.tar.zst")
    print("baselines packed", file=sys.stderr)

    os.rename(prefix, base / "nix.build")  # the build store is gone for every install
    # The tree cp -a copies: the closure as unpacked files, outside any store.
    tree = base / "tree"
    tree.mkdir()
    sh(f"tar -xJf {base}/official.tar.xz -C {tree}")
    nix_env = prefix_env(prefix, home=base / "home")
    registration = (info / "registration").read_bytes()

    def ours(codec: str) -> Callable[[], Run]:
        return lambda: Run(["/bin/sh", str(base / f"ours.{codec}.sh"), "-y", "-q", "-p",
                            str(prefix)])

    def official() -> None:
        # The official tarball's way: unpack, copy each path into the store, load the DB.
        unpacked = base / "unpacked"
        unpacked.mkdir()
        sh(f"tar -xJf {base}/official.tar.xz -C {unpacked}")
        sh(f"mkdir -p {store} {prefix}/var/nix {prefix}/etc/nix; "
           f"printf 'build-users-group =\\nsandbox = false\\n' > {prefix}/etc/nix/nix.conf; "
           f"for p in {name_args}; do cp -RP {unpacked}/$p {store}/; done")
        Run(["nix-store", "--load-db"], env=nix_env, stdin=registration)

    def cleanup() -> None:
        for p in (prefix, base / "unpacked", base / "copied", base / "zx"):
            remove(p)

    steps: dict[str, Callable[[], object]] = {
        "ours_xz": ours("xz"),
        "ours_zstd": ours("zstd"),
        "official": official,
        "cp_a": lambda: sh(f"cp -a {tree} {base}/copied"),
        "zstd_tar": lambda: sh(f"mkdir {base}/zx && zstd -q -d -c {base}/limit.tar.zst | "
                               f"tar -x -C {base}/zx"),
    }
    times: dict[str, list[tuple[float, float, float]]] = {k: [] for k in steps}
    for round_no in range(rounds):
        # Round-robin, so that a slow spell of the machine hits every contender.
        for key, step in steps.items():
            subprocess.run(["sync"], check=True)  # no earlier step's writeback in this one
            started = time.perf_counter()
            run = step()
            done = time.perf_counter()
            subprocess.run(["sync"], check=True)
            on_disk = time.perf_counter()
            rss = run.rss_mb if isinstance(run, Run) else 0.0
            times[key].append((done - started, on_disk - started, rss))
            cleanup()
        print(f"round {round_no + 1}/{rounds}: " + ", ".join(
            f"{k} {v[-1][0]:.1f} s" for k, v in times.items()), file=sys.stderr)
    remove(tree)

    def median(key: str, i: int) -> float:
        return statistics.median(t[i] for t in times[key])

    for key in ("ours_xz", "ours_zstd"):
        r[key].update(install_s=median(key, 0), install_disk_s=median(key, 1),
                      installer_rss_mb=max(t[2] for t in times[key]))
    r["official"].update(install_s=median("official", 0),
                         install_disk_s=median("official", 1))
    r["limit_cp_a_s"], r["limit_cp_a_disk_s"] = median("cp_a", 0), median("cp_a", 1)
    r["limit_zstd_tar_s"] = median("zstd_tar", 0)
    r["limit_zstd_tar_disk_s"] = median("zstd_tar", 1)
    r["rounds"] = {k: [[round(x, 3) for x in t] for t in v] for k, v in times.items()}

    o, x, z = r["official"], r["ours_xz"], r["ours_zstd"]
    r["ratios"] = {
        "install_xz_vs_official": x["install_s"] / o["install_s"],
        "install_zstd_vs_cp_a": z["install_s"] / r["limit_cp_a_s"],
        "install_xz_vs_official_on_disk": x["install_disk_s"] / o["install_disk_s"],
        "install_zstd_vs_cp_a_on_disk": z["install_disk_s"] / r["limit_cp_a_disk_s"],
        "size_xz_vs_official": x["size_bytes"] / o["size_bytes"],
        "size_zstd_vs_official": z["size_bytes"] / o["size_bytes"],
        "build_xz_vs_official": x["build_s"] / o["pack_s"],
        "installer_rss_mb": max(x["installer_rss_mb"], z["installer_rss_mb"]),
        "builder_rss_mb": max(x["builder_rss_mb"], z["builder_rss_mb"]),
    }
    return r


TARGETS = {
    "install_xz_vs_official": 0.5, "install_zstd_vs_cp_a": 1.5,
    "install_xz_vs_official_on_disk": 0.5, "install_zstd_vs_cp_a_on_disk": 1.5,
    "size_xz_vs_official": 1.0,
    "size_zstd_vs_official": 1.1, "build_xz_vs_official": 1.0, "installer_rss_mb": 150,
    "builder_rss_mb": 1024,
}


def print_table(r: dict) -> None:
    mib = 2 ** 20
    c = r["closure"]
    print(f"\nclosure: {c['paths']} store paths, {c['files']} files, "
          f"{c['nar_bytes'] / mib:.1f} MiB NAR; machine: {r['machine']['cpus']} CPUs, "
          f"{r['machine']['cpu']}")
    print(f"{'':28}{'build s':>9}{'size MiB':>10}{'install s':>11}{'+sync s':>9}"
          f"{'build RSS':>11}{'inst RSS':>10}")
    for key, label in (("ours_xz", "nix-prefix, xz"), ("ours_zstd", "nix-prefix, zstd")):
        v = r[key]
        print(f"{label:28}{v['build_s']:9.1f}{v['size_bytes'] / mib:10.1f}"
              f"{v['install_s']:11.2f}{v['install_disk_s']:9.2f}"
              f"{v['builder_rss_mb']:10.0f}M{v['installer_rss_mb']:9.0f}M")
    o = r["official"]
    print(f"{'official-style tar.xz':28}{o['pack_s']:9.1f}{o['size_bytes'] / mib:10.1f}"
          f"{o['install_s']:11.2f}{o['install_disk_s']:9.2f}")
    print(f"{'limit: cp -a':28}{'':19}{r['limit_cp_a_s']:11.2f}{r['limit_cp_a_disk_s']:9.2f}")
    print(f"{'limit: zstd -d | tar -x':28}{'':19}{r['limit_zstd_tar_s']:11.2f}"
          f"{r['limit_zstd_tar_disk_s']:9.2f}")
    print("(install times: median of the rounds, each after a sync; '+sync': until a sync "
          "after it returns, i.e. the data is on disk)")
    print("\nratio                          value   target  met")
    for key, target in TARGETS.items():
        value = r["ratios"][key]
        print(f"{key:30}{value:8.2f}{target:9.2f}  {'yes' if value <= target else 'NO'}")


if __name__ == "__main__":
    main()
