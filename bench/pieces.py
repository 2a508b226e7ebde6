"""What splitting one big store path into pieces costs and gains, measured on real files.

    .venv/bin/python bench/pieces.py [--tree /usr/lib/gcc] [--mb 64] [--pieces 1,4,8]
                                     [--jobs 1,2] [--json out.json]

Serialises ``--tree`` (default gcc's, the big path of bench/run.py's closure)
as the payload's tar stream (payload/archive.py, NAR order), takes its first
``--mb`` MiB, and measures with the builder's own encoders (xz -6 with the
x86 branch filter, zstd -19):

* each codec, the stream cut into N equal pieces, each compressed on its own:
  the total size against one piece, and the time to encode and to decode all
  pieces with 1 and with 2 threads (the speed-up is what splitting buys);
* the two ways to check a split path's NAR hash: hash the staged tree again
  from the page cache (``nar.hash_path``), or chain one sha256 through the
  pieces' NAR bytes in order (the hashing alone, from memory).

The machine may be shared: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common  # noqa: F401  (first: nix_prefix = this checkout)

from nix_prefix.builder.compress import compressor
from nix_prefix.payload import archive, codecs, nar
from nix_prefix.payload.tree import Tee

SYSTEM = "x86_64-linux"


def tar_stream(tree: str) -> tuple[bytes, bytes]:
    """``tree`` as the payload's tar stream, and as its NAR."""
    tar_out, nar_out = bytearray(), bytearray()
    writer = archive.TarWriter(tar_out.extend)
    writer.top = os.path.basename(tree)
    nar.dump_path(os.fsencode(tree), Tee(writer, nar.NarWriter(nar_out.extend)))
    writer.close()
    return bytes(tar_out), bytes(nar_out)


def timed(fn, *args) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def encode(codec: str, data: bytes) -> bytes:
    c = compressor(codec, None, SYSTEM)
    return c.compress(data) + c.flush()


def decode(codec: str, blob: bytes) -> int:
    import io
    reader = codecs.open_reader(codec, io.BytesIO(blob))
    n = 0
    while data := reader.read(1 << 20):
        n += len(data)
    return n


def split(data: bytes, n: int) -> list[bytes]:
    step = -(-len(data) // n)
    return [data[i:i + step] for i in range(0, len(data), step)]


def in_threads(jobs: int, fn, items: list) -> list:
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(fn, items))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", default="/usr/lib/gcc")
    ap.add_argument("--mb", type=int, default=64, help="MiB of the tar stream to compress")
    ap.add_argument("--pieces", default="1,4,8")
    ap.add_argument("--jobs", default="1,2")
    ap.add_argument("--codecs", default="xz,zstd")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    pieces = [int(p) for p in args.pieces.split(",")]
    jobs = [int(j) for j in args.jobs.split(",")]

    r: dict = {"tree": args.tree, "load_start": os.getloadavg()[0]}
    tar, nar_bytes = tar_stream(args.tree)
    r["tar_bytes"], r["nar_bytes"] = len(tar), len(nar_bytes)
    sample = tar[:args.mb << 20]
    r["sample_bytes"] = len(sample)

    # Hashing: the staged tree again (twice: the second run is the warm one) ...
    nar.hash_path(os.fsencode(args.tree))
    r["hash_tree_s"], _ = timed(nar.hash_path, os.fsencode(args.tree))

    # ... or one sha256 chained through the NAR bytes in order, 1 MiB at a time.
    def chain() -> str:
        h = hashlib.sha256()
        view = memoryview(nar_bytes)
        for i in range(0, len(view), 1 << 20):
            h.update(view[i:i + (1 << 20)])
        return h.hexdigest()
    r["chain_sha256_s"], _ = timed(chain)
    print(f"NAR of {args.tree}: {len(nar_bytes) / 2**20:.1f} MiB; hash the tree again "
          f"{r['hash_tree_s']:.3f} s, chain sha256 from memory {r['chain_sha256_s']:.3f} s",
          file=sys.stderr, flush=True)

    r["codecs"] = {}
    for codec in args.codecs.split(","):
        rows = []
        for n in pieces:
            parts = split(sample, n)
            row: dict = {"pieces": n}
            for j in jobs:
                t, blobs = timed(in_threads, j, lambda p, c=codec: encode(c, p), parts)
                row[f"encode_j{j}_s"] = t
                row["size_bytes"] = sum(len(b) for b in blobs)
                t, sizes = timed(in_threads, j, lambda b, c=codec: decode(c, b), blobs)
                assert sum(sizes) == len(sample)
                row[f"decode_j{j}_s"] = t
            rows.append(row)
            print(f"{codec} {n} pieces: " + ", ".join(
                f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in row.items()), file=sys.stderr, flush=True)
        r["codecs"][codec] = rows
    r["load_end"] = os.getloadavg()[0]
    print(table(r, jobs))
    if args.json:
        args.json.write_text(json.dumps(r, indent=1) + "\n")


def table(r: dict, jobs: list[int]) -> str:
    mib = 2 ** 20
    lo, hi = jobs[0], jobs[-1]
    lines = [f"{r['sample_bytes'] / mib:.0f} MiB of the tar stream of {r['tree']} "
             f"(load average {r['load_start']:.2f} at the start, {r['load_end']:.2f} at the end)",
             "",
             "| codec | pieces | size MiB | size / 1 piece | "
             + " | ".join(f"encode -j{j} s" for j in jobs) + f" | encode speed-up -j{hi} | "
             + " | ".join(f"decode -j{j} s" for j in jobs) + f" | decode speed-up -j{hi} |",
             "| --- |" + " ---: |" * (2 * len(jobs) + 5)]
    for codec, rows in r["codecs"].items():
        one = rows[0]["size_bytes"]
        for row in rows:
            lines.append(
                f"| {codec} | {row['pieces']} | {row['size_bytes'] / mib:.2f} | "
                f"{row['size_bytes'] / one:.4f} | "
                + " | ".join(f"{row[f'encode_j{j}_s']:.2f}" for j in jobs)
                + f" | {row[f'encode_j{lo}_s'] / row[f'encode_j{hi}_s']:.2f} | "
                + " | ".join(f"{row[f'decode_j{j}_s']:.2f}" for j in jobs)
                + f" | {row[f'decode_j{lo}_s'] / row[f'decode_j{hi}_s']:.2f} |")
    lines += ["", f"Checking a split path's NAR hash ({r['nar_bytes'] / mib:.1f} MiB): hash "
              f"the staged tree again {r['hash_tree_s']:.3f} s; chain one sha256 through "
              f"the pieces in order {r['chain_sha256_s']:.3f} s (from memory)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
