"""Errors the installer reports as one line, and their exit codes."""

from ..payload.errors import OneLineError

EXIT_FAILED = 1  # the install (or check) failed; the prefix is as it was
EXIT_USAGE = 2  # bad command line
EXIT_CORRUPT = 3  # the installer file is damaged, or not signed by a trusted key
# (payload.container.CorruptInstaller, UntrustedInstaller)
EXIT_ENVIRONMENT = 4  # this machine or prefix cannot take the install
EXIT_INTERRUPTED = 130


class InstallError(OneLineError):
    """A failure of the install said in one line: what went wrong, then what to do.

    (A damaged installer file is payload.container.CorruptInstaller, exit code 3.)
    """

    exit_code = EXIT_FAILED
    reverted = False  # set when the failed install's steps were undone (plan.py)


class UsageProblem(InstallError):
    """Bad usage, the one idea behind exit 2: the command line (or an environment
    variable standing for it) is malformed, or cannot be carried out as given."""

    exit_code = EXIT_USAGE


class UpdateNeeded(UsageProblem):
    """The prefix holds another install; replacing its profile needs -u."""


class EnvironmentProblem(InstallError):
    """The machine or prefix cannot take this install (space, arch, permissions...)."""

    exit_code = EXIT_ENVIRONMENT


# The name callers use for a malformed argument: the same bad usage.
BadUsage = UsageProblem
