"""``--from-cache URL``: a closure fetched from a Nix binary cache, without a local store.

Speaks the substituter protocol of NixOS/nix 2.8.0 (src/libstore/
binary-cache-store.cc, http-binary-cache-store.cc, local-binary-cache-store.cc)
over ``file://`` and ``http(s)://``: ``nix-cache-info`` names the store dir,
``<hash>.narinfo`` describes a path (payload/narinfo.py), a 404 means "not
here", and the NAR comes from the narinfo's URL.  The closure is followed
through References.  Each NAR is checked as a substituting Nix checks it: its
FileHash and FileSize, then its NarHash and NarSize (substitution-goal.cc,
``LocalStore::addToStore``); with trusted keys, every narinfo needs a ``Sig``
that verifies under one of them first (``ValidPathInfo::checkSignatures``;
the keys and signatures are payload/signing.py's).
The paths are unpacked under a directory of the caller's, as a store root.
"""

from __future__ import annotations

import bz2
import hashlib
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from ..payload import codecs, hashes, nar, narinfo, registration, storepath
from ..payload.registration import ValidPathInfo
from ..payload.signing import PublicKey
from ..payload.tree import Count, Sink, Tee
from .closure_info import Closure
from .errors import BuildError

TIMEOUT = 60  # seconds without a byte before a request is given up
MAX_CACHE_INFO = 64 << 10
_READ = 1 << 20
# Nix treats these as "no such file" (http-binary-cache-store.cc, getFile).
_ABSENT = (404, 403)



def signature_problem(info: narinfo.NarInfo, keys: Sequence[PublicKey]) -> str | None:
    """Why ``info`` is not signed by one of ``keys`` (None if it is).  Stricter than Nix,
    which takes a content-addressed path unsigned: here every path needs a signature."""
    if info.signed_by(keys):
        return None
    names = ", ".join(s.partition(":")[0] for s in info.sigs) or "nobody"
    return (f"not signed by any trusted key ({', '.join(k.name for k in keys)}); "
            f"its narinfo is signed by {names}")


class BinaryCache:
    """A binary cache at a ``file://``, ``http://`` or ``https://`` URL (read only)."""

    def __init__(self, url: str, timeout: float = TIMEOUT) -> None:
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
        self._timeout = timeout

    def _open(self, rel: str):
        """A binary file object for ``rel``, or None when the cache does not have it."""
        if self._file_root is not None:
            try:
                return open(self._file_root / rel, "rb")  # the caller closes it
            except FileNotFoundError:
                return None
            except OSError as e:
                raise BuildError(f"cannot read {self.url}/{rel}: {e.strerror}") from None
        request = urllib.request.Request(f"{self.url}/{rel}",
                                         headers={"User-Agent": "nix-prefix"})
        try:
            return urllib.request.urlopen(request, timeout=self._timeout)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code in _ABSENT:
                return None
            raise BuildError(f"{self.url}/{rel}: HTTP {e.code} {e.reason}",
                             "check the cache URL and that its server is up") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise BuildError(f"cannot reach {self.url}/{rel}: {reason}",
                             "check the cache URL and that its server is up") from None

    def get(self, rel: str, limit: int) -> bytes | None:
        """The whole of a small file, at most ``limit`` bytes, or None if absent."""
        f = self._open(rel)
        if f is None:
            return None
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise BuildError(f"cannot read {self.url}/{rel}: {e}") from None
        finally:
            f.close()
        if len(data) > limit:
            raise BuildError(f"{self.url}/{rel} is larger than {limit} bytes",
                             "this is not a Nix binary cache file")
        return data

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
        raw = self._open(info.url)
        if raw is None:
            raise BuildError(f"{where} (the NAR of {info.store_path}) is missing",
                             "the cache is incomplete; ask its publisher")
        counted = _Counting(raw, info.file_size + 1 if info.file_size else None, where)
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
            counted.drain()
        finally:
            raw.close()
        got = hashes.format_sha256(hasher.digest())
        if got != info.nar_hash or hasher.size != info.nar_size:
            raise BuildError(f"{info.store_path} from {self.url}: NAR hash mismatch (got {got}, "
                             f"{hasher.size} bytes; its narinfo says {info.nar_hash}, "
                             f"{info.nar_size} bytes)",
                             "the cache is damaged or was tampered with; nothing was written")
        if info.file_hash and (hashes.format_sha256(counted.sha256.digest()) != info.file_hash
                               or counted.size != info.file_size):
            raise BuildError(f"{where} does not match the FileHash/FileSize of its narinfo",
                             "the cache is damaged; ask its publisher")


class _Counting:
    """A raw download: counts and hashes the bytes, refuses more than ``limit``."""

    def __init__(self, f, limit: int | None, where: str) -> None:
        self._f = f
        self._limit = limit
        self._where = where
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._f.read(n if n and n > 0 else _READ)
        except OSError as e:
            raise BuildError(f"cannot read {self._where}: {e}") from None
        self.sha256.update(data)
        self.size += len(data)
        if self._limit is not None and self.size > self._limit:
            raise BuildError(f"{self._where} is longer than the FileSize of its narinfo",
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
                  trusted_keys: Sequence[PublicKey] = (),
                  say: Callable[[str], object] = print,
                  progress: Callable[[int], object] | None = None) -> tuple[Closure, list[str]]:
    """Fetch the closure of ``roots`` from the cache at ``url`` into ``dest`` (a new,
    empty directory: ``dest/<hash>-<name>`` for each path); return it and its roots."""
    cache = BinaryCache(url)
    store_dir = cache.store_dir()
    wanted = [_root_base(r, store_dir, url) for r in roots]
    if not wanted:
        raise BuildError("no store paths given", "name at least one root path in the cache")
    infos: dict[str, narinfo.NarInfo] = {}
    queue = list(wanted)
    while queue:
        base = queue.pop()
        if base in infos:
            continue
        info = cache.path_info(store_dir, base)
        if info is None:
            why = "is not in the cache" if base in wanted else "(a reference) is missing"
            raise BuildError(f"{store_dir}/{base} {why} at {url}",
                             "name a store path the cache holds (its narinfo must exist)")
        if trusted_keys:
            problem = signature_problem(info, trusted_keys)
            if problem:
                raise BuildError(f"{info.store_path} from {url}: {problem}",
                                 "trust the key the cache is signed with (--trusted-key)")
        infos[base] = info
        queue += [r for r in info.references if r not in infos]
    total = sum(i.nar_size for i in infos.values())
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
    closure = Closure(store_dir, [
        ValidPathInfo(i.store_path, i.nar_hash, i.nar_size,
                      f"{store_dir}/{i.deriver}" if i.deriver else "",
                      tuple(f"{store_dir}/{r}" for r in i.references))
        for _, i in sorted(infos.items(), key=lambda kv: kv[1].store_path)])
    return closure, sorted(f"{store_dir}/{b}" for b in set(wanted))


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
                      trusted_keys: Sequence[PublicKey] = (),
                      say: Callable[[str], object] = print,
                      progress: Callable[[int], object] | None = None) -> Closure:
    """``closure --from-cache``: a closureInfo dir (store-paths, registration,
    total-nar-size) with the fetched paths under ``out_dir/store``, which ``nix-prefix
    build OUT_DIR --store-root OUT_DIR/store`` packs.  The store appears whole or not
    at all."""
    store = out_dir / "store"
    if store.exists():
        raise BuildError(f"{store} exists already", "write into a new directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BuildError(f"cannot create {out_dir}: {e.strerror}") from None
    tmp = out_dir / f".store.tmp-{os.getpid()}"
    _remove(tmp)
    tmp.mkdir()
    try:
        closure, _ = fetch_closure(url, roots, tmp, trusted_keys, say, progress)
        (out_dir / "store-paths").write_text("".join(i.path + "\n" for i in closure.infos))
        (out_dir / "registration").write_text(registration.format(closure.infos))
        (out_dir / "total-nar-size").write_text(f"{closure.total_nar_size}\n")
        os.rename(tmp, store)
    except BaseException:
        _remove(tmp)
        raise
    return closure
