"""The manifest: a versioned JSON description of one installer.

It names the store dir the closure was built for, every store path with its
narHash, narSize, references and deriver, the payload chunks that carry the
paths, the roots that make up the profile, and which path provides
``bin/nix-store``.  Both sides go through ``Manifest``: the builder writes it
with ``to_json``, the installer reads it with ``from_json``, which checks
every field so that a damaged or hostile manifest is refused before any byte
is written.

Store paths are kept as base names (``<hash>-<name>``) and joined with
``store_dir`` on use, so a later retarget only has to change one field.
"""

import copy
import re

from . import hashes, jsondoc, registration, signing, storepath
from .archive import Cut

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple  # noqa: F401

FORMAT = "nix-prefix-manifest"
# 3: the payload is one tar stream cut into chunks anywhere (inside store paths
# and files); chunks list the paths they hold and where they start.
# 4: a reference map (refmap.py) may come along as the zip member ``refMap`` names.
VERSION = 4
READ_VERSIONS = (3, 4)
_KINDS = ("directory", "regular", "symlink")
_CHUNK_FILE = re.compile(r"^payload/[0-9]{4,6}\.tar(\.xz|\.zst)?\Z")
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
# A plain relative path inside a store path: no empty, "." or ".." parts.
_REL_PATH = re.compile(r"^(?!\.\.?(/|\Z))[^/\0\n]+(/(?!\.\.?(/|\Z))[^/\0\n]+)*\Z")
REF_MAP_FILE = "refmap.bin"  # refmap.MEMBER
_SYSTEM = re.compile(r"^[a-z0-9_]+-[a-z]+\Z")


class ManifestError(ValueError):
    """The manifest is missing, malformed or inconsistent."""


class PathEntry(object):
    """One store path of the closure."""

    __slots__ = ("name", "nar_hash", "nar_size", "references", "deriver", "chunk", "sigs")

    def __init__(self, name, nar_hash, nar_size, references, deriver="", chunk=0, sigs=()):
        # type: (str, str, int, Sequence[str], str, int, Sequence[str]) -> None
        self.name = name
        self.nar_hash = nar_hash
        self.nar_size = nar_size
        self.references = list(references)
        self.deriver = deriver
        self.chunk = chunk
        # The publisher's Nix signatures (NAME:BASE64) of this path at storeDir
        # (signing.py ``fingerprint``), for the prefix's Nix database.
        self.sigs = list(sigs)

    @classmethod
    def from_registration(cls, info, chunk=0):
        # type: (registration.ValidPathInfo, int) -> PathEntry
        """The entry of a registration record (full paths become base names)."""
        return cls(_base(info.path), info.nar_hash, info.nar_size,
                   [_base(r) for r in info.references], _base(info.deriver), chunk)

    def registration(self, store_dir):
        # type: (str) -> registration.ValidPathInfo
        """The registration record of this entry at ``store_dir`` (for ``--load-db``)."""
        def full(name):
            # type: (str) -> str
            return store_dir + "/" + name
        return registration.ValidPathInfo(full(self.name), self.nar_hash, self.nar_size,
                                          full(self.deriver) if self.deriver else "",
                                          tuple(full(r) for r in self.references))

    def to_dict(self):
        # type: () -> dict
        """The entry as the manifest's JSON has it (``from_dict`` reads it back)."""
        return {"name": self.name, "narHash": self.nar_hash, "narSize": self.nar_size,
                "references": self.references, "deriver": self.deriver, "chunk": self.chunk,
                "sigs": self.sigs}

    @classmethod
    def from_dict(cls, doc):
        # type: (dict) -> PathEntry
        """The entry ``to_dict`` wrote, each field checked on its own; raise
        ManifestError (KeyError or TypeError for a field missing or not a container,
        which ``Manifest.from_json`` words).  How entries fit together, the manifest
        checks (``Manifest.from_json``)."""
        name = _base_name(doc["name"])
        try:
            nar_hash = hashes.normalise_sha256(_string(doc["narHash"], "narHash"))
        except ValueError as e:
            raise ManifestError("%s: %s" % (name, e))
        deriver = _string(doc["deriver"], "deriver")
        if deriver:
            _base_name(deriver)
        chunk = _count(doc["chunk"], "chunk")
        sigs = doc.get("sigs", [])
        if not isinstance(sigs, list):
            raise ManifestError("%s: sigs must be a list" % name)
        for sig in sigs:
            try:
                signing.parse_signature(sig)
            except signing.SigningError as e:
                raise ManifestError("%s: %s" % (name, e))
        return cls(name, nar_hash, _count(doc["narSize"], "narSize"),
                   [_base_name(r) for r in doc["references"]], deriver, chunk, sigs)


class Chunk(object):
    """One compressed zip member of the payload: a slice of the payload's tar
    stream (``tar_size`` bytes), holding bytes of the store paths ``paths`` (in
    order), and starting at ``start`` inside the first of them (an
    ``archive.Cut``), or at the beginning of it (None)."""

    __slots__ = ("file", "size", "sha256", "tar_size", "paths", "start")

    def __init__(self, file, size, sha256, tar_size, paths=(), start=None):
        # type: (str, int, str, int, Sequence[str], Optional[Cut]) -> None
        self.file = file
        self.size = size
        self.sha256 = sha256
        self.tar_size = tar_size
        self.paths = list(paths)
        self.start = start

    def to_dict(self):
        # type: () -> dict
        """The chunk as the manifest's JSON has it (``from_dict`` reads it back)."""
        start = None  # type: Optional[Dict[str, object]]
        if self.start is not None:
            start = {"path": self.start.path, "entry": self.start.entry,
                     "type": self.start.kind}
            if self.start.offset is not None:
                start.update(offset=self.start.offset, size=self.start.size)
        return {"file": self.file, "size": self.size, "sha256": self.sha256,
                "tarSize": self.tar_size, "paths": self.paths, "start": start}

    @classmethod
    def from_dict(cls, doc, index):
        # type: (dict, int) -> Chunk
        """Chunk number ``index`` as ``to_dict`` wrote it, each field checked on its
        own (errors as ``PathEntry.from_dict``)."""
        chunk = cls(_string(doc["file"], "chunks.file"), _count(doc["size"], "chunks.size"),
                    _string(doc["sha256"], "chunks.sha256"),
                    _count(doc["tarSize"], "chunks.tarSize"),
                    [_base_name(n) for n in doc["paths"]], _cut(doc["start"], index))
        if not _CHUNK_FILE.match(chunk.file) or not _HEX64.match(chunk.sha256):
            raise ManifestError("chunk %d has a bad file name or sha256" % index)
        return chunk


class Manifest(object):
    """Everything the installer needs to know before reading the payload."""

    def __init__(self, store_dir, system, compression, paths, chunks, roots,
                 nix_store=None, payload_size=0, payload_sha256="", longest_path=0,
                 preamble_sha256="", tool_version="", embedded_store_dir=None,
                 hidden_refs=(), derivations=False, code_sha256="", ref_map=None):
        # type: (str, str, str, Sequence[PathEntry], Sequence[Chunk], Sequence[str], Optional[str], int, str, int, str, str, Optional[str], Sequence[str], bool, str, Optional[Dict[str, object]]) -> None
        self.store_dir = store_dir
        # The store dir as its bytes appear inside the payload: the store dir
        # itself, or after a retarget a slash-padded form of it (retarget.py).
        self.embedded_store_dir = embedded_store_dir or store_dir
        # "<base name>/<rel>: <reason>" for files a same-length rewrite cannot fix.
        self.hidden_refs = list(hidden_refs)
        # The payload holds the derivations of its paths (build --with-derivations):
        # another store dir gets every store path recomputed exactly (exact.py).
        self.derivations = derivations
        self.system = system
        self.compression = compression
        self.paths = list(paths)  # type: List[PathEntry]
        self.chunks = list(chunks)  # type: List[Chunk]
        self.roots = list(roots)
        self.nix_store = nix_store  # "<base name>/bin/nix-store" or None
        self.payload_size = payload_size
        self.payload_sha256 = payload_sha256
        self.longest_path = longest_path
        self.preamble_sha256 = preamble_sha256
        # The sha256 of the installer code in the file (container.py code_digest);
        # empty in files from before it was recorded.
        self.code_sha256 = code_sha256
        self.tool_version = tool_version
        # The payload's reference map (refmap.py), a zip member: {"file", "size",
        # "sha256"}; None when there is none (format 3, or a map too large to carry).
        self.ref_map = ref_map

    @property
    def prefix(self):
        # type: () -> str
        """The prefix the closure was built for: the store dir's parent."""
        return self.store_dir.rpartition("/")[0] or "/"

    @property
    def max_store_dir_length(self):
        # type: () -> int
        """The longest store dir this payload can be retargeted to, in bytes."""
        return len(self.embedded_store_dir.encode())

    @property
    def total_nar_size(self):
        # type: () -> int
        return sum(p.nar_size for p in self.paths)

    def retargeted(self, store_dir, embedded_store_dir):
        # type: (str, str) -> Manifest
        """A copy for another store dir (retarget.py), with path entries of its own.

        The copy has no path signatures: a path at another store dir is another
        path, which the publisher's signatures do not cover.
        """
        new = self.replaced(store_dir=store_dir, embedded_store_dir=embedded_store_dir)
        for p in new.paths:
            p.sigs = []
        return new

    def replaced(self, **fields):
        # type: (**object) -> Manifest
        """A copy with ``fields`` (attribute names) replaced; the path entries are copies."""
        new = copy.copy(self)
        new.paths = [copy.copy(p) for p in self.paths]
        for name, value in fields.items():
            if not hasattr(self, name):
                raise AttributeError("a manifest has no field %r" % name)
            setattr(new, name, value)
        return new

    def with_nar_info(self, infos):
        # type: (Dict[str, Tuple[str, int]]) -> Manifest
        """A copy whose paths named in ``infos`` have the (narHash, narSize) given there
        (what rewritten paths hash to once they have been written)."""
        new = self.replaced()
        for p in new.paths:
            info = infos.get(p.name)
            if info is not None and info != (p.nar_hash, p.nar_size):
                p.nar_hash, p.nar_size = info
                p.sigs = []  # they were made over the old NAR hash
        return new

    def store_path(self, name):
        # type: (str) -> str
        return self.store_dir + "/" + name

    def fingerprint(self, entry):
        # type: (PathEntry) -> str
        """What a Nix signature of ``entry`` at this store dir covers (signing.py)."""
        return signing.fingerprint(self.store_path(entry.name), entry.nar_hash, entry.nar_size,
                                   [self.store_path(r) for r in entry.references])

    def chunk_spans(self):
        # type: () -> Dict[str, List[int]]
        """The indexes of the chunks holding bytes of each store path, by name.

        Found from the paths' order and first chunks, not from the chunks'
        lists of names, so they hold for a manifest whose paths were renamed
        (an exact retarget's) as well.
        """
        spans = {}
        last_chunk = len(self.chunks) - 1
        for i, p in enumerate(self.paths):
            last = last_chunk
            if i + 1 < len(self.paths):
                following = self.paths[i + 1].chunk
                # The next path begins in a later chunk: this one goes on into it
                # if that chunk starts inside a path (this one, the path before).
                last = following if self.chunks[following].start is not None else following - 1
                last = max(p.chunk, last)
            spans[p.name] = list(range(p.chunk, last + 1))
        return spans

    def end_of(self, index):
        # type: (int) -> Optional[Cut]
        """Where chunk ``index`` ends inside a store path: the next chunk's start."""
        return self.chunks[index + 1].start if index + 1 < len(self.chunks) else None

    def to_json(self):
        # type: () -> bytes
        """Deterministic JSON (sorted keys, fixed separators, trailing newline)."""
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "toolVersion": self.tool_version,
            "storeDir": self.store_dir,
            "embeddedStoreDir": self.embedded_store_dir,
            "hiddenStoreDirRefs": self.hidden_refs,
            "derivations": self.derivations,
            "system": self.system,
            "compression": self.compression,
            "roots": self.roots,
            "nixStore": self.nix_store,
            "totalNarSize": self.total_nar_size,
            "longestPath": self.longest_path,
            "payload": {"size": self.payload_size, "sha256": self.payload_sha256},
            "preambleSha256": self.preamble_sha256,
            "codeSha256": self.code_sha256,
            "refMap": self.ref_map,
            "chunks": [c.to_dict() for c in self.chunks],
            "paths": [p.to_dict() for p in self.paths],
        }
        return jsondoc.dumps(doc)

    @classmethod
    def from_json(cls, data):
        # type: (bytes) -> Manifest
        """Parse and check a manifest; raise ManifestError naming the first problem."""
        doc = jsondoc.loads(data, FORMAT, READ_VERSIONS, "manifest", ManifestError)
        try:
            return cls._from_doc(doc)
        except (KeyError, TypeError, AttributeError) as e:
            raise ManifestError("manifest field missing or of the wrong type: %s" % e)

    @classmethod
    def _from_doc(cls, doc):
        # type: (dict) -> Manifest
        """The records of ``doc``, each checked by itself, then how they fit together."""
        store_dir = _string(doc["storeDir"], "storeDir")
        try:
            storepath.check_store_dir(store_dir)
        except storepath.StorePathError as e:
            raise ManifestError("storeDir: %s" % e)
        system = _string(doc["system"], "system")
        if not _SYSTEM.match(system):
            raise ManifestError("system %r is not of the form <cpu>-<os>" % system)
        chunks = [Chunk.from_dict(c, i) for i, c in enumerate(doc["chunks"])]
        paths = [PathEntry.from_dict(p) for p in doc["paths"]]
        _check_layout(chunks, paths)
        names = set(p.name for p in paths)
        roots = [_base_name(r) for r in doc["roots"]]
        for r in roots:
            if r not in names:
                raise ManifestError("root %s is not in the closure" % r)
        payload = doc["payload"]
        derivations = _derivations(doc.get("derivations", False), paths)
        manifest = cls(store_dir, system, _string(doc["compression"], "compression"), paths,
                       chunks, roots, _nix_store(doc.get("nixStore"), names),
                       _count(payload["size"], "payload.size"),
                       _string(payload["sha256"], "payload.sha256"),
                       _count(doc["longestPath"], "longestPath"),
                       _string(doc["preambleSha256"], "preambleSha256"),
                       _string(doc["toolVersion"], "toolVersion"),
                       _embedded(doc.get("embeddedStoreDir", store_dir), store_dir),
                       _hidden_refs(doc.get("hiddenStoreDirRefs", [])), derivations,
                       _code_sha256(doc.get("codeSha256", "")),
                       _ref_map(doc.get("refMap")))
        if _count(doc["totalNarSize"], "totalNarSize") != manifest.total_nar_size:
            raise ManifestError("totalNarSize does not match the sum of the paths' narSize")
        if sum(c.size for c in chunks) != manifest.payload_size:
            raise ManifestError("payload size does not match the sum of the chunk sizes")
        return manifest


def _check_layout(chunks, paths):
    # type: (List[Chunk], List[PathEntry]) -> None
    """The chunks hold the store paths once each, in order, each beginning in the
    chunk it names; every reference is in the closure, and none loops."""
    if len(set(c.file for c in chunks)) != len(chunks):
        raise ManifestError("two chunks share one file name")
    order = _stream_order(chunks)
    # Sets, not the chunks' lists: a lookup per path stays linear in the paths.
    held = [set(c.paths) for c in chunks]
    names = set()  # type: Set[str]
    for p in paths:
        if p.name in names:
            raise ManifestError("store path %s is listed twice" % p.name)
        names.add(p.name)
        if p.chunk >= len(chunks):
            raise ManifestError("%s is in chunk %d, which does not exist" % (p.name, p.chunk))
        if p.name not in held[p.chunk] or (p.chunk > 0 and p.name in held[p.chunk - 1]):
            raise ManifestError("%s begins in chunk %d, which does not begin it"
                                % (p.name, p.chunk))
    if order != [p.name for p in paths]:
        raise ManifestError("the chunks do not hold the store paths once each, in order")
    for p in paths:
        for r in p.references:
            if r not in names:
                raise ManifestError("%s references %s, which is not in the closure"
                                    % (p.name, r))
    _refuse_cycle(paths)


def _nix_store(value, names):
    # type: (object, Set[str]) -> Optional[str]
    """``nixStore``: null, or a file inside one of the store paths ``names``."""
    if value is None:
        return None
    nix_store = _string(value, "nixStore")
    base, _, rest = nix_store.partition("/")
    if base not in names or not _REL_PATH.match(rest):
        raise ManifestError("nixStore %r is not inside the closure" % nix_store)
    return nix_store


def _embedded(value, store_dir):
    # type: (object, str) -> str
    """``embeddedStoreDir``: ``store_dir``, or a slash-padded form of it."""
    embedded = _string(value, "embeddedStoreDir")
    if re.sub("/+", "/", embedded) != store_dir:
        raise ManifestError("embeddedStoreDir %r is not a slash-padded form of storeDir %r"
                            % (embedded, store_dir))
    return embedded


def _hidden_refs(value):
    # type: (object) -> List[str]
    """``hiddenStoreDirRefs``: one line each."""
    if not isinstance(value, list):
        raise ManifestError("hiddenStoreDirRefs must be a list")
    for ref in value:
        if "\n" in _string(ref, "hiddenStoreDirRefs") or "\0" in ref:
            raise ManifestError("hiddenStoreDirRefs holds a line break or NUL")
    return value


def _derivations(value, paths):
    # type: (object, List[PathEntry]) -> bool
    """``derivations``: a bool, true only if some path is a ``.drv`` file."""
    if not isinstance(value, bool):
        raise ManifestError("derivations must be true or false")
    if value and not has_derivations(paths):
        raise ManifestError("derivations is true but the closure holds no .drv file")
    return value


def _code_sha256(value):
    # type: (object) -> str
    """``codeSha256``: empty (older files) or a sha256 in hex."""
    code_sha256 = _string(value, "codeSha256")
    if code_sha256 and not _HEX64.match(code_sha256):
        raise ManifestError("codeSha256 is not a sha256 in hex")
    return code_sha256


def _ref_map(value):
    # type: (object) -> Optional[Dict[str, object]]
    """``refMap``: null, or the member holding the reference map, its size and sha256."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("file") != REF_MAP_FILE \
            or not _HEX64.match(_string(value.get("sha256"), "refMap.sha256")):
        raise ManifestError("refMap must name %s and its sha256" % REF_MAP_FILE)
    return {"file": REF_MAP_FILE, "size": _count(value.get("size"), "refMap.size"),
            "sha256": value["sha256"]}


def _refuse_cycle(paths):
    # type: (List[PathEntry]) -> None
    """References that loop (but for a path's own) would fail at ``--load-db``, after
    everything is unpacked: refused with the manifest (registration.find_cycle)."""
    cycle = registration.find_cycle(dict((p.name, p.references) for p in paths))
    if cycle:
        raise ManifestError("the references of %d store paths form a cycle: %s"
                            % (len(cycle) - 1, " -> ".join(cycle)))


def has_derivations(paths):
    # type: (Iterable[PathEntry]) -> bool
    """Whether any of ``paths`` is a ``.drv`` file."""
    return any(storepath.is_derivation(p.name) for p in paths)


def _base(path):
    # type: (str) -> str
    return path.rpartition("/")[2]


def _cut(value, index):
    # type: (object, int) -> Optional[Cut]
    """A chunk's ``start``: null, or where inside a store path it begins."""
    if value is None:
        return None
    if index == 0 or not isinstance(value, dict):
        raise ManifestError("chunk %d has a bad start" % index)
    kind = _string(value["type"], "start.type")
    entry = _string(value["entry"], "start.entry")
    offset, size = value.get("offset"), value.get("size")
    cut = Cut(_base_name(value["path"]), entry, kind)
    if kind not in _KINDS or (entry and not _REL_PATH.match(entry)):
        raise ManifestError("chunk %d starts at a bad entry (%r, %r)" % (index, entry, kind))
    if offset is not None or size is not None:
        cut.offset = _count(offset, "start.offset")
        cut.size = _count(size, "start.size")
        if kind != "regular" or cut.offset >= cut.size:
            raise ManifestError("chunk %d starts inside a file at byte %d of %d"
                                % (index, cut.offset, cut.size))
    elif not entry and kind != "directory":
        raise ManifestError("chunk %d starts after the whole of %s" % (index, cut.path))
    return cut


def _stream_order(chunks):
    # type: (List[Chunk]) -> List[str]
    """The store paths in the order the chunks hold them, each once.

    A chunk with a start goes on with the last path of the chunk before it;
    any other begins a new one.
    """
    order = []  # type: List[str]
    for i, c in enumerate(chunks):
        if not c.paths:
            raise ManifestError("chunk %d holds no store path" % i)
        names = c.paths
        if c.start is not None:
            if c.start.path != names[0] or chunks[i - 1].paths[-1] != names[0]:
                raise ManifestError("chunk %d starts inside %s, which is not where chunk %d "
                                    "ends" % (i, c.start.path, i - 1))
            names = names[1:]
        order += names
    return order


def _string(value, what):
    # type: (object, str) -> str
    if not isinstance(value, str):
        raise ManifestError("%s must be a string" % what)
    return value


def _count(value, what):
    # type: (object, str) -> int
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ManifestError("%s must be a non-negative integer" % what)
    return value


def _base_name(value):
    # type: (object) -> str
    try:
        return storepath.check_base_name(_string(value, "store path name"))
    except storepath.StorePathError as e:
        raise ManifestError(str(e))
