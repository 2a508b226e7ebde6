"""The builder's errors, and the one table that turns any of them into an exit code.

A failure the user can act on is a ``BuildError``: a ``OneLineError``
(payload/errors.py), the same ``message; hint`` line the installer prints.
Every command runs inside ``cli.reporting``, which asks ``outcome`` for the line
and the exit code, as pip's ``Command._run_wrapper`` maps its exception families
to status codes in one place.
"""

from __future__ import annotations

import signal

from ..payload.errors import OneLineError

# The exit codes (the epilog of ``nix-prefix --help`` lists them for users).
EXIT_FAILED = 1  # bad input, Nix failed, nothing written
EXIT_USAGE = 2  # the command line asks for something impossible
EXIT_DAMAGED = 3  # the installer is damaged or not signed by a --trusted-key
EXIT_INTERRUPTED = 130  # Ctrl-C; a signal is 128 + its number


class BuildError(OneLineError):
    """A problem with the builder's input or environment, said in one line.

    ``hint`` tells the user what to do about it.
    """

    exit_code = EXIT_FAILED


class UsageError(BuildError):
    """Bad usage: the command line asks for something impossible, or names a file that
    is not there (exit 2, as a typo in an option is).  The builder's only exit-2 error;
    a malformed key from payload/ (``trust.BadKey``) carries the same code."""

    exit_code = EXIT_USAGE


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread: cleaned up after as a Ctrl-C is
    (every ``except KeyboardInterrupt`` and ``finally`` runs), then exit 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return signal.Signals(self.signum).name


def outcome(error: BaseException) -> tuple[str, int] | None:
    """The one line and the exit code a command ends with for ``error``; None for an
    error nobody foresaw (a bug: the caller says so, and shows the traceback with
    --debug).  The builder's only exception-to-exit-code table."""
    # Imported here: localnix and codecs need not load for a command that never fails.
    from ..payload.codecs import CodecError
    from .localnix import NixCommandError

    if isinstance(error, Terminated):
        return f"stopped by {error}; nothing half-written is left", 128 + error.signum
    if isinstance(error, KeyboardInterrupt):
        return "interrupted; nothing half-written is left", EXIT_INTERRUPTED
    if isinstance(error, OneLineError):  # BuildError, UsageError, CorruptInstaller, BadKey
        return str(error), error.exit_code
    if isinstance(error, (NixCommandError, CodecError)):
        return str(error), EXIT_FAILED
    return None


def internal_error(error: BaseException) -> str:
    """The line for an error ``outcome`` has no row for: a bug, named as one."""
    return (f"internal error: {type(error).__name__}: {error} (rerun with --debug for the "
            "traceback, and report it)")
