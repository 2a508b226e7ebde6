"""``nix-prefix serve`` under hostile load (issue 26), end to end on 127.0.0.1.

The server runs as its own process (its memory is read from /proc/PID), with
tight limits; attackers are threads of this process: clients that ask for a
big NAR and never read, clients that read at 1 KB/s, and a flood of made-up
store dirs, each of which costs a plan and a full read of the big path.  A
normal client must be served all the while, the server must stay within
--max-memory, and cold work past its bound gets a 503 that a retry gets past
once the flood is over.  Every loop is bounded in count and time.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nix_prefix.payload import narinfo

from .test_serve import server_process
from tests.support import build_small

MAX_MEMORY_MB = 400
BIG_MB = 40


def vm(pid: int, field: str) -> float:
    """VmRSS, VmHWM (peak) … of process ``pid``, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def get(port: int, path: str, timeout: float = 60) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def metric(port: int, name: str) -> float:
    """The sum of the samples of ``name`` (over its labels) in /metrics."""
    text = get(port, "/metrics")[2].decode()
    return sum(float(m.group(1)) for m in re.finditer(
        rf"^nix_prefix_serve_{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))


def wait_until(port: int, what: str, test, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not test():
        if time.monotonic() > deadline:
            figures = [line for line in get(port, "/metrics")[2].decode().splitlines()
                       if line.startswith("nix_prefix_serve_")]
            raise AssertionError(f"waited {seconds} s for {what}: " + "\n".join(figures))
        time.sleep(0.2)


@pytest.fixture(scope="module")
def master(module_dir: Path) -> dict:
    """A closureInfo master: the small sample closure and one big path (random bytes,
    which zstd cannot shrink), built at a long store dir."""
    built = build_small(module_dir, name="a-long-master-prefix-for-the-load-test")
    big = module_dir / "big"
    big.mkdir()
    with open(big / "data", "wb") as f:
        for _ in range(BIG_MB):
            f.write(os.urandom(1 << 20))
    nix = built.nix
    big_path = nix.run("nix-store", ["--add", str(big)]).stdout.decode().strip()
    small_path = built.roots[0]
    info = nix.write_closure_info([big_path, small_path], module_dir / "load-info")
    return {"info": info, "big": big_path.rpartition("/")[2],
            "small": small_path.rpartition("/")[2]}


@pytest.fixture
def server(master: dict) -> Iterator[tuple[int, int]]:
    args = [str(master["info"]), "--compression", "zstd", "--max-memory", f"{MAX_MEMORY_MB}M",
            "--send-timeout", "30", "--min-rate", "16K", "--producers", "4",
            "--cold", "1", "--cold-per-client", "1", "--cold-queue", "4",
            "--cold-queue-per-client", "3", "--no-access-log"]
    with server_process(*args) as (url, proc, _log):
        yield int(url.rpartition(":")[2]), proc.pid


def nar_url(port: int, store_dir: str, name: str) -> str:
    status, _, text = get(port, f"{store_dir}/{name[:32]}.narinfo")
    assert status == 200, text
    return f"{store_dir}/{narinfo.parse(text.decode(), name, store_dir).url}"


class Attackers:
    """Clients that ask for ``path`` and never read, and clients that read at 1 KB/s,
    all until ``stop`` (bounded: ``seconds``)."""

    def __init__(self, port: int, path: str, stalled: int, slow: int, seconds: float) -> None:
        self.stop = threading.Event()
        self.sockets: list[socket.socket] = []
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        for _ in range(stalled):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            s.sendall(request)
            self.sockets.append(s)
        self.threads = [threading.Thread(target=self._slow, args=(port, request, seconds),
                                         daemon=True) for _ in range(slow)]
        for t in self.threads:
            t.start()

    def _slow(self, port: int, request: bytes, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with socket.create_connection(("127.0.0.1", port), timeout=seconds) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            s.sendall(request)
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    if not s.recv(1024):
                        return  # dropped
                except OSError:
                    return
                self.stop.wait(1)

    def close(self) -> None:
        self.stop.set()
        for s in self.sockets:
            s.close()
        for t in self.threads:
            t.join(30)


@pytest.mark.slow
def test_stalled_and_slow_clients_cost_the_others_nothing(master: dict, server) -> None:
    port, pid = server
    store_dir = "/q/store"
    big_nar = nar_url(port, store_dir, master["big"])  # cold work done here, once
    small_nar = nar_url(port, store_dir, master["small"])
    attackers = Attackers(port, big_nar, stalled=24, slow=16, seconds=120)
    try:
        # Every attacker's producer has filled its buffer and parked.
        wait_until(port, "the attackers to stall",
                   lambda: metric(port, "clients_stalled") >= 40)
        for _ in range(3):  # a normal client, while they hang on
            started = time.monotonic()
            for path in (f"{store_dir}/{master['small'][:32]}.narinfo", small_nar):
                assert get(port, path, timeout=10)[0] == 200
            assert time.monotonic() - started < 2, "a normal client waited"
            assert vm(pid, "VmHWM") < MAX_MEMORY_MB
            time.sleep(1)
        # A whole big NAR too, at full speed.
        status, _, data = get(port, big_nar)
        assert status == 200 and len(data) > BIG_MB << 20
        # Past --send-timeout (30 s) without progress, or below --min-rate, dropped.
        wait_until(port, "the attackers to be dropped",
                   lambda: metric(port, "clients_dropped_total") >= 40)
        assert metric(port, "streams_active") == 0
        assert metric(port, "buffered_bytes") == 0
    finally:
        attackers.close()
    assert vm(pid, "VmHWM") < MAX_MEMORY_MB, "the server went past --max-memory"


@pytest.mark.slow
def test_cold_work_is_bounded_and_answered_503_past_it(master: dict, server) -> None:
    port, pid = server
    known = "/q/store"
    small_nar = nar_url(port, known, master["small"])
    big_info = f"{master['big'][:32]}.narinfo"
    prefixes = [f"/made-up-{n}/store" for n in range(40)]
    answers: dict[str, tuple[int, dict]] = {}
    timings: list[float] = []
    queue: list[tuple[float, float]] = []  # (running, waiting) seen meanwhile

    def flood(q: str) -> None:
        status, headers, _ = get(port, f"{q}/{big_info}", timeout=120)
        answers[q] = (status, headers)

    def normal_client() -> None:
        for _ in range(5):
            started = time.monotonic()
            for path in (f"{known}/{master['small'][:32]}.narinfo", small_nar):
                assert get(port, path, timeout=10)[0] == 200
            timings.append(time.monotonic() - started)
            queue.append((metric(port, "cold_running"), metric(port, "cold_waiting")))
            time.sleep(0.5)

    with ThreadPoolExecutor(12) as pool:
        flooding = [pool.submit(flood, q) for q in prefixes]
        normal = threading.Thread(target=normal_client)
        normal.start()
        normal.join(120)
        for f in flooding:
            f.result(300)
    assert len(timings) == 5 and max(timings) < 2, timings
    busy = [h for s, h in answers.values() if s == 503]
    assert len(answers) == 40 and {s for s, _ in answers.values()} == {200, 503}
    assert all(h["Retry-After"].isdigit() and h["Cache-Control"] == "no-store" for h in busy)
    assert metric(port, "cold_refused_total") == len(busy)
    # Bounded: --cold 1 running, --cold-queue-per-client 3 waiting at most.
    assert max(r for r, _ in queue) <= 1 and max(w for _, w in queue) <= 3, queue
    assert vm(pid, "VmHWM") < MAX_MEMORY_MB
    # Once the flood is over, a refused store dir is served (a Nix retries a 503).
    refused = next(q for q in prefixes if answers[q][0] == 503)
    status = 503
    for _ in range(10):
        status = get(port, f"{refused}/{big_info}", timeout=120)[0]
        if status != 503:
            break
        time.sleep(1)
    assert status == 200
