"""The cache tier of docs/serving.md, run as it stands: nginx (Debian's nginx-light)
in front of two ``nix-prefix serve`` origins, stock Nix as the client (slow).

The nginx configuration is the ```` ```nginx ```` block of docs/serving.md, with
its three ports (8080, 8081, 8082) replaced by free ones; nginx runs from a
temporary prefix dir (``nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'``),
every path inside it.  A Nix at one prefix substitutes everything through it; a
second, fresh store at the same prefix gets everything from nginx's cache with
no request reaching an origin (their /metrics count requests); with one origin
killed mid-way, a Nix at another prefix still substitutes everything.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from . import test_cache
from .test_cache import world  # noqa: F401 - the binary-cache tests' closure
from .test_serve import get, server_process
from .test_serve_load import metric
from tests.conftest import _force_remove
from tests.rules.test_docs import DOCS, blocks

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None,
                                reason="nginx is not installed (.ci/setup.sh installs it)")


def documented_config() -> str:
    found = [code for _, info, code in blocks(DOCS / "serving.md") if info == "nginx"]
    assert len(found) == 1, "docs/serving.md has one nginx block"
    return found[0]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextmanager
def nginx(config: str, prefix: Path, port: int) -> Iterator[Path]:
    """nginx from PREFIX (a dir its workers, another uid when run as root, can reach)."""
    prefix.mkdir()
    (prefix / "nginx.conf").write_text(config)
    proc = subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                             "-g", "daemon off;"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if get(port, "/healthz", )[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "nginx did not answer"
            time.sleep(0.2)
        yield prefix
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def origin_requests(*ports: int) -> float:
    """Requests the origins answered, but for /metrics itself."""
    total = 0.0
    for port in ports:
        text = get(port, "/metrics")[2].decode()
        total += sum(float(m.group(2)) for m in re.finditer(
            r'^nix_prefix_serve_requests_total\{kind="([^"]+)",[^}]*\} (\S+)$', text, re.M)
            if m.group(1) != "metrics")
    return total


def settled_requests(*ports: int) -> float:
    """``origin_requests`` once it stops moving: a streamed response is counted when its
    handler returns, which may be after nginx (and the Nix behind it) got its last
    byte; a figure read before that is one short, and a later read "reached an origin"."""
    before = origin_requests(*ports)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = origin_requests(*ports)
        if now == before:
            break
        before = now
    return before


@pytest.mark.slow
def test_the_documented_nginx_tier(world: dict, world_dir: Path) -> None:  # noqa: F811
    base = world["base"]
    front, one, two = free_ports(3)
    config = documented_config()
    for documented, port in (("8080", front), ("8081", one), ("8082", two)):
        config, n = re.subn(rf"127\.0\.0\.1:{documented}\b", f"127.0.0.1:{port}", config)
        assert n == 1, documented
    key = world["keys"]["publisher"]
    args = (str(world["installer"]), "--sign-key", str(base / "publisher.sec"),
            "--client-header", "X-Real-IP")
    with server_process(*args, listen=f"127.0.0.1:{one}") as (_, first, _log1), \
            server_process(*args, listen=f"127.0.0.1:{two}"), \
            nginx(config, world_dir / "nginx", front) as prefix_dir:
        url = f"http://127.0.0.1:{front}"
        q = base / "tier-one"
        test_cache.set_up_prefix(world, q, f"{url}{q}/store", key)
        test_cache.assert_substitutes_everything(world, q, f"{url}{q}/store")
        served = settled_requests(one, two)
        assert served > 0

        # A fresh store at the same prefix: all from nginx's cache.
        _force_remove(q)
        assert not q.exists()
        seen = len((prefix_dir / "access.log").read_text().splitlines())
        test_cache.set_up_prefix(world, q, f"{url}{q}/store", key)
        test_cache.assert_substitutes_everything(world, q, f"{url}{q}/store")
        assert settled_requests(one, two) == served, "a request reached an origin"
        log = (prefix_dir / "access.log").read_text().splitlines()[seen:]
        nars = [line for line in log if f"{q}/store/nar/" in line]
        assert nars and all(" 200 " in line and "cache=HIT" in line for line in nars), log

        # Another prefix, and one origin killed once its first request is in.
        q2 = base / "tier-another-prefix"
        test_cache.set_up_prefix(world, q2, f"{url}{q2}/store", key)
        errors: list[BaseException] = []

        def substitute() -> None:
            try:
                test_cache.assert_substitutes_everything(world, q2, f"{url}{q2}/store")
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        nix = threading.Thread(target=substitute)
        nix.start()
        deadline = time.monotonic() + 120
        while origin_requests(one, two) == served and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = nix.is_alive()
        first.kill()
        nix.join(600)
        assert alive, "the Nix was done before the origin was killed"
        assert not nix.is_alive() and errors == [], errors
        assert metric(two, "narinfos_computed_total") > 0
