"""``nix-prefix serve``: one retargeting binary-cache server for every prefix.

Fast tests run the server (aiohttp, on 127.0.0.1) over the small sample
closure and talk to it with raw sockets and http.client: every store dir
no longer than the master's gets a cache whose NARs are the master's
paths relocated to it; hostile requests get a 4xx; clients that leave
mid-NAR leave no thread, task or file behind; a bounded load test.  The
slow tests use stock Nix 2.8 as the client, at two prefixes at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import lzma
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import zstandard

from nix_prefix.builder.limits import Limits
from nix_prefix.builder.master import Master, PrefixView, ServeOptions
from nix_prefix.builder.narimages import ImagedSource
from nix_prefix.builder.serve import Server
from nix_prefix.builder.signer import load_secret_key
from nix_prefix.payload import hashes, narinfo, signing

from . import test_cache
from .test_cache import world  # noqa: F401 - the binary-cache tests' closure, for the slow tests
from tests.support import build_small, nar_bytes


class Running:
    """A Server on 127.0.0.1 in a thread of its own (its own event loop)."""

    def __init__(self, master: Master, max_streams: int = 16, installers=(),
                 limits: Limits | None = None) -> None:
        self.server = Server(master, max_streams, installers, limits)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        assert self._ready.wait(20), "the server did not start"

    def _main(self) -> None:
        from aiohttp import web

        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(self.server.app, access_log=None, handle_signals=False)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    def tasks(self) -> int:
        async def count() -> int:
            return len(asyncio.all_tasks()) - 1
        return asyncio.run_coroutine_threadsafe(count(), self.loop).result(60)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@contextmanager
def running(master: Master, **kw) -> Iterator[Running]:
    r = Running(master, **kw)
    try:
        yield r
    finally:
        r.stop()


def get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def raw(port: int, request: bytes) -> bytes:
    """Send REQUEST as it is, in pieces, reading as it goes (the server may answer
    and close before it has read everything); return what came back."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            for i in range(0, len(request), 4096):
                s.sendall(request[i:i + 4096])
                s.setblocking(False)
                try:
                    out += s.recv(65536)
                except BlockingIOError:
                    pass
                s.setblocking(True)
                if out:
                    break
            s.settimeout(10)
            while len(out) < 65536:
                data = s.recv(65536)
                if not data:
                    break
                out += data
        except (ConnectionResetError, BrokenPipeError):
            pass
    return out


@pytest.fixture(scope="module")
def small(module_dir: Path) -> dict:
    built = build_small(module_dir, name="a-long-master-prefix-for-the-server")
    key_file = module_dir / "k.sec"
    built.nix.run("nix-store", ["--generate-binary-cache-key", "k", str(key_file),
                                str(module_dir / "k.pub")])
    key = load_secret_key(key_file)
    master = Master([built.installer], ServeOptions(sign_keys=[key]))
    return {"built": built, "master": master, "key": key, "dir": module_dir,
            "public": signing.parse_public_key((module_dir / "k.pub").read_text().strip())}


@pytest.fixture(scope="module")
def server(small: dict) -> Iterator[Running]:
    with running(small["master"]) as r:
        yield r


def master_names(small: dict) -> list[str]:
    return [p.name for p in small["master"].sources[0].manifest.paths]


def test_every_short_enough_store_dir_gets_its_cache(small: dict, server: Running) -> None:
    store_dir = "/home/alice/.nix/store"
    status, headers, body = get(server.port, store_dir + "/nix-cache-info")
    assert status == 200 and body.decode().startswith(f"StoreDir: {store_dir}\n")
    assert "ETag" in headers and "max-age" in headers["Cache-Control"]
    old_dir = small["master"].sources[0].manifest.store_dir.encode()
    for name in master_names(small):
        status, headers, text = get(server.port, f"{store_dir}/{name[:32]}.narinfo")
        assert status == 200, text
        info = narinfo.parse(text.decode(), name, store_dir)
        assert info.name == name  # same-length relocation keeps hash parts
        assert info.signed_by([small["public"]]) == [small["public"]]
        again = get(server.port, f"{store_dir}/{name[:32]}.narinfo",
                    {"If-None-Match": headers["ETag"]})
        assert again[0] == 304
        status, headers, data = get(server.port, f"{store_dir}/{info.url}")
        assert status == 200 and headers["Cache-Control"].endswith("immutable")
        plain = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        assert len(plain) == info.nar_size
        assert hashes.format_sha256(hashlib.sha256(plain).digest()) == \
            info.nar_hash
        assert old_dir not in plain  # every occurrence relocated
    # The plan is made once per store dir, and kept.
    assert small["master"].views_cached >= 1


def test_the_nar_is_the_master_path_relocated(small: dict, server: Running) -> None:
    store_dir = "/q/store"
    built = small["built"]
    root = built.roots[0]
    name = root.rpartition("/")[2]
    _, _, text = get(server.port, f"{store_dir}/{name[:32]}.narinfo")
    info = narinfo.parse(text.decode(), name, store_dir)
    _, _, data = get(server.port, f"{store_dir}/{info.url}")
    plain = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    old = nar_bytes(os.fsencode(root))
    old_dir = str(built.prefix / "store").encode()
    padded = b"/q" + b"/" * (len(old_dir) - len(store_dir)) + b"/store"
    # Every occurrence retargeted: padded in binaries (no offset moves), canonical in
    # text (docs/retargeting.md).
    assert old_dir not in plain and old.count(old_dir) > 0
    assert plain.count(padded) + plain.count(store_dir.encode() + b"/") == old.count(old_dir)
    assert info.references == sorted(r.rpartition("/")[2] for r in built.nix.run(
        "nix-store", ["-q", "--references", root]).stdout.decode().split())


def test_a_static_cache_as_the_master(small: dict, tmp_path: Path) -> None:
    """nix copy's cache at the master's store dir, served for a shorter one."""
    built = small["built"]
    cache = tmp_path / "copied"
    subprocess.run([str(built.nix.bin_dir / "nix"), "--extra-experimental-features",
                    "nix-command", "copy", "--to", f"file://{cache}", *built.roots],
                   env=built.nix.env(), check=True, capture_output=True)
    master = Master([cache], ServeOptions(compression="xz"))
    store_dir = "/c/store"
    old_dir = str(built.prefix / "store").encode()
    with running(master) as r:
        for file in cache.glob("*.narinfo"):
            theirs = narinfo.parse(file.read_text(), str(file))
            status, _, text = get(r.port, f"{store_dir}/{file.name}")
            assert status == 200
            ours = narinfo.parse(text.decode(), file.name, store_dir)
            # (Text files get the shorter canonical store dir: NarSize may shrink.)
            assert (ours.name, ours.references) == (theirs.name, theirs.references)
            assert ours.nar_size <= theirs.nar_size
            status, _, data = get(r.port, f"{store_dir}/{ours.url}")
            plain = lzma.decompress(data)
            assert hashes.format_sha256(hashlib.sha256(plain).digest()) == ours.nar_hash
            assert old_dir not in plain
        assert get(r.port, "/" + "c" * len(old_dir) + "x/nix-cache-info")[0] == 404


def test_plans_are_made_once_per_store_dir_and_bounded(small: dict) -> None:
    master = Master([small["built"].installer], ServeOptions(plans=2))
    made = []
    real = PrefixView.__init__

    def counting(self, m, store_dir):
        made.append(store_dir)
        time.sleep(0.2)  # long enough for the other threads to ask meanwhile
        real(self, m, store_dir)

    PrefixView.__init__ = counting
    try:
        with ThreadPoolExecutor(8) as pool:
            plans = list(pool.map(master.view, ["/a/store"] * 8))
        assert made == ["/a/store"] and all(p is plans[0] for p in plans)
        for q in ("/b/store", "/c/store"):
            master.view(q)
        assert master.views_cached == 2  # /a/store went first
        master.view("/a/store")
        assert made == ["/a/store", "/b/store", "/c/store", "/a/store"]
    finally:
        PrefixView.__init__ = real


HOSTILE = [
    "/../../etc/passwd",
    "/q/store/../../../etc/passwd",
    "/q/store/./x.narinfo",
    "/q//store/nix-cache-info",
    "/q/store/%2e%2e/nix-cache-info",
    "/q/st%00ore/nix-cache-info",
    "/q/store/nar/..%2F..%2Fetc%2Fpasswd",
    "/q%2Fstore/nix-cache-info",
    "/q/store/nix-cache-info?x=1",
    "/q/store/" + "z" * 32 + ".narinfo",  # an unknown hash
    "/q/store/EEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEE.narinfo",
    "/q/store/nar/" + "0" * 32 + "-" + "0" * 52 + ".nar.zst",
    "/q/store/nar/x.nar.zst",
    "/q/store/nar/x.nar.xz",
    "/q/store/etc/passwd",
    "/q/store",
    "/" + "a" * 200 + "/store/nix-cache-info",  # longer than the master's
    "/" + "a/" * 600 + "nix-cache-info",
    "/q/store/nix-cache-info/",
    "/q/store dir/nix-cache-info",
]


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_paths_get_a_4xx(server: Running, path: str) -> None:
    quoted = path.replace(" ", "%20")
    status, _, body = get(server.port, quoted)
    assert 400 <= status < 500, (status, body)
    assert b"Traceback" not in body and b"root:" not in body
    assert body.count(b"\n") <= 1


@pytest.mark.parametrize("request_bytes", [
    b"GET /q/store/nix-cache-info HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    b"GET /q/store/nix-cache-info HTTP/1.1\r\n" + b"X-H: 1\r\n" * 20_000 + b"\r\n",
    b"GET /q/st\x00ore/nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"BREW /q/store/nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"POST /q/store/nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    b"Content-Length: 3\r\n\r\nabc",
    b"\xff\xfe garbage\r\n\r\n",
])
def test_malformed_requests_get_a_4xx(server: Running, request_bytes: bytes) -> None:
    answer = raw(server.port, request_bytes)
    m = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    assert m and 400 <= int(m.group(1)) < 500, answer[:200]
    assert b"Traceback" not in answer
    # And the server still answers.
    assert get(server.port, "/q/store/nix-cache-info")[0] == 200


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _threads() -> int:
    return len([t for t in threading.enumerate() if t.is_alive()])


def test_clients_leaving_mid_nar_leak_nothing(small: dict, tmp_path: Path) -> None:
    # A big path, so that a NAR is far from done when its client leaves.
    big = tmp_path / "big"
    big.mkdir()
    (big / "data").write_bytes(os.urandom(8 << 20))
    nix = small["built"].nix
    path = nix.run("nix-store", ["--add", str(big)]).stdout.decode().strip()
    info_dir = nix.write_closure_info([path], tmp_path / "big-info")
    master = Master([info_dir], ServeOptions(compression="none"))
    name = path.rpartition("/")[2]
    with running(master, max_streams=2) as r:
        status, _, text = get(r.port, f"/q/store/{name[:32]}.narinfo")
        assert status == 200
        url = narinfo.parse(text.decode(), name).url
        get(r.port, f"/q/store/{url}")  # warm: the pool's threads exist
        time.sleep(0.5)
        before = (_open_fds(), r.tasks())
        for _ in range(12):  # more than max_streams: a leaked slot would block the rest
            with socket.create_connection(("127.0.0.1", r.port), timeout=10) as s:
                s.sendall(f"GET /q/store/{url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                assert s.recv(65536).startswith(b"HTTP/1.1 200")
        # A leak shows as more fds or tasks than before; fewer is fine: a
        # descriptor open at "before" (the warm-up's connection) may close later.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
                _open_fds() > before[0] or r.tasks() > before[1] or r.server.active_streams):
            time.sleep(0.2)
        assert _open_fds() <= before[0] and r.tasks() <= before[1], (_open_fds(), r.tasks(), before)
        assert r.server.active_streams == 0
        # Still serving whole NARs.
        status, _, data = get(r.port, f"/q/store/{url}")
        assert status == 200 and len(data) == narinfo.parse(text.decode(), name).nar_size


def test_a_master_damaged_while_served_is_a_500_and_one_line(small: dict,
                                                             tmp_path: Path) -> None:
    (tmp_path / "f").write_text("soon gone\n")
    nix = small["built"].nix
    path = nix.run("nix-store", ["--add", str(tmp_path / "f")]).stdout.decode().strip()
    # No NAR images (builder/narimages.py): every request reads the store.
    master = Master([nix.write_closure_info([path], tmp_path / "info")],
                    ServeOptions(decode_limit=0))
    assert not isinstance(master.sources[0], ImagedSource)
    os.rename(path, tmp_path / "moved")
    try:
        with running(master) as r:
            name = path.rpartition("/")[2]
            status, _, body = get(r.port, f"/q/store/{name[:32]}.narinfo")
            assert status == 500 and body.count(b"\n") == 1 and b"Traceback" not in body
            assert get(r.port, "/q/store/nix-cache-info")[0] == 200
    finally:
        os.rename(tmp_path / "moved", path)


def test_a_master_damaged_after_start_is_served_as_it_was_checked(small: dict,
                                                                  tmp_path: Path) -> None:
    """With NAR images the store is read once, at start, checked against its NAR hash:
    a path damaged later is still served as it was registered; an image gone is a
    500 of one line."""
    (tmp_path / "f").write_text("soon changed\n")
    nix = small["built"].nix
    path = nix.run("nix-store", ["--add", str(tmp_path / "f")]).stdout.decode().strip()
    name = path.rpartition("/")[2]
    master = Master([nix.write_closure_info([path], tmp_path / "info")], ServeOptions())
    source = master.sources[0]
    assert isinstance(source, ImagedSource)
    os.rename(path, tmp_path / "moved")
    try:
        with running(master) as r:
            status, _, text = get(r.port, f"/q/store/{name[:32]}.narinfo")
            assert status == 200
            info = narinfo.parse(text.decode(), name)
            status, _, data = get(r.port, f"/q/store/{info.url}")
            assert status == 200
            nar = zstandard.ZstdDecompressor().decompressobj().decompress(data)
            assert hashes.format_sha256(hashlib.sha256(nar).digest()) == info.nar_hash
            assert b"soon changed\n" in nar
            source.image(name).file.unlink()
            status, _, body = get(r.port, f"/r/store/{name[:32]}.narinfo")
            assert status == 500 and body.count(b"\n") == 1 and b"Traceback" not in body
    finally:
        os.rename(tmp_path / "moved", path)


def test_an_uncompressed_nar_says_its_length(small: dict) -> None:
    """Uncompressed, a NAR's length is its NarSize, known before the first byte: sent
    with Content-Length (no chunks); compressed, in chunks."""
    for compression in ("none", "zstd"):
        master = Master([small["built"].installer], ServeOptions(compression=compression))
        try:
            with running(master) as r:
                for h in list(master.view("/q/store")._by_hash)[:3]:
                    status, _, text = get(r.port, f"/q/store/{h}.narinfo")
                    info = narinfo.parse(text.decode(), h)
                    status, headers, data = get(r.port, f"/q/store/{info.url}")
                    assert status == 200
                    lengths = {k.lower(): v for k, v in headers.items()}
                    if compression == "none":
                        assert int(lengths["content-length"]) == info.nar_size == len(data)
                        assert hashes.format_sha256(hashlib.sha256(data).digest()) == \
                            info.nar_hash
                    else:
                        assert lengths.get("transfer-encoding") == "chunked"
        finally:
            master.close()


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def big_path(nix, tmp_path: Path) -> str:
    """A store path of 64 MiB of random bytes (incompressible), added to ``nix``'s store."""
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "data", "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    return nix.run("nix-store", ["--add", str(big)]).stdout.decode().strip()


def test_a_client_that_does_not_read_holds_a_few_pieces_only(small: dict,
                                                              tmp_path: Path) -> None:
    """Bounded memory: a 64 MiB NAR for a client that reads nothing stops being produced
    once the queue and the socket buffers are full."""
    nix = small["built"].nix
    path = big_path(nix, tmp_path)
    master = Master([nix.write_closure_info([path], tmp_path / "info")],
                    ServeOptions(compression="none"))
    name = path.rpartition("/")[2]
    with running(master) as r:
        text = get(r.port, f"/q/store/{name[:32]}.narinfo")[2]
        url = narinfo.parse(text.decode(), name).url
        before = _rss_mb()
        with socket.create_connection(("127.0.0.1", r.port), timeout=10) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            s.sendall(f"GET /q/store/{url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            # The stream has begun (on a busy machine that may take a while), then
            # 3 s for it to fill the queue and the socket buffers and stall.
            deadline = time.monotonic() + 60
            while r.server.active_streams == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert r.server.active_streams == 1
            time.sleep(3)
            grown = _rss_mb() - before
            assert r.server.active_streams == 1
            assert grown < 24, f"the server holds {grown:.0f} MiB for one stalled client"
            # The rest still comes, whole, once the client reads.
            got = 0
            while True:
                data = s.recv(1 << 20)
                if not data:
                    break
                got += len(data)
                if got > 64 << 20:
                    break
        assert got > 64 << 20


def test_bounded_load_on_loopback(small: dict, server: Running) -> None:
    """64 clients at once, 640 requests in all, within 120 s: every answer right."""
    names = master_names(small)
    store_dir = "/load/store"
    expected = {}
    for name in names:
        text = get(server.port, f"{store_dir}/{name[:32]}.narinfo")[2]
        expected[name] = narinfo.parse(text.decode(), name)
    deadline = time.monotonic() + 120

    def client(n: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        done = 0
        try:
            for i in range(10):
                if time.monotonic() > deadline:
                    break
                name = names[(n + i) % len(names)]
                path = (f"{store_dir}/{name[:32]}.narinfo" if i % 2 else
                        f"{store_dir}/{expected[name].url}")
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                assert resp.status == 200
                if i % 2 == 0:
                    plain = zstandard.ZstdDecompressor().decompressobj().decompress(body)
                    assert len(plain) == expected[name].nar_size
                done += 1
        finally:
            conn.close()
        return done

    with ThreadPoolExecutor(64) as pool:
        counts = list(pool.map(client, range(64)))
    assert sum(counts) == 640 and time.monotonic() < deadline


def test_the_cli_refuses_bad_arguments_with_one_line(small: dict) -> None:
    code = "from nix_prefix.builder.cli import main; main()"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        for args, needle in ((["--listen", "nowhere"], "is not HOST:PORT"),
                             (["--compression", "lz4"], "unknown compression"),
                             (["--listen", busy], "cannot listen")):
            done = subprocess.run([sys.executable, "-c", code, "serve",
                                   str(small["built"].installer), *args],
                                  capture_output=True, text=True, timeout=60, check=False)
            assert done.returncode != 0 and needle in done.stderr, done.stderr
            assert "Traceback" not in done.stderr


# -- stock Nix as the client -------------------------------------------------------------------


@contextmanager
def serving(*args: str) -> Iterator[str]:
    """``nix-prefix serve ARGS --listen 127.0.0.1:0`` in a process of its own; yields
    its base URL; stopped (SIGINT, as Ctrl-C) on exit."""
    with server_process(*args) as (url, _proc, _log):
        yield url


@contextmanager
def server_process(*args: str, listen: str = "127.0.0.1:0",
                   ) -> Iterator[tuple[str, subprocess.Popen, list[str]]]:
    """``serving``, yielding (base URL, the process, the lines of its stderr so far:
    read all along, so that its access log never fills the pipe)."""
    import signal

    code = "from nix_prefix.builder.cli import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", *args, "--listen", listen],
                            stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while " at http://" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            log.append(line)
            if not line and proc.poll() is not None:
                break
        m = re.search(r" at (http://[^/ ]+)/STORE/DIR", line)
        assert m, f"the server did not start: {''.join(log)[-2000:]}"
        reader.start()
        yield m.group(1), proc, log
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if reader.is_alive():
            reader.join(10)
        rest = "".join(log)
        assert "Traceback" not in rest, rest[-5000:]


@pytest.mark.slow
def test_two_prefixes_substitute_from_one_server_at_once(world: dict) -> None:  # noqa: F811
    base = world["base"]
    with serving(str(world["installer"]), "--sign-key", str(base / "publisher.sec")) as url:
        prefixes = [base / "serve-one", base / "another-serve-prefix"]
        urls = [f"{url}{q}/store" for q in prefixes]
        for q, u in zip(prefixes, urls, strict=True):
            test_cache.set_up_prefix(world, q, u, world["keys"]["publisher"])
        with ThreadPoolExecutor(2) as pool:  # both at the same time
            list(pool.map(lambda qu: test_cache.assert_substitutes_everything(world, *qu),
                          zip(prefixes, urls, strict=True)))
        # The two stores hold other paths: each Nix got its own, computed for its store dir.
        b = [test_cache.outputs_at(q, world["expr"]) for q in prefixes]
        assert {p.rpartition("/")[2] for p in b[0]}.isdisjoint(p.rpartition("/")[2]
                                                                for p in b[1] if "-b" in p)

        # Under another key, Nix refuses what the server signed.
        q = base / "serve-stranger"
        test_cache.set_up_prefix(world, q, f"{url}{q}/store", world["keys"]["stranger"])
        refused = test_cache.nix_at(q, "nix-build", "--no-out-link", "--max-jobs", "0",
                                    str(world["expr"]), *test_cache.ATTRS)
        assert refused.returncode != 0
        assert "is not signed by any of the keys in 'trusted-public-keys'" in refused.stderr


@pytest.mark.slow
@pytest.mark.parametrize("version", [v for v in test_cache.VERSIONS if v != "2.8"])
def test_newer_nix_substitutes_from_the_server(world: dict, version: str) -> None:  # noqa: F811
    base = world["base"]
    with serving(str(world["installer"]), "--sign-key", str(base / "publisher.sec")) as url:
        q = base / f"serve-v{version.replace('.', '')}"
        test_cache.set_up_prefix(world, q, f"{url}{q}/store", world["keys"]["publisher"])
        test_cache.assert_substitutes_everything(world, q, f"{url}{q}/store", version)


@pytest.mark.slow
def test_a_cache_built_at_a_long_prefix_serves_shorter_ones(world: dict) -> None:  # noqa: F811
    """The master is a binary cache (nix-prefix cache, exact) for a long prefix: a Nix
    at a shorter one substitutes everything from the server, building nothing."""
    base = world["base"]
    cache = base / "serve-master-cache"
    test_cache.make_cache(world, base / "a-long-master-cache-prefix", cache)
    with serving(str(cache), "--sign-key", str(base / "publisher.sec")) as url:
        q = base / "serve-from-cache"
        test_cache.set_up_prefix(world, q, f"{url}{q}/store", world["keys"]["publisher"])
        test_cache.assert_substitutes_everything(world, q, f"{url}{q}/store")



@pytest.mark.slow
@pytest.mark.parametrize("source", ["installer", "info"])
def test_nar_images_serve_the_bytes_the_retarget_sink_makes(world: dict,  # noqa: F811
                                                           source: str) -> None:
    """Every narinfo and NAR at new store dirs, exact (an installer with its derivations)
    and same-length (a closureInfo dir): the same bytes from images plus patches as
    from each path read and rewritten per request (no images)."""
    options = ServeOptions(compression="none")
    with_images = Master([world[source]], options)
    without = Master([world[source]], ServeOptions(compression="none", decode_limit=0))
    assert isinstance(with_images.sources[0], ImagedSource)
    assert not isinstance(without.sources[0], ImagedSource)
    try:
        for q in ("/home/alice/.nix/store", "/q/store"):
            a, b = with_images.view(q), without.view(q)
            for hash_part in a._by_hash:
                assert a.narinfo(hash_part) == b.narinfo(hash_part)
                streams: list[list[bytes]] = [[], []]
                a.stream(hash_part, streams[0].append)
                b.stream(hash_part, streams[1].append)
                assert b"".join(streams[0]) == b"".join(streams[1])
            assert any(e.patched() is not None and e.patched().patches
                       for e in a._by_hash.values())
    finally:
        with_images.close()
        without.close()
