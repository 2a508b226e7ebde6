"""Benchmark nix-prefix against the official-style tarball install, on one closure.

    .venv/bin/python bench/run.py [--size-mb 220] [--paths 60] [--jobs 1,2]
                                  [--rounds 3] [--json out.json] [--markdown out.md]

Builds a closure shaped like real ones from the machine's own files, with the
machine's Nix: one big store path (gcc's tree, ``/usr/lib/gcc``: at least half
of the NAR, as gcc-unwrapped, llvm or ghc are in real closures) and many small
ones (Python's and Perl's modules, shared libraries).  Then it measures, in
one run:

* ours, xz and zstd, at each ``--jobs`` (``-j1`` and ``-j2``): build time
  (and whether the files are byte-identical across ``-j``), installer size,
  install time (every NAR hash verified), ``--check`` time, peak RSS;
* the serial parts of the install, from the installer's own phase timings
  (``NIX_PREFIX_TIMINGS``, installer/timings.py): start-up until ``main()``
  (the sh preamble, Python's start and the seal check), the manifest,
  preflight, the unpacking, placing, ``--load-db``, the profile; and one
  sha256 pass over the file (what the seal check costs), timed apart;
* the official-style baseline (the Nix binary tarball's way): ``tar -cJf``
  of the store paths; install = ``tar -xJf`` + ``cp -R`` into the store +
  ``nix-store --load-db``;
* the limits: ``cp -a`` of the unpacked tree, and ``zstd -d | tar -x`` of
  the same tree compressed with zstd.

Install-side figures are the median of ``--rounds`` rounds; a round runs
every contender once, each after a ``sync``, and times it twice: when it
returns, and when a ``sync`` after it returns (the data on disk).  The load
average is recorded before and after: the machine may be shared, and the
ratios only mean something when the load was low.

Prints the tables (``--markdown`` writes them as docs/benchmarks.md shows
them) with the ratios the targets of issues 4 and 15 are stated in, and
writes everything as JSON.  Absolute times depend on the machine; the ratios
are the point.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# first: nix_prefix = this checkout
from common import (
    CLI,
    REPO,
    Run,
    Target,
    load,
    load_text,
    machine,
    remove,
    sh,
    targets_block,
    work_dir,
)

from nix_prefix.builder.localnix import LocalNix, prefix_env

# The big store path: gcc's tree (cc1, cc1plus and lto1 are 30-35 MB each).
BIG_TREE = "/usr/lib/gcc"
# The small paths' sources: the entries of these trees, then single libraries.
SMALL_TREES = ["/usr/lib/python3.11", "/usr/share/perl/5.36.0"]
LIB_DIR = Path("/usr/lib/x86_64-linux-gnu")
# In a tiny closure (CI), the big path is this share of it, made of libraries.
TINY_BIG_SHARE = 0.6
TIMINGS_ENV = "NIX_PREFIX_TIMINGS"
Step = tuple[float, float]  # a contender's seconds (its commands' own) and peak RSS MiB


def tree_size(path: str) -> int:
    if not os.path.isdir(path):
        return 0 if os.path.islink(path) else os.lstat(path).st_size
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            full = os.path.join(dirpath, f)
            if not os.path.islink(full):
                total += os.lstat(full).st_size
    return total


def _libraries() -> list[tuple[str, int]]:
    return [(str(lib), lib.stat().st_size) for lib in sorted(LIB_DIR.iterdir())
            if lib.is_file() and not lib.is_symlink() and " " not in lib.name]


def plan_groups(size_mb: int, paths: int) -> list[dict]:
    """``paths`` groups of host files, about ``size_mb`` MB in all: the first
    (``bench-big``) holds gcc's tree, at least half of it; the others share the
    rest evenly, a few MB each."""
    budget = size_mb << 20
    libs = _libraries()
    big_size = tree_size(BIG_TREE) if os.path.isdir(BIG_TREE) else 0
    if big_size and big_size <= budget:
        big = [BIG_TREE]
    else:  # a tiny closure: the biggest libraries that fit its share
        big, big_size = [], 0
        for src, size in sorted(libs, key=lambda s: -s[1]):
            if big_size + size <= budget * TINY_BIG_SHARE:
                big.append(src)
                big_size += size
        libs = [lib for lib in libs if lib[0] not in big]
    small_budget = budget - big_size
    # No single source bigger than twice a small path's share: the paths stay small.
    cap = max(64 << 10, 2 * small_budget // max(1, paths - 1))
    candidates = [(os.path.join(t, e), tree_size(os.path.join(t, e)))
                  for t in SMALL_TREES if os.path.isdir(t) for e in sorted(os.listdir(t))]
    sources = []
    for src, size in candidates + libs:
        if 0 < size <= min(cap, small_budget) and " " not in src:
            sources.append((src, size))
            small_budget -= size
    groups: list[dict] = [{"name": "bench-big", "sources": big}]
    groups += [{"name": f"bench-{i:03d}", "sources": []} for i in range(paths - 1)]
    # Round-robin by size keeps the small groups close in size.
    for i, (src, _) in enumerate(sorted(sources, key=lambda s: (-s[1], s[0]))):
        groups[1 + i % max(1, paths - 1)]["sources"].append(src)
    return [g for g in groups if g["sources"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=220, help="closure size to aim for")
    ap.add_argument("--paths", type=int, default=60, help="number of store paths")
    ap.add_argument("--jobs", default="1,2",
                    help="the -j of each column, comma-separated (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="install measurements per contender (the median counts)")
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--markdown", type=Path, help="write the tables here as Markdown")
    ap.add_argument("--workdir", type=Path, help="default: a new dir under /tmp")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args()
    jobs = sorted({int(j) for j in args.jobs.split(",") if j.strip()})
    if not jobs or jobs[0] < 1:
        ap.error("--jobs takes positive whole numbers")

    with work_dir(args.workdir, args.keep, "np-bench-") as base:
        results = bench(base, base / "nix", args.size_mb, args.paths, jobs, args.rounds)
    targets_text = results.pop("targets_text")
    text = tables(results)
    print(text)
    print(targets_text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(text)


def installer_python() -> str:
    """A real CPython 3 for the installer: the system's python3 if there is one (what
    users run it with), else this one, without the pyenv shim either may sit behind."""
    for candidate in ("/usr/bin/python3", sys.executable):
        real = os.path.realpath(candidate)
        if os.access(real, os.X_OK):
            return real
    raise SystemExit("bench: no python3 to run the installer with")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def sha256_pass(path: Path) -> float:
    """Seconds for one sha256 pass over ``path``: what the seal check costs."""
    started = time.perf_counter()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(1 << 20):
            h.update(data)
    return time.perf_counter() - started


def phases(timings_file: Path, spawned: float) -> dict[str, float]:
    """Seconds per installer phase of the one run recorded in ``timings_file``."""
    lines = timings_file.read_text().splitlines()
    timings_file.unlink()
    if len(lines) != 1:
        raise SystemExit(f"bench: {timings_file} holds {len(lines)} runs, not 1")
    run = json.loads(lines[0])
    out = {"start-up": run["started"] - spawned}
    for name, begin, end in run["phases"]:
        out[name] = out.get(name, 0.0) + end - begin
    out["other"] = run["ended"] - run["started"] - sum(
        v for k, v in out.items() if k != "start-up")
    return out


def bench(base: Path, prefix: Path, size_mb: int, paths: int, jobs: list[int],
          rounds: int) -> dict:
    nix = LocalNix(prefix)
    groups = plan_groups(size_mb, paths)
    t = time.perf_counter()
    root = nix.build_file(REPO / "bench" / "closure.nix", argstrs={"groups": json.dumps(groups)})[0]
    info = nix.write_closure_info([root], base / "closure-info")
    names = [Path(p).name for p in (info / "store-paths").read_text().split()]
    nar = int((info / "total-nar-size").read_text())
    files = sum(len(fs) for _, _, fs in os.walk(prefix / "store"))
    big_name = next(n for n in names if n.endswith("-bench-big"))
    big_nar = int(nix.run("nix-store", ["-q", "--size", f"{prefix}/store/{big_name}"])
                  .stdout.split()[0])
    say(f"closure: {len(names)} store paths, {files} files, {nar / 2**20:.1f} MiB NAR, "
        f"the big path {big_nar / nar:.0%} of it (built in {time.perf_counter() - t:.1f} s)")

    r: dict = {"machine": machine(), "jobs": jobs, "load_start": load(),
               "closure": {"paths": len(names), "files": files, "nar_bytes": nar,
                           "big_path_nar_bytes": big_nar, "big_path_share": big_nar / nar}}
    for codec in ("xz", "zstd"):
        r[f"ours_{codec}"] = {"build_s": {}, "builder_rss_mb": 0.0}
        digests = set()
        for j in jobs:
            out = base / f"ours.{codec}.j{j}.sh"
            run = Run([*CLI, "build", str(info), "-o", str(out), "--compression", codec,
                       "-q", "-j", str(j)])
            v = r[f"ours_{codec}"]
            v["build_s"][str(j)] = run.seconds
            v["builder_rss_mb"] = max(v["builder_rss_mb"], run.rss_mb)
            v["size_bytes"] = out.stat().st_size
            digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
            say(f"ours {codec} -j{j}: built in {run.seconds:.1f} s")
        r[f"ours_{codec}"]["identical_across_jobs"] = len(digests) == 1
        for j in jobs[1:]:
            (base / f"ours.{codec}.j{j}.sh").unlink()
        os.rename(base / f"ours.{codec}.j{jobs[0]}.sh", base / f"ours.{codec}.sh")

    store = prefix / "store"
    name_args = " ".join(names)
    run = sh(f"tar -cJf {base}/official.tar.xz -C {store} {name_args}")
    r["official"] = {"pack_s": run.seconds,
                     "size_bytes": (base / "official.tar.xz").stat().st_size}
    sh(f"tar -cf - -C {store} {name_args} | zstd -q -19 --long=27 -T0 -o {base}/limit.tar.zst")
    say(f"baselines packed (tar -cJf in {run.seconds:.1f} s)")

    os.rename(prefix, base / "nix.build")  # the build store is gone for every install
    # The tree cp -a copies: the closure as unpacked files, outside any store.
    tree = base / "tree"
    tree.mkdir()
    sh(f"tar -xJf {base}/official.tar.xz -C {tree}")
    nix_env = prefix_env(prefix, home=base / "home")
    registration = (info / "registration").read_bytes()
    timings_file = base / "timings.jsonl"
    # The installer's preamble runs the first python3 on PATH, twice (a version probe,
    # then the installer).  On a machine set up with pyenv that is a shim, a bash
    # script costing ~90 ms a start, which users' python3 does not cost: give it a
    # real interpreter first on PATH, as their machines have.
    python = installer_python()
    bindir = base / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(python)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}",
               **{TIMINGS_ENV: str(timings_file)})
    r["installer_python"] = {"path": python, "version": subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=True).stdout.strip()}
    run_phases: dict[str, list[dict[str, float]]] = {}

    # A prefix other than the one the closure was built at, of the same length: an
    # install there retargets every path (same-length) as it unpacks.
    other = prefix.with_name("nyx")

    def ours(codec: str, j: int, check: bool, at: Path = prefix) -> Callable[[], Step]:
        key = f"{'check' if check else 'install'}_{codec}_j{j}" + ("" if at == prefix
                                                                   else "_other_prefix")
        argv = ["--check"] if check else ["-y", "-p", str(at)]

        def step() -> Step:
            run = Run(["/bin/sh", str(base / f"ours.{codec}.sh"), "-q", "-j", str(j), *argv],
                      env=env)
            run_phases.setdefault(key, []).append(phases(timings_file, run.started_at))
            return run.seconds, run.rss_mb
        return step

    def nix_dirs() -> Run:
        return sh(f"mkdir -p {store} {prefix}/var/nix {prefix}/etc/nix; "
                  f"printf 'build-users-group =\\nsandbox = false\\n' > "
                  f"{prefix}/etc/nix/nix.conf")

    def official() -> Step:
        # The official tarball's way: unpack, copy each path into the store, load the DB.
        unpacked = base / "unpacked"
        unpacked.mkdir()
        runs = [sh(f"tar -xJf {base}/official.tar.xz -C {unpacked}"), nix_dirs(),
                sh(f"for p in {name_args}; do cp -RP {unpacked}/$p {store}/; done"),
                Run(["nix-store", "--load-db"], env=nix_env, stdin=registration)]
        return sum(run.seconds for run in runs), 0.0

    def tar_into_store() -> Step:
        # The least a tarball install does: unpack straight into the store, load the DB.
        runs = [nix_dirs(), sh(f"tar -xJf {base}/official.tar.xz -C {store}"),
                Run(["nix-store", "--load-db"], env=nix_env, stdin=registration)]
        return sum(run.seconds for run in runs), 0.0

    def shell(script: str) -> Callable[[], Step]:
        return lambda: (sh(script).seconds, 0.0)

    def cleanup() -> None:
        for p in (prefix, other, base / "unpacked", base / "copied", base / "zx"):
            remove(p)

    steps: dict[str, Callable[[], Step]] = {}
    for codec in ("xz", "zstd"):
        for j in jobs:
            steps[f"install_{codec}_j{j}"] = ours(codec, j, check=False)
            steps[f"check_{codec}_j{j}"] = ours(codec, j, check=True)
        steps[f"install_{codec}_j{jobs[-1]}_other_prefix"] = ours(codec, jobs[-1], False, other)
    steps.update({
        "official": official,
        "tar_into_store": tar_into_store,
        "cp_a": shell(f"cp -a {tree} {base}/copied"),
        "zstd_tar": shell(f"mkdir {base}/zx && zstd -q -d -c {base}/limit.tar.zst | "
                          f"tar -x -C {base}/zx"),
    })
    times: dict[str, list[tuple[float, float, float]]] = {k: [] for k in steps}
    seal_s: list[float] = []
    for round_no in range(rounds):
        seal_s.append(sha256_pass(base / "ours.xz.sh"))
        # Round-robin, so that a slow spell of the machine hits every contender.
        for key, step in steps.items():
            subprocess.run(["sync"], check=True)  # no earlier step's writeback in this one
            seconds, rss = step()
            started = time.perf_counter()
            subprocess.run(["sync"], check=True)
            synced = time.perf_counter() - started
            times[key].append((seconds, seconds + synced, rss))
            cleanup()
        say(f"round {round_no + 1}/{rounds} (load {load_text(load())}): " + ", ".join(
            f"{k} {v[-1][0]:.1f} s" for k, v in times.items()))
    remove(tree)
    r["load_end"] = load()

    def median(key: str, i: int) -> float:
        return statistics.median(t[i] for t in times[key])

    r["install"] = {k: {"s": median(k, 0), "disk_s": median(k, 1),
                        "rss_mb": max(t[2] for t in times[k])} for k in steps}
    r["seal_sha256_pass_s"] = statistics.median(seal_s)
    r["phases"] = {key: {name: statistics.median(p.get(name, 0.0) for p in runs)
                         for name in runs[0]} for key, runs in run_phases.items()}
    r["rounds"] = {k: [[round(x, 3) for x in t] for t in v] for k, v in times.items()}
    r["reference_map"] = reference_map_bytes(base / "ours.xz.sh")
    r["ratios"] = ratios(r)
    r["targets_text"], r["targets"] = targets_block(targets(r), r["load_start"], r["load_end"])
    return r


def ratios(r: dict) -> dict:
    """The figures the targets are stated in (see TARGETS)."""
    jobs, ins = r["jobs"], r["install"]
    lo, hi = str(jobs[0]), str(jobs[-1])
    out = {}
    for j in jobs:
        out[f"install_xz_j{j}_vs_official"] = ins[f"install_xz_j{j}"]["s"] / \
            ins["official"]["s"]
        out[f"install_xz_j{j}_vs_official_on_disk"] = ins[f"install_xz_j{j}"]["disk_s"] / \
            ins["official"]["disk_s"]
        out[f"install_zstd_j{j}_vs_cp_a"] = ins[f"install_zstd_j{j}"]["s"] / ins["cp_a"]["s"]
    out[f"install_xz_j{hi}_vs_tar_into_store"] = (ins[f"install_xz_j{hi}"]["s"]
                                                  / ins["tar_into_store"]["s"])
    for codec in ("xz", "zstd"):
        out[f"install_{codec}_j{hi}_other_prefix_vs_built_prefix"] = (
            ins[f"install_{codec}_j{hi}_other_prefix"]["s"] / ins[f"install_{codec}_j{hi}"]["s"])
    share = r.get("reference_map")
    out["reference_map_share_of_installer"] = (
        None if share is None else share / r["ours_xz"]["size_bytes"])
    if lo != hi:
        for codec in ("xz", "zstd"):
            out[f"speedup_unpack_{codec}_j{hi}"] = (
                r["phases"][f"install_{codec}_j{lo}"]["unpack"]
                / r["phases"][f"install_{codec}_j{hi}"]["unpack"])
            out[f"speedup_check_{codec}_j{hi}"] = (ins[f"check_{codec}_j{lo}"]["s"]
                                                   / ins[f"check_{codec}_j{hi}"]["s"])
            b = r[f"ours_{codec}"]["build_s"]
            out[f"speedup_build_{codec}_j{hi}"] = b[lo] / b[hi]
    out["size_xz_vs_official"] = r["ours_xz"]["size_bytes"] / r["official"]["size_bytes"]
    out["size_zstd_vs_official"] = r["ours_zstd"]["size_bytes"] / r["official"]["size_bytes"]
    out["build_xz_vs_official"] = min(r["ours_xz"]["build_s"].values()) / r["official"]["pack_s"]
    out["installer_rss_mb"] = max(v["rss_mb"] for k, v in ins.items()
                                  if k.startswith(("install_", "check_")))
    out["builder_rss_mb"] = max(r["ours_xz"]["builder_rss_mb"],
                                r["ours_zstd"]["builder_rss_mb"])
    return out


# Upper bounds (a ratio at most this is met), and lower bounds (speed-ups): issue 25's
# first, then issues 4's and 15's.
TARGETS = {
    "install_xz_j{hi}_other_prefix_vs_built_prefix": 1.05,
    "install_zstd_j{hi}_other_prefix_vs_built_prefix": 1.05,
    "install_zstd_j{hi}_vs_cp_a": 1.3, "install_xz_j{hi}_vs_tar_into_store": 0.6,
    "reference_map_share_of_installer": 0.01,
    "install_xz_j{hi}_vs_official": 0.5, "install_xz_j{hi}_vs_official_on_disk": 0.5,
    "size_xz_vs_official": 1.0, "size_zstd_vs_official": 1.1,
    "build_xz_vs_official": 1.0, "installer_rss_mb": 150, "builder_rss_mb": 1024,
}
AT_LEAST = {"speedup_unpack_xz_j{hi}": 1.8, "speedup_check_xz_j{hi}": 1.8,
            "speedup_build_xz_j{hi}": 1.8}
REFMAP_ABSENT = "the installer holds no reference map"


def targets(r: dict) -> list[Target]:
    """Every ratio with a target, as the targets block shows them."""
    hi = r["jobs"][-1]
    out = []
    for table, at_most in ((TARGETS, True), (AT_LEAST, False)):
        for pattern, bound in table.items():
            key = pattern.format(hi=hi)
            if key in r["ratios"]:
                value = r["ratios"][key]
                note = REFMAP_ABSENT if value is None else ""
                out.append(Target(key, value, bound, at_most, note))
    return out


def reference_map_bytes(installer: Path) -> int | None:
    """The bytes the installer spends on a reference map (format 4: zip members, or
    manifest fields, named like "refmap" / "reference_map"), or None when it holds none."""
    import re
    import zipfile

    named = re.compile(r"ref(erence)?[-_ ]?maps?", re.I)
    total, found = 0, False
    with zipfile.ZipFile(installer) as zf:
        for info in zf.infolist():
            if info.filename.endswith(".py") or info.filename.startswith("nix_prefix/"):
                continue  # the code that reads a map is not one
            if named.search(info.filename):
                total, found = total + info.compress_size, True
        manifest = json.loads(zf.read("manifest.json"))

    def fields(doc: object) -> int:
        nonlocal found
        if isinstance(doc, dict):
            size = 0
            for key, value in doc.items():
                if named.search(str(key)):
                    found = True
                    size += len(json.dumps(value, separators=(",", ":")))
                else:
                    size += fields(value)
            return size
        if isinstance(doc, list):
            return sum(fields(v) for v in doc)
        return 0
    total += fields(manifest)
    return total if found else None
SERIAL = ["start-up", "manifest", "preflight", "valid paths", "unpack", "place",
          "env files", "load-db", "profile", "other"]


def tables(r: dict) -> str:
    """The results as Markdown tables (also readable as plain text)."""
    mib = 2 ** 20
    c, m, jobs, ins = r["closure"], r["machine"], r["jobs"], r["install"]
    hi = jobs[-1]
    lines = [
        f"Closure: {c['paths']} store paths, {c['files']:,} files, "
        f"{c['nar_bytes'] / mib:.1f} MiB of NAR; the big path is "
        f"{c['big_path_nar_bytes'] / mib:.1f} MiB ({c['big_path_share']:.0%}). "
        f"Machine: {m['cpus']} CPUs, {m['cpu']}, Python {m['python']}, {m['system']}. "
        f"Load average (1/5/15 min) {load_text(r['load_start'])} at the start, "
        f"{load_text(r['load_end'])} at the end.",
        "",
        "| | " + " | ".join(f"build -j{j} s" for j in jobs) + " | size MiB | "
        + " | ".join(f"install -j{j} s" for j in jobs) + " | "
        + " | ".join(f"`--check` -j{j} s" for j in jobs) + " | "
        + " | ".join(f"install -j{j} / official" for j in jobs) + " | RSS build / install |",
        "| --- |" + " ---: |" * (4 * len(jobs) + 2),
    ]
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    none = [""] * len(jobs)
    official_s = ins["official"]["s"]
    for codec in ("xz", "zstd"):
        v = r[f"ours_{codec}"]
        rss = max(ins[f"{s}_{codec}_j{j}"]["rss_mb"] for s in ("install", "check") for j in jobs)
        lines.append(row(
            [f"nix-prefix, {codec}"] + [f"{v['build_s'][str(j)]:.1f}" for j in jobs]
            + [f"{v['size_bytes'] / mib:.1f}"]
            + [f"{ins[f'install_{codec}_j{j}']['s']:.2f}" for j in jobs]
            + [f"{ins[f'check_{codec}_j{j}']['s']:.2f}" for j in jobs]
            + [f"{ins[f'install_{codec}_j{j}']['s'] / official_s:.2f}" for j in jobs]
            + [f"{v['builder_rss_mb']:.0f} / {rss:.0f} MB"]))
    o = r["official"]
    lines.append(row(["official-style `tar.xz`", f"{o['pack_s']:.1f}"] + none[1:]
                     + [f"{o['size_bytes'] / mib:.1f}", f"{official_s:.2f}"] + none[1:]
                     + none + ["1.00"] + none[1:] + [""]))
    for key, label in (("cp_a", "limit: `cp -a` of the tree"),
                       ("zstd_tar", "limit: `zstd -d \\| tar -x`")):
        lines.append(row([label] + none + ["", f"{ins[key]['s']:.2f}"] + none[1:] + none
                         + [f"{ins[key]['s'] / official_s:.2f}"] + none[1:] + [""]))
    same = all(r[f"ours_{codec}"]["identical_across_jobs"] for codec in ("xz", "zstd"))
    other = {codec: ins[f"install_{codec}_j{hi}_other_prefix"]["s"] for codec in ("xz", "zstd")}
    lines += ["", "Install times are medians of the rounds, each after a `sync`. "
              f"The builds at {', '.join(f'-j{j}' for j in jobs)} are "
              f"{'byte-identical' if same else 'NOT byte-identical'}. "
              f"Into another prefix of the same length (every path retargeted as it is "
              f"unpacked), -j{hi}: xz {other['xz']:.2f} s, zstd {other['zstd']:.2f} s. "
              f"`tar -xJf` of the official tarball straight into the store and "
              f"`nix-store --load-db`: {ins['tar_into_store']['s']:.2f} s.", ""]

    lines += ["| phase of the install | " + " | ".join(
        f"{codec} -j{j} s | share" for codec in ("xz", "zstd") for j in jobs) + " |",
        "| --- |" + " ---: | ---: |" * (2 * len(jobs))]
    for name in SERIAL:
        cells = []
        for codec in ("xz", "zstd"):
            for j in jobs:
                key = f"install_{codec}_j{j}"
                value = r["phases"][key].get(name, 0.0)
                cells.append(f"{value:.2f} | {value / ins[key]['s']:.0%}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    py = r.get("installer_python", {})
    lines += ["", "Start-up is the time until the installer's `main()` runs: the sh preamble, "
              "Python starting (twice: a version probe, then the installer) and the seal check "
              f"(one sha256 pass over the file: {r['seal_sha256_pass_s']:.2f} s, timed apart). "
              f"The installer ran with {py.get('path', 'python3')} "
              f"(Python {py.get('version', '?')}), first on PATH.", ""]

    lines += ["| ratio | measured | target | met |", "| --- | ---: | ---: | --- |"]
    for t in r["targets"]["figures"].values():
        value = "n/a" if t["value"] is None else f"{t['value']:.2f}"
        met = {None: "n/a", True: "yes", False: "**no**"}[t["met"]]
        lines.append(f"| {t['figure']} | {value} | "
                     f"{'at most' if t['at_most'] else 'at least'} {t['target']:g} | {met} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
