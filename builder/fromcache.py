"""``--from-cache URL``: a closure fetched from a Nix binary cache, without a local store.

Speaks the substituter protocol of NixOS/nix 2.8.0 (src/libstore/
binary-cache-store.cc, http-binary-cache-store.cc, local-binary-cache-store.cc)
over ``file://`` and ``http(s)://``: ``nix-cache-info`` names the store dir,
``<hash>.narinfo`` describes a path (payload/narinfo.py), a 404 means "not
here", and the NAR comes from the narinfo's URL.  The closure is followed
through References.  Each NAR is checked as a substituting Nix checks it: its
FileHash and FileSize, then its NarHash and NarSize (substitution-goal.cc,
``LocalStore::addToStore``); with cache keys (``--cache-key``), every narinfo needs a ``Sig``
that verifies under one of them first (``ValidPathInfo::checkSignatures``;
the keys and signatures are payload/signing.py's).
The paths are unpacked under a directory of the caller's, as a store root.

A cache is not trusted to end: the walk stops at ``FetchLimits`` (paths, NAR
bytes, seconds in all and per request), the free space is checked against the
announced NarSizes before any NAR is fetched, nothing is read past a file's
announced size, and redirects go from http(s) to http(s) only
(docs/reliability.md lists each bound and what happens when it is hit).
"""

from __future__ import annotations

import bz2
import hashlib
import http.client
import math
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..payload import codecs, hashes, nar, narinfo, registration, signing, storepath
from ..payload.machine import human_size
from ..payload.registration import ValidPathInfo
from ..payload.signing import PublicKey
from ..payload.tree import Count, Sink, Tee
from .closure_info import Closure, check_acyclic
from .errors import BuildError, UsageError
from .leftovers import remove_stale

TIMEOUT = 60  # seconds without a byte before a request is given up
MAX_CACHE_INFO = 64 << 10
MAX_REDIRECTS = 10
_READ = 1 << 20
# Nix treats these as "no such file" (http-binary-cache-store.cc, getFile).
_ABSENT = (404, 403)
MORE_HINT = "raise it if the closure really is that big, or check the cache"


@dataclass(frozen=True)
class FetchLimits:
    """How far a fetch goes before it stops with one line naming the bound: a cache
    may name paths without end, announce any size, and drip its bytes."""

    max_paths: int = 50_000  # store paths in the closure (--max-paths)
    max_bytes: int = 256 << 30  # their NarSizes added up (--max-bytes)
    deadline: float = 6 * 3600  # seconds for the whole fetch (--deadline)
    # Each request: this long, plus a second per min_rate bytes it announces (a NAR
    # arriving slower than that on average is given up).
    request_seconds: float = 120
    min_rate: int = 64 << 10


class _Clock:
    """The fetch's deadline, and each request's; none without limits (``serve`` reads
    its own cache dirs for as long as it runs, at the pace of its clients)."""

    def __init__(self, limits: FetchLimits | None) -> None:
        self.limits = limits
        self.end = time.monotonic() + limits.deadline if limits else math.inf

    def request(self, size: int = 0) -> tuple[float, str]:
        """When a request announcing ``size`` bytes must be done, and the bound that says so."""
        limits = self.limits
        if limits is None:
            return math.inf, ""
        own = time.monotonic() + limits.request_seconds + size / max(limits.min_rate, 1)
        if own < self.end:
            return own, (f"a request may take {limits.request_seconds:g} s plus a second "
                         f"per {human_size(limits.min_rate)} it announces")
        return self.end, f"--deadline {limits.deadline:g} s, for the whole fetch"


class _Timed:
    """A response read against its deadline: a read returns what has arrived (never
    waits to fill a buffer, which a drip would make last for ever) and no read starts
    after the deadline.  A read waits at most ``TIMEOUT`` s for its first byte."""

    def __init__(self, f, end: float, bound: str, where: str) -> None:
        self._f = f
        self._read = getattr(f, "read1", f.read)
        self._end = end
        self._bound = bound
        self._where = where

    def read(self, n: int = -1) -> bytes:
        if time.monotonic() > self._end:
            raise too_slow(self._where, self._bound)
        try:
            data = self._read(n if n and n > 0 else _READ)
        except http.client.HTTPException as e:
            raise BuildError(f"cannot read {self._where}: {type(e).__name__} {_one_line(e)}",
                             "the cache's server broke off; try again") from None
        # http.client's read1 ends quietly where the connection does; the bytes its
        # Content-Length still owes tell a cut from an end.
        short = getattr(self._f, "length", None)
        if not data and short:
            raise BuildError(f"cannot read {self._where}: the server broke off {short} bytes "
                             "short of its Content-Length", "try again")
        return data

    def close(self) -> None:
        self._f.close()


def too_slow(where: str, bound: str) -> BuildError:
    """The one line for a deadline hit: which, and what to do."""
    return BuildError(f"{where}: stopped: too slow ({bound})",
                      "raise --deadline, or try again" if bound.startswith("--deadline")
                      else "the cache or the network is too slow; try again, or another "
                           "mirror")


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Redirects from http(s) to http(s) only (urllib also follows them to ftp://)."""

    max_redirections = MAX_REDIRECTS

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlparse(newurl).scheme not in ("http", "https"):
            fp.close()
            raise BuildError(f"{req.full_url} redirects to {newurl}, which is not http(s)",
                             "a binary cache redirects to http:// or https:// only")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_Redirects)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def parse_cache_keys(texts: Sequence[str]) -> list[PublicKey]:
    """The ``--cache-key`` values (Nix public keys, ``NAME:BASE64``), parsed."""
    try:
        return [signing.parse_public_key(t) for t in texts]
    except signing.SigningError as e:
        raise UsageError(f"--cache-key: {e}",
                         "give the NAME:BASE64 line of the cache's public key file") from None


def signature_problem(info: narinfo.NarInfo, keys: Sequence[PublicKey]) -> str | None:
    """Why ``info`` is not signed by one of ``keys`` (None if it is).  Stricter than Nix,
    which takes a content-addressed path unsigned: here every path needs a signature."""
    if info.signed_by(keys):
        return None
    names = ", ".join(s.partition(":")[0] for s in info.sigs) or "nobody"
    return (f"not signed by any trusted key ({', '.join(k.name for k in keys)}); "
            f"its narinfo is signed by {names}")


class BinaryCache:
    """A binary cache at a ``file://``, ``http://`` or ``https://`` URL (read only), its
    requests bounded in time by ``limits`` (none without)."""

    def __init__(self, url: str, limits: FetchLimits | None = None) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("file", "http", "https") or (
                parsed.scheme != "file" and not parsed.netloc):
            raise BuildError(f"{url} is not a binary cache URL nix-prefix can read",
                             "use file:///path/to/cache or http(s)://host/path")
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise BuildError(f"{url}: a file:// URL names no host",
                             "write file:///absolute/path")
        self.url = url.rstrip("/")
        self._file_root = Path(urllib.parse.unquote(parsed.path)) \
            if parsed.scheme == "file" else None
        self.clock = _Clock(limits)

    def _open(self, rel: str, size: int = 0) -> _Timed | None:
        """A binary file object for ``rel`` (announced to hold about ``size`` bytes), read
        against its deadline, or None when the cache does not have it."""
        end, bound = self.clock.request(size)
        where = f"{self.url}/{rel}"
        if self._file_root is not None:
            try:
                f = open(self._file_root / rel, "rb")  # the caller closes it
            except FileNotFoundError:
                return None
            except OSError as e:
                raise BuildError(f"cannot read {where}: {e.strerror}") from None
            return _Timed(f, end, bound, where)
        request = urllib.request.Request(where, headers={"User-Agent": "nix-prefix"})
        if time.monotonic() > end:
            raise too_slow(where, bound)
        try:
            # The socket's own timeout: no wait for a byte outlasts the deadline by much.
            f = _OPENER.open(request, timeout=max(1.0, min(TIMEOUT, end - time.monotonic())))
        except urllib.error.HTTPError as e:
            e.close()
            final = e.filename or where
            if e.code in _ABSENT:
                return None
            if 300 <= e.code < 400:  # urllib gives up: a loop, too many, or no Location
                raise BuildError(f"{final}: HTTP {e.code}, and no redirect from it followed "
                                 f"(a loop, more than {MAX_REDIRECTS}, or no new location)",
                                 "check the cache URL and the server's redirects") from None
            raise BuildError(f"{final}: HTTP {e.code} {_one_line(e.reason)}",
                             "check the cache URL and that its server is up") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise BuildError(f"cannot reach {where}: {_one_line(reason)}",
                             "check the cache URL and that its server is up") from None
        return _Timed(f, end, bound, f.geturl())

    def get(self, rel: str, limit: int) -> bytes | None:
        """The whole of a small file, at most ``limit`` bytes, or None if absent."""
        f = self._open(rel, limit)
        if f is None:
            return None
        data = bytearray()
        try:
            while len(data) <= limit:
                piece = f.read(limit + 1 - len(data))
                if not piece:
                    break
                data += piece
        except OSError as e:
            raise BuildError(f"cannot read {self.url}/{rel}: {_one_line(e)}") from None
        finally:
            f.close()
        if len(data) > limit:
            raise BuildError(f"{self.url}/{rel} is larger than {limit} bytes",
                             "this is not a Nix binary cache file")
        return bytes(data)

    def store_dir(self) -> str:
        """The StoreDir its ``nix-cache-info`` names."""
        data = self.get(narinfo.CACHE_INFO, MAX_CACHE_INFO)
        if data is None:
            raise BuildError(f"{self.url} has no nix-cache-info: it is not a Nix binary cache",
                             "check the URL (it names the directory holding nix-cache-info)")
        try:
            return narinfo.parse_cache_info(data.decode("utf-8", "replace"),
                                            f"{self.url}/{narinfo.CACHE_INFO}")
        except narinfo.NarInfoError as e:
            raise BuildError(str(e)) from None

    def path_info(self, store_dir: str, base: str) -> narinfo.NarInfo | None:
        """The narinfo of ``base``, checked, or None if the cache does not have it."""
        rel = narinfo.narinfo_file(base)
        data = self.get(rel, narinfo.MAX_NARINFO_SIZE)
        if data is None:
            return None
        try:
            info = narinfo.parse(data.decode("utf-8"), f"{self.url}/{rel}", store_dir)
        except UnicodeDecodeError:
            raise BuildError(f"narinfo {self.url}/{rel} is not UTF-8 text") from None
        except narinfo.NarInfoError as e:
            raise BuildError(str(e)) from None
        if info.name != base:
            raise BuildError(f"{self.url}/{rel} describes {info.store_path}, not "
                             f"{store_dir}/{base}")
        return info

    def fetch_nar(self, info: narinfo.NarInfo, sink: Sink) -> None:
        """Stream the NAR of ``info`` into ``sink``, checking FileHash, FileSize,
        NarHash and NarSize; raise BuildError naming the first that does not match."""
        where = f"{self.url}/{info.url}"
        raw = self._open(info.url, info.file_size or info.nar_size)
        if raw is None:
            raise BuildError(f"{where} (the NAR of {info.store_path}) is missing",
                             "the cache is incomplete; ask its publisher")
        # Never read past what the narinfo announces: its FileSize, or without one, what
        # a NAR of its NarSize compresses to at worst (xz, zstd and bzip2 add well
        # under an eighth to data that does not compress).
        limit = info.file_size or (info.nar_size if info.compression == "none" else
                                   info.nar_size + info.nar_size // 8 + (1 << 20))
        counted = _Counting(raw, limit, "its FileSize" if info.file_size else "its NarSize",
                            where)
        try:
            stream = _decoder(info.compression, counted, where)
            nar_reader = _Limited(stream.read, info.nar_size, where)
            hasher = nar.NarHasher()
            try:
                nar.parse(nar_reader.read, Tee(sink, hasher))
            except nar.NarError as e:
                raise BuildError(f"{where}: {e} (the NAR of {info.store_path} is damaged)",
                                 "the cache is damaged; ask its publisher") from None
            except codecs.CorruptData as e:
                raise BuildError(f"{where}: cannot decompress it ({e})",
                                 "the cache is damaged; ask its publisher") from None
            if info.file_size:  # the rest is hashed too (FileHash); else nothing more is read
                counted.drain()
        finally:
            raw.close()
        got = hashes.format_sha256(hasher.digest())
        if got != info.nar_hash or hasher.size != info.nar_size:
            raise BuildError(f"{info.store_path} from {self.url}: NAR hash mismatch (got {got}, "
                             f"{hasher.size} bytes; its narinfo says {info.nar_hash}, "
                             f"{info.nar_size} bytes)",
                             "the cache is damaged or was tampered with; nothing was written")
        if info.file_hash and info.file_size and (
                hashes.format_sha256(counted.sha256.digest()) != info.file_hash
                               or counted.size != info.file_size):
            raise BuildError(f"{where} does not match the FileHash/FileSize of its narinfo",
                             "the cache is damaged; ask its publisher")


class _Counting:
    """A raw download: counts and hashes the bytes, refuses more than ``limit`` (what
    ``announced`` in its narinfo allows)."""

    def __init__(self, f: _Timed, limit: int, announced: str, where: str) -> None:
        self._f = f
        self._limit = limit
        self._announced = announced
        self._where = where
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        # One byte past the limit tells a longer file from one of exactly that size.
        want = min(n if n and n > 0 else _READ, self._limit + 1 - self.size)
        try:
            data = self._f.read(max(want, 1))
        except OSError as e:
            raise BuildError(f"cannot read {self._where}: {_one_line(e)}") from None
        self.sha256.update(data)
        self.size += len(data)
        if self.size > self._limit:
            raise BuildError(f"{self._where} is longer than {self._announced} in its narinfo "
                             f"allows ({self._limit} bytes); nothing more was read",
                             "the cache is damaged; ask its publisher")
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(_READ):
            pass


class _Limited:
    """Decompressed NAR bytes, at most ``limit`` of them (its NarSize)."""

    def __init__(self, read: Callable[[int], bytes], limit: int, where: str) -> None:
        self._read = read
        self._left = limit
        self._where = where

    def read(self, n: int) -> bytes:
        if self._left <= 0:
            raise BuildError(f"{self._where} holds more than the NarSize of its narinfo",
                             "the cache is damaged or was tampered with")
        data = self._read(min(n, self._left))
        self._left -= len(data)
        return data


class _Plain:
    def __init__(self, f) -> None:
        self.read = f.read


class _Bzip2:
    """bzip2, which old caches use (Nix's default when a narinfo names no Compression)."""

    def __init__(self, f) -> None:
        self._reader = bz2.BZ2File(f, "rb")

    def read(self, n: int) -> bytes:
        try:
            return self._reader.read(n)
        except (OSError, ValueError, EOFError) as e:
            raise codecs.CorruptData(str(e)) from None


def _decoder(compression: str, f, where: str):
    if compression == "none":
        return _Plain(f)
    if compression == "bzip2":
        return _Bzip2(f)
    if compression in codecs.CODECS:
        return codecs.open_reader(compression, f)
    raise BuildError(f"{where} is compressed with {compression}, which nix-prefix cannot read",
                     "use a cache written with xz, zstd, bzip2 or no compression")


class _DiskWriter(Sink):
    """Tree events into files under ``root`` (modes 0644/0755: a staging copy the
    builder reads back, not a store)."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._file: BinaryIO | None = None

    def _path(self, rel: bytes) -> Path:
        return self._root / os.fsdecode(rel) if rel else self._root

    def begin_directory(self, rel: bytes = b"") -> None:
        self._path(rel).mkdir()

    def regular(self, rel: bytes, executable: bool, size: int) -> None:
        path = self._path(rel)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755 if executable else 0o644)
        self._file = os.fdopen(fd, "wb")

    def contents(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)

    def end_regular(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None

    def symlink(self, rel: bytes, target: bytes) -> None:
        os.symlink(target, self._path(rel))


def fetch_closure(url: str, roots: Sequence[str], dest: Path,
                  cache_keys: Sequence[PublicKey] = (),
                  say: Callable[[str], object] = print,
                  progress: Callable[[int], object] | None = None,
                  limits: FetchLimits | None = None) -> tuple[Closure, list[str]]:
    """Fetch the closure of ``roots`` from the cache at ``url`` into ``dest`` (a new,
    empty directory: ``dest/<hash>-<name>`` for each path); return it and its roots.
    Stops with one line at the first of ``limits`` a cache reaches."""
    limits = limits or FetchLimits()
    cache = BinaryCache(url, limits)
    store_dir = cache.store_dir()
    wanted = [_root_base(r, store_dir, url) for r in roots]
    if not wanted:
        raise BuildError("no store paths given", "name at least one root path in the cache")
    infos = _walk(cache, store_dir, wanted, cache_keys, limits)
    closure = Closure(store_dir, [
        ValidPathInfo(i.store_path, i.nar_hash, i.nar_size,
                      f"{store_dir}/{i.deriver}" if i.deriver else "",
                      tuple(f"{store_dir}/{r}" for r in i.references))
        for _, i in sorted(infos.items(), key=lambda kv: kv[1].store_path)])
    check_acyclic({i.path: i.references for i in closure.infos}, url)
    total = closure.total_nar_size
    _check_space(dest, total)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BuildError(f"cannot create {dest}: {e.strerror}") from None
    say(f"fetching {len(infos)} store paths ({total / (1 << 20):.1f} MiB of NAR) from {url}")
    for base in sorted(infos):
        target = dest / base
        try:
            cache.fetch_nar(infos[base], Tee(_DiskWriter(target), Count(progress)))
        except OSError as e:
            _remove(target)
            raise BuildError(f"cannot write {e.filename or target}: {e.strerror}",
                             "check the free space and permissions there") from None
        except BaseException:
            _remove(target)
            raise
    return closure, sorted(f"{store_dir}/{b}" for b in set(wanted))


def _walk(cache: BinaryCache, store_dir: str, wanted: list[str],
          cache_keys: Sequence[PublicKey], limits: FetchLimits) -> dict[str, narinfo.NarInfo]:
    """The narinfos of ``wanted`` and everything they reference, within ``limits``."""
    url = cache.url
    infos: dict[str, narinfo.NarInfo] = {}
    # Every name met so far, once: a narinfo's references are these same strings.
    named: dict[str, str] = {b: b for b in wanted}
    queue = list(named)
    total = 0
    while queue:
        base = queue.pop()
        info = cache.path_info(store_dir, base)
        if info is None:
            why = "is not in the cache" if base in wanted else "(a reference) is missing"
            raise BuildError(f"{store_dir}/{base} {why} at {url}",
                             "name a store path the cache holds (its narinfo must exist)")
        if cache_keys:
            problem = signature_problem(info, cache_keys)
            if problem:
                raise BuildError(f"{info.store_path} from {url}: {problem}",
                                 "trust the key the cache is signed with (--cache-key)")
        total += info.nar_size
        if total > limits.max_bytes:
            raise BuildError(f"stopped: the closure at {url} holds more than "
                             f"{human_size(limits.max_bytes)} of NAR (--max-bytes "
                             f"{limits.max_bytes}; {info.store_path} alone says NarSize "
                             f"{info.nar_size})", MORE_HINT)
        new = [r for r in info.references if r not in named]
        named.update((r, r) for r in new)
        info.references = [named[r] for r in info.references]
        infos[base] = info
        queue += new
        if len(named) > limits.max_paths:
            raise BuildError(f"stopped: the closure at {url} has more than {limits.max_paths} "
                             f"store paths (--max-paths {limits.max_paths})", MORE_HINT)
    return infos


def _check_space(dest: Path, total: int) -> None:
    """Refuse to start a fetch whose NARs (``total`` bytes unpacked, about the size of
    the files written) cannot fit where they go."""
    where = dest
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return  # nowhere to ask: the writes themselves will say it
    if total > free:
        raise BuildError(f"{where} has {human_size(free)} free, but the closure's NARs "
                         f"announce {human_size(total)}; nothing was fetched",
                         "free some space there, or fetch elsewhere")


def _root_base(root: str, store_dir: str, url: str) -> str:
    """A root as a base name: a store path in the cache's store dir, or a base name."""
    try:
        if root.startswith("/"):
            directory, base = storepath.split(root)
            if directory != store_dir:
                raise BuildError(f"{root} is not in {store_dir}, the store dir of {url}",
                                 "name paths of the cache's store dir")
            return base
        return storepath.check_base_name(root)
    except storepath.StorePathError as e:
        raise BuildError(f"root {root!r}: {e}", "name a store path such as "
                         f"{store_dir}/<hash>-<name>") from None




def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def write_closure_dir(url: str, roots: Sequence[str], out_dir: Path,
                      cache_keys: Sequence[PublicKey] = (),
                      say: Callable[[str], object] = print,
                      progress: Callable[[int], object] | None = None,
                      limits: FetchLimits | None = None) -> Closure:
    """``closure --from-cache``: a closureInfo dir (store-paths, registration,
    total-nar-size) with the fetched paths under ``out_dir/store``, which ``nix-prefix
    build OUT_DIR --store-root OUT_DIR/store`` packs.  The store appears whole or not
    at all, and an ``out_dir`` made for it goes again when it fails."""
    store = out_dir / "store"
    if store.exists():
        raise BuildError(f"{store} exists already", "write into a new directory")
    made = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BuildError(f"cannot create {out_dir}: {e.strerror}") from None
    remove_stale(out_dir, ".store.tmp-")  # of runs that were killed
    tmp = out_dir / f".store.tmp-{os.getpid()}"
    try:
        tmp.mkdir()
        closure, _ = fetch_closure(url, roots, tmp, cache_keys, say, progress, limits)
        (out_dir / "store-paths").write_text("".join(i.path + "\n" for i in closure.infos))
        (out_dir / "registration").write_text(registration.format(closure.infos))
        (out_dir / "total-nar-size").write_text(f"{closure.total_nar_size}\n")
        os.rename(tmp, store)
    except BaseException:
        _remove(tmp)
        for name in ("store-paths", "registration", "total-nar-size"):
            if out_dir in made:
                (out_dir / name).unlink(missing_ok=True)
        for directory in made:  # innermost first; only if still empty
            try:
                directory.rmdir()
            except OSError:
                break
        raise
    return closure
