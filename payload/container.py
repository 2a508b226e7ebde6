"""The installer file as a container: writer and reader side by side.

The file is an sh preamble followed by a zip application (as zipapp makes
them; Python runs a zip with ``__main__.py``).  Its members, in this fixed
order and with fixed metadata, so that two builds of one closure are
byte-identical:

    __main__.py                     starts nix_prefix.installer.main
    nix_prefix/__init__.py          (empty)
    nix_prefix/installer/**.py      the installer stub (its subpackages too)
    nix_prefix/payload/*.py         this package
    payload/NNNN.tar.xz|.tar.zst    the chunks: one canonical tar stream of every
                                    store path (archive.py), cut into chunks of one
                                    size anywhere, each compressed (codecs.py)
    refmap.bin                      the payload's reference map (refmap.py; format 4,
                                    when there is one)
    manifest.json                   (manifest.py)
    signatures.json                 last, in a signed installer only (publisher.py)

The manifest covers the preamble (``preambleSha256``), the code
(``codeSha256``), the chunks (size and sha256 each, and of all of them in
order), the reference map (as ``refMap``, and within ``codeSha256``, which covers every
member that is not a chunk, the manifest or the signatures) and every path's NAR
hash; the seal (seal.py, in line 2 of the
preamble) covers every byte of the file, and the publisher's signatures
cover the manifest.
``InstallerFile`` checks all of it as it reads; ``write_installer`` and
``PayloadWriter`` write it.
"""

import hashlib
import importlib.util
import os
import stat
import tempfile
import threading
import zipfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from . import archive, codecs, hashes, nar, publisher, refmap, seal, split
from .manifest import Chunk, Manifest, ManifestError
from .tree import Count, Sink
from .trust import (
    MANIFEST,
    MAX_CODE,
    MAX_MANIFEST,
    MAX_SIGNATURES,
    Refused,
    check_directory,
    check_members,
    code_digest,
    read_member,
)

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import (  # noqa: F401
        IO,
        Any,
        BinaryIO,
        Callable,
        Deque,
        Dict,
        Iterable,
        Iterator,
        List,
        Optional,
        Sequence,
        Tuple,
        Union,
    )

    from .manifest import PathEntry  # noqa: F401
    from .signing import PublicKey  # noqa: F401

MAIN_PY = b"""\
import sys
from nix_prefix.installer.main import main
main(sys.argv[0], sys.argv[1:])
"""
# The packages embedded in every installer, as they are named inside the zip.
EMBEDDED_PACKAGES = ("nix_prefix.installer", "nix_prefix.payload")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_READ_SIZE = 1 << 20
# The bounds on what is read before anything vouches for it are trust.py's
# (MAX_MANIFEST, MAX_SIGNATURES, MAX_CODE, MAX_DIRECTORY): the preamble's check
# reads the same members first.
MAX_PREAMBLE = 1 << 20  # the sh preamble is seal.HEAD_SIZE (128 KiB)


class CorruptInstaller(Refused):
    """The installer file is damaged, truncated or tampered with (exit code 3)."""


class UntrustedInstaller(CorruptInstaller):
    """Trusted keys were given and none of them signed the installer (exit code 3)."""


class ManifestTooLarge(ValueError):
    """The closure's manifest is larger than any installer may carry (MAX_MANIFEST)."""


def not_a_file(path):
    # type: (str) -> Optional[str]
    """What ``path`` is when it is not a regular file ("a FIFO (named pipe)", "a character
    device", ...), without opening it (opening a FIFO waits for a writer); None for a
    regular file or one that does not exist (opening it says so)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def chunk_file(index, compression):
    # type: (int, str) -> str
    """The zip member name of payload chunk ``index`` (manifest.py checks this form)."""
    return "payload/%04d%s" % (index, codecs.EXTENSIONS[compression])


# -- writing ----------------------------------------------------------------------------------


def _zip_info(name):
    # type: (str) -> zipfile.ZipInfo
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3
    info.external_attr = 0o644 << 16
    return info


def embedded_code():
    # type: () -> List[Tuple[str, bytes]]
    """(zip member name, bytes) of the code every installer carries.

    The packages' files are read as data, found where the import system
    would find them, without importing them (the builder never imports the
    installer: builder -> payload <- installer).
    """
    members = [("__main__.py", MAIN_PY), ("nix_prefix/__init__.py", b"")]
    for package in EMBEDDED_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("cannot find the package %s to embed" % package)
        folder = list(spec.submodule_search_locations)[0]
        sub = package.replace(".", "/")
        for rel in _package_files(folder):
            with open(os.path.join(folder, rel), "rb") as f:
                members.append(("%s/%s" % (sub, rel), f.read()))
    return members


def _package_files(folder):
    # type: (str) -> List[str]
    """The .py files of the package in ``folder`` and of its subpackages (a folder with
    an ``__init__.py``, such as installer/steps/), as sorted '/'-separated paths."""
    found = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(".py") and os.path.isfile(path):
            found.append(name)
        elif os.path.isfile(os.path.join(path, "__init__.py")):
            found += ["%s/%s" % (name, rel) for rel in _package_files(path)]
    return found


def write_installer(out, preamble, code, compression, compressor, write_payload,
                    tmp_dir=None, check_out=None, signer=None):
    # type: (str, bytes, Sequence[Tuple[str, bytes]], str, Callable[[], Any], Callable[[PayloadWriter], Manifest], Optional[str], Optional[Callable[[str], None]], Optional[publisher.Signer]) -> Manifest
    """Write ``preamble``, ``code``, the payload and the manifest to ``out``, then seal it.

    ``signer`` (default: publisher.Signer, which signs nothing) gives every path
    its signatures once the payload is written, and the publisher's signatures
    of the manifest, written as ``signatures.json`` unless there are none.

    ``write_payload(payload)`` writes the chunks through the PayloadWriter it
    is given and returns the manifest of what it wrote (each path's ``chunk``
    naming the chunk that holds it); the chunks' sizes and hashes, the
    payload's and the longest name are added here, and the manifest as
    written is returned.  ``compressor()`` makes a streaming compressor
    (``compress``, ``flush``) for one chunk.  Atomic: the file appears
    complete under its name or not at all.  Compressed chunks wait for their
    turn in anonymous temporary files in ``tmp_dir`` (default: beside ``out``).
    ``check_out(out)``, if given, may refuse ``out`` (by raising) before
    anything is written and again just before the rename, which replaces
    whatever has that name.
    """
    if check_out is not None:
        check_out(out)
    folder = os.path.dirname(os.path.abspath(out))
    tmp = os.path.join(folder, ".%s.tmp-%d" % (os.path.basename(out), os.getpid()))
    try:
        with open(tmp, "wb") as f:
            f.write(preamble)
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
                for name, data in code:
                    zf.writestr(_zip_info(name), data)
                payload = PayloadWriter(zf, compression, compressor, tmp_dir or folder)
                signer = signer or publisher.Signer()
                written = payload.finished(write_payload(payload))
                members, ref_map = _write_ref_map(zf, code, payload.ref_map)
                manifest = signer.sign_paths(written.replaced(
                    code_sha256=code_digest(members), ref_map=ref_map))
                manifest_json = manifest.to_json()
                if len(manifest_json) > MAX_MANIFEST:
                    raise ManifestTooLarge(
                        "the manifest would be %d bytes, more than the %d an installer may "
                        "hold" % (len(manifest_json), MAX_MANIFEST))
                zf.writestr(_zip_info(MANIFEST), manifest_json)
                endorsements = signer.endorse(manifest_json)
                if endorsements:
                    zf.writestr(_zip_info(publisher.MEMBER), publisher.to_json(endorsements))
            f.flush()
        seal.seal(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        if check_out is not None:
            check_out(out)  # again: something may have appeared there meanwhile
        os.replace(tmp, out)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return manifest


def _write_ref_map(zf, code, data):
    # type: (zipfile.ZipFile, Sequence[Tuple[str, bytes]], Optional[bytes]) -> Tuple[List[Tuple[str, bytes]], Optional[Dict[str, object]]]
    """Write the reference map ``data`` (if any, and not too large) as its member; the
    members codeSha256 covers, and the manifest's ``refMap``.  Not a chunk: codeSha256
    covers it, as a verifier of format 3 counts every other member."""
    if data is None or len(data) > refmap.MAX_SIZE:
        return list(code), None
    zf.writestr(_zip_info(refmap.MEMBER), data)
    return list(code) + [(refmap.MEMBER, data)], {
        "file": refmap.MEMBER, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


class _ChunkCompressor(object):
    """Buffers tar bytes, compresses them into a file, hashes the result."""

    def __init__(self, member, compressor):
        # type: (BinaryIO, Any) -> None
        self._member = member
        self._compressor = compressor
        self._buf = bytearray()
        self.sha256 = hashlib.sha256()
        self.size = 0

    def __call__(self, data):
        # type: (Union[bytes, memoryview]) -> None
        if not self._buf and len(data) >= _READ_SIZE:
            self._emit(self._compressor.compress(data))  # a whole piece: no copy
            return
        self._buf += data
        if len(self._buf) >= _READ_SIZE:
            self._emit(self._compressor.compress(bytes(self._buf)))
            del self._buf[:]

    def _emit(self, data):
        # type: (bytes) -> None
        if data:
            self._member.write(data)
            self.sha256.update(data)
            self.size += len(data)

    def finish(self):
        # type: () -> None
        self._emit(self._compressor.compress(bytes(self._buf)))
        del self._buf[:]
        self._emit(self._compressor.flush())


class PayloadWriter(object):
    """Writes the payload into the zip: one tar stream of every store path
    (``stream``), cut into chunks of the same size (archive.TarWriter), each
    compressed in a thread into a temporary file in ``tmp_dir`` and copied in,
    in order.  It keeps what it wrote to itself: ``finished`` puts it into a
    copy of the manifest."""

    def __init__(self, zf, compression, compressor, tmp_dir=None):
        # type: (zipfile.ZipFile, str, Callable[[], Any], Optional[str]) -> None
        self._zf = zf
        self._compression = compression
        self._compressor = compressor
        self._tmp_dir = tmp_dir
        self._hash = hashlib.sha256()
        self._longest = 0
        # The payload's reference map (refmap.py), set by whoever writes the payload.
        self.ref_map = None  # type: Optional[bytes]
        # (file, size, sha256, tar size, paths, start) of each chunk written
        self._written = []  # type: List[Tuple[str, int, str, int, List[str], Optional[archive.Cut]]]

    @contextmanager
    def stream(self, chunk_size, jobs):
        # type: (int, int) -> Iterator[archive.TarWriter]
        """A tar writer for every store path of the payload, in the manifest's order.

        The stream is cut every ``chunk_size`` bytes, inside store paths and
        files too; the compressors (lzma, zstd) and sha256 release the GIL, so
        ``jobs`` chunks compress at once while the next one fills.  They enter
        the zip in order, and the cuts depend on the bytes only, so the file
        is the same whatever the number of jobs.
        """
        jobs = max(1, jobs)
        pending = deque()  # type: Deque[Any]
        filling = [bytearray(), None]  # type: List[Any]  # the chunk's bytes and its start

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            def cut(where, paths):
                # type: (Optional[archive.Cut], List[str]) -> None
                # At most jobs chunks compressing (and one filling): memory stays bounded.
                while len(pending) >= jobs:
                    self._add_compressed(*pending.popleft().result())
                pending.append(pool.submit(self._compress, filling[0], list(paths),
                                           filling[1]))
                filling[0], filling[1] = bytearray(), where

            tar = archive.TarWriter(lambda data: filling[0].extend(data), chunk_size, cut)
            try:
                yield tar
                tar.close()
                cut(None, tar.paths)
                while pending:
                    self._add_compressed(*pending.popleft().result())
            finally:
                for future in pending:
                    future.cancel()
                for future in pending:
                    if not future.cancelled():
                        try:
                            future.result()[0].close()
                        except BaseException:
                            pass
        self._longest = max(self._longest, tar.longest)

    def _compress(self, data, paths, start):
        # type: (bytearray, List[str], Optional[archive.Cut]) -> Tuple[BinaryIO, _ChunkCompressor, int, List[str], Optional[archive.Cut]]
        """Compress one chunk's tar bytes into an anonymous temporary file."""
        spool = tempfile.TemporaryFile(dir=self._tmp_dir)
        try:
            compressed = _ChunkCompressor(spool, self._compressor())
            view = memoryview(data)
            for offset in range(0, len(view), _READ_SIZE):
                compressed(view[offset:offset + _READ_SIZE])
            compressed.finish()
        except BaseException:
            spool.close()
            raise
        return spool, compressed, len(data), paths, start

    def _add_compressed(self, spool, compressed, tar_size, paths, start):
        # type: (BinaryIO, _ChunkCompressor, int, List[str], Optional[archive.Cut]) -> None
        info = _zip_info(chunk_file(len(self._written), self._compression))
        with spool, self._zf.open(info, "w", force_zip64=True) as member:
            spool.seek(0)
            while True:
                data = spool.read(_READ_SIZE)
                if not data:
                    break
                member.write(data)
                self._hash.update(data)
        self._written.append((info.filename, compressed.size, compressed.sha256.hexdigest(),
                              tar_size, paths, start))

    def finished(self, manifest):
        # type: (Manifest) -> Manifest
        """``manifest`` with the chunks written (each path's ``chunk`` the first
        that holds it), and the payload's size, sha256 and longest name."""
        chunks = [Chunk(*written) for written in self._written]
        first = {}  # type: Dict[str, int]
        for index, c in enumerate(chunks):
            for name in c.paths:
                first.setdefault(name, index)
        new = manifest.replaced(chunks=chunks, payload_size=sum(c.size for c in chunks),
                                payload_sha256=self._hash.hexdigest(),
                                longest_path=self._longest)
        for p in new.paths:
            if p.name not in first:
                raise ValueError("%s is in no chunk written" % p.name)
            p.chunk = first[p.name]
        return new


# -- reading ----------------------------------------------------------------------------------


class _Stopped(Exception):
    """Another chunk's worker failed: this one stops where it is."""


class _HashingReader(object):
    """Wraps a zip member: counts and hashes the compressed bytes as they pass.

    With a ``stop`` event, a read after it is set raises _Stopped, so the
    other workers end soon after one of them fails.
    """

    def __init__(self, member, stop=None):
        # type: (IO[bytes], Optional[threading.Event]) -> None
        self._member = member
        self._stop = stop
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n=-1):
        # type: (int) -> bytes
        if self._stop is not None and self._stop.is_set():
            raise _Stopped()
        data = self._member.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def readable(self):
        # type: () -> bool
        return True

    def drain(self):
        # type: () -> None
        while self.read(_READ_SIZE):
            pass


class InstallerFile(object):
    """An opened installer file: its manifest, checked, and its payload.

    Opening checks the seal, the zip, the manifest and the preamble; nothing
    here writes anything: ``unpack`` replays the payload into whatever
    tree sinks the caller gives it, which is how ``--check``, the install and
    the builder's ``verify`` and ``retarget`` share one reading path.
    Raises CorruptInstaller for any damage, codecs.CodecError when a chunk's
    codec cannot be decoded here.
    """

    def __init__(self, path, name=None, sealed=False):
        # type: (str, Optional[str], bool) -> None
        """Open ``path`` (shown as ``name``); ``sealed``: the sh preamble's Python
        already checked the seal over this very file (payload/seal.py)."""
        self.path = path
        self.name = name or path
        what = not_a_file(path)
        if what is not None:
            # Refused before it is opened: a FIFO would hang here, a device never end.
            raise CorruptInstaller("%s is %s, not an installer file" % (self.name, what),
                                   "pass the installer file itself (save a download to a "
                                   "file first)")
        try:
            if not sealed:
                seal.check(path)
        except seal.SealError as e:
            raise CorruptInstaller("%s is damaged: %s" % (self.name, e))
        except OSError as e:
            raise CorruptInstaller("cannot read %s (%s)" % (self.name, e.strerror))
        try:
            with open(path, "rb") as f:
                check_directory(f, CorruptInstaller)
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise CorruptInstaller("%s is not a readable installer (%s)" % (self.name, e))
        try:
            check_members(self._zip, CorruptInstaller)
            self.manifest = self._read_manifest()
            self._check_preamble()
            self._check_code()
            self.endorsements = self._read_endorsements()
        except BaseException:
            self._zip.close()
            raise

    def close(self):
        # type: () -> None
        self._zip.close()

    def __enter__(self):
        # type: () -> InstallerFile
        return self

    def __exit__(self, *exc):
        # type: (*object) -> None
        self.close()

    def _read_member(self, name, limit):
        # type: (str, int) -> bytes
        """The bytes of member ``name``, refused when it holds more than ``limit``."""
        return read_member(self._zip, name, limit, CorruptInstaller)

    def _read_manifest(self):
        # type: () -> Manifest
        # The bytes are kept: the publisher's signatures are made over them.
        self.manifest_json = self._read_member(MANIFEST, MAX_MANIFEST)
        try:
            return Manifest.from_json(self.manifest_json)
        except ManifestError as e:
            raise CorruptInstaller("the installer's manifest is invalid: %s" % e)

    def _check_code(self):
        # type: () -> None
        """Every member but the chunks, the manifest and the signatures is code, and must
        be what the manifest's codeSha256 names (so a signature covers the code too)."""
        if not self.manifest.code_sha256:
            return  # built before codeSha256 existed
        data = set(c.file for c in self.manifest.chunks)
        data.update((MANIFEST, publisher.MEMBER))
        infos = [info for info in self._zip.infolist() if info.filename not in data]
        total = sum(info.file_size for info in infos)
        if total > MAX_CODE:
            raise CorruptInstaller("the installer's code members hold %d bytes, more than the "
                                   "%d an installer's may have" % (total, MAX_CODE))
        code = [(info.filename, self._read_member(info.filename, MAX_CODE))
                for info in infos]
        if code_digest(code) != self.manifest.code_sha256:
            raise CorruptInstaller("the installer's code does not match its sha256 in the "
                                   "manifest")

    def ref_map(self):
        # type: () -> Optional[refmap.RefMap]
        """The payload's reference map (format 4), checked against the manifest's
        size and sha256; None if the file carries none."""
        entry = self.manifest.ref_map
        if entry is None:
            return None
        data = self._read_member(refmap.MEMBER, refmap.MAX_SIZE)
        if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise CorruptInstaller("%s does not match its sha256 in the manifest" % refmap.MEMBER)
        try:
            return refmap.from_bytes(data)
        except refmap.RefMapError as e:
            raise CorruptInstaller(e.args[0])

    def _read_endorsements(self):
        # type: () -> List[publisher.Endorsement]
        """The publisher's signatures (publisher.py); none if the file is unsigned."""
        try:
            self._zip.getinfo(publisher.MEMBER)
        except KeyError:
            return []
        try:
            return publisher.from_json(self._read_member(publisher.MEMBER, MAX_SIGNATURES))
        except publisher.PublisherError as e:
            raise CorruptInstaller("the installer's %s" % e)

    def verdict(self, trusted_keys):
        # type: (Sequence[PublicKey]) -> publisher.Verdict
        """What the publisher's signatures say, given the keys the user trusts; raises
        CorruptInstaller if one does not hold (the manifest changed after signing)."""
        try:
            return publisher.check(self.manifest_json, self.endorsements, trusted_keys)
        except publisher.PublisherError as e:
            raise CorruptInstaller("the installer's %s" % e)

    def check_publisher(self, trusted_keys):
        # type: (Sequence[PublicKey]) -> publisher.Verdict
        """``verdict``, and UntrustedInstaller if trusted keys were given and none
        of them signed the installer."""
        verdict = self.verdict(trusted_keys)
        refusal = verdict.refusal()
        if refusal:
            raise UntrustedInstaller(refusal, verdict.refusal_hint())
        return verdict

    def _check_preamble(self):
        # type: () -> None
        # The zip does not cover the sh preamble in front of it; the manifest does
        # (with the seal as its placeholder: the seal is written after the manifest).
        start = _zip_start(self._zip)
        if start > MAX_PREAMBLE:
            raise CorruptInstaller("the installer's zip starts %d bytes in; its sh preamble "
                                   "is never longer than %d" % (start, MAX_PREAMBLE))
        with open(self.path, "rb") as f:
            head = seal.masked(f.read(start))
        if hashlib.sha256(head).hexdigest() != self.manifest.preamble_sha256:
            raise CorruptInstaller("the installer's sh preamble does not match its checksum")

    def unpack(self, open_path, chunks=None, jobs=1):
        # type: (Callable[[str], Any], Optional[Iterable[int]], int) -> None
        """Replay chunks (default: all) into per-path tree sinks, verifying everything.

        ``open_path(name)`` returns the sink for a store path (once per path,
        its events whole and in order even when the path is cut across chunks:
        split.py); each path's NAR hash and size are checked against the
        manifest when it finishes, and each chunk's sha256 and size when it
        ends.  A path cut across chunks some of which are not read is skipped.
        Raises CorruptInstaller on any mismatch.  With ``jobs`` > 1, that many
        chunks are worked on at once in threads (the decoders, sha256 and file
        writes run without the GIL); ``open_path`` must then be thread-safe.
        """
        m = self.manifest
        indexes = sorted(set(range(len(m.chunks)) if chunks is None else chunks))
        stop = threading.Event()

        def check_stop():
            # type: () -> None
            if stop.is_set():
                raise _Stopped()

        spans = m.chunk_spans()
        reading = set(indexes)
        by_name = dict((p.name, p) for p in m.paths)
        splits = {}  # type: Dict[str, split.SplitPath]
        for p in m.paths:
            span = spans[p.name]
            if len(span) > 1 and reading.issuperset(span):
                splits[p.name] = split.SplitPath(
                    span[0], span[-1], lambda p=p: _Verified(p, open_path(p.name)),  # type: ignore[misc]
                    check_stop)
        if jobs <= 1 or len(indexes) <= 1:
            for index in indexes:
                self._unpack_chunk(self._zip, index, open_path, splits, spans, by_name, None)
            return
        _run_parallel(self.path, indexes, jobs, stop,
                      lambda zf, index: self._unpack_chunk(zf, index, open_path, splits, spans,
                                                           by_name, stop))

    def _unpack_chunk(self, zf, index, open_path, splits, spans, by_name, stop):
        # type: (zipfile.ZipFile, int, Callable[[str], Any], Dict[str, split.SplitPath], Dict[str, List[int]], Dict[str, PathEntry], Optional[threading.Event]) -> None
        m = self.manifest
        chunk = m.chunks[index]

        def open_checked(name):
            # type: (str) -> Sink
            if name in splits:
                return splits[name].part(index)
            if len(spans[name]) > 1:
                return Sink()  # a part of a path not read whole: skipped
            return _Verified(by_name[name], open_path(name))

        try:
            member = zf.open(chunk.file)
        except KeyError:
            raise CorruptInstaller("the installer has no %s" % chunk.file)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise CorruptInstaller("%s is damaged (%s)" % (chunk.file, e))
        reader = _HashingReader(member, stop)
        try:
            stream = codecs.open_reader(m.compression, reader)
            try:
                # A chunk decodes to its tarSize, no more: a tampered one stops there.
                bounded = _Bounded(stream, chunk)  # type: Any
                archive.unpack(bounded, chunk.paths, open_checked, chunk.start, m.end_of(index),
                               last=index == len(m.chunks) - 1)
                reader.drain()
            finally:
                stream.close()
        except archive.ArchiveError as e:
            raise CorruptInstaller("%s: %s" % (chunk.file, e))
        except (codecs.CorruptData, zipfile.BadZipFile, EOFError) as e:
            # zipfile's CRC check, the decoders' "corrupt input" and short reads.
            raise CorruptInstaller("%s is damaged (%s)" % (chunk.file, e))
        except OSError:
            # A write failed while the chunk streamed (a full disk?): if the chunk
            # is not the one the manifest names, that is the cause to report.
            member.close()
            if not _member_matches(zf, chunk, stop):
                raise CorruptInstaller("%s does not match its sha256 in the manifest"
                                       % chunk.file)
            raise
        finally:
            member.close()
        if reader.size != chunk.size or reader.sha256.hexdigest() != chunk.sha256:
            raise CorruptInstaller("%s does not match its sha256 in the manifest"
                                   % chunk.file)

    def check(self, progress=None, jobs=1):
        # type: (Optional[Callable[[int], object]], int) -> None
        """Everything ``--check`` verifies, writing nothing: the payload's sha256,
        then every chunk and every store path's NAR hash.

        ``progress`` is called with the number of NAR bytes verified since the last call.
        """
        self.check_payload_hash()
        self.unpack(lambda name: Count(progress), jobs=jobs)

    def check_payload_hash(self):
        # type: () -> None
        """Hash every chunk's bytes in order against the manifest's payload sha256."""
        total = hashlib.sha256()
        size = 0
        for chunk in self.manifest.chunks:
            try:
                with self._zip.open(chunk.file) as member:
                    while True:
                        data = member.read(_READ_SIZE)
                        if not data:
                            break
                        total.update(data)
                        size += len(data)
            except (KeyError, zipfile.BadZipFile, EOFError, ValueError) as e:
                raise CorruptInstaller("%s is damaged (%s)" % (chunk.file, e))
        if size != self.manifest.payload_size or total.hexdigest() != self.manifest.payload_sha256:
            raise CorruptInstaller("the payload does not match its sha256 in the manifest")


class _Bounded(object):
    """A chunk's decoded (tar) stream, refused once it goes past the chunk's tarSize."""

    def __init__(self, stream, chunk):
        # type: (Any, Chunk) -> None
        self._stream = stream
        self._chunk = chunk
        self.size = 0

    def read(self, n=-1):
        # type: (int) -> bytes
        room = self._chunk.tar_size - self.size + 1  # one byte more tells "too long"
        data = self._stream.read(room if n is None or n < 0 else min(n, room))
        self.size += len(data)
        if self.size > self._chunk.tar_size:
            raise CorruptInstaller("%s decodes to more than its %d bytes (tarSize in the "
                                   "manifest)" % (self._chunk.file, self._chunk.tar_size))
        return data

    def readable(self):
        # type: () -> bool
        return True


def _member_matches(zf, chunk, stop):
    # type: (zipfile.ZipFile, Chunk, Optional[threading.Event]) -> bool
    """Whether chunk's zip member has the size and sha256 the manifest names (read
    afresh, stored bytes only: bounded by the file); True if that cannot be told."""
    try:
        with zf.open(chunk.file) as member:
            reader = _HashingReader(member, stop)
            reader.drain()
    except (_Stopped, KeyError, zipfile.BadZipFile, OSError, EOFError, ValueError):
        return True
    return reader.size == chunk.size and reader.sha256.hexdigest() == chunk.sha256


def _run_parallel(path, indexes, jobs, stop, work):
    # type: (str, List[int], int, threading.Event, Callable[[zipfile.ZipFile, int], None]) -> None
    """Run ``work(zf, index)`` for every chunk index in ``jobs`` threads.

    Each thread reads through its own ZipFile (one file position each).  The
    chunks are of one size and start in order, which split.SplitPath relies
    on.  The first failure sets ``stop``, which stops the others, and is raised
    once all have stopped.
    """
    queue = sorted(indexes)
    lock = threading.Lock()
    errors = []  # type: List[BaseException]

    def worker():
        # type: () -> None
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            errors.append(CorruptInstaller("%s is not a readable installer (%s)" % (path, e)))
            stop.set()
            return
        try:
            while not stop.is_set():
                with lock:
                    if not queue:
                        return
                    index = queue.pop(0)
                work(zf, index)
        except _Stopped:
            pass
        except BaseException as e:  # handed to the main thread, which raises it
            with lock:
                errors.append(e)
            stop.set()
        finally:
            zf.close()

    threads = [threading.Thread(target=worker, name="nix-prefix-chunk-%d" % n)
               for n in range(min(jobs, len(indexes)))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)  # a timeout keeps Ctrl-C deliverable to this thread
    except BaseException:
        # The caller removes the staging dir next: let the workers stop first
        # (each notices at its next read, within a MiB of work).
        stop.set()
        for t in threads:
            t.join()
        raise
    if errors:
        raise errors[0]


def _zip_start(zf):
    # type: (zipfile.ZipFile) -> int
    """Offset of the first zip member: everything before it is the preamble."""
    infos = zf.infolist()
    if not infos:
        raise CorruptInstaller("the installer's zip archive is empty")
    # zipfile shifts header offsets by the preamble length when it reads a
    # self-extracting archive, so the smallest offset is where the zip starts.
    return min(i.header_offset for i in infos)


class _Verified(Sink):
    """Sends a path's events to a NAR hasher, then to the caller's sink; stops the
    path as soon as it grows past its narSize (nothing more reaches the caller's
    sink), and on ``finish`` checks the hash and size against the manifest before
    the caller's sink finishes."""

    def __init__(self, entry, inner):
        # type: (PathEntry, Sink) -> None
        self._entry = entry
        self._inner = inner
        self._hasher = nar.NarHasher()

    def _bounded(self, more=0):
        # type: (int) -> None
        if self._hasher.size + more > self._entry.nar_size:
            raise CorruptInstaller(
                "store path %s in the payload is larger than its narSize of %d bytes in the "
                "manifest" % (self._entry.name, self._entry.nar_size))

    def begin_directory(self, rel=b""):
        # type: (bytes) -> None
        self._hasher.begin_directory(rel)
        self._bounded()
        self._inner.begin_directory(rel)

    def begin_entry(self, name):
        # type: (bytes) -> None
        self._hasher.begin_entry(name)
        self._bounded()
        self._inner.begin_entry(name)

    def end_entry(self):
        # type: () -> None
        self._hasher.end_entry()
        self._bounded()
        self._inner.end_entry()

    def end_directory(self):
        # type: () -> None
        self._hasher.end_directory()
        self._bounded()
        self._inner.end_directory()

    def regular(self, rel, executable, size):
        # type: (bytes, bool, int) -> None
        self._hasher.regular(rel, executable, size)
        self._bounded(size)  # the whole file must fit, before a byte of it is written
        self._inner.regular(rel, executable, size)

    def contents(self, data):
        # type: (bytes) -> None
        self._hasher.contents(data)
        self._inner.contents(data)

    def end_regular(self):
        # type: () -> None
        self._hasher.end_regular()
        self._bounded()
        self._inner.end_regular()

    def symlink(self, rel, target):
        # type: (bytes, bytes) -> None
        self._hasher.symlink(rel, target)
        self._bounded()
        self._inner.symlink(rel, target)

    def end_part(self):
        # type: () -> None
        self._inner.end_part()

    def finish(self):
        # type: () -> None
        got = hashes.format_sha256(self._hasher.digest())
        if got != self._entry.nar_hash or self._hasher.size != self._entry.nar_size:
            raise CorruptInstaller(
                "store path %s in the payload does not match its NAR hash (got %s, %d bytes; "
                "expected %s, %d bytes)" % (self._entry.name, got, self._hasher.size,
                                            self._entry.nar_hash, self._entry.nar_size))
        self._inner.finish()
