"""The registration format read by ``nix-store --load-db``.

One record per path, one item per line (NixOS/nix src/libstore/store-api.cc
``decodeValidPathInfo`` / ``makeValidityRegistration``):

    <store path>
    <narHash>        closureInfo: sha256:<nix32>; --dump-db: bare hex
    <narSize>
    <deriver>        empty when unknown
    <N>              number of references
    <ref 1> .. <ref N>

Records are concatenated; the file must end with a newline (load-db says
"missing input" otherwise).  See ../shared/docs/nix-formats.md section 1-2.
"""

import collections
import re

from . import hashes, storepath

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple  # noqa: F401

_DIGITS = re.compile(r"^[0-9]{1,20}\Z")
_UINT64_MAX = (1 << 64) - 1

ValidPathInfo = collections.namedtuple(
    "ValidPathInfo", ["path", "nar_hash", "nar_size", "deriver", "references"])
ValidPathInfo.__doc__ = """One registered store path; nar_hash is ``sha256:<nix32>``."""


class RegistrationError(ValueError):
    """A registration does not parse; ``line`` is 1-based."""

    def __init__(self, message, line):
        # type: (str, int) -> None
        ValueError.__init__(self, "line %d: %s" % (line, message))
        self.line = line


def parse(text):
    # type: (str) -> List[ValidPathInfo]
    """Parse a registration (closureInfo or ``--dump-db`` output)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        raise RegistrationError("the file does not end with a newline (truncated?)", len(lines))
    infos = []
    pos = 0

    def take(what):
        # type: (str) -> Tuple[str, int]
        if pos >= len(lines):
            raise RegistrationError("file ends where %s was expected (truncated?)" % what,
                                    len(lines) + 1)
        return lines[pos], pos + 1

    while pos < len(lines):
        path, lineno = take("a store path")
        _check_path(path, lineno)
        pos += 1
        hash_text, lineno = take("the narHash")
        try:
            nar_hash = hashes.normalise_sha256(hash_text)
        except ValueError as e:
            raise RegistrationError(str(e), lineno)
        pos += 1
        size_text, lineno = take("the narSize")
        nar_size = _parse_int(size_text, "narSize", lineno)
        pos += 1
        deriver, lineno = take("the deriver line")
        if deriver:
            _check_path(deriver, lineno)
        pos += 1
        count_text, lineno = take("the number of references")
        count = _parse_int(count_text, "reference count", lineno)
        pos += 1
        refs = []
        for _ in range(count):
            ref, lineno = take("a reference")
            _check_path(ref, lineno)
            refs.append(ref)
            pos += 1
        infos.append(ValidPathInfo(path, nar_hash, nar_size, deriver, tuple(refs)))
    return infos


def _check_path(text, lineno):
    # type: (str, int) -> None
    try:
        storepath.split(text)
    except storepath.StorePathError as e:
        raise RegistrationError(str(e), lineno)


def _parse_int(text, what, lineno):
    # type: (str, str, int) -> int
    # Nix reads these with string2Int<uint64_t> (src/libstore/store-api.cc,
    # decodeValidPathInfo), which refuses anything that does not fit.
    if not _DIGITS.match(text) or int(text) > _UINT64_MAX:
        raise RegistrationError("%s %r is not a whole number from 0 to 2**64-1"
                                % (what, text), lineno)
    return int(text)


def format(infos):
    # type: (Iterable[ValidPathInfo]) -> str
    """Serialise records the way closureInfo does (hash as ``sha256:<nix32>``)."""
    out = []
    for info in infos:
        out += [info.path, info.nar_hash, str(info.nar_size), info.deriver or "",
                str(len(info.references))]
        out += list(info.references)
    return "".join(line + "\n" for line in out)


def find_cycle(references):
    # type: (Dict[str, Sequence[str]]) -> Optional[List[str]]
    """A reference cycle among the paths of ``references`` (name -> the names it
    references), as ``[a, b, ..., a]``, or None.  A path referencing itself is no
    cycle: ``LocalStore::registerValidPaths`` (src/libstore/local-store.cc) leaves them
    out when it sorts the paths (``topoSort``, src/libutil/topo-sort.hh), and fails any
    other cycle with "cycle detected", at ``--load-db`` time.  Names not in ``references`` are
    skipped.  Iterative depth-first search: linear, and no recursion limit."""
    done = set()  # type: Set[str]
    for start in sorted(references):
        if start in done:
            continue
        stack = [(start, iter(references[start]))]  # type: List[Tuple[str, Iterator[str]]]
        on_path = {start: 0}  # name -> its index in stack
        while stack:
            name, refs = stack[-1]
            for ref in refs:
                if ref == name or ref in done or ref not in references:
                    continue
                if ref in on_path:
                    return [n for n, _ in stack[on_path[ref]:]] + [ref]
                on_path[ref] = len(stack)
                stack.append((ref, iter(references[ref])))
                break
            else:
                stack.pop()
                del on_path[name]
                done.add(name)
    return None
