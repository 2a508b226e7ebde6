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
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from aiohttp import http_exceptions, web

from ..payload import storepath
from ..payload.codecs import CodecError
from ..payload.container import CorruptInstaller
from .errors import BuildError
from .master import Master, PrefixPlan, parse_nar_file
from .offer import InstallerChanged, Offered
from .page import QueryError, Site, base_url, prefix_from_query, render

T = TypeVar("T")

# At most this many NARs are being produced at once; more requests wait their turn.
MAX_STREAMS = 16
_QUEUE_PIECES = 4  # pieces waiting for a slow client, per stream
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


class _ClientGone(Exception):
    """The client of a stream went away: its producer stops."""


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


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _not_modified(request: web.Request, etag: str) -> bool:
    wanted = request.headers.get("If-None-Match", "")
    return etag in [t.strip().removeprefix("W/") for t in wanted.split(",")]


class Server:
    """The aiohttp application over a master, and its thread pool."""

    def __init__(self, master: Master, max_streams: int = MAX_STREAMS,
                 installers: Sequence[Offered] = ()) -> None:
        self.master = master
        self.installers = {o.name + ".sh": o for o in installers}
        self.site = Site([k.public_key for k in master.options.sign_keys],
                         master.max_store_dir - len("/store"), master.options.compression,
                         list(installers))
        self._pool = ThreadPoolExecutor(max_workers=max_streams + 4,
                                        thread_name_prefix="nix-prefix-serve")
        self._streams = asyncio.Semaphore(max_streams)
        self.active_streams = 0
        self.app = web.Application(middlewares=[self._errors])
        self.app.router.add_get("/", self._page)
        self.app.router.add_get("/installers/{name}", self._installer)
        self.app.router.add_get("/{tail:.*}", self._handle)
        self.app.on_cleanup.append(self._close)

    async def _close(self, app: web.Application) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, work: Callable[..., T], *args: object) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(self._pool, work, *args)

    @web.middleware
    async def _errors(self, request: web.Request, handler):
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except (ConnectionError, asyncio.CancelledError):
            raise
        except (BuildError, CorruptInstaller, CodecError, OSError) as e:
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
        try:
            while piece:
                await response.write(piece)  # waits for a slow client: one piece held
                piece = await self._run(next, pieces, b"")
        except ConnectionError:  # the client went away: nothing to tell anyone
            return response
        except (InstallerChanged, OSError) as e:
            # Headers (and Content-Length) are out: the client sees a short transfer.
            request.app.logger.error("%s: cannot read the installer: %s", request.path, e)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        store_dir, file = split_request(request.rel_url.raw_path, self.master.max_store_dir)
        if request.rel_url.raw_query_string:
            raise _error(web.HTTPBadRequest, "no query string here")
        plan = await self._run(self.master.plan, store_dir)
        if file == "nix-cache-info":
            return self._small(request, plan.cache_info, "nix-cache-info", CACHE_INFO_CONTROL)
        m = _NARINFO.match(file)
        if m:
            text = await self._run(plan.narinfo, m.group(1))
            if text is None:
                raise _error(web.HTTPNotFound, "no such store path here", MISSING_CONTROL)
            return self._small(request, text, "narinfo", NARINFO_CONTROL)
        if file.startswith("nar/"):
            return await self._nar(request, plan, file[len("nar/"):])
        raise _error(web.HTTPNotFound, "not a binary cache file", MISSING_CONTROL)

    def _small(self, request: web.Request, body: bytes, kind: str,
               control: str) -> web.Response:
        etag = _etag(body)
        headers = {"ETag": etag, "Cache-Control": control}
        if _not_modified(request, etag):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers, content_type=CONTENT_TYPES[kind])

    async def _nar(self, request: web.Request, plan: PrefixPlan,
                   name: str) -> web.StreamResponse:
        parsed = parse_nar_file(name, self.master.options.compression)
        if parsed is None or parsed[0] not in plan:
            raise _error(web.HTTPNotFound, "no such NAR here", MISSING_CONTROL)
        hash_part, nar_hash = parsed
        text = await self._run(plan.narinfo, hash_part)
        # An old URL (the master changed since) names another NarHash.
        if text is None or f"-{nar_hash}.nar".encode() not in text:
            raise _error(web.HTTPNotFound, "no such NAR here (any more)", MISSING_CONTROL)
        # The compressed bytes depend on the compressor's version: a weak tag.
        etag = f'W/"{nar_hash}-{self.master.options.compression}"'
        headers = {"ETag": etag, "Cache-Control": NAR_CONTROL,
                   "Content-Type": CONTENT_TYPES["nar"]}
        if _not_modified(request, etag):
            return web.Response(status=304, headers=headers)
        response = web.StreamResponse(headers=headers)
        if request.method == "HEAD":
            await response.prepare(request)
            return response
        async with self._streams:
            await response.prepare(request)
            await self._stream(response, plan, hash_part)
        return response

    async def _stream(self, response: web.StreamResponse, plan: PrefixPlan,
                      hash_part: str) -> None:
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[bytes | None] = asyncio.Queue(_QUEUE_PIECES)
        gone = threading.Event()

        def emit(data: bytes) -> None:
            put = asyncio.run_coroutine_threadsafe(pieces.put(data), loop)
            while True:
                if gone.is_set():
                    put.cancel()
                    raise _ClientGone()
                try:
                    put.result(timeout=0.2)
                    return
                except TimeoutError:
                    continue

        def produce() -> None:
            try:
                plan.stream(hash_part, emit)
            finally:
                if not gone.is_set():
                    asyncio.run_coroutine_threadsafe(pieces.put(None), loop)

        self.active_streams += 1
        producer = loop.run_in_executor(self._pool, produce)
        try:
            while True:
                piece = await pieces.get()
                if piece is None:
                    break
                await response.write(piece)
            await producer  # raises what the producer raised
            await response.write_eof()
        finally:
            gone.set()
            while not pieces.empty():  # a producer waiting on a full queue moves on
                pieces.get_nowait()
            try:
                await asyncio.shield(producer)
            except BaseException:  # noqa: BLE001 - already reported, or the client left
                pass
            self.active_streams -= 1


def run(master: Master, host: str, port: int, ready: Callable[[str], None] | None = None,
        max_streams: int = MAX_STREAMS, installers: Sequence[Offered] = ()) -> None:
    """Serve until interrupted; ``ready`` gets the base URL once the socket listens."""
    server = Server(master, max_streams, installers)

    async def main() -> None:
        runner = web.AppRunner(server.app, access_log=None, handle_signals=True)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=256)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port  # the port for 0
        if ready:
            ready(f"http://{host}:{bound}")
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except (KeyboardInterrupt, web.GracefulExit):  # Ctrl-C, SIGINT, SIGTERM: a clean stop
        pass
