"""Nix derivations (``.drv`` files): the ATerm format, parsed and printed.

Follows NixOS/nix 2.8 src/libstore/derivations.cc: ``parseDerivation`` and
``parseString`` for reading, ``Derivation::unparse`` with ``printString``
(builder, args, env: escapes ``"  \\  \\n  \\r  \\t``) and
``printUnquotedString`` (paths, output names, platform, hashes: no escaping)
for writing.  ``parse`` then ``unparse`` gives back the same bytes
(../shared/docs/nix-formats.md section 8).
"""


MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Any, Iterable, List, Mapping, Optional  # noqa: F401


class DerivationError(ValueError):
    """A ``.drv`` file is not a derivation in the ATerm form Nix writes."""


class Derivation(object):
    """The fields of one ``Derive(...)`` term, in the order Nix writes them.

    ``outputs``: list of (name, path, hash_algo, hash), sorted by name;
    ``input_drvs``: list of (drv path, [output names]), sorted by path;
    ``input_srcs``: sorted list of paths; ``env``: list of (key, value).
    """

    def __init__(self, outputs, input_drvs, input_srcs, platform, builder, args, env):
        self.outputs = [tuple(o) for o in outputs]
        self.input_drvs = [(p, list(outs)) for p, outs in input_drvs]
        self.input_srcs = list(input_srcs)
        self.platform = platform
        self.builder = builder
        self.args = list(args)
        self.env = [tuple(kv) for kv in env]

    @property
    def is_fixed_output(self):
        # type: () -> bool
        """One output ``out`` with a hash (derivations.cc ``Derivation::type``)."""
        return (len(self.outputs) == 1 and self.outputs[0][0] == "out"
                and bool(self.outputs[0][3]))

    @property
    def is_floating_ca(self):
        # type: () -> bool
        return any(algo and not h for _, _, algo, h in self.outputs)

    @property
    def is_deferred(self):
        # type: () -> bool
        return any(not path for _, path, _, _ in self.outputs)

    def unparse(self, mask_outputs=False, actual_inputs=None):
        # type: (bool, Optional[Mapping[str, Iterable[str]]]) -> bytes
        """The ATerm text (derivations.cc ``Derivation::unparse``).

        ``actual_inputs`` replaces ``input_drvs`` (hashDerivationModulo puts
        the hex hash of each input derivation in place of its path).
        """
        out = ["Derive(["]
        out.append(",".join(
            "(%s,%s,%s,%s)" % (_unquoted(name), _unquoted("" if mask_outputs else path),
                               _unquoted(algo), _unquoted(h))
            for name, path, algo, h in self.outputs))
        out.append("],[")
        if actual_inputs is not None:
            inputs = sorted((k, sorted(v)) for k, v in actual_inputs.items())
        else:
            inputs = self.input_drvs
        out.append(",".join(
            "(%s,%s)" % (_unquoted(p), _list(outs, _unquoted)) for p, outs in inputs))
        out.append("],")
        out.append(_list(self.input_srcs, _unquoted))
        out.append(",")
        out.append(_unquoted(self.platform))
        out.append(",")
        out.append(_quoted(self.builder))
        out.append(",")
        out.append(_list(self.args, _quoted))
        out.append(",[")
        names = set(o[0] for o in self.outputs)
        out.append(",".join(
            "(%s,%s)" % (_quoted(k), _quoted("" if mask_outputs and k in names else v))
            for k, v in self.env))
        out.append("])")
        return "".join(out).encode("utf-8", "surrogateescape")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNESCAPES = {"n": "\n", "r": "\r", "t": "\t"}


def _quoted(s):
    # type: (str) -> str
    return '"' + "".join(_ESCAPES.get(c, c) for c in s) + '"'


def _unquoted(s):
    # type: (str) -> str
    return '"' + s + '"'


def _list(items, fmt):
    return "[" + ",".join(fmt(i) for i in items) + "]"


class _Parser(object):
    def __init__(self, text):
        self.s = text
        self.i = 0

    def expect(self, lit):
        if not self.s.startswith(lit, self.i):
            raise DerivationError("expected %r at offset %d" % (lit, self.i))
        self.i += len(lit)

    def peek(self, lit):
        return self.s.startswith(lit, self.i)

    def string(self):
        self.expect('"')
        out = []
        s = self.s
        while True:
            j = self.i
            while j < len(s) and s[j] not in '"\\':
                j += 1
            out.append(s[self.i:j])
            if j >= len(s):
                raise DerivationError("unterminated string")
            if s[j] == '"':
                self.i = j + 1
                return "".join(out)
            if j + 1 >= len(s):
                raise DerivationError("unterminated string")
            c = s[j + 1]
            out.append(_UNESCAPES.get(c, c))
            self.i = j + 2

    def items(self, item):
        """``[item,item,...]``"""
        self.expect("[")
        result = []  # type: List[Any]
        if self.peek("]"):
            self.i += 1
            return result
        while True:
            result.append(item())
            if self.peek(","):
                self.i += 1
                continue
            self.expect("]")
            return result

    def tuple_of(self, *fields):
        self.expect("(")
        result = []
        for n, field in enumerate(fields):
            if n:
                self.expect(",")
            result.append(field())
        self.expect(")")
        return tuple(result)


def parse(data):
    # type: (bytes) -> Derivation
    """Parse a ``.drv`` file's bytes (derivations.cc ``parseDerivation``)."""
    p = _Parser(data.decode("utf-8", "surrogateescape"))
    s = p.string
    p.expect("Derive(")
    outputs = p.items(lambda: p.tuple_of(s, s, s, s))
    p.expect(",")
    input_drvs = p.items(lambda: p.tuple_of(s, lambda: p.items(s)))
    p.expect(",")
    input_srcs = p.items(s)
    p.expect(",")
    platform = s()
    p.expect(",")
    builder = s()
    p.expect(",")
    args = p.items(s)
    p.expect(",")
    env = p.items(lambda: p.tuple_of(s, s))
    p.expect(")")
    if p.i != len(p.s):
        raise DerivationError("trailing bytes after the derivation")
    return Derivation(outputs, input_drvs, input_srcs, platform, builder, args, env)
