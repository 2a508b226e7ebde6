"""Exact retarget: every store path recomputed for a new store dir, as Nix would.

A same-length retarget (retarget.SameLength) keeps the hash parts, so a Nix evaluating the
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

``renaming`` classifies each path by which formula reproduces its original path
(and checks that renaming for the original store dir reproduces the closure
exactly) before renaming for S2: a ``Renaming``, old name to new.

This module computes the renaming only: retarget.Exact reads what it needs from
a payload, renames with it and rewrites the paths, for ``nix-prefix retarget
--exact`` and for the installer alike.
"""

import binascii
import hashlib
import re

from . import derivation, nix32, storepaths_ca
from .hashes import parse_sha256
from .rewrite import Rewriter
from .storepath import DRV_EXTENSION, HASH_LENGTH, is_derivation

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Dict, List, Optional, Sequence, Set, Tuple  # noqa: F401

    from .derivation import Derivation  # noqa: F401
    from .manifest import PathEntry  # noqa: F401

TEXT, SOURCE, FIXED, OUTPUT, DRV = "text", "source", "fixed", "output", "drv"
# Which kinds have their contents rewritten, and how.
KEEP_CONTENTS = (SOURCE, FIXED)


class ExactError(ValueError):
    """The closure cannot be retargeted exactly (the message says why)."""

    def __init__(self, message, hint=""):
        ValueError.__init__(self, message)
        self.hint = hint


HASH_PART = re.compile("[" + nix32.ALPHABET + "]{%d}-" % HASH_LENGTH)
_HASH_RUN = re.compile(("[" + nix32.ALPHABET + "]{%d,}" % HASH_LENGTH).encode())


class Renaming(object):
    """What an exact retarget renames: old base names to new ones, with each path's
    kind, the derivers of outputs and the new contents of texts and ``.drv`` files."""

    def __init__(self):
        # type: () -> None
        # old base name -> new base name
        self.names = {}  # type: Dict[str, str]
        # old base name -> TEXT, SOURCE, FIXED, OUTPUT or DRV
        self.kinds = {}  # type: Dict[str, str]
        # old output base name -> old drv base name
        self.derivers = {}  # type: Dict[str, str]
        # old base name -> new contents (texts and .drv files)
        self.texts = {}  # type: Dict[str, bytes]
        # every old hash part -> its new one
        self.hashes = {}  # type: Dict[bytes, bytes]


def _split(base):
    # type: (str) -> Tuple[str, str]
    return base[:HASH_LENGTH], base[HASH_LENGTH + 1:]


def renaming(paths, old_dir, new_dir, contents):
    # type: (Sequence[PathEntry], str, str, Dict[str, bytes]) -> Renaming
    """The renaming of the exact retarget of ``paths`` from ``old_dir`` to ``new_dir``.

    ``contents`` holds the bytes of the paths that are one regular file (at
    least every ``.drv`` and every path no derivation of the closure made:
    see ``needs_contents``).  First renames for ``old_dir`` itself, which must
    give back every path and every text unchanged (this is what checks the
    classification).
    """
    same = _Renamer(paths, old_dir, old_dir, contents).run()
    for old, new in same.names.items():
        if old != new:
            raise ExactError("store path %s/%s is recomputed as %s/%s: this closure is not "
                             "reproducible the way Nix computes paths" % (old_dir, old, old_dir,
                                                                         new),
                             "retarget without --exact (same-length retarget)")
    for old, text in same.texts.items():
        if text != contents.get(old):
            raise ExactError("%s/%s does not print back identically" % (old_dir, old),
                             "retarget without --exact (same-length retarget)")
    if new_dir == old_dir:
        return same
    return _Renamer(paths, old_dir, new_dir, contents, same.kinds).run()


def needs_contents(paths):
    # type: (Sequence[PathEntry]) -> Set[str]
    """The paths whose contents ``renaming`` may need: every ``.drv`` and every
    path whose deriver is not in the closure (texts, sources, fixed outputs).

    The outputs of the closure's derivations are renamed from their ``.drv``
    alone; should a deriver be wrong, the renamer finds a path it cannot
    classify and refuses, so this only saves reading, never changes a renaming.
    """
    names = set(p.name for p in paths)
    return set(p.name for p in paths if is_derivation(p.name) or p.deriver not in names)


class _Renamer(object):
    def __init__(self, paths, old_dir, new_dir, contents, kinds=None):
        # type: (Sequence[PathEntry], str, str, Dict[str, bytes], Optional[Dict[str, str]]) -> None
        self.infos = dict((p.name, p) for p in paths)
        self.contents = contents
        self.old_dir = old_dir
        self.new_dir = new_dir
        self.renaming = Renaming()
        self.known_kinds = kinds
        self.drvs = {}  # type: Dict[str, Derivation]  # old drv base -> its derivation
        # old output base -> (old drv base, output id)
        self.output_of = {}  # type: Dict[str, Tuple[str, str]]
        # old drv base -> {output: new hashDerivationModulo}
        self.drv_hashes = {}  # type: Dict[str, Dict[str, bytes]]
        self.busy = set()  # type: Set[str]

    def run(self):
        # type: () -> Renaming
        self.by_hash = dict((name[:HASH_LENGTH].encode(), name) for name in self.infos)
        for name in sorted(self.infos):
            if is_derivation(name):
                data = self.contents.get(name)
                if data is None:
                    raise ExactError("%s/%s is not a plain file" % (self.old_dir, name))
                try:
                    drv = derivation.parse(data)
                except derivation.DerivationError as e:
                    raise ExactError("%s/%s: %s" % (self.old_dir, name, e))
                if drv.is_floating_ca or drv.is_deferred:
                    raise ExactError("%s/%s has floating content-addressed or deferred "
                                     "outputs, which exact retarget does not support"
                                     % (self.old_dir, name),
                                     "retarget without --exact (same-length retarget)")
                self.drvs[name] = drv
                for out_id, path, _, _ in drv.outputs:
                    self.output_of[self._base(path, name)] = (name, out_id)
        for name in sorted(self.infos):
            self.resolve(name)
        return self.renaming

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
        self.renaming.names[old] = new
        self.renaming.hashes[old[:HASH_LENGTH].encode()] = new[:HASH_LENGTH].encode()

    def text_rewriter(self):
        # type: () -> Rewriter
        return Rewriter(self.old_dir.encode(), self.new_dir.encode(), self.renaming.hashes)

    def rewrite_str(self, s):
        # type: (str) -> str
        raw = s.encode("utf-8", "surrogateescape")
        return self.text_rewriter().whole(raw).decode("utf-8", "surrogateescape")

    def resolve(self, name):
        # type: (str) -> str
        """The new base name of the old path ``name`` (computed once)."""
        done = self.renaming.names.get(name)
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
        return self.renaming.names[name]

    def _resolve_mentioned(self, name):
        # type: (str) -> None
        """Resolve first every closure path whose hash part the contents of ``name`` hold.

        A string can name a store path without declaring it (``builtins.readFile``
        or ``import`` of a built output gives strings whose context does not
        carry every path in them), so the declared references do not suffice:
        the rewrite needs the new hash part of every path it meets.
        """
        contents = self.contents.get(name)
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
        new_refs = [self._full_new(self.renaming.names[r]) for r in refs]
        nar = parse_sha256(info.nar_hash)
        data = self.contents.get(name)
        kind = self.known_kinds.get(name) if self.known_kinds is not None else None
        if kind is None:
            kind = self._classify(name, data, old_refs, self_ref, nar)
        if kind == TEXT and data is not None:
            text = self.text_rewriter().whole(data)
            self.renaming.texts[name] = text
            new = storepaths_ca.make_text_path(self.new_dir, pname, text, new_refs)
        elif kind == SOURCE:
            new = storepaths_ca.make_source_path(self.new_dir, pname, nar)
        else:
            new = storepaths_ca.make_fixed_output_path(
                self.new_dir, pname, False, "sha256", hashlib.sha256(data or b"").digest())
        self.renaming.kinds[name] = kind
        self._set(name, new)

    def _classify(self, name, data, old_refs, self_ref, nar):
        # type: (str, Optional[bytes], List[str], bool, bytes) -> str
        full = self.old_dir + "/" + name
        _, pname = _split(name)
        if data is not None and not self_ref and storepaths_ca.make_text_path(
                self.old_dir, pname, data, old_refs) == full:
            return TEXT
        if not old_refs and not self_ref and storepaths_ca.make_source_path(
                self.old_dir, pname, nar) == full:
            return SOURCE
        if not old_refs and data is not None and storepaths_ca.make_fixed_output_path(
                self.old_dir, pname, False, "sha256", hashlib.sha256(data).digest()) == full:
            return FIXED
        raise ExactError("cannot tell how %s was made: it is not the output of a .drv in the "
                         "closure, nor a text, source or flat sha256 fixed-output path without "
                         "references" % full,
                         "build with --with-derivations so the closure holds every .drv "
                         "and its sources, or retarget without --exact")

    def _derivation(self, name):
        # type: (str) -> None
        """Rename derivation ``name`` and its outputs: its inputs first, then the
        ``.drv`` rewritten for the new store dir, its outputs computed from it."""
        if name in self.drv_hashes:
            return
        drv = self.drvs[name]
        info = self.infos[name]
        self._resolve_inputs(name, drv)
        drv_name = name[HASH_LENGTH + 1:-len(DRV_EXTENSION)]
        rw = self.rewrite_str
        new = derivation.Derivation(
            drv.outputs,
            sorted((rw(p), outs) for p, outs in drv.input_drvs),
            sorted(rw(p) for p in drv.input_srcs),
            rw(drv.platform), rw(drv.builder), [rw(a) for a in drv.args],
            [(k, rw(v)) for k, v in drv.env])
        outputs = self._outputs(name, drv, drv_name, new)
        for out_id, old_path, _, _ in drv.outputs:
            base = self._base(old_path, name)
            self._set(base, outputs[out_id])
            self.renaming.kinds[base] = FIXED if drv.is_fixed_output else OUTPUT
            self.renaming.derivers[base] = name
        text = new.unparse()
        self.renaming.texts[name] = text
        refs = [self._full_new(self.renaming.names[r]) for r in info.references if r != name]
        self.renaming.kinds[name] = DRV
        self._set(name, storepaths_ca.make_text_path(self.new_dir, drv_name + DRV_EXTENSION, text,
                                                     refs))

    def _resolve_inputs(self, name, drv):
        # type: (str, Derivation) -> None
        """Rename first what derivation ``name`` is made of: its input derivations and
        sources, its references and the paths its text mentions."""
        for path, _ in drv.input_drvs:
            base = self._base(path, name)
            if base not in self.drvs:
                raise ExactError("%s/%s needs %s, which is not in the closure"
                                 % (self.old_dir, name, path),
                                 "build with --with-derivations")
            self.resolve(base)
        for path in drv.input_srcs:
            self.resolve(self._base(path, name))
        for r in self.infos[name].references:
            if r != name:
                self.resolve(r)
        self._resolve_mentioned(name)

    def _outputs(self, name, drv, drv_name, new):
        # type: (str, Derivation, str, Derivation) -> Dict[str, str]
        """The new output paths of derivation ``name`` (by output id), put into ``new``
        (its rewritten copy); its hashDerivationModulo kept for the derivations using it."""
        outputs = {}  # type: Dict[str, str]
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
        self.drv_hashes[name] = modulo
        return outputs
