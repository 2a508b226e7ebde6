"""Is this installer file what its publisher signed?  Checked before any of its code runs.

The publisher's signatures cover the manifest (publisher.py), which names the
sha256 of the sh preamble, of the code (``code_digest``) and of every chunk.
Two callers check that with the standard library and these few payload
modules only, bundled (bundle.py) so that nothing of the file is imported
first:

- the Python the sh preamble starts (boot.bootstrap), before it imports the
  installer from the zip: ``check_code``, the signatures and the code;
- the standalone verifier (verifier.py, ``nix-prefix-verify``), before the
  file runs at all: ``check_file``, every byte.

The first cannot help against a file whose preamble itself was replaced:
that preamble runs whatever it likes before any check.  Only a verifier
from outside the file can (docs/installing.md).  The manifest is read here
as plain JSON, for the few fields these checks need (manifest.py, which
checks all of it, is the installer's and too big to come along).
"""

import hashlib
import json
import os
import struct
import zipfile

from . import publisher, seal, signing
from .errors import OneLineError

MYPY = False  # mypy reads the imports below; Python never runs them
if MYPY:
    from typing import BinaryIO, Iterable, List, Mapping, Optional, Sequence, Set, Tuple  # noqa: F401

    from .signing import PublicKey  # noqa: F401

MANIFEST = "manifest.json"
OPTION = "--trusted-key"
KEY_HINT = ("give the publisher's public key as NAME:BASE64, the line nix-store "
            "--generate-binary-cache-key writes to its public key file")
_READ_SIZE = 1 << 20
# What is read whole, before anything vouches for it (docs/reliability.md): the
# manifest (one line of JSON per field, a few hundred bytes a store path: 64 MiB
# is some 100,000 paths; the builder refuses to write a larger one), the
# publisher's signatures, and the code all together (the stub is ~0.5 MiB).
MAX_MANIFEST = 64 << 20
MAX_SIGNATURES = 1 << 20
MAX_CODE = 16 << 20
# zipfile reads the central directory whole, an object per member: ~100 bytes a
# member here, so 16 MiB is some 160,000 members (a 1 TiB payload has 16,384 chunks).
MAX_DIRECTORY = 16 << 20


class Refused(OneLineError):
    """The file is damaged, or not what a trusted publisher signed (exit 3)."""

    exit_code = 3

    def __init__(self, message, hint="download the installer again"):
        # type: (str, str) -> None
        OneLineError.__init__(self, message, hint)


class BadKey(OneLineError):
    """A trusted key given is malformed (exit 2, as any bad usage)."""

    exit_code = 2


def given_keys(args):
    # type: (Sequence[str]) -> List[str]
    """The ``--trusted-key`` values among installer arguments, found as argparse finds
    them: ``--trusted-key K``, ``--trusted-key=K`` and any abbreviation of it down to
    ``--t``, up to a ``--``.  Taking one too many is safe (the check runs with it);
    missing one would let the file's code run unchecked."""
    keys = []
    args = list(args)
    while args:
        arg = args.pop(0)
        if arg == "--":
            break
        name, equals, value = arg.partition("=")
        if len(name) < 3 or not OPTION.startswith(name):
            continue
        if equals:
            keys.append(value)
        elif args:
            keys.append(args.pop(0))
    return keys


def trusted_keys(given, environ):
    # type: (Sequence[str], Mapping[str, str]) -> List[PublicKey]
    """The keys ``given`` (``--trusted-key``) and those of NIX_PREFIX_TRUSTED_KEYS;
    BadKey naming a malformed one (publisher.trusted_keys)."""
    try:
        return publisher.trusted_keys(given, environ)
    except signing.SigningError as e:
        raise BadKey(str(e), KEY_HINT)


def code_digest(members):
    # type: (Iterable[Tuple[str, bytes]]) -> str
    """The manifest's ``codeSha256``: of every zip member that is not a chunk, the
    manifest or the signatures, as (name, bytes) in file order, each framed by its
    name and length so that no two member lists hash alike."""
    h = hashlib.sha256()
    for name, data in members:
        encoded = name.encode("utf-8")
        h.update(b"%d:%s:%d:" % (len(encoded), encoded, len(data)))
        h.update(data)
    return h.hexdigest()


def code_members(zf, chunk_files):
    # type: (zipfile.ZipFile, Iterable[str]) -> List[Tuple[str, bytes]]
    """(name, bytes) of every member of ``zf`` that is code: all but the chunks, the
    manifest and the signatures, each entry in file order (a second entry of one
    name counts too); MAX_CODE bytes in all at most."""
    data = set(chunk_files)
    data.update((MANIFEST, publisher.MEMBER))
    infos = [info for info in zf.infolist() if info.filename not in data]
    total = sum(info.file_size for info in infos)
    if total > MAX_CODE:
        raise Refused("the installer's code members hold %d bytes, more than the %d an "
                      "installer's may have" % (total, MAX_CODE))
    return [(info.filename, _read_info(zf, info, MAX_CODE, Refused)) for info in infos]


def check_directory(f, error=None):
    # type: (BinaryIO, Optional[type]) -> None
    """Refuse (``error``, else Refused) a zip central directory larger than
    MAX_DIRECTORY in the open file ``f``, before zipfile reads it whole.

    An installer's zip has no comment (docs/format.md), so its end record is the
    file's last 22 bytes; a zip64 end record, when there is one, sits right before
    its 20-byte locator before that, and zipfile takes the size from it
    (APPNOTE.TXT 4.3.14-4.3.16; zipfile ``_EndRecData64``).
    """
    end = f.seek(0, os.SEEK_END)
    if end < 22:
        raise zipfile.BadZipFile("too short for a zip")
    f.seek(max(0, end - 22 - 20 - 56))
    tail = f.read()
    record, locator, record64 = tail[-22:], tail[-42:-22], tail[-98:-42]
    if record[:4] != b"PK\x05\x06":
        raise zipfile.BadZipFile("it does not end with a zip end record (a zip comment?)")
    size = struct.unpack("<I", record[12:16])[0]
    if locator[:4] == b"PK\x06\x07" and record64[:4] == b"PK\x06\x06":
        size = struct.unpack("<Q", record64[40:48])[0]
    if size > MAX_DIRECTORY:
        raise (error or Refused)("the installer's zip directory is %d bytes, more than the "
                                 "%d an installer's may have" % (size, MAX_DIRECTORY))


def check_members(zf, error=None):
    # type: (zipfile.ZipFile, Optional[type]) -> None
    """Every member is stored as it is (docs/format.md), so that what a member holds
    is what the file holds: a compressed one could unpack to any size before the
    checks that follow have seen it.  Refused with ``error`` (else Refused)."""
    refuse = error or Refused
    for info in zf.infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            raise refuse(
                "the installer's %s is compressed (zip method %d), but an installer's "
                "members are stored: this file was not written by nix-prefix"
                % (info.filename, info.compress_type))
        if info.flag_bits & 0x1:
            raise refuse("the installer's %s is encrypted" % info.filename)
        if info.file_size != info.compress_size:
            raise refuse("the installer's %s says %d bytes stored as %d"
                         % (info.filename, info.file_size, info.compress_size))


def read_member(zf, name, limit, error=None):
    # type: (zipfile.ZipFile, str, int, Optional[type]) -> bytes
    """The bytes of member ``name``, refused (``error``, else Refused) when it is
    missing or holds more than ``limit``."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise (error or Refused)("the installer has no %s" % name)
    return _read_info(zf, info, limit, error or Refused)


def _read_info(zf, info, limit, error):
    # type: (zipfile.ZipFile, zipfile.ZipInfo, int, type) -> bytes
    name = info.filename
    if info.file_size > limit:
        raise error("the installer's %s is %d bytes, more than the %d an installer's may "
                    "have" % (name, info.file_size, limit))
    pieces = []  # type: List[bytes]
    got = 0
    try:
        with zf.open(info) as member:
            # In pieces, counted: the zip's own size fields are not trusted.
            while True:
                data = member.read(min(_READ_SIZE, limit + 1 - got))
                if not data:
                    break
                pieces.append(data)
                got += len(data)
                if got > limit:
                    raise error("the installer's %s holds more than the %d bytes an "
                                "installer's may have" % (name, limit))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise error("%s in the installer is damaged (%s)" % (name, e))
    return b"".join(pieces)


def check_code(f, trusted):
    # type: (BinaryIO, Sequence[PublicKey]) -> publisher.Verdict
    """Before the code of the open installer file ``f`` runs: every signature over its
    manifest holds, one is by a key of ``trusted`` (if any), and its code is the code
    the manifest names.  Returns the verdict; raises Refused."""
    return _checked_code(f, trusted)[1]


def check_file(f, trusted):
    # type: (BinaryIO, Sequence[PublicKey]) -> Tuple[publisher.Verdict, int]
    """Every byte of the open installer file ``f``: its seal, its manifest signed by a
    key of ``trusted`` (at least one must be given), the sh preamble, the code and
    every chunk, as the manifest names them.  Returns the verdict and the number of
    chunks; raises Refused."""
    if not trusted:
        raise BadKey("no trusted key given: a signature by a key you do not name "
                     "proves nothing", "pass --trusted-key NAME:BASE64, the publisher's "
                     "public key")
    try:
        seal.check_file(f)
    except seal.SealError as e:
        raise Refused("it is damaged: %s" % e)
    except OSError as e:
        raise Refused("it cannot be read (%s)" % e.strerror)
    zf, verdict, doc = _checked_code(f, trusted)
    with zf:
        _check_preamble(f, zf, doc)
        chunks = _check_chunks(zf, doc)
    return verdict, chunks


def _checked_code(f, trusted):
    # type: (BinaryIO, Sequence[PublicKey]) -> Tuple[zipfile.ZipFile, publisher.Verdict, dict]
    try:
        check_directory(f)
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise Refused("it is not a readable installer (%s)" % e)
    try:
        check_members(zf)
        manifest_json = read_member(zf, MANIFEST, MAX_MANIFEST)
        doc = _document(manifest_json)
        try:
            names = zf.namelist()
            endorsements = (publisher.from_json(read_member(zf, publisher.MEMBER,
                                                            MAX_SIGNATURES))
                            if publisher.MEMBER in names else [])
            verdict = publisher.check(manifest_json, endorsements, trusted)
        except publisher.PublisherError as e:
            raise Refused("the installer's %s" % e)
        if verdict.refusal():
            raise Refused(verdict.refusal(), verdict.refusal_hint())
        expected = doc.get("codeSha256")
        chunk_files = [name for name, _ in _chunks(doc)]
        try:
            got = code_digest(code_members(zf, chunk_files))
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise Refused("the installer's code is damaged (%s)" % e)
        if got != expected:
            raise Refused("the installer's code does not match its sha256 in the manifest")
    except BaseException:
        zf.close()
        raise
    return zf, verdict, doc


def _document(manifest_json):
    # type: (bytes) -> dict
    try:
        doc = json.loads(manifest_json.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise Refused("the installer's manifest is not valid JSON (%s)" % e)
    except RecursionError:
        # Python's parser recurses once per level; no manifest nests past a few.
        raise Refused("the installer's manifest is nested too deeply to be one")
    if not isinstance(doc, dict):
        raise Refused("the installer's manifest is not a nix-prefix manifest")
    return doc


def _chunks(doc):
    # type: (dict) -> List[Tuple[str, dict]]
    """Each chunk's zip member name and its entry in the manifest."""
    chunks = doc.get("chunks")
    if not isinstance(chunks, list) or not all(
            isinstance(c, dict) and isinstance(c.get("file"), str) for c in chunks):
        raise Refused("the installer's manifest has no list of chunks")
    return [(c["file"], c) for c in chunks]


def _check_preamble(f, zf, doc):
    # type: (BinaryIO, zipfile.ZipFile, dict) -> None
    """The sh preamble (everything before the zip, seal masked) is the one signed."""
    infos = zf.infolist()
    # zipfile shifts the offsets by what precedes the zip: the first member's
    # is where the zip starts.
    start = min(i.header_offset for i in infos) if infos else 0
    f.seek(0)
    head = seal.masked(f.read(start))
    if hashlib.sha256(head).hexdigest() != doc.get("preambleSha256"):
        raise Refused("the installer's sh preamble does not match its checksum")


def _check_chunks(zf, doc):
    # type: (zipfile.ZipFile, dict) -> int
    """Every chunk's bytes, and all of them in order, against the manifest."""
    chunks = _chunks(doc)
    total = hashlib.sha256()
    size = 0
    for name, chunk in chunks:
        one = hashlib.sha256()
        length = 0
        try:
            with zf.open(name) as member:
                while True:
                    data = member.read(_READ_SIZE)
                    if not data:
                        break
                    one.update(data)
                    total.update(data)
                    length += len(data)
        except KeyError:
            raise Refused("the installer has no %s" % name)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, TypeError) as e:
            raise Refused("%s is damaged (%s)" % (name, e))
        if length != chunk.get("size") or one.hexdigest() != chunk.get("sha256"):
            raise Refused("%s does not match its sha256 in the manifest" % name)
        size += length
    payload = doc.get("payload")
    if (not isinstance(payload, dict) or size != payload.get("size")
            or total.hexdigest() != payload.get("sha256")):
        raise Refused("the payload does not match its sha256 in the manifest")
    return len(chunks)
