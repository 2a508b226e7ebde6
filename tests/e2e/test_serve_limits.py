"""``nix-prefix serve``'s limits, scheduler, metrics and reload (issue 26), fast.

The cold-work scheduler is driven directly on an event loop; the rest runs the
server (in this process or as ``nix-prefix serve``) on 127.0.0.1 over the
small sample closure and one 24 MiB path.  tests/e2e/test_serve_load.py has the
attacks at full size (slow).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zstandard

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.limits import (
    Limits,
)
from nix_prefix.builder.master import Master, ServeOptions
from nix_prefix.builder.offer import load_all
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.payload import hashes, narinfo

from .test_serve import get, running, server_process
from tests.support import build_small


@pytest.fixture(scope="module")
def big(module_dir: Path) -> dict:
    """The small closure's Nix, and a master with one 24 MiB path of random bytes."""
    built = build_small(module_dir, name="a-long-master-prefix-for-limits")
    data = module_dir / "big"
    data.mkdir()
    (data / "data").write_bytes(os.urandom(24 << 20))
    path = built.nix.run("nix-store", ["--add", str(data)]).stdout.decode().strip()
    info = built.nix.write_closure_info([path], module_dir / "big-info")
    return {"built": built, "info": info, "name": path.rpartition("/")[2]}


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_a_parked_producer_resumes_with_the_same_bytes(big: dict, compression: str) -> None:
    """A client that stops reading: its producer parks (freeing its slot); when it
    reads again, the producer runs again from where the client is, the NAR whole
    (zstd: made again from the start and checked; none: read on from the byte the
    client stopped at, in the NAR image)."""
    master = Master([big["info"]], ServeOptions(compression=compression))
    limits = Limits(park_after=0.5, park_idle=1, producers=1, stream_buffer=512 << 10)
    with running(master, limits=limits) as r:
        name = big["name"]
        text = get(r.port, f"/q/store/{name[:32]}.narinfo")[2].decode()
        info = narinfo.parse(text, name, "/q/store")
        conn = http.client.HTTPConnection("127.0.0.1", r.port, timeout=60)
        conn.connect()
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        conn.request("GET", f"/q/store/{info.url}")
        resp = conn.getresponse()
        body = resp.read(1 << 16)
        deadline = time.monotonic() + 60
        while r.server.streams.parked == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert r.server.streams.parked == 1 and r.server.streams.producing == 0
        # Its slot is free: another client gets the NAR meanwhile (producers=1).
        status, _, other = get(r.port, f"/q/store/{info.url}")
        assert status == 200
        body += resp.read()
        conn.close()
        for nar in (body, other):
            plain = zstandard.ZstdDecompressor().decompressobj().decompress(nar) \
                if compression == "zstd" else nar
            assert hashes.format_sha256(hashlib.sha256(plain).digest()) == info.nar_hash
        assert r.server.streams.resumes >= 1 and r.server.streams.dropped["diverged"] == 0
        assert r.server.budget.used == 0


def test_one_address_gets_so_many_nar_responses(big: dict) -> None:
    """--streams-per-client: a third NAR response for one address while two hang on
    is a 503 at once; once they are gone, it is served."""
    master = Master([big["info"]], ServeOptions())
    with running(master, limits=Limits(streams_per_client=2)) as r:
        name = big["name"]
        text = get(r.port, f"/q/store/{name[:32]}.narinfo")[2].decode()
        url = f"/q/store/{narinfo.parse(text, name, '/q/store').url}"
        hanging = []
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", r.port), timeout=60)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            s.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert s.recv(12) == b"HTTP/1.1 200"
            hanging.append(s)
        status, headers, _ = get(r.port, url)
        assert status == 503 and headers["Retry-After"].isdigit()
        assert r.server.streams.refused == 1
        for s in hanging:
            s.close()
        deadline = time.monotonic() + 60
        while r.server.streams.active and time.monotonic() < deadline:
            time.sleep(0.1)
        assert get(r.port, url)[0] == 200


def test_an_installer_download_that_stalls_is_dropped(big: dict) -> None:
    """/installers/NAME.sh has the same timed writes as a NAR: a client that takes
    nothing is dropped after --send-timeout."""
    installer = big["info"].parent / "big-installer.sh"
    if not installer.exists():
        build_installer(read_closure(big["info"]), installer,
                        BuildOptions(compression="zstd", level=1))
    offered = load_all([installer])
    master = Master([big["info"]], ServeOptions())
    with running(master, installers=list(offered.values()),
                 limits=Limits(send_timeout=2)) as r:
        name = next(iter(offered.values())).file_name
        with socket.create_connection(("127.0.0.1", r.port), timeout=60) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(f"GET /installers/{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            deadline = time.monotonic() + 60
            while r.server.streams.dropped["stalled"] == 0 and time.monotonic() < deadline:
                time.sleep(0.2)
        assert r.server.streams.dropped["stalled"] == 1


def test_healthz_metrics_and_access_log(big: dict) -> None:
    args = [str(big["info"]), "--max-memory", "300M"]
    with server_process(*args) as (url, proc, log):
        port = int(url.rpartition(":")[2])
        assert get(port, "/healthz")[:3:2] == (200, b"ok\n")
        name = big["name"]
        assert get(port, f"/q/store/{name[:32]}.narinfo")[0] == 200
        assert get(port, "/q/store/" + "z" * 32 + ".narinfo")[0] == 404
        status, headers, text = get(port, "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        lines = text.decode().splitlines()
        for wanted in ('nix_prefix_serve_requests_total{kind="narinfo",status="200"} 1.0',
                       'nix_prefix_serve_requests_total{kind="narinfo",status="404"} 1.0',
                       "nix_prefix_serve_plans_computed_total 1.0",
                       "nix_prefix_serve_narinfos_computed_total 1.0",
                       "nix_prefix_serve_cold_waiting 0.0", "nix_prefix_serve_clients_stalled 0.0"):
            assert wanted in lines, wanted
        assert any(line.startswith("process_resident_memory_bytes ") for line in lines)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("/healthz" in line for line in log):
            time.sleep(0.1)
    access = [line for line in log if f"/q/store/{name[:32]}.narinfo" in line]
    assert len(access) == 1 and '" 200 ' in access[0] and "127.0.0.1" in access[0]


def two_masters(big: dict, tmp_path: Path) -> tuple[Path, Path, str]:
    """A symlink to ``big``'s master; a second master (the small closure's first root),
    to point it at; that root's name."""
    small = big["built"].roots[0]
    second = big["built"].nix.write_closure_info([small], tmp_path / "second")
    source = tmp_path / "master"
    source.symlink_to(big["info"])
    return source, second, small.rpartition("/")[2]


def reload_to(second: Path, source: Path, proc: subprocess.Popen, log: list[str],
              said: str = "reloaded") -> None:
    """Point ``source`` at ``second``, send SIGHUP, wait for ``said`` in the log."""
    source.unlink()
    source.symlink_to(second)
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(said in x for x in log):
        time.sleep(0.1)


def test_sighup_reloads_the_master_without_dropping_requests(big: dict, tmp_path: Path) -> None:
    """The source is a symlink; SIGHUP after it points elsewhere serves the new master,
    and the big NAR being sent meanwhile (from the old one) arrives whole."""
    source, second, small_name = two_masters(big, tmp_path)
    with server_process(str(source)) as (url, proc, log):
        port = int(url.rpartition(":")[2])
        name = big["name"]
        assert get(port, f"/q/store/{small_name[:32]}.narinfo")[0] == 404
        text = get(port, f"/q/store/{name[:32]}.narinfo")[2].decode()
        info = narinfo.parse(text, name, "/q/store")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", f"/q/store/{info.url}")
        resp = conn.getresponse()
        body = resp.read(1024)  # under way
        reload_to(second, source, proc, log)
        assert get(port, f"/q/store/{small_name[:32]}.narinfo")[0] == 200
        assert get(port, f"/q/store/{name[:32]}.narinfo")[0] == 404
        body += resp.read()
        conn.close()
        plain = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        assert hashes.format_sha256(hashlib.sha256(plain).digest()) == info.nar_hash
        assert proc.poll() is None


def test_too_little_memory_is_one_line(big: dict) -> None:
    code = "from nix_prefix.builder.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code, "serve", str(big["info"]),
                           "--max-memory", "20M", "--listen", "127.0.0.1:0"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "--max-memory 20M is too little" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 2

