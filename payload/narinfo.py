"""Binary cache files: ``<hash>.narinfo`` and ``nix-cache-info``, parsed and printed.

Follows NixOS/nix at 2.8.0:

* src/libstore/nar-info.cc: ``NarInfo::NarInfo`` reads ``Name: value``
  lines (the value starts two bytes after the colon and runs to the line
  end; unknown names are skipped; ``Compression`` defaults to ``bzip2``;
  StorePath, NarHash, URL and a non-zero NarSize are required, and
  ``References`` and ``CA`` may appear once), ``NarInfo::to_string`` prints
  them in the order StorePath, URL, Compression, FileHash, FileSize,
  NarHash, NarSize, References, Deriver, System, Sig..., CA.
* src/libstore/binary-cache-store.cc: the narinfo of ``<dir>/<hash>-<name>``
  is ``<hash>.narinfo``; the NAR goes to ``nar/<nix32 FileHash>.nar`` plus
  ``.xz``, ``.zst``, ``.bz2``... by compression; ``nix-cache-info`` holds
  ``StoreDir:`` (and may hold ``WantMassQuery:``, ``Priority:``), and a Nix
  with another store dir refuses the cache.
* ``Sig:`` lines are Nix signatures over the path's fingerprint
  (payload/signing.py).
* src/libstore/content-address.cc: ``CA: text:sha256:<nix32>`` and
  ``fixed:[r:]<algo>:<nix32>`` (``renderContentAddress``).

See ../shared/docs/nix-formats.md section 9.
"""

import re

from . import hashes, nix32, signing, storepath

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple  # noqa: F401

# Compression name -> the NAR file's extension (binary-cache-store.cc).
NAR_EXTENSIONS = {"xz": ".xz", "bzip2": ".bz2", "zstd": ".zst", "lzip": ".lzip",
                  "lz4": ".lz4", "br": ".br", "none": ""}
CACHE_INFO = "nix-cache-info"
# A narinfo is a few hundred bytes; a bigger one is not a narinfo (bounded reads).
MAX_NARINFO_SIZE = 1 << 20
_UINT64_MAX = (1 << 64) - 1
_DIGITS = re.compile(r"^[0-9]{1,20}\Z")
# What a NAR URL inside a cache may be: a relative path, no "..", no scheme.
_NAR_URL = re.compile(r"^(?!/)(?!.*(^|/)\.\.?(/|\Z))[A-Za-z0-9+\-._=/]+\Z")
_CA = re.compile(r"^(text:sha256|fixed:(r:)?(md5|sha1|sha256|sha512)):[" + nix32.ALPHABET
                 + r"]+\Z")


class NarInfoError(ValueError):
    """A narinfo or nix-cache-info file does not parse (the message says where)."""


class NarInfo(object):
    """One store path in a binary cache.  ``references`` and ``deriver`` are base names."""

    def __init__(self, store_path, url, compression, file_hash, file_size, nar_hash, nar_size,
                 references, deriver="", system="", sigs=(), ca=""):
        # type: (str, str, str, str, int, str, int, Sequence[str], str, str, Sequence[str], str) -> None
        self.store_path = store_path
        self.url = url
        self.compression = compression
        self.file_hash = file_hash  # "sha256:<nix32>", or "" when the cache gave none
        self.file_size = file_size
        self.nar_hash = nar_hash  # "sha256:<nix32>"
        self.nar_size = nar_size
        self.references = sorted(references)
        self.deriver = deriver
        self.system = system
        self.sigs = sorted(sigs)  # Nix keeps them in a std::set: printed sorted
        self.ca = ca

    @property
    def store_dir(self):
        # type: () -> str
        return self.store_path.rpartition("/")[0]

    @property
    def name(self):
        # type: () -> str
        """The base name ``<hash>-<name>``."""
        return self.store_path.rpartition("/")[2]

    def fingerprint(self):
        # type: () -> str
        """What a ``Sig:`` signs (signing.fingerprint, over the full reference paths)."""
        return signing.fingerprint(self.store_path, self.nar_hash, self.nar_size,
                                   [self.store_dir + "/" + r for r in self.references])

    def signed_by(self, keys):
        # type: (Iterable[signing.PublicKey]) -> List[signing.PublicKey]
        """The keys of ``keys`` that made one of its ``Sig:`` lines (as Nix's
        ``checkSignatures``: malformed signatures count for nothing)."""
        sigs = []
        for text in self.sigs:
            try:
                sigs.append(signing.parse_signature(text))
            except signing.SigningError:
                continue
        return signing.signers(self.fingerprint(), sigs, keys)

    def to_text(self):
        # type: () -> str
        """The narinfo as ``NarInfo::to_string`` prints it."""
        lines = [
            "StorePath: " + self.store_path,
            "URL: " + self.url,
            "Compression: " + self.compression,
        ]
        # A NAR compressed while it is sent (nix-prefix serve) has no FileHash and
        # FileSize yet: Nix reads a narinfo without them (nar-info.cc needs only
        # StorePath, URL, NarHash and NarSize), though its own caches always have them.
        if self.file_hash:
            lines.append("FileHash: " + self.file_hash)
        if self.file_size:
            lines.append("FileSize: %d" % self.file_size)
        lines += [
            "NarHash: " + self.nar_hash,
            "NarSize: %d" % self.nar_size,
            "References: " + " ".join(self.references),
        ]
        if self.deriver:
            lines.append("Deriver: " + self.deriver)
        if self.system:
            lines.append("System: " + self.system)
        lines += ["Sig: " + s for s in self.sigs]
        if self.ca:
            lines.append("CA: " + self.ca)
        return "".join(line + "\n" for line in lines)


def narinfo_file(base):
    # type: (str) -> str
    """The cache file of a store path's info: ``<hash part>.narinfo``."""
    return storepath.hash_part(base) + ".narinfo"


def nar_url(file_hash, compression):
    # type: (bytes, str) -> str
    """``nar/<nix32 file hash>.nar<ext>`` (binary-cache-store.cc ``addToStoreCommon``)."""
    return "nar/" + nix32.encode(file_hash) + ".nar" + NAR_EXTENSIONS[compression]


def parse(text, whence, store_dir=None):
    # type: (str, str, Optional[str]) -> NarInfo
    """Parse a narinfo as Nix does, and check what Nix would trip over later.

    ``whence`` names the file in errors.  With ``store_dir``, StorePath must
    be in it.  Raises NarInfoError.
    """
    def corrupt(why):
        # type: (str) -> NarInfoError
        return NarInfoError("narinfo %s is corrupt: %s" % (whence, why))

    fields, sigs = _fields(text, corrupt)
    for required in ("StorePath", "NarHash", "URL"):
        if not fields.get(required):
            raise corrupt("no %s" % required)
    try:
        path_dir, _ = storepath.split(fields["StorePath"])
    except storepath.StorePathError as e:
        raise corrupt("StorePath: %s" % e)
    if store_dir is not None and path_dir != store_dir:
        raise corrupt("StorePath %s is not in the cache's store dir %s"
                      % (fields["StorePath"], store_dir))
    nar_size = _count(fields.get("NarSize", "0"), "NarSize", corrupt)
    if nar_size == 0:
        raise corrupt("no NarSize")
    url = fields["URL"]
    if not _NAR_URL.match(url):
        raise corrupt("URL %r is not a path inside the cache" % url)
    compression = fields.get("Compression") or "bzip2"
    refs = fields.get("References", "").split()
    deriver = fields.get("Deriver", "")
    if deriver == "unknown-deriver":
        deriver = ""
    try:
        for base in refs + ([deriver] if deriver else []):
            storepath.check_base_name(base)
    except storepath.StorePathError as e:
        raise corrupt(str(e))
    try:
        nar_hash = hashes.normalise_sha256(fields["NarHash"])
        file_hash = hashes.normalise_sha256(fields["FileHash"]) if fields.get("FileHash") \
            else ""
    except ValueError as e:
        raise corrupt(str(e))
    ca = fields.get("CA", "")
    if ca and not _CA.match(ca):
        raise corrupt("CA %r is not text:sha256:<hash> or fixed:[r:]<algo>:<hash>" % ca)
    return NarInfo(fields["StorePath"], url, compression, file_hash,
                   _count(fields.get("FileSize", "0"), "FileSize", corrupt), nar_hash, nar_size,
                   refs, deriver, fields.get("System", ""), sigs, ca)


def _fields(text, corrupt):
    # type: (str, Callable[[str], NarInfoError]) -> Tuple[Dict[str, str], List[str]]
    """The ``Name: value`` lines of a narinfo as ``NarInfo::NarInfo`` reads them: the
    fields by name (the last of a repeated one), and the ``Sig:`` values in order."""
    fields = {}  # type: Dict[str, str]
    sigs = []  # type: List[str]
    pos = 0
    while pos < len(text):
        colon = text.find(":", pos)
        if colon < 0:
            raise corrupt("a line without 'Name: value'")
        eol = text.find("\n", colon + 2)
        if eol < 0:
            raise corrupt("the last line has no newline")
        name, value = text[pos:colon], text[colon + 2:eol]
        if "\n" in name:
            raise corrupt("a line without 'Name: value'")
        if name == "Sig":
            sigs.append(value)
        elif name in ("References", "CA") and name in fields:
            raise corrupt("%s given twice" % name)
        else:
            fields[name] = value  # Nix keeps the last of a repeated field
        pos = eol + 1
    return fields, sigs


def _count(text, what, corrupt):
    # type: (str, str, Callable[[str], NarInfoError]) -> int
    # string2Int<uint64_t> in nar-info.cc: digits only, and it must fit.
    if not _DIGITS.match(text) or int(text) > _UINT64_MAX:
        raise corrupt("%s %r is not a whole number" % (what, text))
    return int(text)


def cache_info_text(store_dir, want_mass_query=False, priority=None):
    # type: (str, bool, Optional[int]) -> str
    """``nix-cache-info`` as ``BinaryCacheStore::init`` writes it (StoreDir only), plus
    the optional fields a cache server may add."""
    text = "StoreDir: %s\n" % store_dir
    if want_mass_query:
        text += "WantMassQuery: 1\n"
    if priority is not None:
        text += "Priority: %d\n" % priority
    return text


def parse_cache_info(text, whence):
    # type: (str, str) -> str
    """The StoreDir of a ``nix-cache-info`` (binary-cache-store.cc ``init``).

    Lines without a colon are skipped and values trimmed, as Nix does; a
    file without StoreDir is refused (Nix would assume its own store dir).
    """
    store_dir = None
    for line in text.split("\n"):
        name, colon, value = line.partition(":")
        if colon and name == "StoreDir":
            store_dir = value.strip()
    if not store_dir:
        raise NarInfoError("%s names no StoreDir" % whence)
    try:
        return storepath.check_store_dir(store_dir)
    except storepath.StorePathError as e:
        raise NarInfoError("%s: StoreDir %s" % (whence, e))


def content_address_text(digest):
    # type: (bytes) -> str
    """``CA`` of a text path (``.drv``, ``builtins.toFile``): sha256 of its contents."""
    return "text:sha256:" + nix32.encode(digest)


def content_address_fixed(recursive, algo, digest):
    # type: (bool, str, bytes) -> str
    """``CA`` of a fixed-output or source path (``makeFixedOutputCA``)."""
    return "fixed:%s%s:%s" % ("r:" if recursive else "", algo, nix32.encode(digest))
