"""The installers ``nix-prefix serve --installer FILE`` offers at ``/installers/NAME.sh``.

Each file is checked once, at start, by the installer's own reader
(payload/container.py: the seal over the whole file, the zip, the manifest,
the preamble, the code, the publisher's signatures), then kept open: every
download reads that open file, so an installer renamed over it later does
not change what the URL serves; one changed in place is refused (its size or
mtime moved), never sent under the old sha256.  The URL name is the file's
name, never a request's: a request only picks among the names made here.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..payload.container import CorruptInstaller, InstallerFile
from ..payload.signing import PublicKey
from ..payload.storepath import split_drv_name
from .errors import BuildError

PIECE = 256 << 10  # bytes read and sent at a time: the memory a download holds
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}\Z")


class InstallerChanged(Exception):
    """The file changed on disk since the start (in place): it is not what was checked."""


@dataclass
class Offered:
    """One installer file, checked and held open: what the page says about it and
    what its URL serves."""

    name: str  # the URL is /installers/NAME.sh
    path: Path
    size: int
    sha256: str
    nix_version: str  # "" when the closure has no nix-store
    signed_by: list[PublicKey]
    max_prefix: int  # bytes: the longest prefix it can install into
    fd: int
    stamp: tuple[int, int, int, int]  # (dev, ino, size, mtime_ns) at the start

    @property
    def file_name(self) -> str:
        return self.name + ".sh"

    @property
    def etag(self) -> str:
        # The whole file's sha256: a strong tag, the same on every server holding it.
        return f'"{self.sha256}"'

    def pieces(self) -> Iterator[bytes]:
        """The file's bytes, PIECE at a time, read from the descriptor opened at start;
        InstallerChanged if the file was changed in place since."""
        if _stamp(os.fstat(self.fd)) != self.stamp:
            raise InstallerChanged(f"{self.path} changed since the server started")
        offset = 0
        while offset < self.size:
            data = os.pread(self.fd, min(PIECE, self.size - offset), offset)
            if not data:
                raise InstallerChanged(f"{self.path} is shorter than at the start")
            offset += len(data)
            yield data

    def close(self) -> None:
        os.close(self.fd)


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def url_name(path: Path) -> str:
    """NAME in /installers/NAME.sh for ``path``: its file name without ``.sh``."""
    name = path.name.removesuffix(".sh")
    if not _NAME.match(name):
        raise BuildError(f"--installer {path}: its name becomes the URL /installers/NAME.sh "
                         "and may hold letters, digits and . _ + - only (at most 100)",
                         "rename the file, e.g. nix-installer.sh")
    return name


def nix_version(installer: InstallerFile) -> str:
    """The version of the Nix the installer sets up, from its store path name
    (``<hash>-nix-2.26.3``, read as names.cc's DrvName does), or ""."""
    nix_store = installer.manifest.nix_store
    if not nix_store:
        return ""
    base = nix_store.partition("/")[0]
    return split_drv_name(base.partition("-")[2])[1]


def load(path: Path) -> Offered:
    """Open and check one installer file; BuildError (one line) if it is not an intact
    installer made by nix-prefix."""
    name = url_name(path)
    hint = "pass an installer file made by nix-prefix build, whole"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise BuildError(f"--installer {path}: {e.strerror}", hint) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BuildError(f"--installer {path} is not a regular file", hint)
        try:
            # The seal, zip, manifest, preamble, code; every publisher signature must hold.
            with InstallerFile(str(path)) as installer:
                verdict = installer.verdict([])
        except CorruptInstaller as e:
            raise BuildError(f"--installer: {e.args[0]}", hint) from None  # names the file
        if _stamp(os.stat(path)) != _stamp(st):
            raise BuildError(f"--installer {path} changed while it was being checked",
                             "start the server again once the file is in place")
        digest = hashlib.sha256()
        offset = 0
        while data := os.pread(fd, PIECE, offset):
            digest.update(data)
            offset += len(data)
        manifest = installer.manifest
        return Offered(name, path, st.st_size, digest.hexdigest(), nix_version(installer),
                       list(verdict.signed_by),
                       manifest.max_store_dir_length - len("/store"), fd, _stamp(st))
    except BaseException:
        os.close(fd)
        raise


def load_all(paths: Sequence[Path]) -> dict[str, Offered]:
    """Every ``--installer`` file, checked, by URL name; two files of one name are refused."""
    offered: dict[str, Offered] = {}
    try:
        for path in paths:
            one = load(path)
            if one.name in offered:
                one.close()
                raise BuildError(f"--installer {path} and {offered[one.name].path} would both "
                                 f"be /installers/{one.file_name}",
                                 "give the files different names")
            offered[one.name] = one
    except BaseException:
        for one in offered.values():
            one.close()
        raise
    return offered
