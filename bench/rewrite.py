"""The rewriting itself, on one core: with the reference map against the scan.

    .venv/bin/python bench/rewrite.py [--tree /usr/lib/gcc --tree /usr/lib/python3]
                                      [--mb 256] [--refs-per-mib 64] [--rounds 3]
                                      [--json out.json]

Reads up to ``--mb`` MiB of real files (default: gcc's tree and Python's
modules, as bench/run.py's closure) into memory as one store path's tree
events, puts a store path reference (``STORE/HASH-name``, hash parts of a
60-path closure) into every file, at its start and then every
``1/--refs-per-mib`` MiB (64: one every 16 KiB, more than nixpkgs' binaries
hold), and times, as CPU time of this one thread, the best of ``--rounds``:

* ``map``: payload/rewrite.PathRewriter patching at the offsets of the
  reference map (payload/refmap.py), same-length and exact (every hash part
  renamed);
* ``scan``: the same rewrite as before the map, regular expression and text
  classifier;
* ``map + NAR hash``: the map's rewrite with the NAR hash of the result,
  what every retarget does (sha256 alone bounds it).

The pieces are 1 MiB, as nar.dump_path reads them.  Prints GB/s (10^9
bytes a second of input), the target (>= 1.3 GB/s, ahead of Spack's ~1.2),
the map's size against the bytes it maps, and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import common  # noqa: F401  (first: nix_prefix = this checkout)

from nix_prefix.payload import nar, nix32, refmap, retarget
from nix_prefix.payload.rewrite import PathRewriter
from nix_prefix.payload.tree import Sink, Tee

TARGET_GB_S = 1.3
PIECE = 1 << 20
OLD = b"/tmp/nix-bench-relocatable-build-root/nix/store"


class Events(Sink):
    """A tree's events in memory (contents in pieces of PIECE bytes), to replay."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple]] = []
        self.size = 0

    def regular(self, rel: bytes, executable: bool, size: int) -> None:
        self.events.append(("regular", (rel, executable, size)))

    def contents(self, data: bytes) -> None:
        self.events.append(("contents", (data,)))
        self.size += len(data)

    def end_regular(self) -> None:
        self.events.append(("end_regular", ()))

    def symlink(self, rel: bytes, target: bytes) -> None:
        self.events.append(("symlink", (rel, target)))

    def replay(self, sink: Sink) -> None:
        for name, args in self.events:
            getattr(sink, name)(*args)
        sink.finish()


def corpus(trees: list[str], limit: int, per_mib: int, hashes: list[bytes]) -> Events:
    """Up to ``limit`` bytes of the files of ``trees``, each with references put in."""
    ev = Events()
    rng = random.Random(0)
    every = max(64, (1 << 20) // max(1, per_mib))
    for tree in trees:
        for root, dirs, files in os.walk(tree):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                try:
                    data = bytearray(Path(path).read_bytes())
                except OSError:
                    continue
                if ev.size + len(data) > limit:
                    continue  # a smaller file may still fit
                for at in range(0, max(1, len(data) - 120), every):
                    ref = OLD + b"/" + rng.choice(hashes) + b"-lib-1.0/lib"
                    data[at:at + len(ref)] = ref
                rel = os.fsencode(os.path.relpath(path, tree))
                ev.regular(rel, False, len(data))
                view = bytes(data)
                for at in range(0, len(view), PIECE):
                    ev.contents(view[at:at + PIECE])
                ev.end_regular()
    return ev


class Discard(Sink):
    """Where the rewritten bytes go: nowhere (only their length is kept)."""

    def __init__(self) -> None:
        self.size = 0

    def contents(self, data: bytes) -> None:
        self.size += len(data)


def best(rounds: int, run) -> float:
    times = []
    for _ in range(rounds):
        started = time.process_time()
        run()
        times.append(time.process_time() - started)
    return min(times)


def measure(ev: Events, names: list[str], renaming: dict[bytes, bytes], rounds: int) -> dict:
    new = retarget.padded_store_dir(OLD.decode(), "/home/alice/.nix/store").encode()
    recorder = refmap.Recorder(names[0], OLD, refmap.candidates(names))
    started = time.process_time()
    ev.replay(recorder)
    make_s = time.process_time() - started
    refs = recorder.result(b"\0" * 32)
    data = refmap.RefMap(OLD, [refs] + [refmap.PathRefs(n, b"\0" * 32, {}) for n in names[1:]])
    out: dict = {"map_bytes": len(data.to_bytes()), "map_make_s": make_s,
                 "occurrences": sum(len(f.offsets) for f in refs.files.values())}
    for kind, hashes in (("same_length", {}), ("exact", renaming)):
        out[kind] = _rows(ev, new, hashes, (refs, refmap.Rewrite(OLD, new, hashes,
                                                                 data.candidates)), rounds)
    return out


def _rows(ev: Events, new: bytes, hashes: dict[bytes, bytes],
          mapping: tuple[refmap.PathRefs, refmap.Rewrite], rounds: int) -> dict:
    sizes = []

    def mapped(hasher: bool = False) -> None:
        sink = Discard()
        ev.replay(PathRewriter(Tee(sink, nar.NarHasher()) if hasher else sink, OLD, new,
                               hashes, mapped=mapping))
        sizes.append(sink.size)

    def scanned() -> None:
        sink = Discard()
        ev.replay(PathRewriter(sink, OLD, new, hashes))
        sizes.append(sink.size)

    row = {"map_s": best(rounds, mapped), "scan_s": best(rounds, scanned),
           "map_nar_hash_s": best(rounds, lambda: mapped(True))}
    if len(set(sizes)) != 1:
        raise SystemExit("bench: the map and the scan wrote different sizes")
    for key in ("map", "scan", "map_nar_hash"):
        row[key + "_gb_s"] = ev.size / row[key + "_s"] / 1e9
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", action="append", help="files to read (repeatable)")
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--refs-per-mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    trees = args.tree or ["/usr/lib/gcc", "/usr/lib/python3"]
    rng = random.Random(1)
    alphabet = nix32.ALPHABET.encode()
    hashes = [bytes(rng.choice(alphabet) for _ in range(32)) for _ in range(60)]
    names = [h.decode() + "-p" for h in hashes]
    renaming = {h: bytes(rng.choice(alphabet) for _ in range(32)) for h in hashes}
    ev = corpus(trees, args.mb << 20, args.refs_per_mib, hashes)
    if not ev.size:
        raise SystemExit(f"bench: no files under {', '.join(trees)}")
    r = measure(ev, names, renaming, args.rounds)
    r.update(bytes=ev.size, files=sum(1 for e in ev.events if e[0] == "regular"),
             refs_per_mib=args.refs_per_mib, load=os.getloadavg(), machine=common.machine(),
             target_gb_s=TARGET_GB_S)
    print(f"rewriting {ev.size / 1e6:.1f} MB in {r['files']} files, {r['occurrences']} "
          f"occurrences, one core (CPU time, best of {args.rounds}); "
          f"load {r['load'][0]:.2f} {r['load'][1]:.2f} {r['load'][2]:.2f}")
    print("| retarget | map GB/s | scan GB/s | map + NAR hash GB/s | map vs target |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for kind in ("same_length", "exact"):
        row = r[kind]
        print(f"| {kind.replace('_', '-')} | {row['map_gb_s']:.2f} | {row['scan_gb_s']:.2f} | "
              f"{row['map_nar_hash_gb_s']:.2f} | {row['map_gb_s'] / TARGET_GB_S:.2f}x |")
    print(f"map: {r['map_bytes']} bytes for {ev.size} bytes "
          f"({100 * r['map_bytes'] / ev.size:.3f}% of the NAR), made in {r['map_make_s']:.2f} s")
    if args.json:
        args.json.write_text(json.dumps(r, indent=1) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
