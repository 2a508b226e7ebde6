"""Benchmark ``nix-prefix serve`` against the same HTTP stack serving the same bytes, static.

    .venv/bin/python bench/serve.py [--size-mb 100] [--paths 30] [--seconds 10] [--json out.json]

Builds the closure of bench/run.py (the machine's own files in a chain of
derivations) with the machine's Nix at a long store dir S1, and an installer
of it, then, for each master (the installer file, and the closure on disk:
closureInfo + store):

* **static**: ``nix-prefix cache MASTER --prefix Q --compression none``, the
  binary cache for a new prefix Q, served by aiohttp's static file handler
  (sendfile) on the same stack: the same bytes, with nothing left to compute;
* **ours**: ``nix-prefix serve MASTER --compression none``, asked by each
  client for a prefix nobody asked for before (each its own, as long as Q);
* in both, each of 1, then 8, clients at once fetches every narinfo of the
  closure, then every NAR (the URLs its narinfos name): MB/s of NAR (all the
  clients' NarSize over the wall time; the median of ``--rounds`` passes, ours
  at new prefixes each time), and the ratio ours/static (issue 25: at least 0.5);
* ours again with ``--compression zstd`` (level 3, the default), the same
  way, against ``zstd -3 -T0`` alone compressing the concatenated NARs of the
  static cache (issue 25: at least 0.8 of its MB/s).

Clients are threads of this process on 127.0.0.1 (http.client, keep-alive,
1 MiB reads); each names itself in X-Real-IP (``serve --client-header``), so
that the server's per-client bounds see 8 clients, not one address.  Every
narinfo ours serves at Q is checked against the static cache's (NarHash,
NarSize).  Then, unless ``--stalled 0``, ours (tree master, zstd) over and
over for ``--seconds``, alone and while 24 clients hang on: each asked for the
biggest NAR and never reads (issue 26: they must cost the others nothing).
Every loop is bounded in count and in time.  Prints the targets block (common.py)
and writes everything as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import (  # first: nix_prefix = this checkout
    CLI,
    Run,
    Target,
    load,
    machine,
    remove,
    targets_block,
    work_dir,
)
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


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


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


def read_all(resp: http.client.HTTPResponse, buf: bytearray) -> int:
    """Read a response body into ``buf`` over and over (1 MiB reads, no copies kept);
    the bytes read."""
    view, total = memoryview(buf), 0
    while n := resp.readinto(view):
        total += n
    return total


def closure_pass(port: int, store_dirs: list[str], hashes: list[str], deadline: float) -> dict:
    """Each of ``len(store_dirs)`` clients at once (one per store dir, its own address)
    fetches every narinfo, then every NAR its narinfos name; the wall time, and the NAR
    and wire bytes of all of them."""

    def one(n: int) -> tuple[int, int, list[narinfo.NarInfo]]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        headers = {"X-Real-IP": f"10.0.0.{n + 1}"}
        buf = bytearray(1 << 20)
        infos, nar_bytes, wire = [], 0, 0
        try:
            for h in hashes:
                conn.request("GET", f"{store_dirs[n]}/{h}.narinfo", headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    raise SystemExit(f"GET {h}.narinfo: {resp.status} {body[:200]!r}")
                infos.append(narinfo.parse(body.decode(), h))
            for info in infos:
                if time.monotonic() > deadline:
                    raise SystemExit("bench: a closure pass ran past --timeout")
                conn.request("GET", f"{store_dirs[n]}/{info.url}", headers=headers)
                resp = conn.getresponse()
                if resp.status != 200:
                    raise SystemExit(f"GET {info.url}: {resp.status} {resp.read(200)!r}")
                wire += read_all(resp, buf)
                nar_bytes += info.nar_size
        finally:
            conn.close()
        return nar_bytes, wire, infos

    t = time.perf_counter()
    with ThreadPoolExecutor(len(store_dirs)) as pool:
        results = list(pool.map(one, range(len(store_dirs))))
    elapsed = time.perf_counter() - t
    nar_bytes = sum(r[0] for r in results)
    return {"s": elapsed, "nar_bytes": nar_bytes, "wire_bytes": sum(r[1] for r in results),
            "nar_mb_s": nar_bytes / elapsed / MB, "infos": results[0][2]}


class Prefixes:
    """New store dirs, all as long as the static cache's: every one never seen before."""

    def __init__(self, base: Path) -> None:
        self.base, self.count = base, 0

    def first(self) -> str:
        return str(self.base / "users-prefix-000" / "store")

    def new(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            self.count += 1
            out.append(str(self.base / f"users-prefix-{self.count:03d}" / "store"))
        return out


def static_cache(master: Path, out: Path, prefix: str, secret: Path) -> list[str]:
    """``nix-prefix cache --compression none`` of ``master`` for ``prefix`` into ``out``;
    the hash parts of its narinfos."""
    Run([*CLI, "cache", str(master), "--prefix", str(Path(prefix).parent), "-o", str(out),
         "--compression", "none", "--sign-key", str(secret), "-q"])
    return sorted(p.name[:-len(".narinfo")] for p in out.glob("*.narinfo"))


def serve_ours(master: Path, secret: Path, compression: str) -> tuple[subprocess.Popen, int, float]:
    """``nix-prefix serve MASTER`` on a free port: the process, its port, its start-up s."""
    t = time.perf_counter()
    proc, line = start([*CLI, "serve", str(master), "--sign-key", str(secret),
                        "--compression", compression, "--listen", "127.0.0.1:0",
                        "--client-header", "X-Real-IP", "--no-access-log"], r" at http://")
    return proc, int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1)), time.perf_counter() - t


def same_narinfos(port: int, store_dir: str, static_dir: Path, hashes: list[str]) -> bool:
    """Does ours, at the static cache's store dir, give every path the static cache's
    NarHash and NarSize (the same bytes, retargeted the same way)?"""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        for h in hashes:
            ours = narinfo.parse(fetch(conn, f"{store_dir}/{h}.narinfo").decode(), h)
            static = narinfo.parse((static_dir / f"{h}.narinfo").read_text(), h)
            if (ours.nar_hash, ours.nar_size) != (static.nar_hash, static.nar_size):
                return False
    finally:
        conn.close()
    return True


def zstd_alone(static_dir: Path, infos: list[narinfo.NarInfo], work: Path) -> dict:
    """``zstd -3 -T0`` alone over the concatenated NARs of the static cache: MB/s of NAR."""
    joined = work / "nars.concatenated"
    with open(joined, "wb") as out:
        for info in infos:
            with open(static_dir / info.url, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    size = joined.stat().st_size
    run = Run(["zstd", "-3", "-T0", "-q", "-f", "-o", os.devnull, str(joined)])
    joined.unlink()
    return {"s": run.seconds, "nar_bytes": size, "nar_mb_s": size / run.seconds / MB}


def median_pass(passes: list[dict]) -> dict:
    """The pass of median NAR MB/s (a pass of 60 MiB takes ~50 ms: one is noise)."""
    return sorted(passes, key=lambda p: p["nar_mb_s"])[len(passes) // 2]


def master_rounds(name: str, master: Path, base: Path, secret: Path, prefixes: Prefixes,
                  clients: tuple[int, ...], timeout: float, rounds: int = 3) -> dict:
    """Static, ours uncompressed and ours with zstd, for one master (see the docstring):
    each the median of ``rounds`` passes, ours with new prefixes in each."""
    static_dir = base / f"static-{name}"
    hashes = static_cache(master, static_dir, prefixes.first(), secret)
    r: dict = {"paths": len(hashes)}
    port = free_port()
    proc, _ = start([sys.executable, "-c", STATIC_SERVER, str(static_dir), str(port)],
                    "listening")
    try:
        for n in clients:
            p = median_pass([closure_pass(port, [""] * n, hashes, time.monotonic() + timeout)
                             for _ in range(rounds)])
            r[f"static_{n}"] = {k: v for k, v in p.items() if k != "infos"}
            say(f"{name}: static, {n} client(s): {p['nar_mb_s']:.1f} MB/s of NAR")
        infos = p["infos"]
        r["static_rss_mb"] = peak_rss_mb(proc)
    finally:
        stop(proc)
    for compression in ("none", "zstd"):
        proc, port, startup = serve_ours(master, secret, compression)
        key = "ours" if compression == "none" else "ours_zstd"
        r[f"{key}_startup_s"] = startup
        try:
            for n in clients:
                p = median_pass([closure_pass(port, prefixes.new(n), hashes,
                                              time.monotonic() + timeout)
                                 for _ in range(rounds)])
                r[f"{key}_{n}"] = {k: v for k, v in p.items() if k != "infos"}
                say(f"{name}: ours ({compression}), {n} client(s): {p['nar_mb_s']:.1f} MB/s "
                    f"of NAR")
            if compression == "none":
                r["same_as_static"] = same_narinfos(port, prefixes.first(), static_dir, hashes)
            r[f"{key}_rss_mb"] = peak_rss_mb(proc)
        finally:
            stop(proc)
    r["zstd_alone"] = zstd_alone(static_dir, infos, base)
    say(f"{name}: zstd -3 -T0 alone: {r['zstd_alone']['nar_mb_s']:.1f} MB/s of NAR")
    remove(static_dir)
    return r


def stalled_rounds(master: Path, secret: Path, q_store: str, hashes: list[str],
                   seconds: float, stalled: int) -> dict:
    """Ours (zstd) over and over, alone, then while ``stalled`` clients hang on."""
    proc, port, _ = serve_ours(master, secret, "zstd")
    try:
        r: dict = {"alone": measure(port, q_store, hashes, seconds, "nix-prefix serve")}
        r["alone"]["server_rss_mb"] = peak_rss_mb(proc)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        infos = [narinfo.parse(fetch(conn, f"{q_store}/{h}.narinfo").decode(), h)
                 for h in hashes]
        done_before = _figures(conn).get("nix_prefix_serve_requests_total{nar}", 0)
        conn.close()
        biggest = max(infos, key=lambda i: i.nar_size)
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
    return r


def bench(base: Path, size_mb: int, paths: int, seconds: float, stalled: int = 24,
          clients: tuple[int, ...] = (1, 8), timeout: float = 3600, rounds: int = 3) -> dict:
    s1 = base / "a-publisher-build-prefix-longer-than-the-users"
    nix = LocalNix(s1)
    groups = json.dumps(plan_groups(size_mb, paths))
    root = nix.build_file(Path(__file__).parent / "closure.nix", argstrs={"groups": groups})[0]
    info = nix.write_closure_info([root], base / "closure-info")
    nar = int((info / "total-nar-size").read_text())
    names = [p.rpartition("/")[2] for p in (info / "store-paths").read_text().split()]
    secret = base / "key.sec"
    nix.run("nix-store", ["--generate-binary-cache-key", "bench-1", str(secret),
                          str(base / "key.pub")])
    installer = base / "master.sh"
    built = Run([*CLI, "build", str(info), "-o", str(installer), "-q"])
    r: dict = {"machine": machine(), "closure": {"paths": len(names), "nar_bytes": nar},
               "load_start": load(), "clients": list(clients),
               "installer": {"bytes": installer.stat().st_size, "build_s": built.seconds}}
    say(f"closure: {len(names)} paths, {nar / 2**20:.1f} MiB NAR")
    prefixes = Prefixes(base)
    r["rounds"] = rounds
    r["masters"] = {name: master_rounds(name, master, base, secret, prefixes, clients, timeout,
                                        rounds)
                    for name, master in (("installer", installer), ("tree", info))}
    if stalled:
        hashes = [n[:32] for n in names]
        r["warm"] = stalled_rounds(info, secret, prefixes.new(1)[0], hashes, seconds, stalled)
    r["load_end"] = load()
    r["ratios"] = ratios(r)
    text, r["targets"] = targets_block(targets(r), r["load_start"], r["load_end"])
    r["targets_text"] = text
    return r


def ratios(r: dict) -> dict[str, float]:
    """Issue 25's figures: ours/static uncompressed, ours zstd/``zstd -3 -T0`` alone."""
    out = {}
    for name, m in r["masters"].items():
        for n in r["clients"]:
            out[f"{name}_master_{n}_clients_vs_static"] = (m[f"ours_{n}"]["nar_mb_s"]
                                                           / m[f"static_{n}"]["nar_mb_s"])
            out[f"{name}_master_{n}_clients_zstd_vs_zstd_alone"] = (
                m[f"ours_zstd_{n}"]["nar_mb_s"] / m["zstd_alone"]["nar_mb_s"])
    return out


def targets(r: dict) -> list[Target]:
    return [Target(key, value, 0.5 if key.endswith("_vs_static") else 0.8, at_most=False)
            for key, value in r["ratios"].items()]


def print_table(r: dict) -> None:
    c = r["closure"]
    print(f"\nclosure: {c['paths']} store paths, {c['nar_bytes'] / 2**20:.1f} MiB NAR; "
          f"machine: {r['machine']['cpus']} CPUs; every narinfo, then every NAR, per client")
    print(f"{'master':11}{'clients':>8}{'static MB/s':>13}{'ours MB/s':>11}{'ours/static':>13}"
          f"{'ours zstd MB/s':>16}{'zstd -3 -T0':>13}{'same bytes':>12}")
    for name, m in r["masters"].items():
        for n in r["clients"]:
            print(f"{name:11}{n:8}{m[f'static_{n}']['nar_mb_s']:13.1f}"
                  f"{m[f'ours_{n}']['nar_mb_s']:11.1f}"
                  f"{m[f'ours_{n}']['nar_mb_s'] / m[f'static_{n}']['nar_mb_s']:13.2f}"
                  f"{m[f'ours_zstd_{n}']['nar_mb_s']:16.1f}{m['zstd_alone']['nar_mb_s']:13.1f}"
                  f"{'yes' if m['same_as_static'] else 'NO':>12}")
        print(f"  {name} master: server start-up {m['ours_startup_s']:.1f} s, peak RSS "
              f"static {m['static_rss_mb']:.0f} MiB, ours {m['ours_rss_mb']:.0f} MiB "
              f"(zstd {m['ours_zstd_rss_mb']:.0f} MiB)")
    if "warm" in r:
        w = r["warm"]
        print("\nnix-prefix serve (tree master, zstd), over and over at one prefix:")
        print(f"{'':40}{'narinfo/s':>11}{'NAR MB/s':>10}{'wire MB/s':>11}{'RSS MiB':>9}")
        for key, label in (("alone", "alone"),
                           ("stalled", f"while {w['stalled']['clients']} clients hang on")):
            for clients in (1, 8):
                v, nar = w[key], w[key][f"nar_{clients}"]
                print(f"{label + f', {clients} client(s)':40}"
                      f"{v[f'narinfo_per_s_{clients}']:11.0f}{nar['nar_mb_s']:10.1f}"
                      f"{nar['wire_mb_s']:11.1f}{v['server_rss_mb']:9.0f}")
        print(f"the stalled clients' producers had all stopped {w['stalled_after_s']:.1f} s "
              f"after they asked (measured from then on); first narinfos at that prefix: "
              f"{w['alone']['cold_narinfo_per_s']:.1f}/s")
    print()
    print(r["targets_text"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=100, help="closure size to aim for")
    ap.add_argument("--paths", type=int, default=30, help="number of store paths")
    ap.add_argument("--seconds", type=float, default=10,
                    help="length of each measurement of the warm and stalled rounds")
    ap.add_argument("--stalled", type=int, default=24,
                    help="clients that ask for the biggest NAR and never read, during a "
                         "second round (0: none)")
    ap.add_argument("--timeout", type=float, default=3600,
                    help="the most one closure pass may take, in seconds")
    ap.add_argument("--rounds", type=int, default=3,
                    help="passes per figure, each at new prefixes; the median is kept")
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--workdir", type=Path, help="default: a new dir under /tmp")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args()
    with work_dir(args.workdir, args.keep, "np-serve-bench-") as base:
        results = bench(base, args.size_mb, args.paths, args.seconds, args.stalled,
                        timeout=args.timeout, rounds=args.rounds)
    print_table(results)
    del results["targets_text"]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
