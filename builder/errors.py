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
