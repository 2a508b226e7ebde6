"""Benchmark ``nix-prefix serve`` against the same HTTP stack serving a static cache.

    .venv/bin/python bench/serve.py [--size-mb 100] [--paths 30] [--seconds 10] [--json out.json]

Builds the closure of bench/run.py (the machine's own files in a chain of
derivations) with the machine's Nix at a long store dir S1, then serves it:

* **ours**: ``nix-prefix serve CLOSURE --sign-key K`` (zstd on the fly, or
  ``--compression``), asked
  for a new, shorter store dir Q: every narinfo and NAR retargeted to Q;
* **static**: ``nix copy --to file://DIR?secret-key=K`` of the same closure
  (S1's own cache, xz, what Nix writes), served by aiohttp's static file
  handler (sendfile) on the same stack: the limit a retargeting server can
  approach.

Clients are threads of this process on 127.0.0.1 (http.client, keep-alive),
1 and 8 at once.  For each server and client count: narinfo requests per
second (every narinfo, over and over, for --seconds), and NAR throughput
(every NAR once per client, at most --seconds): MB/s of NAR served
(uncompressed NarSize) and of bytes on the wire; and each server's peak
RSS.  For ours, the first round of narinfos (each computes the retargeted
NAR hash, then is cached) is reported apart as "cold".  Then ours again while
``--stalled`` clients (24) hang on: each asked for the biggest NAR and never
reads (issue 26: they must cost the others nothing).  Every loop is bounded
in count and in time.
Writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import CLI, machine, work_dir  # first: nix_prefix = this checkout
from run import plan_groups

from nix_prefix.builder.localnix import LocalNix
from nix_prefix.payload import narinfo

MB = 1e6
STATIC_SERVER = """
import sys
from aiohttp import web
app = web.Application()
app.router.add_static("/", sys.argv[1])
def ready(*a):
    print("listening", flush=True)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), access_log=None, print=ready)
"""


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], ready: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if re.search(ready, line):
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # drain
            return proc, line
    proc.kill()
    raise SystemExit(f"server did not start: {seen[-500:]}")


def peak_rss_mb(proc: subprocess.Popen) -> float:
    """The server's peak resident memory so far (VmHWM)."""
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def fetch(conn: http.client.HTTPConnection, path: str) -> bytes:
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise SystemExit(f"GET {path}: {resp.status} {body[:200]!r}")
    return body


def narinfo_rate(port: int, base: str, hashes: list[str], clients: int,
                 seconds: float) -> float:
    """Narinfo requests per second, ``clients`` at once, for ``seconds``."""
    stop_at = time.monotonic() + seconds
    limit = 200_000  # requests per client, a bound besides the time

    def one(n: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        done = 0
        try:
            while time.monotonic() < stop_at and done < limit:
                fetch(conn, f"{base}/{hashes[(n + done) % len(hashes)]}.narinfo")
                done += 1
        finally:
            conn.close()
        return done

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(one, range(clients)))
    return total / (time.perf_counter() - t)


def nar_rate(port: int, base: str, infos: list[narinfo.NarInfo], clients: int,
             seconds: float) -> dict:
    """Every NAR once per client (at most ``seconds``): NAR and wire MB/s."""
    stop_at = time.monotonic() + seconds

    def one(n: int) -> tuple[int, int]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        nar_bytes = wire = 0
        try:
            for i in range(len(infos)):
                if time.monotonic() > stop_at:
                    break
                info = infos[(n + i) % len(infos)]
                wire += len(fetch(conn, f"{base}/{info.url}"))
                nar_bytes += info.nar_size
        finally:
            conn.close()
        return nar_bytes, wire

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(clients)))
    elapsed = time.perf_counter() - t
    return {"nar_mb_s": sum(r[0] for r in results) / elapsed / MB,
            "wire_mb_s": sum(r[1] for r in results) / elapsed / MB}


def measure(port: int, base: str, hashes: list[str], seconds: float, label: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t = time.perf_counter()
    infos = [narinfo.parse(fetch(conn, f"{base}/{h}.narinfo").decode(), h) for h in hashes]
    cold = len(hashes) / (time.perf_counter() - t)
    conn.close()
    r: dict = {"cold_narinfo_per_s": cold}
    for clients in (1, 8):
        r[f"narinfo_per_s_{clients}"] = narinfo_rate(port, base, hashes, clients, seconds)
        r[f"nar_{clients}"] = nar_rate(port, base, infos, clients, seconds)
        print(f"{label}, {clients} client(s): {r[f'narinfo_per_s_{clients}']:.0f} narinfo/s, "
              f"{r[f'nar_{clients}']['nar_mb_s']:.1f} MB/s NAR", file=sys.stderr)
    return r


def hang_on(port: int, path: str, count: int) -> list:
    """``count`` clients that ask for ``path`` and never read (small receive buffers)."""
    import socket
    clients = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        clients.append(s)
    return clients


def _figures(conn: http.client.HTTPConnection) -> dict[str, float]:
    """The server's /metrics, summed over labels."""
    out: dict[str, float] = {}
    for m in re.finditer(r"^(nix_prefix_serve_\w+)(?:\{([^}]*)\})? (\S+)$",
                         fetch(conn, "/metrics").decode(), re.M):
        key = m.group(1) + ("{nar}" if 'kind="nar"' in (m.group(2) or "") else "")
        out[key] = out.get(key, 0) + float(m.group(3))
    return out


def wait_stalled(port: int, hanging: int, done_before: float, limit: float = 120) -> float:
    """Seconds until every client that hangs on has had its producer stop (parked, or
    its whole NAR fit in the socket buffers) and none waits for one: from then on
    they cost only their buffers."""
    t = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        while time.monotonic() - t < limit:
            f = _figures(conn)
            done = f.get("nix_prefix_serve_requests_total{nar}", 0) - done_before
            if f["nix_prefix_serve_streams_producing"] == 0 and \
                    f["nix_prefix_serve_streams_waiting"] == 0 and \
                    f["nix_prefix_serve_streams_active"] + done >= hanging:
                break
            time.sleep(0.2)
    finally:
        conn.close()
    return time.monotonic() - t


def bench(base: Path, size_mb: int, paths: int, seconds: float, compression: str,
          stalled: int = 24) -> dict:
    s1 = base / "a-publisher-build-prefix-longer-than-the-users"
    q_store = str(base / "users-prefix" / "store")
    nix = LocalNix(s1)
    groups = json.dumps(plan_groups(size_mb, paths))
    root = nix.build_file(Path(__file__).parent / "closure.nix", argstrs={"groups": groups})[0]
    info = nix.write_closure_info([root], base / "closure-info")
    nar = int((info / "total-nar-size").read_text())
    names = [p.rpartition("/")[2] for p in (info / "store-paths").read_text().split()]
    hashes = [n[:32] for n in names]
    secret = base / "key.sec"
    nix.run("nix-store", ["--generate-binary-cache-key", "bench-1", str(secret),
                          str(base / "key.pub")])
    r: dict = {"machine": machine(), "closure": {"paths": len(names), "nar_bytes": nar},
               "load_before": os.getloadavg()[0], "seconds": seconds,
               "compression": compression}
    print(f"closure: {len(names)} paths, {nar / 2**20:.1f} MiB NAR", file=sys.stderr)

    static_dir = base / "nix-copy"
    subprocess.run([str(nix.bin_dir / "nix"), "--extra-experimental-features", "nix-command",
                    "copy", "--to", f"file://{static_dir}?secret-key={secret}", root],
                   env=nix.env(), check=True, capture_output=True)
    port = free_port()
    proc, _ = start([sys.executable, "-c", STATIC_SERVER, str(static_dir), str(port)],
                    "listening")
    try:
        r["static"] = measure(port, "", hashes, seconds, "static nix copy cache")
        r["static"]["server_rss_mb"] = peak_rss_mb(proc)
    finally:
        stop(proc)

    proc, line = start([*CLI, "serve", str(info), "--sign-key", str(secret),
                        "--compression", compression, "--listen", "127.0.0.1:0"],
                       r" at http://")
    try:
        port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
        r["ours"] = measure(port, q_store, hashes, seconds, "nix-prefix serve")
        r["ours"]["server_rss_mb"] = peak_rss_mb(proc)
        if stalled:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            infos = [narinfo.parse(fetch(conn, f"{q_store}/{h}.narinfo").decode(), h)
                     for h in hashes]
            conn.close()
            biggest = max(infos, key=lambda i: i.nar_size)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            done_before = _figures(conn).get("nix_prefix_serve_requests_total{nar}", 0)
            conn.close()
            hanging = hang_on(port, f"{q_store}/{biggest.url}", stalled)
            try:
                r["stalled_after_s"] = wait_stalled(port, stalled, done_before)
                r["stalled"] = measure(port, q_store, hashes, seconds,
                                       f"nix-prefix serve, {stalled} clients stalled")
                r["stalled"]["server_rss_mb"] = peak_rss_mb(proc)
                r["stalled"]["clients"] = stalled
            finally:
                for s in hanging:
                    s.close()
    finally:
        stop(proc)
    r["ratios"] = {}
    for clients in (1, 8):
        r["ratios"][f"narinfo_{clients}"] = (r["ours"][f"narinfo_per_s_{clients}"]
                                             / r["static"][f"narinfo_per_s_{clients}"])
        r["ratios"][f"nar_{clients}"] = (r["ours"][f"nar_{clients}"]["nar_mb_s"]
                                         / r["static"][f"nar_{clients}"]["nar_mb_s"])
    return r


def print_table(r: dict) -> None:
    c = r["closure"]
    print(f"\nclosure: {c['paths']} store paths, {c['nar_bytes'] / 2**20:.1f} MiB NAR; "
          f"machine: {r['machine']['cpus']} CPUs, load {r['load_before']:.1f} before")
    print(f"{'':40}{'narinfo/s':>11}{'NAR MB/s':>10}{'wire MB/s':>11}")
    rows = [("static", "static nix copy cache (aiohttp)"),
            ("ours", f"nix-prefix serve ({r['compression']})")]
    if "stalled" in r:
        rows.append(("stalled", f"  + {r['stalled']['clients']} stalled clients"))
    for key, label in rows:
        for clients in (1, 8):
            v = r[key]
            nar = v[f"nar_{clients}"]
            print(f"{label + f', {clients} client(s)':40}{v[f'narinfo_per_s_{clients}']:11.0f}"
                  f"{nar['nar_mb_s']:10.1f}{nar['wire_mb_s']:11.1f}")
    print(f"server peak RSS: static {r['static']['server_rss_mb']:.0f} MiB, nix-prefix serve "
          f"{r['ours']['server_rss_mb']:.0f} MiB"
          + (f", with stalled clients {r['stalled']['server_rss_mb']:.0f} MiB"
             if "stalled" in r else ""))
    if "stalled" in r:
        print(f"the {r['stalled']['clients']} stalled clients' producers had all stopped "
              f"{r['stalled_after_s']:.1f} s after they asked (measured from then on)")
    print(f"nix-prefix serve, first narinfos (NAR hash computed): "
          f"{r['ours']['cold_narinfo_per_s']:.1f}/s")
    for key, value in r["ratios"].items():
        print(f"ratio ours/static {key:14}{value:8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=100, help="closure size to aim for")
    ap.add_argument("--paths", type=int, default=30, help="number of store paths")
    ap.add_argument("--seconds", type=float, default=10, help="length of each measurement")
    ap.add_argument("--compression", default="zstd", choices=("zstd", "xz", "none"),
                    help="what nix-prefix serve compresses NARs with on the fly")
    ap.add_argument("--stalled", type=int, default=24,
                    help="clients that ask for the biggest NAR and never read, during a "
                         "second round (0: none)")
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--workdir", type=Path, help="default: a new dir under /tmp")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args()
    with work_dir(args.workdir, args.keep, "np-serve-bench-") as base:
        results = bench(base, args.size_mb, args.paths, args.seconds, args.compression,
                        args.stalled)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
