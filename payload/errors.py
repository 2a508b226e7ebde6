"""The error both sides show a user as one line: what went wrong, then what to do."""


class OneLineError(Exception):
    """A failure said in one line, ``message; hint``, and the exit code it gives.

    The installer's errors (installer/errors.py) and a damaged installer file
    (container.CorruptInstaller) are ones.
    """

    exit_code = 1

    def __init__(self, message, hint=""):
        # type: (str, str) -> None
        Exception.__init__(self, message)
        self.hint = hint

    def __str__(self):
        # type: () -> str
        base = Exception.__str__(self)
        return "%s; %s" % (base, self.hint) if self.hint else base
