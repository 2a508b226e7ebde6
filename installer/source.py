"""The installer file as a source of a manifest and verified store paths.

The file is an sh preamble followed by a zip (see nix_prefix.builder.pack).
Nothing here writes to the prefix: ``InstallerFile`` reads, checks and
replays the payload into whatever visitor the caller gives it, which is how
both ``--check`` and the real install share one reading path.
"""

import hashlib
import threading
import zipfile

from ..payload import archive, codecs, hashes, nar, seal
from ..payload.manifest import Manifest, ManifestError
from .errors import CorruptInstaller, EnvironmentProblem

_READ_SIZE = 1 << 20


class _Stopped(Exception):
    """Another chunk's worker failed: this one stops where it is."""


class _HashingReader(object):
    """Wraps a zip member: counts and hashes the compressed bytes as they pass.

    With a ``stop`` event, a read after it is set raises _Stopped, so the
    other workers end soon after one of them fails.
    """

    def __init__(self, member, stop=None):
        self._member = member
        self._stop = stop
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n=-1):
        if self._stop is not None and self._stop.is_set():
            raise _Stopped()
        data = self._member.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def readable(self):
        return True

    def drain(self):
        while self.read(_READ_SIZE):
            pass


class InstallerFile(object):
    """An opened installer file: its manifest, checked, and its payload."""

    def __init__(self, path, name=None, sealed=False):
        # type: (str, Optional[str], bool) -> None
        """Open ``path`` (shown as ``name``); ``sealed``: the sh preamble's Python
        already checked the seal over this very file (payload/seal.py)."""
        self.path = path
        self.name = name or path
        try:
            if not sealed:
                seal.check(path)
        except seal.SealError as e:
            raise CorruptInstaller("%s is damaged: %s" % (self.name, e))
        except OSError as e:
            raise CorruptInstaller("cannot read %s (%s)" % (self.name, e.strerror))
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise CorruptInstaller("%s is not a readable installer (%s)" % (self.name, e))
        self.manifest = self._read_manifest()
        self._check_preamble()

    def close(self):
        # type: () -> None
        self._zip.close()

    def _read_member(self, name):
        # type: (str) -> bytes
        try:
            return self._zip.read(name)
        except KeyError:
            raise CorruptInstaller("the installer has no %s" % name)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise CorruptInstaller("%s in the installer is damaged (%s)" % (name, e))

    def _read_manifest(self):
        # type: () -> Manifest
        try:
            return Manifest.from_json(self._read_member("manifest.json"))
        except ManifestError as e:
            raise CorruptInstaller("the installer's manifest is invalid: %s" % e)

    def _check_preamble(self):
        # type: () -> None
        # The zip does not cover the sh preamble in front of it; the manifest does
        # (with the seal as its placeholder: the seal is written after the manifest).
        with open(self.path, "rb") as f:
            start = _zip_start(self._zip)
            head = seal.masked(f.read(start))
        if hashlib.sha256(head).hexdigest() != self.manifest.preamble_sha256:
            raise CorruptInstaller("the installer's sh preamble does not match its checksum")

    def unpack(self, open_path, chunks=None, jobs=1):
        # type: (Callable[[str], object], Optional[Iterable[int]], int) -> None
        """Replay chunks (default: all) into per-path visitors, verifying everything.

        ``open_path(name)`` returns the visitor for a store path; each path's
        NAR hash and size are checked against the manifest when it finishes,
        and each chunk's sha256 and size when it ends.  Raises CorruptInstaller
        on any mismatch.  With ``jobs`` > 1, that many chunks are worked on at
        once in threads (the decoders, sha256 and file writes run without the
        GIL); ``open_path`` and the visitors must then be thread-safe.
        """
        m = self.manifest
        indexes = list(range(len(m.chunks)) if chunks is None else chunks)
        if jobs <= 1 or len(indexes) <= 1:
            for index in indexes:
                self._unpack_chunk(self._zip, index, open_path, None)
            return
        _run_parallel(self.path, indexes, jobs, m,
                      lambda zf, index, stop: self._unpack_chunk(zf, index, open_path, stop))

    def _unpack_chunk(self, zf, index, open_path, stop):
        # type: (zipfile.ZipFile, int, Callable[[str], object], Optional[threading.Event]) -> None
        m = self.manifest
        chunk = m.chunks[index]
        expected = [p for p in m.paths if p.chunk == index]
        by_name = dict((p.name, p) for p in expected)

        def open_checked(name):
            return _VerifyingVisitor(by_name[name], open_path(name))

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
                archive.unpack(stream, [p.name for p in expected], open_checked)
                reader.drain()
            finally:
                stream.close()
        except codecs.CodecError as e:
            raise EnvironmentProblem(str(e))
        except archive.ArchiveError as e:
            raise CorruptInstaller("%s: %s" % (chunk.file, e))
        except (codecs.CorruptData, zipfile.BadZipFile, EOFError) as e:
            # zipfile's CRC check, the decoders' "corrupt input" and short reads.
            raise CorruptInstaller("%s is damaged (%s)" % (chunk.file, e))
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
        self.unpack(lambda name: CountingVisitor(progress), jobs=jobs)

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


def _run_parallel(path, indexes, jobs, manifest, work):
    # type: (str, List[int], int, Manifest, Callable[[zipfile.ZipFile, int, threading.Event], None]) -> None
    """Run ``work(zf, index, stop)`` for every chunk index in ``jobs`` threads.

    Each thread reads through its own ZipFile (one file position each).  The
    biggest chunks start first, so the last one to finish is a small one.  The
    first failure stops the others and is raised once all have stopped.
    """
    queue = sorted(indexes, key=lambda i: -manifest.chunks[i].nar_size)
    lock = threading.Lock()
    stop = threading.Event()
    errors = []  # type: List[BaseException]

    def worker():
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
                work(zf, index, stop)
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


class CountingVisitor(object):
    """A tree visitor that writes nothing and reports the contents bytes it sees
    to ``progress`` (a callable, or None): for paths that are only verified."""

    def __init__(self, progress):
        self._progress = progress

    def contents(self, data):
        if self._progress is not None:
            self._progress(len(data))

    def __getattr__(self, name):
        return lambda *args: None


def _zip_start(zf):
    # type: (zipfile.ZipFile) -> int
    """Offset of the first zip member: everything before it is the preamble."""
    infos = zf.infolist()
    if not infos:
        raise CorruptInstaller("the installer's zip archive is empty")
    # zipfile shifts header offsets by the preamble length when it reads a
    # self-extracting archive, so the smallest offset is where the zip starts.
    return min(i.header_offset for i in infos)


class _VerifyingVisitor(object):
    """Sends events to the caller's visitor and checks the path's NAR hash at the end."""

    def __init__(self, entry, inner):
        self._entry = entry
        self._inner = inner
        self._hasher = nar.NarHasher()
        self._tee = nar.Tee(inner, self._hasher)

    def __getattr__(self, name):
        return getattr(self._tee, name)

    def finish(self):
        got = hashes.format_sha256(self._hasher.digest())
        if got != self._entry.nar_hash or self._hasher.size != self._entry.nar_size:
            raise CorruptInstaller(
                "store path %s in the payload does not match its NAR hash (got %s, %d bytes; "
                "expected %s, %d bytes)" % (self._entry.name, got, self._hasher.size,
                                            self._entry.nar_hash, self._entry.nar_size))
        finish = getattr(self._inner, "finish", None)
        if finish is not None:
            finish()
