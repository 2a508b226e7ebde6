"""``nix-prefix-verify``: check an installer file wholly before any byte of it runs.

An installer's own check (boot.bootstrap, trust.check_code) runs its own
preamble first: a file whose preamble was replaced runs whatever that says.
This verifier is the check from outside, a user gets it once through a
channel they trust (``pip install nix-prefix``, or the one file ``nix-prefix
verifier -o FILE`` writes, copied from a machine they trust) and keeps it::

    python3 nix-prefix-verify --trusted-key NAME:BASE64 FILE
    curl -fsSL URL | python3 nix-prefix-verify --trusted-key NAME:BASE64 --run -- -y

The first checks FILE: its seal, its manifest signed by a trusted key, and the
sh preamble, code and every chunk as the manifest names them (trust.check_file);
exit 0 and one line if all holds, else exit 3 and one line.  The second reads
the installer (standard input, or FILE) into a private copy (mode 0600 in a
new 0700 directory), checks that copy wholly, and only then runs ``sh COPY
ARGS...`` with the arguments after ``--``; the copy goes when it ends, on
Ctrl-C or any error too.  Python 3.6+, standard library only: it runs
bundled into one file (bundle.py) as well as from the package.
"""

import argparse
import os
import signal
import subprocess
import sys

from . import seal, trust

MYPY = False  # mypy reads the imports below; Python never runs them
if MYPY:
    from typing import BinaryIO, List, Optional, Tuple  # noqa: F401

    from .signing import PublicKey  # noqa: F401

PROG = "nix-prefix-verify"
EXIT_USAGE = 2
EXIT_REFUSED = 3
_READ_SIZE = 1 << 20

EPILOG = """\
exit codes: 0 the file is signed by a trusted key and every byte checks (with
--run: the installer's own exit code), 2 bad usage, 3 the file is damaged or
not signed by a trusted key (nothing of it ran), 4 no room for the private copy.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, "%s: error: %s (see --help)\n" % (PROG, message))


def _parser():
    # type: () -> argparse.ArgumentParser
    p = _Parser(prog=PROG, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Check a nix-prefix installer file wholly (seal, publisher "
                            "signature, preamble, code, every chunk) before any of it "
                            "runs; with --run, then run it.")
    p.add_argument("file", nargs="?", metavar="FILE",
                   help="the installer (default, and -: standard input)")
    p.add_argument("--trusted-key", metavar="NAME:BASE64", action="append", default=[],
                   dest="trusted_keys",
                   help="the publisher's Nix public key (repeatable; also "
                        "NIX_PREFIX_TRUSTED_KEYS); at least one is needed")
    p.add_argument("--run", action="store_true",
                   help="copy the installer privately, check the copy, then run sh COPY "
                        "with the arguments after --")
    return p


def main(argv=None):
    # type: (Optional[List[str]]) -> None
    """Entry point (the console script and the one-file verifier); never returns."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # SIGTERM and SIGHUP stop it as Ctrl-C does: the private copy is removed (atexit).
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    ours, installer_args = _split_args(argv)
    args = _parser().parse_args(ours)
    if installer_args and not args.run:
        _fail("arguments after -- are for the installer, and only with --run", EXIT_USAGE)
    try:
        sys.exit(_main(args, installer_args))
    except KeyboardInterrupt:
        _fail("interrupted; nothing of the installer ran", 130)


def _split_args(argv):
    # type: (List[str]) -> Tuple[List[str], List[str]]
    """This command's arguments, and the installer's (after the first ``--``)."""
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1:]
    return argv, []


def _main(args, installer_args):
    # type: (argparse.Namespace, List[str]) -> int
    try:
        keys = trust.trusted_keys(args.trusted_keys, os.environ)
    except trust.BadKey as e:
        _fail(str(e), EXIT_USAGE)
    if not keys:
        _fail("no trusted key given: a signature by a key you do not name proves nothing; "
              "pass --trusted-key NAME:BASE64, the publisher's public key", EXIT_USAGE)
    source = args.file or "-"
    if source == "-" and sys.stdin.isatty():
        _fail("no FILE given and nothing piped in; give the installer file, or pipe it "
              "in (curl -fsSL URL | python3 %s ...)" % PROG, EXIT_USAGE)
    name = "the installer read from standard input" if source == "-" else source
    if not args.run:
        with _opened(source, name) as f:
            _checked(f, name, keys)
        return 0
    # Run only what was checked: a private copy, which nobody can change in between.
    with _opened(source, name) as f:
        copy = seal.private_copy(iter(lambda: f.read(_READ_SIZE), b""), name)
    with open(copy, "rb") as f:
        _checked(f, name, keys)
    return _run(copy, installer_args)


def _opened(source, name):
    # type: (str, str) -> BinaryIO
    try:
        if source == "-":
            return os.fdopen(os.dup(0), "rb")
        return open(source, "rb")
    except OSError as e:
        _fail("cannot read %s (%s)" % (name, e.strerror), EXIT_REFUSED)
        raise  # not reached


def _checked(f, name, keys):
    # type: (BinaryIO, str, List[PublicKey]) -> None
    """Check the open file wholly; one line and exit 3 if anything fails, else one
    line saying what was checked (on standard error)."""
    try:
        verdict, chunks = trust.check_file(f, keys)
    except trust.Refused as e:
        _fail("%s is refused: %s" % (name, e), EXIT_REFUSED)
    except OSError as e:
        _fail("cannot read %s (%s)" % (name, e.strerror), EXIT_REFUSED)
    signers = ", ".join(str(k) for k in verdict.trusted_by)
    sys.stderr.write("%s: OK: %s is signed by %s (trusted), and its seal, preamble, code "
                     "and %d chunks match the signed manifest\n" % (PROG, name, signers, chunks))


def _run(copy, installer_args):
    # type: (str, List[str]) -> int
    """``sh COPY ARGS``; its exit code.  Ctrl-C reaches it from the terminal (the
    installer undoes what it did and says so): this process waits for it, then
    removes the copy (atexit, seal.private_copy)."""
    # Ignored from before the child exists, so that no Ctrl-C can end this process
    # first and take the copy from under the running installer; the child gets
    # the default back (an ignored SIGINT would be inherited by the installer).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    proc = subprocess.Popen(["sh", copy] + installer_args,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def forward(signum, frame):
        # type: (int, object) -> None
        proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    code = proc.wait()
    return code if code >= 0 else 128 - code


def _interrupt(signum, frame):
    # type: (int, object) -> None
    raise KeyboardInterrupt()


def _fail(message, code):
    # type: (str, int) -> None
    sys.stderr.write("%s: error: %s\n" % (PROG, message))
    sys.exit(code)
