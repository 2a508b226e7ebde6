"""Errors the installer reports as one line, and their exit codes."""

EXIT_FAILED = 1  # the install (or check) failed; the prefix is as it was
EXIT_USAGE = 2  # bad command line
EXIT_CORRUPT = 3  # the installer file itself is damaged
EXIT_ENVIRONMENT = 4  # this machine or prefix cannot take the install
EXIT_INTERRUPTED = 130


class InstallError(Exception):
    """A failure said in one line: what went wrong, then what to do."""

    exit_code = EXIT_FAILED

    def __init__(self, message, hint=""):
        # type: (str, str) -> None
        Exception.__init__(self, message)
        self.hint = hint

    def __str__(self):
        base = Exception.__str__(self)
        return "%s; %s" % (base, self.hint) if self.hint else base


class CorruptInstaller(InstallError):
    """The installer file is damaged, truncated or tampered with."""

    exit_code = EXIT_CORRUPT

    def __init__(self, message, hint="download the installer again"):
        # type: (str, str) -> None
        InstallError.__init__(self, message, hint)


class UpdateNeeded(InstallError):
    """The prefix holds another install; replacing its profile needs -u."""

    exit_code = EXIT_USAGE


class EnvironmentProblem(InstallError):
    """The machine or prefix cannot take this install (space, arch, permissions...)."""

    exit_code = EXIT_ENVIRONMENT
