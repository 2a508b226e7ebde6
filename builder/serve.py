"""``nix-prefix serve``: one HTTP binary cache server for every prefix.

A Nix whose store dir is Q uses ``http://HOST:PORT`` + Q as its substituter
and asks for ``Q/nix-cache-info``, ``Q/<hash>.narinfo`` and ``Q/nar/<file>``
(src/libstore/http-binary-cache-store.cc, binary-cache-store.cc); the server
answers from its master (builder/master.py), retargeted to Q on the fly.

The HTTP stack is aiohttp (aio-libs): a maintained asyncio server with its
own strict request parser (llhttp) that bounds request lines and headers
and answers a malformed request with 400 itself, streamed responses with
back-pressure (``StreamResponse.write`` waits for the socket), and client
disconnects surfaced as exceptions, so a stream stops when its client goes.
The work on the bytes (reading, rewriting, compressing) runs in a bounded
thread pool; a bounded queue between it and the socket keeps memory per
stream to a few pieces.

What a request may be is decided from its raw path alone (never decoded,
never joined to a file name): letters, digits and ``+-._=@,~`` between
slashes, a canonical absolute store dir no longer than the master's, then
one of the three file names.  Anything else gets a 4xx and one line.
Beside the caches: a page for people at ``/`` (builder/page.py) and the
installers offered at ``/installers/NAME.sh`` (builder/offer.py), streamed
from the file opened at start.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import http_exceptions, web

from ..payload import storepath
from ..payload.codecs import CodecError
from ..payload.container import CorruptInstaller
from ..payload.machine import usable_cpus
from ..payload.refmap import RefMapError
from .errors import BuildError
from .limits import (
    Busy,
    ColdScheduler,
    Limits,
    MemoryBudget,
    buffer_budget,
    default_workers,
    per_worker,
    tame_malloc,
)
from .master import Master, PrefixView, parse_nar_file
from .metrics import Metrics, flushing
from .offer import InstallerChanged, Offered
from .page import QueryError, Site, base_url, prefix_from_query, render
from .sharing import Shared, master_id
from .streams import Dropped, Streams

T = TypeVar("T")

# At most this many NARs are being produced at once (builder/limits.py has the rest).
MAX_STREAMS = Limits.producers
MAX_PATH = 1024  # bytes of a request path
_RAW_PATH = re.compile(r"^(/[A-Za-z0-9+\-._=@,~]+)+\Z")
_NARINFO = re.compile(r"^([0-9a-df-np-sv-z]{32})\.narinfo\Z")
CONTENT_TYPES = {"nix-cache-info": "text/x-nix-cache-info", "narinfo": "text/x-nix-narinfo",
                 "nar": "application/x-nix-nar"}
# What an HTTP cache in front may keep, and for how long (docs/serving.md).
CACHE_INFO_CONTROL = "public, max-age=86400"
NARINFO_CONTROL = "public, max-age=3600"
NAR_CONTROL = "public, max-age=31536000, immutable"  # the URL names its NarHash
MISSING_CONTROL = "public, max-age=60"
# An installer's URL names the file, not its content: a cache revalidates (ETag) hourly.
INSTALLER_CONTROL = "public, max-age=3600"
PAGE_CONTROL = "no-cache"  # built from the Host header and the query: revalidate
# The page runs no script and loads nothing: say so, so that nothing injected could.
PAGE_HEADERS = {"Cache-Control": PAGE_CONTROL, "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                           "form-action 'self'; base-uri 'none'; "
                                           "frame-ancestors 'none'"}


class _OneLine(logging.Filter):
    """aiohttp logs a request its parser refuses (and answers 400) with a traceback:
    one line is enough for what a client sent."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1],
                                          http_exceptions.HttpProcessingError):
            record.msg = "refused a malformed request: %s"
            record.args = (str(record.exc_info[1]).splitlines()[0][:200],)
            record.exc_info = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("aiohttp.server").addFilter(_OneLine())


def _error(status: type[web.HTTPException], text: str,
           control: str = "no-store") -> web.HTTPException:
    return status(text=text + "\n", headers={"Cache-Control": control})


def split_request(raw_path: str, max_store_dir: int) -> tuple[str, str]:
    """(store dir, file) of a request path, or raise a 4xx naming the problem."""
    if len(raw_path) > MAX_PATH:
        raise _error(web.HTTPRequestURITooLong, "request path too long")
    if not _RAW_PATH.match(raw_path):
        raise _error(web.HTTPBadRequest,
                     "a request path is a store dir and a cache file name: /, letters, "
                     "digits and + - . _ = @ , ~ only (no %-encoding, no //)")
    head, _, file = raw_path.rpartition("/")
    if head.endswith("/nar"):
        head, file = head[:-len("/nar")], "nar/" + file
    if any(part in (".", "..") for part in head.split("/")):
        raise _error(web.HTTPBadRequest, "the store dir is not canonical (. or ..)")
    if not head:
        raise _error(web.HTTPNotFound, "name a store dir: use http://HOST:PORT/STORE/DIR as "
                     "the substituter")
    try:
        storepath.check_store_dir(head)
    except storepath.StorePathError as e:
        raise _error(web.HTTPBadRequest, str(e)) from None
    if len(head) > max_store_dir:
        raise _error(web.HTTPNotFound,
                     f"this server serves store dirs of at most {max_store_dir} bytes; "
                     f"{head} is {len(head)}")
    return head, file


def _kind(raw_path: str) -> str:
    """What a request path asks for, as /metrics counts it."""
    for kind, test in (("narinfo", raw_path.endswith(".narinfo")),
                       ("nar", "/nar/" in raw_path),
                       ("nix-cache-info", raw_path.endswith("/nix-cache-info")),
                       ("healthz", raw_path == "/healthz"), ("metrics", raw_path == "/metrics"),
                       ("page", raw_path == "/"),
                       ("installer", raw_path.startswith("/installers/"))):
        if test:
            return kind
    return "other"


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _not_modified(request: web.Request, etag: str) -> bool:
    wanted = request.headers.get("If-None-Match", "")
    return etag in [t.strip().removeprefix("W/") for t in wanted.split(",")]


class Server:
    """The aiohttp application over a master: its limits (builder/limits.py), NAR
    streams (builder/streams.py) and metrics (builder/metrics.py)."""

    def __init__(self, master: Master, max_streams: int = MAX_STREAMS,
                 installers: Sequence[Offered] = (), limits: Limits | None = None,
                 client_header: str | None = None, shared: Shared | None = None) -> None:
        """``max_streams``: NARs produced at once, when ``limits`` is not given;
        ``shared``: the dir this worker shares with the others (builder/workers.py)."""
        self.master = master
        self.shared = shared
        self._master_id = (master, master_id(master)) if shared else None
        self.installers = {o.name + ".sh": o for o in installers}
        self.site = Site([k.public_key for k in master.options.sign_keys],
                         master.max_store_dir - len("/store"), master.options.compression,
                         list(installers))
        self.limits = limits or Limits(producers=max_streams)
        self.client_header = client_header
        self.budget = MemoryBudget(buffer_budget(self.limits))
        # Cold work and NAR producers have threads of their own: a saturated cold
        # queue never delays a NAR, and a parked producer holds no thread.  Reads of
        # offered installers have a few more.
        self._cold_pool = ThreadPoolExecutor(self.limits.cold, "nix-prefix-cold")
        self._nar_pool = ThreadPoolExecutor(self.limits.producers, "nix-prefix-nar")
        self._pool = ThreadPoolExecutor(4, "nix-prefix-serve")
        self.cold = ColdScheduler(self.limits)
        self.streams = Streams(self.limits, self.budget, self._nar_pool)
        self.metrics = Metrics(self._state, shared)
        self.app = web.Application(middlewares=[self._count, self._errors])
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/metrics", self.metrics.handle)
        self.app.router.add_get("/", self._page)
        self.app.router.add_get("/installers/{name}", self._installer)
        self.app.router.add_get("/{tail:.*}", self._handle)
        self.app.on_cleanup.append(self._close)
        if shared is not None:
            self.app.cleanup_ctx.append(lambda app: flushing(app, self.metrics))

    @property
    def active_streams(self) -> int:
        return self.streams.active

    async def _close(self, app: web.Application) -> None:
        for pool in (self._cold_pool, self._nar_pool, self._pool):
            pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, work: Callable[..., T], *args: object) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(self._pool, work, *args)

    async def reload(self, make: Callable[[], Master]) -> int | None:
        """A new master from ``make`` (run aside); requests under way finish with the
        old one.  A master that cannot be read leaves the old one serving (None);
        otherwise the new master's number of paths."""
        try:
            master = await asyncio.to_thread(make)
        except BuildError as e:
            self.app.logger.error("reloading the master failed, the old one still serves: %s",
                                  e)
            return None
        self.master = master
        return sum(len(s.manifest.paths) for s in master.sources)

    def _id(self, master: Master) -> str:
        """The shared dir's name for ``master`` (computed once a master)."""
        if self._master_id is None or self._master_id[0] is not master:
            self._master_id = (master, master_id(master))
        return self._master_id[1]

    def _client(self, request: web.Request) -> str:
        if self.client_header:
            return request.headers.get(self.client_header, "") or str(request.remote)
        return str(request.remote)

    async def _cold_work(self, request: web.Request, key: tuple[object, ...],
                         work: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await self.cold.run(self._client(request), key,
                                       lambda: loop.run_in_executor(self._cold_pool, work, *args))
        except Busy:
            raise self._busy("cold work") from None

    def _busy(self, what: str) -> web.HTTPException:
        # Nix retries a 503 (src/libstore/filetransfer.cc: a 5xx but 501, 505 and 511
        # is transient), with its own back-off; Retry-After is for other clients.
        return web.HTTPServiceUnavailable(
            text=f"busy ({what}): retry in a few seconds\n",
            headers={"Retry-After": str(self.limits.retry_after), "Cache-Control": "no-store"})

    def _state(self) -> dict[str, tuple[Any, ...]]:
        """The figures /metrics reads when scraped."""
        cold, streams, master = self.cold, self.streams, self.master
        return {
            "plans_computed": ("plans computed (store dirs asked for)",
                               master.counts["plans"], "counter"),
            "plans_cached": ("plans kept", master.views_cached, "gauge"),
            "narinfos_computed": ("narinfos computed (NAR hashed)",
                                  master.counts["narinfos"], "counter"),
            "cold_running": ("cold jobs running", cold.running, "gauge"),
            "cold_waiting": ("cold jobs waiting for a slot", cold.waiting, "gauge"),
            "cold_refused": ("cold jobs refused (503)", cold.refused, "counter"),
            "streams_active": ("NAR responses in progress", streams.active, "gauge"),
            "streams_producing": ("NAR producers running", streams.producing, "gauge"),
            "streams_waiting": ("NAR responses waiting for a producer", streams.waiting,
                                "gauge"),
            "streams_refused": ("NAR requests refused (503): per-client or total bound, "
                                "or no producer in time", streams.refused, "counter"),
            "clients_stalled": ("NAR responses whose producer is parked (client not reading)",
                                streams.parked, "gauge"),
            "streams_parked": ("producers parked", streams.parks, "counter"),
            "clients_dropped": ("clients dropped, by reason", dict(streams.dropped),
                                "counter", "reason"),
            "buffered_bytes": ("bytes taken from the memory budget (buffers, producers)",
                               self.budget.used, "gauge"),
            "buffer_budget_bytes": ("the memory budget (from --max-memory)",
                                    self.budget.limit, "gauge"),
        }

    @web.middleware
    async def _count(self, request: web.Request, handler):
        kind = _kind(request.rel_url.raw_path)
        try:
            response = await handler(request)
        except web.HTTPException as e:
            self.metrics.count(kind, e.status, 0)
            raise
        self.metrics.count(kind, response.status, response.body_length)
        return response

    @web.middleware
    async def _errors(self, request: web.Request, handler):
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except (ConnectionError, asyncio.CancelledError):
            raise
        except (BuildError, CorruptInstaller, CodecError, RefMapError, OSError) as e:
            # The master cannot be read (changed or damaged since the start): the
            # server's problem, one line in its log, none of it for the client.
            request.app.logger.error("%s: cannot read the master: %s", request.path, e)
            raise _error(web.HTTPInternalServerError, "the server cannot read its master; "
                         "its log says why") from None

    async def _page(self, request: web.Request) -> web.Response:
        try:
            asked = prefix_from_query(request.rel_url.raw_query_string)
        except QueryError as e:
            raise _error(web.HTTPBadRequest if e.status == 400 else web.HTTPRequestURITooLong,
                         str(e)) from None
        # Behind a TLS proxy (docs/serving.md): the scheme the client used.
        scheme = "https" if request.headers.get("X-Forwarded-Proto") == "https" \
            else request.scheme
        url = base_url(request.host, scheme)
        if url is None:
            raise _error(web.HTTPBadRequest, "the Host header is not a host name or address")
        status, text = render(self.site, url, asked)
        return web.Response(status=status, text=text, content_type="text/html",
                            headers=PAGE_HEADERS)

    async def _installer(self, request: web.Request) -> web.StreamResponse:
        if request.rel_url.raw_query_string:
            raise _error(web.HTTPBadRequest, "no query string here")
        offered = self.installers.get(request.match_info["name"])
        if offered is None:
            raise _error(web.HTTPNotFound, "no such installer here: / lists those offered",
                         MISSING_CONTROL)
        headers = {"ETag": offered.etag, "Cache-Control": INSTALLER_CONTROL,
                   "Content-Type": "application/x-sh",
                   "Content-Disposition": f'attachment; filename="{offered.file_name}"'}
        if _not_modified(request, offered.etag):
            return web.Response(status=304, headers=headers)
        response = web.StreamResponse(headers=headers)
        response.content_length = offered.size
        if request.method == "HEAD":
            await response.prepare(request)
            return response
        pieces = offered.pieces()
        try:
            piece = await self._run(next, pieces, b"")
        except (InstallerChanged, OSError) as e:
            request.app.logger.error("%s: cannot read the installer: %s", request.path, e)
            raise _error(web.HTTPInternalServerError, "the server cannot read this "
                         "installer; its log says why") from None
        await response.prepare(request)
        pacer = self.streams.pacer(request, response)  # --send-timeout, --min-rate
        try:
            while piece:
                await pacer.write(piece)  # waits for a slow client: one piece held
                piece = await self._run(next, pieces, b"")
        except (ConnectionError, Dropped):  # the client went away, or was too slow
            return response
        except (InstallerChanged, OSError) as e:
            # Headers (and Content-Length) are out: the client sees a short transfer.
            request.app.logger.error("%s: cannot read the installer: %s", request.path, e)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        master = self.master  # this request's, even if a reload comes meanwhile
        store_dir, file = split_request(request.rel_url.raw_path, master.max_store_dir)
        if request.rel_url.raw_query_string:
            raise _error(web.HTTPBadRequest, "no query string here")
        plan = master.cached_view(store_dir)
        if plan is None:
            plan = await self._cold_work(request, ("plan", master, store_dir), master.view,
                                         store_dir)
        if file == "nix-cache-info":
            return self._small(request, plan.cache_info, "nix-cache-info", CACHE_INFO_CONTROL)
        m = _NARINFO.match(file)
        if m:
            text = await self._narinfo(request, plan, m.group(1))
            if text is None:
                raise _error(web.HTTPNotFound, "no such store path here", MISSING_CONTROL)
            return self._small(request, text, "narinfo", NARINFO_CONTROL)
        if file.startswith("nar/"):
            return await self._nar(request, plan, file[len("nar/"):])
        raise _error(web.HTTPNotFound, "not a binary cache file", MISSING_CONTROL)

    async def _narinfo(self, request: web.Request, plan: PrefixView,
                       hash_part: str) -> bytes | None:
        if hash_part not in plan:
            return None
        text = plan.cached_narinfo(hash_part)
        if text is not None:
            return text
        shared = self.shared
        if shared is None:
            return await self._cold_work(request, ("narinfo", plan, hash_part), plan.narinfo,
                                         hash_part)
        # Another worker may have computed it (the narinfo request went there).
        master, store_dir = self._id(plan.master), plan.store_dir
        text = shared.narinfo(master, store_dir, hash_part)
        if text is not None:
            return text

        def make() -> bytes | None:
            made = plan.narinfo(hash_part)
            if made is not None:
                shared.keep_narinfo(master, store_dir, hash_part, made)
            return made
        return await self._cold_work(request, ("narinfo", plan, hash_part), make)

    def _small(self, request: web.Request, body: bytes, kind: str,
               control: str) -> web.Response:
        etag = _etag(body)
        headers = {"ETag": etag, "Cache-Control": control}
        if _not_modified(request, etag):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers, content_type=CONTENT_TYPES[kind])

    async def _nar(self, request: web.Request, plan: PrefixView,
                   name: str) -> web.StreamResponse:
        parsed = parse_nar_file(name, plan.master.options.compression)
        if parsed is None or parsed[0] not in plan:
            raise _error(web.HTTPNotFound, "no such NAR here", MISSING_CONTROL)
        hash_part, nar_hash = parsed
        text = await self._narinfo(request, plan, hash_part)
        # An old URL (the master changed since) names another NarHash.
        if text is None or f"-{nar_hash}.nar".encode() not in text:
            raise _error(web.HTTPNotFound, "no such NAR here (any more)", MISSING_CONTROL)
        # The compressed bytes depend on the compressor's version: a weak tag.
        etag = f'W/"{nar_hash}-{plan.master.options.compression}"'
        headers = {"ETag": etag, "Cache-Control": NAR_CONTROL,
                   "Content-Type": CONTENT_TYPES["nar"]}
        if _not_modified(request, etag):
            return web.Response(status=304, headers=headers)
        response = web.StreamResponse(headers=headers)
        size = re.search(rb"^NarSize: (\d+)$", text, re.MULTILINE)
        if plan.master.options.compression == "none" and size is not None:
            # Its length is known: sent as it is, not in chunks (aiohttp copies each
            # chunk to frame it), and a cache in front knows it from the start.
            response.content_length = int(size.group(1))
        if request.method == "HEAD":
            await response.prepare(request)
            return response
        try:
            # zstd's threads for a stream made alone (streams.producing counts it).
            producer = plan.producer(hash_part, lambda: self.streams.producing <= 1)
            await self.streams.send(request, response, producer, self._client(request))
        except Busy:
            raise self._busy("NAR producers") from None
        except (Dropped, ConnectionError):
            pass  # too slow or stalled (its connection is closed), or it left
        return response


# One line a request: who, what, the answer, bytes sent, seconds, which Nix.
ACCESS_FORMAT = '%a "%r" %s %b %Tfs "%{User-Agent}i"'


def _log_to_stderr() -> None:
    if any(h.name == "nix-prefix-serve" for h in logging.getLogger("aiohttp.access").handlers):
        return  # a worker: its supervisor did it
    handler = logging.StreamHandler()
    handler.name = "nix-prefix-serve"
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    for name in ("aiohttp.access", "aiohttp.server", "aiohttp.web"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def run(master: Master, host: str, port: int, ready: Callable[[str], None] | None = None,
        max_streams: int = MAX_STREAMS, installers: Sequence[Offered] = (),
        limits: Limits | None = None, reload: Callable[[], Master] | None = None,
        access_log: bool = True, client_header: str | None = None,
        sock: socket.socket | None = None, shared: Shared | None = None,
        reloaded: Callable[[int | None], object] | None = None) -> None:
    """Serve until interrupted; ``ready`` gets the base URL once the socket listens.
    SIGHUP makes a new master with ``reload`` without dropping requests under way, and
    tells ``reloaded`` its number of paths (None: the old one serves on).  A worker
    (builder/workers.py) passes the socket it accepts on and the dir it shares."""
    _log_to_stderr()
    tame_malloc()
    server = Server(master, max_streams, installers, limits, client_header, shared)

    def said(paths: int | None) -> None:
        if paths is not None:
            server.app.logger.warning("reloaded the master: %d paths", paths)
    tell = reloaded or said

    async def main() -> None:
        runner = web.AppRunner(server.app, handle_signals=True, access_log_format=ACCESS_FORMAT,
                               access_log=logging.getLogger("aiohttp.access")
                               if access_log else None)
        await runner.setup()
        if sock is None:
            await web.TCPSite(runner, host, port, backlog=256).start()
            bound = runner.addresses[0][1] if runner.addresses else port  # the port for 0
        else:
            accept_one_at_a_time(sock, runner)
            bound = sock.getsockname()[1]
        if reload is not None:
            loop, make = asyncio.get_running_loop(), reload
            async def again() -> None:
                tell(await server.reload(make))
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(again()))
        if ready:
            ready(f"http://{host}:{bound}")
        try:
            await asyncio.Event().wait()
        finally:
            if sock is not None:  # a worker stopping takes no new connection
                asyncio.get_running_loop().remove_reader(sock.fileno())
                sock.close()
            await runner.cleanup()

    try:
        asyncio.run(main())
    except (KeyboardInterrupt, web.GracefulExit):  # Ctrl-C, SIGINT, SIGTERM: a clean stop
        pass


def accept_one_at_a_time(sock: socket.socket, runner: web.AppRunner) -> None:
    """Serve the connections of ``sock``, a listening socket shared with other workers,
    taking one connection each time it is readable.  asyncio's own server takes all
    that wait at once, so the worker that wakes first would take a whole burst (8
    clients that connect together, all on one worker, measured); taken one at a
    time, the others get theirs, and a worker busy with work wakes later and takes
    fewer.  Stops with the event loop."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    factory = runner.server
    assert factory is not None  # set up

    def accept() -> None:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return  # another worker took it
        except OSError as e:  # out of descriptors, …: the connection waits, or is lost
            runner.app.logger.error("cannot accept a connection: %s", e)
            return
        conn.setblocking(False)
        loop.create_task(loop.connect_accepted_socket(factory, conn))
    loop.add_reader(sock.fileno(), accept)


# The command's set-up: what ``nix-prefix serve`` runs, from its options.

@dataclass
class Setup:
    """What ``nix-prefix serve`` was asked to serve, and how (its options)."""

    sources: list[Path]
    listen: str = "127.0.0.1:8080"
    sign_key_files: list[Path] = field(default_factory=list)
    compression: str = "zstd"
    level: int | None = None
    store_root: Path | None = None
    installers: list[Path] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    access_log: bool = True
    client_header: str | None = None
    workers: int | None = None  # None: one a usable CPU, as --max-memory allows


def serve(setup: Setup, say: Callable[[str], object]) -> None:
    """``nix-prefix serve``: read the master and the installers offered, then serve
    until stopped, saying where once the socket listens."""
    from .master import ServeOptions
    from .offer import load_all
    from .signer import load_secret_keys

    host, port = parse_listen(setup.listen)
    keys = load_secret_keys(setup.sign_key_files)
    cores = usable_cpus()
    # zstd's own threads: one NAR's compression on every core (docs/serving.md).
    options = ServeOptions(compression=setup.compression, level=setup.level, sign_keys=keys,
                           threads=cores if cores > 1 else 0)

    def read_master() -> Master:
        return Master(setup.sources, options, store_root=setup.store_root)

    master = read_master()
    offered = list(load_all(setup.installers).values())

    workers = setup.workers or default_workers(setup.limits, cores)

    def ready(url: str) -> None:
        signed = "signed by " + ", ".join(k.name for k in keys) if keys else "unsigned"
        signed += f", {workers} workers" if workers > 1 else ""
        say(f"serving a binary cache for every store dir of at most "
            f"{master.max_store_dir} bytes at {url}/STORE/DIR ({signed})")
        say(f"  e.g. substituters = {url}/home/alice/.nix/store")
        say(f"  a page for people at {url}/ offering "
            + (", ".join(f"/installers/{o.file_name}" for o in offered)
               or "no installer (--installer FILE)"))

    try:
        if workers > 1:
            _serve_workers(setup, workers, master, read_master, offered, ready)
        else:
            run(master, host, port, ready, installers=offered, limits=setup.limits,
                reload=read_master, access_log=setup.access_log,
                client_header=setup.client_header)
    except OSError as e:
        raise BuildError(f"cannot listen on {setup.listen}: {e.strerror}",
                         "choose another --listen address or port") from None


def _serve_workers(setup: Setup, workers: int, master: Master, read_master: Callable[[], Master],
                   offered: Sequence[Offered], ready: Callable[[str], None]) -> None:
    """``serve`` with ``workers`` processes (builder/workers.py) on one socket."""
    import shutil
    import tempfile

    from .workers import Supervisor, listening_socket

    limits = per_worker(setup.limits, workers)
    buffer_budget(limits)  # too little memory: one line now, not from every worker
    host, port = parse_listen(setup.listen)
    sock = listening_socket(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}"
    shared = Path(tempfile.mkdtemp(prefix="nix-prefix-serve-"))  # mode 0700

    def work(slot: int, tell: Callable[[str], None], reload_first: bool) -> None:
        mine = master
        if reload_first:  # a SIGHUP came since the supervisor read it
            try:
                mine = read_master()
            except BuildError as e:
                logging.getLogger("aiohttp.server").error("worker %d: %s", slot, e)
        mine.forked()
        run(mine, host, port, lambda _: tell("ready"), installers=offered, limits=limits,
            reload=read_master, access_log=setup.access_log, client_header=setup.client_header,
            sock=sock, shared=Shared(shared, slot),
            reloaded=lambda n: tell("unchanged" if n is None else f"reloaded {n}"))

    _log_to_stderr()
    log = logging.getLogger("aiohttp.server")
    try:
        status = Supervisor(workers, work, log.warning).run(lambda: ready(url))
    finally:
        sock.close()
        shutil.rmtree(shared, ignore_errors=True)
    if status:
        raise BuildError("a worker could not start (its lines above say why)")


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` too) as the host and port to bind."""
    host, colon, port = listen.rpartition(":")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise BuildError(f"--listen {listen!r} is not HOST:PORT", "e.g. --listen 127.0.0.1:8080")
    return host.strip("[]"), int(port)
