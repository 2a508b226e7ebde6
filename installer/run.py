"""What the steps of one install or uninstall are given (plan.py): their inputs, no results."""

import copy

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Callable, List, Optional, Sequence  # noqa: F401

    from ..payload.container import InstallerFile  # noqa: F401
    from ..payload.manifest import Manifest  # noqa: F401
    from ..payload.retarget import Retarget  # noqa: F401
    from .envfiles import Caches  # noqa: F401
    from .prefix import Prefix  # noqa: F401
    from .ui import UI  # noqa: F401


class Run(object):
    """The inputs every step of one install or uninstall reads.

    ``manifest`` is the one installed (paths and NAR hashes as they are at this
    prefix); ``nix_tool(name)`` the Nix program to run; ``installer``, ``target``
    (payload/retarget.py) and ``jobs`` are needed only to place paths;
    ``caches`` (--substituter) and ``extra_conf`` (nix.conf lines of
    --extra-conf and --nix-conf, nixconf.py checked them) only to write
    nix.conf; ``signature_names`` names the keys whose signature of the
    installer holds: their signatures of the paths go into the Nix database.
    A step passes what it learnt to the next ones as a new Run
    (``with_manifest``), never by changing this one.
    """

    def __init__(self, prefix, ui, manifest, nix_tool, installer=None, target=None, jobs=1,
                 update=False, caches=None, extra_conf=(), signature_names=()):
        # type: (Prefix, UI, Manifest, Callable[[str], str], Optional[InstallerFile], Optional[Retarget], int, bool, Optional[Caches], Sequence[str], Sequence[str]) -> None
        self.prefix = prefix
        self.ui = ui
        self.manifest = manifest
        self.nix_tool = nix_tool
        self.installer = installer
        self.target = target
        self.jobs = jobs
        self.update = update
        self.caches = caches
        self.extra_conf = list(extra_conf)  # type: List[str]
        self.signature_names = tuple(signature_names)  # type: Sequence[str]

    def paths(self):
        # type: () -> List[str]
        """The store paths of the manifest, as installed here."""
        return [self.manifest.store_path(p.name) for p in self.manifest.paths]

    def with_manifest(self, manifest):
        # type: (Manifest) -> Run
        """This run with ``manifest`` (the NAR hashes of the bytes a step wrote)."""
        new = copy.copy(self)
        new.manifest = manifest
        return new
