"""Retarget: how the payload's store paths become store paths at another store dir.

One interface, ``Retarget``, three ways:

* ``Identity``: the store dir the closure was built for; bytes as they are.
* ``SameLength``: any store dir S2 no longer than the one inside the payload
  S1.  In binaries S1 is replaced by S2 *of exactly the same length*
  (rewrite.py), so no offset moves; a shorter S2 is padded with extra
  slashes, which the kernel and libc read as one (``/home/u/n/store`` for a
  31-byte S1 becomes ``/home/u/n/////////////////store``).  Text files and
  symlink targets, where no offset matters, get the canonical S2, as a
  native build writes them (textfile.py).  Nix canonicalises NIX_STORE_DIR
  (``canonPath`` in src/libutil/util.cc) and finds references by their hash
  part (src/libstore/references.cc), so the hash parts, the references and
  the registration's paths in the canonical S2 all stay valid
  (../shared/docs/confirmed-here.md).
* ``Exact``: the payload holds the derivations of its paths: every store
  path is recomputed for S2 as Nix would (the planner is exact.py), ``.drv``
  files and texts get their new contents, other files the new hash parts
  and S2 as a same-length retarget writes it.

A retarget gives the manifest as it is at S2 (``manifest``: names, store
dir; NAR hashes of rewritten paths are known only once they have been
rewritten) and, for each payload path, the sink its events go through on
their way to wherever they are written (``sink``).  ``Retargeted`` is that
one chain, rewrite then NAR hash, for every caller: the builder's ``build``
and ``retarget``, and the installer.
"""

import copy

from . import exact, nar, refmap
from .errors import OneLineError
from .hashes import format_sha256, parse_sha256
from .manifest import has_derivations
from .rewrite import PathRewriter
from .storepath import HASH_LENGTH
from .tree import Count, Filter, Sink, Tee

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Callable, Dict, List, Optional, Set, Tuple  # noqa: F401

    Contents = Callable[[], Dict[str, bytes]]  # what read_contents reads, read on demand

    from .container import InstallerFile  # noqa: F401
    from .manifest import Manifest  # noqa: F401

# Paths that are one regular file up to this size are read for the exact planner.
TEXT_LIMIT = 16 << 20


class RetargetError(OneLineError, ValueError):
    """The paths cannot be retargeted to that store dir (one line, with a hint)."""


class TooLong(RetargetError):
    """The new store dir is longer than the one inside the payload."""


def padded_store_dir(old, new):
    # type: (str, str) -> str
    """``new`` lengthened with slashes to the length of ``old``.

    The slashes go just before the last component, so the padded form keeps
    the visible shape ``<prefix>/…/store``.
    """
    if len(new) > len(old):
        raise RetargetError(
            "the store dir %s is %d bytes, longer than the %d bytes of %s this installer was "
            "built for" % (new, len(new), len(old), old))
    head, _, last = new.rpartition("/")
    return head + "/" * (1 + len(old) - len(new)) + last


class Retarget(object):
    """How the paths of ``source`` (the payload's manifest) reach ``manifest.store_dir``.

    The base class is the interface; see Identity, SameLength and Exact.
    """

    # Whether the bytes change on the way (and so their NAR hashes).
    rewrites = False
    # The old store dir (as embedded) and the new one (padded), and the hash parts
    # renamed, of a retarget that rewrites.
    _old = _new = b""
    _hashes = {}  # type: Dict[bytes, bytes]

    def __init__(self, source, manifest):
        # type: (Manifest, Manifest) -> None
        self.source = source
        self.manifest = manifest  # at the new store dir
        self.refs = None  # type: Optional[refmap.RefMap]
        self._rewrite = None  # type: Optional[refmap.Rewrite]

    def use_refs(self, refs):
        # type: (Optional[refmap.RefMap]) -> bool
        """Rewrite at the offsets of ``refs``, the reference map of the payload
        (refmap.py), instead of scanning; whether it is used (not when the
        renaming has hash parts the map did not look for, or nothing is rewritten).

        Raises refmap.RefMapError when the map is not the payload's: another
        store dir, other paths, other NAR hashes.
        """
        if refs is None or not self.rewrites:
            return False
        check_refs(refs, self.source)
        if not refs.covers(self._hashes):
            return False
        self.refs = refs
        self._rewrite = refmap.Rewrite(self._old, self._new, self._hashes, refs.candidates)
        return True

    def mapped(self, name):
        # type: (str) -> Optional[Tuple[refmap.PathRefs, refmap.Rewrite]]
        """How the payload's path ``name`` is patched at the offsets of the reference
        map: its PathRefs and the Rewrite.  None when its bytes stay as they are
        (``keeps``) or when only its ``sink`` rewrites it (no map; a text of its own)."""
        if self.refs is None or self._rewrite is None:
            return None
        return self.refs.paths[name], self._rewrite

    def keeps(self, name):
        # type: (str) -> bool
        """Whether the bytes of the payload's path ``name`` reach the new store dir as
        they are."""
        return not self.rewrites

    @property
    def store_dir(self):
        # type: () -> str
        return self.manifest.store_dir

    def name(self, old):
        # type: (str) -> str
        """The new base name of the payload's path ``old``."""
        return old

    def sink(self, name, inner, spool_dir=None):
        # type: (str, Sink, Optional[str]) -> Sink
        """The sink the events of the payload's path ``name`` go through to ``inner``.

        A file a rewrite holds back until it knows whether it is text
        (rewrite.PathRewriter) waits in ``spool_dir`` once it is large.
        """
        return inner

    def describe(self):
        # type: () -> Optional[str]
        """One line for the install plan, or None when nothing changes."""
        return None


class Identity(Retarget):
    """The store dir the payload was built for: nothing changes."""

    def __init__(self, source):
        # type: (Manifest) -> None
        Retarget.__init__(self, source, source)


class SameLength(Retarget):
    """Another store dir, no longer than the payload's: the store dir rewritten in place."""

    rewrites = True

    def __init__(self, source, store_dir):
        # type: (Manifest, str) -> None
        """Raises RetargetError if ``store_dir`` is longer than the payload's."""
        padded = padded_store_dir(source.embedded_store_dir, store_dir)
        Retarget.__init__(self, source, source.retargeted(store_dir, padded))
        self._old = source.embedded_store_dir.encode()
        self._new = padded.encode()

    def sink(self, name, inner, spool_dir=None):
        # type: (str, Sink, Optional[str]) -> Sink
        return PathRewriter(inner, self._old, self._new, spool_dir=spool_dir,
                            mapped=self.mapped(name))

    def describe(self):
        # type: () -> Optional[str]
        return ("  retarget them from %s, same-length (rewrite the store dir: padded to the "
                "same length in binaries, canonical in text)" % self.source.store_dir)


class Exact(Retarget):
    """Every store path recomputed for the new store dir from the derivations.

    ``contents``: what ``read_contents`` read of the payload.  Raises
    RetargetError for a longer store dir, exact.ExactError (with a hint) for
    a closure that cannot be planned.
    """

    rewrites = True

    def __init__(self, source, store_dir, contents):
        # type: (Manifest, str, Dict[str, bytes]) -> None
        padded = padded_store_dir(source.embedded_store_dir, store_dir)
        self.plan = plan_manifest(source, contents, store_dir)
        manifest = retargeted_manifest(source, self.plan, store_dir, padded)
        # A text's NAR size is known now (its hash once it is written): a file's
        # bytes are padded to 8 in a NAR.
        for i, old in enumerate(source.paths):
            text = self.plan.texts.get(old.name)
            if text is not None:
                manifest.paths[i].nar_size += _padded(len(text)) - _padded(len(contents[old.name]))
        Retarget.__init__(self, source, manifest)
        self._old = source.embedded_store_dir.encode()
        self._new = padded.encode()
        self._hashes = self.plan.hashes

    def name(self, old):
        # type: (str) -> str
        return self.plan.names[old]

    def keeps(self, name):
        # type: (str) -> bool
        return self.plan.kinds[name] in exact.KEEP_CONTENTS

    def mapped(self, name):
        # type: (str) -> Optional[Tuple[refmap.PathRefs, refmap.Rewrite]]
        if self.keeps(name) or name in self.plan.texts:
            return None
        return Retarget.mapped(self, name)

    def sink(self, name, inner, spool_dir=None):
        # type: (str, Sink, Optional[str]) -> Sink
        return PathRewriter(inner, self._old, self._new, self.plan.hashes, spool_dir=spool_dir,
                            keep_contents=self.keeps(name), text=self.plan.texts.get(name),
                            mapped=self.mapped(name))

    def describe(self):
        # type: () -> Optional[str]
        return ("  recompute every store path exactly for %s from the derivations it holds "
                "(built for %s)" % (self.store_dir, self.source.store_dir))


def check_refs(refs, source):
    # type: (refmap.RefMap, Manifest) -> None
    """Refuse (refmap.RefMapError) a reference map that does not describe the payload of
    ``source``: its store dir, its paths in order, each one's NAR hash."""
    if refs.store_dir != source.embedded_store_dir.encode():
        raise refmap.RefMapError("it is for the store dir %s, not %s" % (
            refs.store_dir.decode("utf-8", "replace"), source.embedded_store_dir))
    if refs.order != [p.name for p in source.paths]:
        raise refmap.RefMapError("it does not list the store paths of %s" % source.store_dir)
    for p in source.paths:
        if refs.paths[p.name].nar_hash != parse_sha256(p.nar_hash):
            raise refmap.RefMapError("it describes another %s/%s (its NAR hash differs)"
                                     % (source.store_dir, p.name))


def _padded(n):
    # type: (int) -> int
    return (n + 7) // 8 * 8


class Retargeted(Filter):
    """One payload path on its way through ``retarget`` to ``out``: rewritten, and
    what reaches ``out`` NAR-hashed again when the bytes change.

    After ``finish``, ``nar_info()`` gives the new (narHash, narSize), or None
    when the retarget leaves the bytes as they are.
    """

    def __init__(self, retarget, name, out, spool_dir=None):
        # type: (Retarget, str, Sink, Optional[str]) -> None
        self.name = retarget.name(name)
        self._hasher = None  # type: Optional[nar.NarHasher]
        if retarget.rewrites:
            self._hasher = nar.NarHasher()
            out = Tee(out, self._hasher)
        Filter.__init__(self, retarget.sink(name, out, spool_dir))

    def nar_info(self):
        # type: () -> Optional[Tuple[str, int]]
        if self._hasher is None:
            return None
        return format_sha256(self._hasher.digest()), self._hasher.size


# -- the first pass of an exact retarget, and its manifest ------------------------------------


class Collector(Sink):
    """Keeps the bytes of a store path that is one small regular file.

    They go to ``into[name]`` when the file ends (up to TEXT_LIMIT bytes);
    anything else (a directory, a symlink, a bigger file) is ignored.
    """

    def __init__(self, name, into):
        # type: (str, Dict[str, bytes]) -> None
        self._name = name
        self._into = into
        self._parts = None  # type: Optional[List[bytes]]

    def regular(self, rel, executable, size):
        # type: (bytes, bool, int) -> None
        self._parts = [] if rel == b"" and size <= TEXT_LIMIT else None

    def contents(self, data):
        # type: (bytes) -> None
        if self._parts is not None:
            self._parts.append(data)

    def end_regular(self):
        # type: () -> None
        if self._parts is not None:
            self._into[self._name] = b"".join(self._parts)


def contents_chunks(manifest):
    # type: (Manifest) -> List[int]
    """The chunks ``read_contents`` reads: those holding paths the planner needs."""
    wanted = exact.needs_contents(manifest.paths)
    spans = manifest.chunk_spans()
    return sorted(set(i for p in manifest.paths if p.name in wanted for i in spans[p.name]))


def read_contents(source, progress=None, jobs=1):
    # type: (InstallerFile, Optional[Callable[[int], object]], int) -> Dict[str, bytes]
    """What the exact planner needs of ``source``'s payload, read through its
    verifying path (every NAR hash checked), writing nothing.

    ``progress`` gets the NAR bytes read; ``jobs`` chunks are read at once.
    """
    wanted = exact.needs_contents(source.manifest.paths)
    contents = {}  # type: Dict[str, bytes]

    def open_path(name):
        # type: (str) -> Sink
        count = Count(progress)
        if name not in wanted:
            return count
        return Tee(Collector(name, contents), count)

    source.unpack(open_path, contents_chunks(source.manifest), jobs)
    return contents


def plan_manifest(manifest, contents, new_dir):
    # type: (Manifest, Dict[str, bytes], str) -> exact.Renaming
    """``exact.renaming`` for the paths of ``manifest`` (``contents``: what
    ``read_contents`` read)."""
    if not has_derivations(manifest.paths):
        raise exact.ExactError("the installer for %s holds no .drv files" % manifest.store_dir,
                               "build it with --with-derivations")
    result = exact.renaming(manifest.paths, manifest.store_dir, new_dir, contents)
    # Only the hash part may change (new names become file names in the store).
    for p in manifest.paths:
        new = result.names[p.name]
        if new[HASH_LENGTH:] != p.name[HASH_LENGTH:] or not exact.HASH_PART.match(new):
            raise exact.ExactError("%s/%s would become %r, not a store path of the same name"
                                   % (manifest.store_dir, p.name, new))
    return result


def retargeted_manifest(manifest, plan, store_dir, embedded_store_dir):
    # type: (Manifest, exact.Renaming, str, str) -> Manifest
    """A copy of ``manifest`` for ``store_dir`` under the names of ``plan``.

    Paths (in the same order), references, derivers, roots, ``nixStore`` and
    the hidden references are renamed; NAR hashes and sizes stay the old ones
    until the rewritten paths have been hashed.
    """
    names = plan.names
    new = manifest.retargeted(store_dir, embedded_store_dir)
    paths = []
    for old in manifest.paths:
        entry = copy.copy(old)
        deriver = plan.derivers.get(old.name, old.deriver)
        entry.deriver = names.get(deriver, "")
        entry.references = sorted(names[r] for r in old.references)
        entry.name = names[old.name]
        paths.append(entry)
    new.paths = paths
    new.roots = sorted(names[r] for r in manifest.roots)
    if manifest.nix_store:
        base, _, rest = manifest.nix_store.partition("/")
        new.nix_store = names[base] + "/" + rest
    new.hidden_refs = [_renamed(ref, names) for ref in manifest.hidden_refs]
    # Still the derivations of its paths, for the new store dir: another one
    # gets every path recomputed again.
    new.derivations = True
    return new


def _renamed(ref, names):
    # type: (str, Dict[str, str]) -> str
    """``<base>/<rel>: <reason>`` (or ``<base>: <reason>``) with the new base name."""
    base = ref.partition("/")[0].partition(":")[0]
    return names[base] + ref[len(base):]


# -- the one choice of a retarget, for the installer and every builder command -----------------

SAME_LENGTH = "same-length"
EXACT = "exact"


def choose(manifest, store_dir, read_contents=None, want=None, derivations=None):
    # type: (Manifest, str, Optional[Contents], Optional[str], Optional[bool]) -> Retarget
    """The retarget of ``manifest``'s paths to ``store_dir``, or RetargetError (TooLong
    for a store dir longer than the payload's), one line with a hint.

    ``derivations``: whether the paths' derivations travel with them, so that
    every path can be recomputed exactly (default: whether a ``.drv`` is among
    them; the installer passes its manifest's own flag, a build False).
    ``want`` None chooses: ``Identity`` at the store dir the paths were built
    for, else ``Exact`` when the derivations travel, else ``SameLength``.
    ``want`` SAME_LENGTH or EXACT is a kind the caller asked for (``retarget
    [--exact]``; ``cache`` and ``serve`` want EXACT whenever the derivations
    travel, at the built store dir too, for the content addresses of their
    narinfos): refused where it cannot hold.  ``read_contents`` (the files the
    planner needs: ``read_contents``) is called only for an exact retarget,
    after the length is checked.
    """
    if derivations is None:
        derivations = has_derivations(manifest.paths)
    if want is None:
        if store_dir == manifest.store_dir:
            return Identity(manifest)
        want = EXACT if derivations else SAME_LENGTH
    check_length(manifest, store_dir)
    if want == SAME_LENGTH:
        if derivations:
            # Their hash parts would stay: Nix's --load-db checks a .drv's outputs and
            # refuses it (local-store.cc checkDerivationOutputs).
            raise RetargetError(
                "the installer for %s holds .drv files, which Nix refuses to register at "
                "another store dir with their old hash parts" % manifest.store_dir,
                "retarget with --exact (see docs/retargeting.md)")
        return SameLength(manifest, store_dir)
    if want != EXACT:
        raise ValueError("unknown retarget kind %r" % want)
    if not derivations or read_contents is None:
        raise RetargetError("the installer for %s holds no .drv files" % manifest.store_dir,
                            "build it with --with-derivations, or retarget without --exact")
    try:
        return Exact(manifest, store_dir, read_contents())
    except exact.ExactError as e:
        raise RetargetError(
            "cannot recompute the store paths for %s: %s" % (store_dir, e),
            e.hint or "build it with --with-derivations (every .drv with its sources), or "
            "use the prefix it was built for, %s" % _prefix(manifest.store_dir))


def check_length(manifest, store_dir):
    # type: (Manifest, str) -> None
    """Refuse (TooLong) a store dir longer than the one inside the payload: any store dir
    no longer than that can be served by a same-length rewrite, a longer one cannot."""
    limit = manifest.max_store_dir_length
    size = len(store_dir.encode())
    if store_dir != manifest.store_dir and size > limit:
        raise TooLong(
            "the prefix %s is too long: these store paths can be retargeted to a prefix of "
            "at most %d bytes, and its store dir %s is %d bytes, longer than their %d"
            % (_prefix(store_dir), limit - len("/store"), store_dir, size, limit),
            "choose a shorter --prefix, or build from a closure built with a longer store "
            "dir (see docs/retargeting.md)")


def _prefix(store_dir):
    # type: (str) -> str
    return store_dir[:-len("/store")] if store_dir.endswith("/store") else store_dir
