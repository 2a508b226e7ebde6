"""``--modify-profile``: the line sourcing nix.sh in the user's shell start-up files."""

from .. import shellrc
from ..plan import Step

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Optional  # noqa: F401

    from ..plan import Record, Reverted  # noqa: F401
    from ..run import Run  # noqa: F401


class ShellStartup(Step):
    """The marked line sourcing nix.sh in the shell start-up files of the home dir
    ``home`` (shellrc.py).  Reverted: the marked block is removed again."""

    kind = "shell-startup"

    def __init__(self, home):
        # type: (str) -> None
        Step.__init__(self, home=home)
        self.home = home  # whose start-up files, its parameter

    def describe(self, run):
        return "add a line sourcing %s/nix.sh to %s" % (
            run.prefix.profile_d, ", ".join(shellrc.candidates(self.home)))

    def describe_revert(self, run):
        if not self.owned.get("home"):
            return None
        return "remove the nix-prefix line from the shell start-up files in %s" \
            % self.owned["home"]

    def is_done(self, run):
        return all(shellrc.holds_block(path, run.prefix.root)
                   for path in shellrc.candidates(self.home))

    def execute(self, run, receipt):
        self.owned["home"] = self.home
        receipt.save()
        shellrc.add_block(run.prefix.root, self.home)
        return None

    def revert(self, run, receipt):
        if self.owned.get("home"):
            for path in shellrc.remove_block(run.prefix.root, self.owned["home"]):
                run.ui.say("removed the nix-prefix line from %s" % path)
        return None
