"""The steps of an install (plan.py), one module each, and what each undoes.

In order: make the prefix's directories (make_dirs.py), place the store
paths (place_paths.py), write nix.conf and the env scripts (write_file.py),
register the paths with ``nix-store --load-db`` (register.py), make the
profile (make_profile.py), and (``--modify-profile``) add the line to the
shell start-up files (shell_startup.py).  An uninstall reverts the same
steps, rebuilt from the receipt, newest first.
"""

from .. import envfiles, plan
from .make_dirs import MakeDirs
from .make_profile import MakeProfile
from .place_paths import PlacePaths
from .register import Register
from .shell_startup import ShellStartup
from .write_file import WriteFile

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import List, Optional  # noqa: F401

    from ..run import Run  # noqa: F401

__all__ = ["KINDS", "MakeDirs", "MakeProfile", "PlacePaths", "Register", "ShellStartup",
           "WriteFile", "from_record", "install_steps"]

# Every kind of step, in the order a plan has them (receipt.Receipt rebuilds steps
# from records with these, and hands a step over to where the plan has it).
KINDS = (MakeDirs, PlacePaths, WriteFile, Register, MakeProfile, ShellStartup)


def from_record(record):
    # type: (dict) -> Optional[plan.Step]
    """A step rebuilt from its receipt record (None for a kind this installer does
    not know, which it leaves alone)."""
    return plan.from_record(record, KINDS)


def install_steps(run, home=None):
    # type: (Run, Optional[str]) -> List[plan.Step]
    """The steps of an install, in order (``home``: --modify-profile's home dir)."""
    out = [MakeDirs(), PlacePaths()]  # type: List[plan.Step]
    out += [WriteFile(path=path)
            for path, _ in envfiles.planned_files(run.prefix, run.caches, run.extra_conf)]
    out += [Register(), MakeProfile()]
    if home is not None:
        out.append(ShellStartup(home=home))
    return out
