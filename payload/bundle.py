"""A few payload modules as one Python text that runs with nothing installed.

Two things run before any package can be: the Python the sh preamble hands
the file to (``b`` of seal.head, which must check the signature of the publisher
before it imports anything of the file), and the standalone verifier
(``nix-prefix verifier -o FILE``, one file a user keeps).  Both need some
payload modules (the seal, ed25519, the key and signature formats, trust.py)
without the package around them, and neither may carry a hand-made copy.
A bundle is the source of this module, then that of each module as comment lines::

    #= NAME
    #|first line of NAME.py
    #|...

and a last line that calls ``load``.  Comments run as nothing, so the text is
plain Python whose modules a reader sees byte for byte (but in the text the sh
preamble carries, where a single quote of a module is the byte DEL, ``QUOTE``:
the sh string holding it then needs no escapes, one damaged byte of which would
be an sh syntax error before any check could run; this module has no single
quote of its own).  ``load`` takes the
text back apart and runs each module, in order, as a submodule of a package
of its own (so their ``from . import x`` work, and an import of anything not
bundled fails instead of being found elsewhere).  Python 3.6+, standard
library only; the source of this module is run as it stands, not imported.
"""

import sys
import types

MYPY = False  # mypy reads the imports below; Python never runs them
if MYPY:
    from typing import List, Sequence, Tuple  # noqa: F401

MARK = "#= "
LINE = "#|"
APOSTROPHE = "\x27"  # the single quote
QUOTE = "\x7f"  # how the text the sh preamble carries writes it (pack, load)


def pack(head, modules, entry, quote=APOSTROPHE):
    # type: (str, Sequence[Tuple[str, str]], str, str) -> str
    """The bundle: ``head`` (the source of this module, with anything before it), the
    ``modules`` as (name, source) in the order they load, then ``entry``; a single
    quote of a module written as ``quote``."""
    for text in (head, entry):
        if any(line.startswith((MARK, LINE)) for line in text.split("\n")):
            raise ValueError("a line outside the modules starts like a bundled one")
    out = [head.rstrip("\n")]
    for name, source in modules:
        out.append(MARK + name)
        out.extend(LINE + line.replace(APOSTROPHE, quote) for line in source.split("\n"))
    out.append(entry.rstrip("\n"))
    return "\n".join(out) + "\n"


def unpack(text, quote=APOSTROPHE):
    # type: (str, str) -> List[Tuple[str, str]]
    """The (name, source) of every module bundled in ``text``, in order (``quote`` as
    pack wrote a single quote)."""
    modules = []  # type: List[Tuple[str, List[str]]]
    for line in text.split("\n"):
        if line.startswith(MARK):
            modules.append((line[len(MARK):], []))
        elif line.startswith(LINE) and modules:
            modules[-1][1].append(line[len(LINE):].replace(quote, APOSTROPHE))
    return [(name, "\n".join(lines)) for name, lines in modules]


def load(text, package, quote=APOSTROPHE):
    # type: (str, str, str) -> types.ModuleType
    """Run the modules bundled in ``text`` (``quote`` as pack wrote a single quote) as
    the package ``package``; return it."""
    pkg = types.ModuleType(package)
    pkg.__path__ = []  # nothing but what is bundled
    pkg.__package__ = package
    sys.modules[package] = pkg
    for name, source in unpack(text, quote):
        module = types.ModuleType("%s.%s" % (package, name))
        module.__package__ = package
        sys.modules[module.__name__] = module
        setattr(pkg, name, module)
        code = compile(source, "%s.py (bundled in %s)" % (name, package), "exec")
        exec(code, module.__dict__)
    return pkg
