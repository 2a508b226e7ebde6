"""``nix-prefix serve --workers N`` (issue 25, "All the cores"): worker processes on one
socket under a supervisor.

Which worker accepts a connection is the kernel's choice; to know which one
serves, the others are stopped (SIGSTOP): a stopped worker accepts nothing, and
the connections wait in the one accept queue for a running one.  The master is
test_serve_limits.py's: the small closure's Nix and one 24 MiB path.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import zstandard

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.narimages import IMAGES_PREFIX
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.payload import hashes, narinfo

from .test_serve import get, server_process
from .test_serve_limits import big, reload_to, two_masters  # noqa: F401 - big: the fixture

pytestmark = pytest.mark.slow


def workers_of(pid: int, count: int = 2, seconds: float = 60) -> list[int]:
    """The pids of ``count`` worker processes of the supervisor ``pid``, once that
    many run."""
    deadline = time.monotonic() + seconds
    while True:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(p) for p in f.read().split()]
        if len(children) == count or time.monotonic() > deadline:
            assert len(children) == count, children
            return children
        time.sleep(0.1)


def replacement(pid: int, known: list[int], seconds: float = 60) -> int:
    """The worker the supervisor ``pid`` started in place of one of ``known``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            new = [int(p) for p in f.read().split() if int(p) not in known]
        if new:
            return new[0]
        time.sleep(0.1)
    raise AssertionError(f"no new worker after {seconds} s")


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] == "T"


@contextmanager
def only(running: int, workers: list[int]) -> Iterator[None]:
    """Every worker but ``running`` stopped (SIGSTOP) while in the block."""
    others = [w for w in workers if w != running]
    for w in others:
        os.kill(w, signal.SIGSTOP)
    deadline = time.monotonic() + 30
    while not all(stopped(w) for w in others) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield
    finally:
        for w in others:
            with contextlib.suppress(ProcessLookupError):  # killed meanwhile
                os.kill(w, signal.SIGCONT)


def metric(port: int, name: str) -> float:
    text = get(port, "/metrics")[2].decode()
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith(f"nix_prefix_serve_{name}{{")
               or line.startswith(f"nix_prefix_serve_{name} "))


def url_of(port: int, name: str, store: str = "/q/store") -> tuple[str, narinfo.NarInfo]:
    status, _, text = get(port, f"{store}/{name[:32]}.narinfo")
    assert status == 200, text
    info = narinfo.parse(text.decode(), name, store)
    return f"{store}/{info.url}", info


def nar_hash(body: bytes) -> str:
    plain = zstandard.ZstdDecompressor().decompressobj().decompress(body)
    return hashes.format_sha256(hashlib.sha256(plain).digest())


def test_two_workers_both_serve_and_share_narinfos(big: dict) -> None:  # noqa: F811
    """Each worker alone answers; a NAR whose narinfo the other worker computed is
    served without computing it again; /metrics sums both workers."""
    with server_process(str(big["info"]), "--workers", "2") as (url, proc, log):
        port = int(url.rpartition(":")[2])
        a, b = workers_of(proc.pid)
        with only(a, [a, b]):
            nar_url, info = url_of(port, big["name"])
        with only(b, [a, b]):
            status, _, body = get(port, nar_url)
            assert status == 200 and nar_hash(body) == info.nar_hash
            assert get(port, "/healthz")[0] == 200
        # One narinfo computed in all: b took a's from the shared dir.
        assert metric(port, "narinfos_computed_total") == 1
        assert metric(port, "workers") == 2
        requests = get(port, "/metrics")[2].decode()
        assert 'nix_prefix_serve_requests_total{kind="narinfo",status="200"} 1.0' in requests
        assert 'nix_prefix_serve_requests_total{kind="nar",status="200"} 1.0' in requests
    assert any("2 workers" in line for line in log)


def test_a_killed_worker_is_restarted_and_only_its_request_fails(big: dict) -> None:  # noqa: F811
    """SIGKILL to the worker sending a NAR: that NAR is cut; every other request, made
    before, during and after, is answered; the supervisor starts another worker,
    which serves."""
    with server_process(str(big["info"]), "--workers", "2") as (url, proc, log):
        port = int(url.rpartition(":")[2])
        a, b = workers_of(proc.pid)
        with only(a, [a, b]):
            nar_url, info = url_of(port, big["name"])
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", nar_url)
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read(1024)  # under way, from a
        failures: list[str] = []
        answered = [0]
        done = threading.Event()

        def ask() -> None:  # narinfos over new connections, all along
            while not done.is_set():
                try:
                    status = get(port, f"/q/store/{big['name'][:32]}.narinfo")[0]
                    answered[0] += 1
                    if status != 200:
                        failures.append(str(status))
                except OSError as e:
                    failures.append(repr(e))
        with only(b, [a, b]):  # a takes no new connection from here on
            asking = threading.Thread(target=ask)
            asking.start()
            os.kill(a, signal.SIGKILL)
            with pytest.raises((http.client.IncompleteRead, ConnectionError)):
                resp.read()
            conn.close()
            c = replacement(proc.pid, [a, b])
        time.sleep(1)
        with only(c, [b, c]):
            status, _, body = get(port, nar_url)
            assert status == 200 and nar_hash(body) == info.nar_hash
            time.sleep(0.5)
        done.set()
        asking.join(60)
        assert not failures and answered[0] > 0
        assert proc.poll() is None
    assert any("was killed by SIGKILL: starting another" in line for line in log)


def test_sighup_reaches_every_worker(big: dict, tmp_path: Path) -> None:  # noqa: F811
    """The master is a symlink pointed elsewhere, then SIGHUP: the supervisor says it
    once all workers read it again, and each serves the new one."""
    source, second, small_name = two_masters(big, tmp_path)
    with server_process(str(source), "--workers", "2") as (url, proc, log):
        port = int(url.rpartition(":")[2])
        workers = workers_of(proc.pid)
        assert get(port, f"/q/store/{small_name[:32]}.narinfo")[0] == 404
        reload_to(second, source, proc, log, "in all 2 workers")
        assert any("reloaded the master" in x and "in all 2 workers" in x for x in log)
        for w in workers:
            with only(w, workers):
                assert get(port, f"/q/store/{small_name[:32]}.narinfo")[0] == 200
                assert get(port, f"/q/store/{big['name'][:32]}.narinfo")[0] == 404


def test_memory_is_split_and_stalled_clients_cost_others_nothing(big: dict) -> None:  # noqa: F811
    """--max-memory is the total: the workers' budgets and resident memory stay in it,
    with 24 clients that ask for the big NAR and never read; a normal client's
    narinfo and NAR are answered meanwhile."""
    total = 600
    with server_process(str(big["info"]), "--workers", "2", "--max-memory", f"{total}M",
                        "--send-timeout", "30", "--no-access-log") as (url, proc, _log):
        port = int(url.rpartition(":")[2])
        workers = workers_of(proc.pid)
        nar_url, info = url_of(port, big["name"])
        assert metric(port, "buffer_budget_bytes") <= (total << 20) - 2 * (96 << 20)
        hanging = []
        try:
            for _ in range(24):
                s = socket.create_connection(("127.0.0.1", port), timeout=60)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.sendall(f"GET {nar_url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                hanging.append(s)
            deadline = time.monotonic() + 90
            while metric(port, "streams_active") < 24 and time.monotonic() < deadline:
                time.sleep(0.2)
            started = time.monotonic()
            assert get(port, f"/q/store/{big['name'][:32]}.narinfo")[0] == 200
            assert get(port, "/a/new/store/nix-cache-info")[0] == 200  # cold: a new view
            assert time.monotonic() - started < 10
            status, _, body = get(port, nar_url)
            assert status == 200 and nar_hash(body) == info.nar_hash
        finally:
            for s in hanging:
                s.close()
        peak = 0
        for w in workers:
            with open(f"/proc/{w}/status") as f:
                peak += next(int(line.split()[1]) for line in f
                             if line.startswith("VmHWM:")) >> 10
        assert peak < total, f"the workers' peaks sum to {peak} MiB"


def test_an_installer_master_is_decoded_once_for_all_workers(big: dict,  # noqa: F811
                                                            tmp_path: Path) -> None:
    """The supervisor decodes the installer into NAR images in one private dir; both
    workers serve from it, and a killed worker takes it with it neither when it dies
    nor after."""
    installer = big["info"].parent / "big-installer.sh"
    if not installer.exists():
        build_installer(read_closure(big["info"]), installer,
                        BuildOptions(compression="zstd", level=1))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env_tmp = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)
    try:
        with server_process(str(installer), "--workers", "2") as (url, proc, log):
            port = int(url.rpartition(":")[2])
            a, b = workers_of(proc.pid)
            decoded = sorted(p.name for p in tmp.iterdir() if p.name.startswith(IMAGES_PREFIX))
            assert decoded and all(f"{IMAGES_PREFIX}{proc.pid}-" in d for d in decoded)
            with only(a, [a, b]):
                nar_url, info = url_of(port, big["name"])
            os.kill(a, signal.SIGKILL)
            c = replacement(proc.pid, [a, b])
            for w in (b, c):
                with only(w, [b, c]):
                    status, _, body = get(port, nar_url)
                    assert status == 200 and nar_hash(body) == info.nar_hash
            assert sorted(p.name for p in tmp.iterdir()
                          if p.name.startswith(IMAGES_PREFIX)) == decoded
            # A SIGHUP: each worker reads (and decodes) the installer again and lets go
            # of the old master, whose images are the supervisor's and stay.
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not any("in all 2 workers" in x for x in log):
                time.sleep(0.1)
            assert all((tmp / d).is_dir() for d in decoded)
            for w in (b, c):
                with only(w, [b, c]):
                    status, _, body = get(port, nar_url)
                    assert status == 200 and nar_hash(body) == info.nar_hash
    finally:
        if env_tmp is None:
            os.environ.pop("TMPDIR")
        else:
            os.environ["TMPDIR"] = env_tmp
