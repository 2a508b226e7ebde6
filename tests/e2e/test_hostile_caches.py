"""--from-cache against hostile HTTP caches: every walk, read and redirect is bounded.

Each cache is a small ``http.server`` app on 127.0.0.1 in a thread of the test
process, whose handlers end by themselves (a drip stops after DRIP_FOR
seconds, or when the test is over).  The fetcher must stop at its bound with
one line naming the bound, and leave nothing behind; the memory bound is the
peak RSS of a real ``nix-prefix closure --from-cache`` child (support.measured).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.errors import BuildError
from nix_prefix.builder.fromcache import FetchLimits, fetch_closure, write_closure_dir
from nix_prefix.builder.leftovers import remove_stale
from nix_prefix.builder.master import Master, ServeOptions
from nix_prefix.builder.pack import preamble_sha256, write_installer_file
from nix_prefix.payload import hashes, nar, narinfo, nix32, registration
from nix_prefix.payload.machine import host_system
from nix_prefix.payload.manifest import Chunk, Manifest, ManifestError, PathEntry
from nix_prefix.payload.registration import ValidPathInfo

from .test_hostile import FAKE_HASH, TOP, TWO, good_entries, tar_of
from tests.hostile_files import write_chunk
from tests.support import measured, run_installer

STORE = "/p/store"
DRIP_FOR = 90  # seconds a dripping handler goes on at most
Route = Callable[[BaseHTTPRequestHandler, threading.Event], None]


def base(n: int, name: str = "x") -> str:
    """A valid store path base name, the n-th of its kind."""
    return nix32.encode(hashlib.sha256(b"%d" % n).digest()[:20]) + "-" + name


def nar_of(contents: bytes) -> bytes:
    """The NAR of a regular file holding ``contents``."""
    out: list[bytes] = []
    writer = nar.NarWriter(out.append)
    writer.regular(b"", False, len(contents))
    writer.contents(contents)
    writer.end_regular()
    return b"".join(out)


def narinfo_text(name: str, nar_bytes: bytes, refs: list[str] = (), nar_size: int | None = None,
                 file_size: bool = True) -> str:
    info = narinfo.NarInfo(f"{STORE}/{name}", f"nar/{name}.nar", "none",
                           "" if not file_size else
                           hashes.format_sha256(hashlib.sha256(nar_bytes).digest()),
                           len(nar_bytes) if file_size else 0,
                           hashes.format_sha256(hashlib.sha256(nar_bytes).digest()),
                           len(nar_bytes) if nar_size is None else nar_size, refs)
    return info.to_text()


class Cache:
    """An HTTP server on 127.0.0.1 whose paths are answered by ``routes`` (bytes, or a
    function that writes the answer itself); every request is logged."""

    def __init__(self, routes: dict[str, bytes | Route],
                 fallback: Callable[[str], bytes | None] | None = None) -> None:
        self.routes = {"/nix-cache-info": f"StoreDir: {STORE}\n".encode(), **routes}
        self.fallback = fallback
        self.requests: list[str] = []
        self.stop = threading.Event()
        cache = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                cache.requests.append(self.path)
                answer = cache.routes.get(self.path)
                if answer is None and cache.fallback is not None:
                    answer = cache.fallback(self.path)
                if answer is None:
                    self.send_error(404)
                elif callable(answer):
                    try:
                        answer(self, cache.stop)
                    except OSError:  # the client went away: what a bound does
                        pass
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Cache:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def drip(data: bytes, every: float, then_endless: bool = False,
         length: int | None = None) -> Route:
    """Send ``data`` a byte every ``every`` s (all at once when ``every`` is 0), then,
    with ``then_endless``, zero bytes without end; for at most DRIP_FOR s."""
    def route(h: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        h.send_response(200)
        if length is not None:
            h.send_header("Content-Length", str(length))
        h.end_headers()
        ends = time.monotonic() + DRIP_FOR
        if every:
            for i in range(len(data)):
                if stop.wait(every) or time.monotonic() > ends:
                    return
                h.wfile.write(data[i:i + 1])
                h.wfile.flush()
        else:
            h.wfile.write(data)
        while then_endless and not stop.is_set() and time.monotonic() < ends:
            h.wfile.write(b"\0" * 65536)
    return route


def redirect(to: str) -> Route:
    def route(h: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        h.send_response(302)
        h.send_header("Location", to)
        h.send_header("Content-Length", "0")
        h.end_headers()
    return route


def one_line(e: pytest.ExceptionInfo[BuildError]) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    return text


def fetch(url: str, root: str, dest: Path, **limits: float) -> None:
    fetch_closure(url, [root], dest, say=str, limits=FetchLimits(**limits))


ROOT = base(0, "root")
NAR = nar_of(b"hello\n" * 1000)


def good_routes(name: str = ROOT, nar_bytes: bytes = NAR, **kw) -> dict[str, bytes | Route]:
    return {f"/{name[:32]}.narinfo": narinfo_text(name, nar_bytes, **kw).encode(),
            f"/nar/{name}.nar": nar_bytes}


# -- 7. the walk is bounded --------------------------------------------------------------------

def fan_out(width: int) -> Callable[[str], bytes | None]:
    """Every narinfo names ``width`` paths never seen before, for ever."""
    def answer(path: str) -> bytes | None:
        if not path.endswith(".narinfo"):
            return None
        n = int(hashlib.sha256(path.encode()).hexdigest()[:12], 16)
        refs = [base(n * width + i + 1) for i in range(width)]
        name = ROOT if path[1:33] == ROOT[:32] else f"{path[1:33]}-x"
        return narinfo_text(name, NAR, refs).encode()
    return answer


def test_an_endless_closure_stops_at_max_paths(tmp_path: Path) -> None:
    with Cache({}, fan_out(50)) as cache:
        with pytest.raises(BuildError) as e:
            fetch(cache.url, ROOT, tmp_path / "got", max_paths=300)
    assert "more than 300 store paths (--max-paths 300)" in one_line(e)
    assert len(cache.requests) < 30  # it stopped as soon as it knew
    assert not (tmp_path / "got").exists()


def run_measured(args: list[str], timeout: float) -> tuple[int, str, int]:
    """Run the builder's command line; its exit code, stderr and peak RSS in bytes."""
    code = "from nix_prefix.builder.cli import main; main()"
    done = measured([sys.executable, "-c", code, *args], timeout=timeout,
                    env={**os.environ, "NO_COLOR": "1"})
    return done.returncode, done.stderr, done.max_rss


def test_the_walk_stays_small_in_memory(tmp_path: Path) -> None:
    """Paths named 50 at a time: the child stops at the default --max-paths, and its
    peak RSS stays far below what the unbounded walk reached (594 MB in 90 s)."""
    with Cache({}, fan_out(50)) as cache:
        code, err, rss = run_measured(["closure", "--from-cache", cache.url, ROOT,
                                       "-o", str(tmp_path / "out")], 300)
    print(f"peak RSS {rss >> 20} MiB after {len(cache.requests)} requests")
    assert code == 1 and "--max-paths 50000" in err and len(err.strip().splitlines()) == 1, err
    assert rss < 150 << 20
    assert not (tmp_path / "out").exists()


def test_the_announced_bytes_stop_at_max_bytes(tmp_path: Path) -> None:
    with Cache(good_routes(nar_size=10 ** 15)) as cache:
        with pytest.raises(BuildError) as e:
            fetch(cache.url, ROOT, tmp_path / "got")
    assert "--max-bytes" in one_line(e) and "NarSize 1000000000000000" in str(e.value)
    assert f"/nar/{ROOT}.nar" not in cache.requests  # refused before any NAR
    assert not (tmp_path / "got").exists()


# -- 8. deadlines ------------------------------------------------------------------------------

def timed(call: Callable[[], None]) -> tuple[float, BaseException | None]:
    """Run ``call`` in a thread for at most 60 s: the seconds it took (60 if it did not
    end) and what it raised."""
    caught: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as e:  # noqa: BLE001 (handed to the test)
            caught.append(e)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    return time.monotonic() - started, caught[0] if caught else None


def test_a_dripped_narinfo_stops_at_the_deadline(tmp_path: Path) -> None:
    text = narinfo_text(ROOT, NAR).encode()
    with Cache({f"/{ROOT[:32]}.narinfo": drip(text, 0.5)}) as cache:
        took, error = timed(lambda: fetch(cache.url, ROOT, tmp_path / "got", deadline=3))
    assert took < 45 and isinstance(error, BuildError), (took, error)
    assert "--deadline 3 s" in str(error) and "\n" not in str(error)


def test_a_dripped_nar_stops_at_its_request_deadline(tmp_path: Path) -> None:
    routes = good_routes()
    routes[f"/nar/{ROOT}.nar"] = drip(NAR, 0.5, length=len(NAR))
    with Cache(routes) as cache:
        took, error = timed(lambda: fetch(cache.url, ROOT, tmp_path / "got",
                                          request_seconds=3))
    assert took < 45 and isinstance(error, BuildError), (took, error)
    assert "a request may take 3 s" in str(error) and "\n" not in str(error)
    assert not (tmp_path / "got" / ROOT).exists()


def test_a_nar_followed_by_endless_bytes_is_read_to_its_narsize(tmp_path: Path) -> None:
    routes = good_routes(file_size=False)
    routes[f"/nar/{ROOT}.nar"] = drip(NAR, 0, then_endless=True)
    with Cache(routes) as cache:
        took, error = timed(lambda: fetch(cache.url, ROOT, tmp_path / "got"))
    assert error is None and took < 45, (took, error)
    assert (tmp_path / "got" / ROOT).read_bytes() == b"hello\n" * 1000


def test_a_nar_longer_than_its_filesize_is_cut_there(tmp_path: Path) -> None:
    routes = good_routes()
    routes[f"/nar/{ROOT}.nar"] = drip(NAR, 0, then_endless=True)
    with Cache(routes) as cache:
        took, error = timed(lambda: fetch(cache.url, ROOT, tmp_path / "got"))
    assert took < 45 and isinstance(error, BuildError), (took, error)
    assert "longer than its FileSize" in str(error)


def test_a_response_cut_short_of_its_content_length_is_one_line(tmp_path: Path) -> None:
    def cut(h: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.write(b"StoreDir: ")
        h.close_connection = True
    with Cache({"/nix-cache-info": cut}) as cache:
        with pytest.raises(BuildError) as e:
            fetch(cache.url, ROOT, tmp_path / "got")
    assert f"cannot read {cache.url}/nix-cache-info: the server broke off 990 bytes short " \
        "of its Content-Length" in one_line(e)


# -- 9. free space against the announced sizes -------------------------------------------------

def test_a_closure_larger_than_the_free_space_is_refused_before_fetching(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    with Cache(good_routes(nar_size=free + (1 << 30))) as cache:
        with pytest.raises(BuildError) as e:
            fetch(cache.url, ROOT, tmp_path / "got", max_bytes=1 << 60)
    assert "free, but the closure's NARs announce" in one_line(e)
    assert f"/nar/{ROOT}.nar" not in cache.requests
    assert not (tmp_path / "got").exists()


# -- 10. redirects -----------------------------------------------------------------------------

def test_a_redirect_to_ftp_is_not_followed(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        with Cache({"/nix-cache-info": redirect(f"ftp://127.0.0.1:{port}/nix-cache-info")}) \
                as cache:
            took, error = timed(lambda: fetch(cache.url, ROOT, tmp_path / "got"))
        with pytest.raises(socket.timeout):
            listener.accept()[0].close()  # nobody came
    finally:
        listener.close()
    assert isinstance(error, BuildError), error
    assert f"redirects to ftp://127.0.0.1:{port}/nix-cache-info, which is not http(s)" \
        in str(error) and "\n" not in str(error)


def test_a_redirect_loop_is_one_line_naming_the_url(tmp_path: Path) -> None:
    with Cache({"/nix-cache-info": redirect("/a"), "/a": redirect("/nix-cache-info")}) as cache:
        with pytest.raises(BuildError) as e:
            fetch(cache.url, ROOT, tmp_path / "got")
    assert "HTTP 302, and no redirect from it followed" in one_line(e)
    assert cache.url in str(e.value)


def test_a_redirect_to_http_is_followed(tmp_path: Path) -> None:
    routes = good_routes()
    routes["/elsewhere"] = routes.pop(f"/nar/{ROOT}.nar")
    routes[f"/nar/{ROOT}.nar"] = redirect("/elsewhere")
    with Cache(routes) as cache:
        fetch(cache.url, ROOT, tmp_path / "got")
    assert (tmp_path / "got" / ROOT).read_bytes() == b"hello\n" * 1000


# -- 11. reference cycles ----------------------------------------------------------------------

A, B, C = base(1, "a"), base(2, "b"), base(3, "c")


def test_a_cache_whose_references_loop_is_refused(tmp_path: Path) -> None:
    routes: dict[str, bytes | Route] = {}
    for name, refs in ((A, [A, B]), (B, [C]), (C, [A])):
        routes.update(good_routes(name, nar_of(name.encode()), refs=refs))
    with Cache(routes) as cache:
        with pytest.raises(BuildError) as e:
            fetch(cache.url, A, tmp_path / "got")
    assert "the references of 3 store paths form a cycle, which Nix cannot register: " \
        f"{STORE}/{C} -> {STORE}/{A} -> {STORE}/{B} -> {STORE}/{C}" in one_line(e)
    assert not any(r.startswith("/nar/") for r in cache.requests)


def test_serve_refuses_a_cache_dir_whose_references_loop(tmp_path: Path) -> None:
    (tmp_path / "nix-cache-info").write_text(f"StoreDir: {STORE}\n")
    for name, refs in ((A, [A, B]), (B, [C]), (C, [A])):
        data = nar_of(name.encode())
        (tmp_path / f"{name[:32]}.narinfo").write_text(narinfo_text(name, data, refs=refs))
        (tmp_path / "nar").mkdir(exist_ok=True)
        (tmp_path / "nar" / f"{name}.nar").write_bytes(data)
    with pytest.raises(BuildError) as e:
        Master([tmp_path], ServeOptions())
    assert "the references of 3 store paths form a cycle" in one_line(e)


def _registration(refs: dict[str, list[str]]) -> str:
    return registration.format([ValidPathInfo(f"{STORE}/{n}", "sha256:" + "0" * 52, 8, "",
                                              tuple(f"{STORE}/{r}" for r in rs))
                                for n, rs in refs.items()])


def test_a_closure_info_whose_references_loop_is_refused(tmp_path: Path) -> None:
    (tmp_path / "registration").write_text(_registration({A: [A, B], B: [A], C: []}))
    with pytest.raises(BuildError) as e:
        read_closure(tmp_path)
    assert "the references of 2 store paths form a cycle" in one_line(e)
    assert f"{STORE}/{B}" in str(e.value)
    # A path referencing itself is what Nix does every day.
    (tmp_path / "registration").write_text(_registration({A: [A, B], B: [B], C: [A, B, C]}))
    assert len(read_closure(tmp_path).infos) == 3


def test_a_manifest_whose_references_loop_is_refused() -> None:
    paths = [PathEntry(A, "sha256:" + "0" * 52, 8, [B]), PathEntry(B, "sha256:" + "0" * 52, 8,
                                                                   [B, A])]
    chunks = [Chunk("payload/0000.tar.xz", 100, "0" * 64, 1024, [A, B])]
    doc = Manifest(STORE, "x86_64-linux", "xz", paths, chunks, [A], payload_size=100,
                   payload_sha256="0" * 64).to_json()
    with pytest.raises(ManifestError, match=f"2 store paths form a cycle: {B} -> {A} -> {B}"):
        Manifest.from_json(doc)


def test_an_installer_whose_references_loop_is_refused_before_anything(tmp_path: Path) -> None:
    """Before, ``--check`` and ``verify`` said OK and the install failed at the end, in
    ``nix-store --load-db`` ("cycle detected")."""
    paths = [PathEntry(TOP, FAKE_HASH, 1000, [TWO]), PathEntry(TWO, FAKE_HASH, 100, [TOP])]
    manifest = Manifest(str(tmp_path / "p" / "store"), host_system(), "xz", paths, [],
                        [TOP, TWO], preamble_sha256=preamble_sha256())
    installer = tmp_path / "cycle.sh"
    write_installer_file(installer, manifest, "xz", 0,
                         lambda payload: write_chunk(payload, tar_of(*good_entries()), [TOP, TWO]))
    code = "from nix_prefix.builder.cli import main; main()"
    for proc in (run_installer(installer, "--check"), run_installer(installer, "-y"),
                 subprocess.run([sys.executable, "-c", code, "verify", str(installer)],
                                capture_output=True, text=True, check=False)):
        assert proc.returncode == 3, proc.stderr
        assert "the references of 2 store paths form a cycle" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "p").exists()


# -- 12. SIGTERM, and what killed runs left ----------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("command", ["closure", "build"])
def test_sigterm_leaves_nothing_behind(tmp_path: Path, command: str) -> None:
    routes = good_routes()
    routes[f"/nar/{ROOT}.nar"] = drip(NAR, 0.5, length=len(NAR))
    out = tmp_path / "out" / ("dir" if command == "closure" else "x.sh")
    if command == "build":
        out.parent.mkdir()
    code = "from nix_prefix.builder.cli import main; main()"
    with Cache(routes) as cache:
        proc = subprocess.Popen([sys.executable, "-c", code, command, "--from-cache", cache.url,
                                 ROOT, "-o", str(out), "-q"], stderr=subprocess.PIPE, text=True)
        try:
            ends = time.monotonic() + 60
            while f"/nar/{ROOT}.nar" not in cache.requests and proc.poll() is None \
                    and time.monotonic() < ends:
                time.sleep(0.1)
            time.sleep(1)  # a few bytes of the NAR are written
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 143 and err.strip() == \
        "nix-prefix: error: stopped by SIGTERM; nothing half-written is left", err
    left = list((tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []
    assert left == [] if command == "build" else not (tmp_path / "out").exists(), left


def closure_dir(tmp_path: Path, contents: bytes) -> Path:
    """``tmp_path/ci``: a closureInfo dir of one store path, a file of ``contents``."""
    store = tmp_path / "p" / "store"
    store.mkdir(parents=True)
    (store / ROOT).write_bytes(contents)
    digest, size = nar.hash_path(str(store / ROOT))
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "registration").write_text(registration.format(
        [ValidPathInfo(f"{store}/{ROOT}", hashes.format_sha256(digest), size, "", ())]))
    return tmp_path / "ci"


def test_sigterm_while_writing_an_installer_leaves_no_temporary(tmp_path: Path) -> None:
    """``build`` of a 24 MiB closure (random bytes: slow to compress), SIGTERM once its
    ``.out.sh.tmp-PID`` is there: exit 143, one line, and the temporary gone."""
    closure_dir(tmp_path, os.urandom(24 << 20))
    out = tmp_path / "o"
    out.mkdir()
    code = "from nix_prefix.builder.cli import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, "build", str(tmp_path / "ci"), "-o",
                             str(out / "out.sh"), "-q", "-j1", "--level", "6"],
                            stderr=subprocess.PIPE, text=True)
    try:
        ends = time.monotonic() + 60
        while not list(out.iterdir()) and proc.poll() is None and time.monotonic() < ends:
            time.sleep(0.05)
        assert [p.name for p in out.iterdir()] == [f".out.sh.tmp-{proc.pid}"]
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and "stopped by SIGTERM" in err, err
    assert list(out.iterdir()) == []


def test_later_runs_remove_the_temporaries_of_dead_runs(tmp_path: Path) -> None:
    """What a SIGKILL left beside -o (a fetched store, a half-written installer) goes
    with the next build there; a running build's (this pid's) and other names stay."""
    out = tmp_path / "o"
    out.mkdir()
    dead, alive = _dead_pid(), os.getpid()
    for pid in (dead, alive):
        (out / f".nix-prefix-fetch-{pid}-abc").mkdir()
        (out / f".nix-prefix-fetch-{pid}-abc" / "f").write_text("x")
        (out / f".x.sh.tmp-{pid}").write_text("x")
    (out / ".nix-prefix-fetch-mine").mkdir()  # no pid: not ours to judge
    (out / ".x.sh.tmp-0").write_text("x")
    code = "from nix_prefix.builder.cli import main; main()"
    built = subprocess.run([sys.executable, "-c", code, "build", str(closure_dir(tmp_path, b"x")),
                            "-o", str(out / "x.sh"), "-q", "--level", "0"],
                           capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f".nix-prefix-fetch-{alive}-abc", f".x.sh.tmp-{alive}", ".nix-prefix-fetch-mine",
         ".x.sh.tmp-0", "x.sh"])
    assert remove_stale(out, ".x.sh.tmp-") == []


def test_closure_from_cache_removes_a_dead_runs_store_and_a_failure_leaves_no_dir(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".store.tmp-{_dead_pid()}"
    (stale / ROOT).mkdir(parents=True)
    with Cache(good_routes()) as cache:
        write_closure_dir(cache.url, [ROOT], out, say=str)
        assert not stale.exists() and (out / "store" / ROOT).is_file()
        with pytest.raises(BuildError, match="is not in the cache"):
            write_closure_dir(cache.url, [base(9)], tmp_path / "new" / "dir", say=str)
    assert not (tmp_path / "new").exists()
