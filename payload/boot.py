"""The Python the sh preamble runs first: the seal, then the publisher, then the installer.

``bootstrap`` is the preamble's entry point (builder/bundles.py bundles this
module last, after seal.py and trust.py).  It checks the seal over the exact
bytes it is about to run (seal.py), then the publisher's signatures and the
code's sha256 (trust.py), and only then imports the installer from the file.
Standard library and the bundled modules only, Python 3.6+.
"""

import importlib
import os
import sys

from . import seal, trust

MYPY = False  # mypy reads the imports below; Python never runs them
if MYPY:
    from typing import List  # noqa: F401

# The installer's entry point the format names (docs/format.md).
ENTRY_POINT = "nix_prefix.installer.main"


def bootstrap(argv):
    # type: (List[str]) -> None
    """Entry point of the sh preamble: ``argv`` is ``[-c, SOURCE, SEAL, SHELL, BOOT, ARGS...]``.

    SOURCE is the installer file sh runs.  The seal is checked over the exact
    bytes the installer then runs from (an open descriptor of the file), so a
    file replaced in between cannot slip in.
    """
    seal.open_standard_streams()
    try:
        # ``opened`` stays referenced: closing it would close the path /proc shows.
        opened, path, name, args = seal.verified(argv)
    except Exception as e:  # this code itself damaged: still one line
        if seal.is_out_of_memory(e):
            seal.fail("out of memory while checking the seal; nothing was changed; %s"
                      % seal.memory_advice(), seal.EXIT_MACHINE)
        seal.fail("%s is damaged (its seal checker fails: %s: %s); download it again"
                  % (argv[1], type(e).__name__, e))
    _check_publisher(path, name, args)
    _run_from(path, name, args)


def _check_publisher(path, name, args):
    # type: (str, str, List[str]) -> None
    """Before any code of the file is imported: the publisher's signatures over the
    manifest hold, one is by a key the user trusts (if they gave any), and the code
    in the zip is what the manifest names (trust.py).  A damaged or swapped module
    is refused here, before it runs; a replaced preamble is not (it is this code)."""
    try:
        trusted = trust.trusted_keys(trust.given_keys(args), os.environ)
        with open(path, "rb") as f:
            trust.check_code(f, trusted)
    except trust.BadKey as e:
        seal.fail("%s (see --help)" % e, e.exit_code)
    except trust.Refused as e:
        seal.fail(str(e), e.exit_code)
    except OSError as e:
        seal.fail("cannot read the installer %s (%s)" % (name, e.strerror), 1)
    except Exception as e:  # still one line
        if seal.is_out_of_memory(e):
            seal.fail("out of memory while checking the signature; nothing was changed; %s"
                      % seal.memory_advice(), seal.EXIT_MACHINE)
        seal.fail("%s is damaged (its signature checker fails: %s: %s); download it again"
                  % (name, type(e).__name__, e))


def _run_from(path, name, args):
    # type: (str, str, List[str]) -> None
    """Import the installer from the verified file at ``path`` and run it."""
    sys.path.insert(0, path)
    try:
        # The entry point the format names (docs/format.md), found in the zip
        # just verified: a name, not an import of the installer by payload/.
        main = importlib.import_module(ENTRY_POINT).main
    except Exception as e:
        if seal.is_out_of_memory(e):
            seal.fail("out of memory while loading the installer; nothing was changed; %s"
                      % seal.memory_advice(), seal.EXIT_MACHINE)
        seal.fail("%s passed its seal but its code does not load in Python %s at %s (%s: %s); "
                  "report this" % (name, sys.version.split()[0], sys.executable,
                                   type(e).__name__, e), 1)
    main(path, args, name=name, sealed=True)
