"""The one error type the builder shows to users as a single line."""


class BuildError(Exception):
    """A problem with the builder's input or environment, said in one line.

    ``hint`` tells the user what to do about it.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} ({self.hint})" if self.hint else base


class UsageError(BuildError):
    """The command line asks for something impossible (exit code 2, like a typo)."""

    exit_code = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread: cleaned up after as a Ctrl-C is
    (every ``except KeyboardInterrupt`` and ``finally`` runs), then exit 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        import signal

        return signal.Signals(self.signum).name
