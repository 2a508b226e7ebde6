"""Exact retarget: every store path recomputed for a new store dir, as Nix would.

Plain relocation (relocate.py) keeps the hash parts, so a Nix evaluating the
same expressions at the new store dir gets other paths.  When the closure
holds the derivations (``.drv`` files and their sources), each path can be
recomputed bottom-up for the new store dir S2 (store-api.cc, derivations.cc;
../shared/docs/nix-formats.md section 8):

* ``.drv`` files and ``builtins.toFile`` texts: "text" paths over their
  contents rewritten with the canonical S2 and the new paths;
* input-addressed outputs: ``makeOutputPath`` over hashDerivationModulo of
  the rewritten derivation;
* fixed outputs: from their output hash (contents unchanged);
* sources without references: from their NAR hash (contents unchanged).

``plan`` classifies each path by which formula reproduces its original path
(and checks that planning for the original store dir reproduces the closure
exactly) before planning for S2.

The rest is shared by ``nix-prefix retarget --exact`` (builder/exact.py) and
the installer (installer/exact_relocation.py): ``Collector`` keeps the
contents the planner needs on a first pass over the payload,
``plan_manifest`` plans a manifest's paths, ``retargeted_manifest`` gives the
manifest under the new names and ``PathRewriter`` rewrites each path's
contents on the second pass.
"""

import binascii
import hashlib
import re

from . import derivation, nix32, relocate, storepaths_ca
from .hashes import parse_sha256
from .storepath import HASH_LENGTH

TEXT, SOURCE, FIXED, OUTPUT, DRV = "text", "source", "fixed", "output", "drv"
# Which kinds have their contents rewritten, and how.
KEEP_CONTENTS = (SOURCE, FIXED)
# Paths that are one regular file up to this size are read for the planner.
TEXT_LIMIT = 16 << 20


class ExactError(ValueError):
    """The closure cannot be retargeted exactly (the message says why)."""

    def __init__(self, message, hint=""):
        ValueError.__init__(self, message)
        self.hint = hint


_NIX32 = "[" + nix32.ALPHABET + "]"
_HASH_PART = re.compile(_NIX32 + "{%d}-" % HASH_LENGTH)
_HASH_RUN = re.compile(_NIX32.encode() + b"{%d,}" % HASH_LENGTH)


class Rewriter(object):
    """Replace a store dir and 32-char hash parts in a byte stream fed in pieces.

    ``old_dir`` becomes ``new_dir``; every run of nix32 characters is looked
    at 32 characters at a time and a window that is a key of ``hashes``
    (old hash part to new, same length) is replaced, as Nix finds references
    (src/libstore/references.cc).  When ``new_dir`` has the length of
    ``old_dir`` no offset moves.  A match that may continue in the next piece
    is held back.
    """

    def __init__(self, old_dir, new_dir, hashes):
        # type: (bytes, bytes, Dict[bytes, bytes]) -> None
        self._old = old_dir
        self._new = new_dir
        self._hashes = hashes
        self._re = re.compile(re.escape(old_dir) + b"|" + _NIX32.encode() + b"{%d,}"
                              % HASH_LENGTH)
        self._keep = max(len(old_dir), HASH_LENGTH) - 1
        self._tail = b""
        self.count = 0

    def _replace(self, m):
        # type: (Any) -> bytes
        s = m.group(0)
        if s == self._old:
            self.count += 1
            return self._new
        if len(s) == HASH_LENGTH:
            new = self._hashes.get(s)
            if new is None:
                return s
            self.count += 1
            return new
        out = []
        i = 0
        start = 0
        while i + HASH_LENGTH <= len(s):
            new = self._hashes.get(s[i:i + HASH_LENGTH])
            if new is None:
                i += 1
                continue
            out.append(s[start:i])
            out.append(new)
            self.count += 1
            i += HASH_LENGTH
            start = i
        out.append(s[start:])
        return b"".join(out)

    def _run(self, buf, final):
        # type: (bytes, bool) -> Tuple[bytes, bytes]
        limit = len(buf) - self._keep
        out = []
        pos = 0
        cut = None
        for m in self._re.finditer(buf):
            if not final and (m.end() >= len(buf) or m.start() >= limit):
                cut = max(pos, min(limit, m.start()))
                break
            out.append(buf[pos:m.start()])
            out.append(self._replace(m))
            pos = m.end()
        if final:
            cut = len(buf)
        elif cut is None:
            cut = max(pos, limit)
        out.append(buf[pos:cut])
        return b"".join(out), buf[cut:]

    def feed(self, data):
        # type: (bytes) -> bytes
        done, self._tail = self._run(self._tail + data, False)
        return done

    def flush(self):
        # type: () -> bytes
        done, self._tail = self._run(self._tail, True)
        return done

    def whole(self, data):
        # type: (bytes) -> bytes
        """Rewrite one complete piece (a text file, a symlink target)."""
        done, _ = self._run(data, True)
        return done


class PathInfo(object):
    """What the planner knows of one store path (names are base names)."""

    def __init__(self, name, references, nar_hash, contents=None):
        # type: (str, Sequence[str], str, Optional[bytes]) -> None
        self.name = name
        self.references = list(references)
        self.nar_hash = nar_hash
        self.contents = contents  # the bytes of a path that is one regular file


class Plan(object):
    """The result: new base names, kinds, derivers and new text contents."""

    def __init__(self):
        self.names = {}  # type: Dict[str, str]   old base -> new base
        self.kinds = {}  # type: Dict[str, str]
        self.derivers = {}  # type: Dict[str, str]  old output base -> old drv base
        self.texts = {}  # type: Dict[str, bytes]  old base -> new contents (text, drv)
        self.hashes = {}  # type: Dict[bytes, bytes]  every old hash part -> new


def _split(base):
    # type: (str) -> Tuple[str, str]
    return base[:HASH_LENGTH], base[HASH_LENGTH + 1:]


def plan(infos, old_dir, new_dir):
    # type: (Sequence[PathInfo], str, str) -> Plan
    """Plan the exact retarget of ``infos`` from ``old_dir`` to ``new_dir``.

    First plans for ``old_dir`` itself, which must give back every path and
    every text unchanged (this is what checks the classification).
    """
    same = _Planner(infos, old_dir, old_dir).run()
    for old, new in same.names.items():
        if old != new:
            raise ExactError("store path %s/%s is recomputed as %s/%s: this closure is not "
                             "reproducible the way Nix computes paths" % (old_dir, old, old_dir,
                                                                         new),
                             "retarget without --exact (plain relocation)")
    by_name = dict((i.name, i) for i in infos)
    for old, text in same.texts.items():
        if text != by_name[old].contents:
            raise ExactError("%s/%s does not print back identically" % (old_dir, old),
                             "retarget without --exact (plain relocation)")
    if new_dir == old_dir:
        return same
    return _Planner(infos, old_dir, new_dir, same.kinds).run()


class _Planner(object):
    def __init__(self, infos, old_dir, new_dir, kinds=None):
        self.infos = dict((i.name, i) for i in infos)
        self.old_dir = old_dir
        self.new_dir = new_dir
        self.p = Plan()
        self.known_kinds = kinds
        self.drvs = {}  # old drv base -> Derivation (old)
        self.output_of = {}  # old output base -> (old drv base, output id)
        self.drv_hashes = {}  # old drv base -> {output: new hashDerivationModulo}
        self.busy = set()

    def run(self):
        # type: () -> Plan
        self.by_hash = dict((name[:HASH_LENGTH].encode(), name) for name in self.infos)
        for name, info in sorted(self.infos.items()):
            if name.endswith(".drv"):
                if info.contents is None:
                    raise ExactError("%s/%s is not a plain file" % (self.old_dir, name))
                try:
                    drv = derivation.parse(info.contents)
                except derivation.DerivationError as e:
                    raise ExactError("%s/%s: %s" % (self.old_dir, name, e))
                if drv.is_floating_ca or drv.is_deferred:
                    raise ExactError("%s/%s has floating content-addressed or deferred "
                                     "outputs, which exact retarget does not support"
                                     % (self.old_dir, name),
                                     "retarget without --exact (plain relocation)")
                self.drvs[name] = drv
                for out_id, path, _, _ in drv.outputs:
                    self.output_of[self._base(path, name)] = (name, out_id)
        for name in sorted(self.infos):
            self.resolve(name)
        return self.p

    def _base(self, path, where):
        # type: (str, str) -> str
        d, _, base = path.rpartition("/")
        if d != self.old_dir:
            raise ExactError("%s/%s names %s, outside the store dir %s"
                             % (self.old_dir, where, path, self.old_dir))
        return base

    def _full_new(self, base):
        return self.new_dir + "/" + base

    def _set(self, old, new_full):
        # type: (str, str) -> None
        new = new_full.rpartition("/")[2]
        self.p.names[old] = new
        self.p.hashes[old[:HASH_LENGTH].encode()] = new[:HASH_LENGTH].encode()

    def text_rewriter(self):
        return Rewriter(self.old_dir.encode(), self.new_dir.encode(), self.p.hashes)

    def rewrite_str(self, s):
        # type: (str) -> str
        raw = s.encode("utf-8", "surrogateescape")
        return self.text_rewriter().whole(raw).decode("utf-8", "surrogateescape")

    def resolve(self, name):
        # type: (str) -> str
        """The new base name of the old path ``name`` (computed once)."""
        done = self.p.names.get(name)
        if done is not None:
            return done
        if name in self.busy:
            raise ExactError("%s/%s depends on itself through other paths" % (self.old_dir,
                                                                             name))
        self.busy.add(name)
        try:
            if name in self.drvs:
                self._derivation(name)
            elif name in self.output_of:
                self._derivation(self.output_of[name][0])
            else:
                self._content_addressed(name)
        finally:
            self.busy.discard(name)
        return self.p.names[name]

    def _resolve_mentioned(self, name):
        # type: (str) -> None
        """Resolve first every closure path whose hash part the contents of ``name`` hold.

        A string can name a store path without declaring it (``builtins.readFile``
        or ``import`` of a built output gives strings whose context does not
        carry every path in them), so the declared references do not suffice:
        the rewrite needs the new hash part of every path it meets.
        """
        contents = self.infos[name].contents
        if contents is None:
            return
        for m in _HASH_RUN.finditer(contents):
            run = m.group(0)
            for i in range(len(run) - HASH_LENGTH + 1):
                other = self.by_hash.get(run[i:i + HASH_LENGTH])
                # A derivation's own outputs are what it computes.
                if other is not None and other != name and \
                        self.output_of.get(other, ("",))[0] != name:
                    self.resolve(other)

    def _content_addressed(self, name):
        # type: (str) -> None
        info = self.infos.get(name)
        if info is None:
            raise ExactError("%s/%s is needed but not in the closure" % (self.old_dir, name),
                             "build with --with-derivations so the closure holds every "
                             ".drv and its sources")
        refs = [r for r in info.references if r != name]
        self_ref = name in info.references
        for r in refs:
            self.resolve(r)
        self._resolve_mentioned(name)
        _, pname = _split(name)
        old_refs = [self.old_dir + "/" + r for r in refs]
        new_refs = [self._full_new(self.p.names[r]) for r in refs]
        nar = parse_sha256(info.nar_hash)
        kind = self.known_kinds.get(name) if self.known_kinds is not None else None
        if kind is None:
            kind = self._classify(name, info, old_refs, self_ref, nar)
        if kind == TEXT:
            text = self.text_rewriter().whole(info.contents)
            self.p.texts[name] = text
            new = storepaths_ca.make_text_path(self.new_dir, pname, text, new_refs)
        elif kind == SOURCE:
            new = storepaths_ca.make_source_path(self.new_dir, pname, nar)
        else:
            new = storepaths_ca.make_fixed_output_path(
                self.new_dir, pname, False, "sha256", hashlib.sha256(info.contents).digest())
        self.p.kinds[name] = kind
        self._set(name, new)

    def _classify(self, name, info, old_refs, self_ref, nar):
        full = self.old_dir + "/" + name
        _, pname = _split(name)
        if info.contents is not None and not self_ref and storepaths_ca.make_text_path(
                self.old_dir, pname, info.contents, old_refs) == full:
            return TEXT
        if not old_refs and not self_ref and storepaths_ca.make_source_path(
                self.old_dir, pname, nar) == full:
            return SOURCE
        if not old_refs and info.contents is not None and storepaths_ca.make_fixed_output_path(
                self.old_dir, pname, False, "sha256",
                hashlib.sha256(info.contents).digest()) == full:
            return FIXED
        raise ExactError("cannot tell how %s was made: it is not the output of a .drv in the "
                         "closure, nor a text, source or flat sha256 fixed-output path without "
                         "references" % full,
                         "build with --with-derivations so the closure holds every .drv "
                         "and its sources, or retarget without --exact")

    def _derivation(self, name):
        # type: (str) -> None
        if name in self.drv_hashes:
            return
        drv = self.drvs[name]
        info = self.infos[name]
        for path, _ in drv.input_drvs:
            base = self._base(path, name)
            if base not in self.drvs:
                raise ExactError("%s/%s needs %s, which is not in the closure"
                                 % (self.old_dir, name, path),
                                 "build with --with-derivations")
            self.resolve(base)
        for path in drv.input_srcs:
            self.resolve(self._base(path, name))
        for r in info.references:
            if r != name:
                self.resolve(r)
        self._resolve_mentioned(name)
        drv_name = name[HASH_LENGTH + 1:-len(".drv")]
        rw = self.rewrite_str
        new = derivation.Derivation(
            drv.outputs,
            sorted((rw(p), outs) for p, outs in drv.input_drvs),
            sorted(rw(p) for p in drv.input_srcs),
            rw(drv.platform), rw(drv.builder), [rw(a) for a in drv.args],
            [(k, rw(v)) for k, v in drv.env])
        outputs = {}
        if drv.is_fixed_output:
            out_id, _, algo, hex_hash = drv.outputs[0]
            recursive = algo.startswith("r:")
            path = storepaths_ca.make_fixed_output_path(
                self.new_dir, storepaths_ca.output_path_name(drv_name, out_id), recursive,
                algo[2:] if recursive else algo, binascii.unhexlify(hex_hash))
            outputs[out_id] = path
            modulo = {out_id: hashlib.sha256(
                ("fixed:out:%s:%s:%s" % (algo, hex_hash, path)).encode()).digest()}
        else:
            inputs = {}  # type: Dict[str, Set[str]]
            for path, outs in drv.input_drvs:
                hashes = self.drv_hashes[self._base(path, name)]
                for o in outs:
                    inputs.setdefault(binascii.hexlify(hashes[o]).decode(), set()).add(o)
            masked = hashlib.sha256(new.unparse(True, inputs)).digest()
            for out_id, _, _, _ in drv.outputs:
                outputs[out_id] = storepaths_ca.make_output_path(self.new_dir, drv_name, out_id,
                                                                 masked)
        new.outputs = [(o, outputs[o], algo, h) for o, _, algo, h in drv.outputs]
        new.env = [(k, outputs.get(k, v) if k in outputs else v) for k, v in new.env]
        if not drv.is_fixed_output:
            unmasked = hashlib.sha256(new.unparse(False, inputs)).digest()
            modulo = dict((o, unmasked) for o in outputs)
        for out_id, old_path, _, _ in drv.outputs:
            base = self._base(old_path, name)
            self._set(base, outputs[out_id])
            self.p.kinds[base] = FIXED if drv.is_fixed_output else OUTPUT
            self.p.derivers[base] = name
        self.drv_hashes[name] = modulo
        text = new.unparse()
        self.p.texts[name] = text
        refs = [self._full_new(self.p.names[r]) for r in info.references if r != name]
        self.p.kinds[name] = DRV
        self._set(name, storepaths_ca.make_text_path(self.new_dir, drv_name + ".drv", text,
                                                     refs))


# -- planning a manifest and rewriting its paths ----------------------------------------------


class Collector(object):
    """Visitor that keeps the bytes of a store path that is one small regular file.

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

    def __getattr__(self, name):
        return lambda *args: None


def needs_contents(manifest):
    # type: (Manifest) -> Set[str]
    """The paths whose contents ``plan_manifest`` may need: every ``.drv`` and every
    path whose deriver is not in the closure (texts, sources, fixed outputs).

    The outputs of the closure's derivations are planned from their ``.drv``
    alone; should a deriver be wrong, the planner finds a path it cannot
    classify and refuses, so this only saves reading, never changes a plan.
    """
    names = set(p.name for p in manifest.paths)
    return set(p.name for p in manifest.paths
               if p.name.endswith(".drv") or p.deriver not in names)


def plan_manifest(manifest, contents, new_dir):
    # type: (Manifest, Dict[str, bytes], str) -> Plan
    """``plan`` for the paths of ``manifest`` (``contents``: what ``Collector`` kept)."""
    if not any(p.name.endswith(".drv") for p in manifest.paths):
        raise ExactError("the installer for %s holds no .drv files" % manifest.store_dir,
                         "build it with --with-derivations")
    infos = [PathInfo(p.name, p.references, p.nar_hash, contents.get(p.name))
             for p in manifest.paths]
    result = plan(infos, manifest.store_dir, new_dir)
    # Only the hash part may change (new names become file names in the store).
    for info in infos:
        new = result.names[info.name]
        if new[HASH_LENGTH:] != info.name[HASH_LENGTH:] or not _HASH_PART.match(new):
            raise ExactError("%s/%s would become %r, not a store path of the same name"
                             % (manifest.store_dir, info.name, new))
    return result


def retargeted_manifest(manifest, p, store_dir, embedded_store_dir):
    # type: (Manifest, Plan, str, str) -> Manifest
    """A copy of ``manifest`` for ``store_dir`` under the names of the plan ``p``.

    Paths (in the same order), references, derivers, roots, ``nixStore`` and
    the hidden references are renamed; NAR hashes and sizes stay the old ones
    until the rewritten paths have been hashed.
    """
    names = p.names
    new = manifest.moved_to(store_dir, embedded_store_dir)
    for entry in new.paths:
        deriver = p.derivers.get(entry.name, entry.deriver)
        entry.deriver = names.get(deriver, "")
        entry.references = sorted(names[r] for r in entry.references)
        entry.name = names[entry.name]
    new.roots = sorted(names[r] for r in manifest.roots)
    if manifest.nix_store:
        base, _, rest = manifest.nix_store.partition("/")
        new.nix_store = names[base] + "/" + rest
    new.hidden_refs = [_renamed(ref, names) for ref in manifest.hidden_refs]
    return new


def _renamed(ref, names):
    # type: (str, Dict[str, str]) -> str
    """``<base>/<rel>: <reason>`` (or ``<base>: <reason>``) with the new base name."""
    base = ref.partition("/")[0].partition(":")[0]
    return names[base] + ref[len(base):]


class PathRewriter(object):
    """Visitor that rewrites one store path on its way to ``inner``.

    A ``.drv`` or text path (``text`` given: its new contents from the plan)
    gets ``text`` instead of its bytes, whatever their length; sources and
    fixed outputs (KEEP_CONTENTS) pass unchanged; every other file and
    symlink target gets the same-length ``new_dir`` for ``old_dir`` and the
    new hash parts (``Rewriter``), except zip-family archives, which are left
    unchanged as plain relocation leaves them (relocate.is_archive).
    """

    def __init__(self, inner, kind, text, old_dir, new_dir, hashes):
        # type: (object, str, Optional[bytes], bytes, bytes, Dict[bytes, bytes]) -> None
        self._inner = inner
        self._kind = kind
        self._text = text
        self._binary = (old_dir, new_dir, hashes)
        self._rewriter = None  # type: Optional[Rewriter]
        self._pending = None  # type: Optional[Tuple[bytes, bool]]

    def regular(self, rel, executable, size):
        # type: (bytes, bool, int) -> None
        if self._text is not None:
            self._pending = (rel, executable)
            return
        self._rewriter = None
        if self._kind not in KEEP_CONTENTS and not relocate.is_archive(rel):
            self._rewriter = Rewriter(*self._binary)
        self._inner.regular(rel, executable, size)

    def contents(self, data):
        # type: (bytes) -> None
        if self._text is not None:
            return
        if self._rewriter is not None:
            data = self._rewriter.feed(data)
        if data:
            self._inner.contents(data)

    def end_regular(self):
        # type: () -> None
        if self._pending is not None:
            rel, executable = self._pending
            self._pending = None
            self._inner.regular(rel, executable, len(self._text))
            self._inner.contents(self._text)
        elif self._rewriter is not None:
            tail = self._rewriter.flush()
            if tail:
                self._inner.contents(tail)
            self._rewriter = None
        self._inner.end_regular()

    def symlink(self, rel, target):
        # type: (bytes, bytes) -> None
        if self._kind not in KEEP_CONTENTS:
            target = Rewriter(*self._binary).whole(target)
        self._inner.symlink(rel, target)

    def __getattr__(self, name):
        # begin_directory, begin_entry, end_entry, end_directory
        return getattr(self._inner, name)
