"""The profile: a new generation of the prefix's default profile with the installer's roots."""

import os

from ...payload import derivation
from .. import crashpoints, deletion, nixstore, staging, timings
from ..plan import Reverted, Step

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Dict, List, Optional, Set, Tuple  # noqa: F401

    from ..plan import Record  # noqa: F401
    from ..run import Run  # noqa: F401


class MakeProfile(Step):
    """Make a new generation of the default profile with the roots (``nix-env -i``).

    Owned, per generation: the ValidPaths id before it (recorded before
    nix-env runs) and the paths nix-env registered for it (the user
    environment, its manifest and .drv).  Reverted: the profile goes back to
    the newest other generation (or away), the generation link goes, and so
    do those paths unless something else keeps them alive."""

    kind = "profile"

    def describe(self, run):
        roots = ", ".join(run.manifest.roots)
        how = ("with %s added to what it has" % roots if run.update
               else "holding %s" % roots)
        return "make a new generation of the profile %s %s (the previous one stays for " \
               "--rollback)" % (run.prefix.profile, how)

    def describe_revert(self, run):
        generations = sorted(int(g) for g in self.owned.get("generations") or {})
        if not generations:
            return None
        return "remove generation %s of the profile %s (it goes back to the newest other " \
               "one) and the store paths nix-env made for it" % (
                   ", ".join(map(str, generations)), run.prefix.profile)

    def _roots(self, run):
        # type: (Run) -> List[str]
        return [run.manifest.store_path(r) for r in run.manifest.roots]

    def is_done(self, run):
        if not os.path.lexists(run.prefix.profile):
            return False
        current = nixstore.profile_paths(run.prefix)
        return set(self._roots(run)) <= current

    def execute(self, run, receipt):
        prefix = run.prefix
        generations = self.owned.setdefault("generations", {})
        nxt = max(nixstore.generations(prefix) or [0]) + 1
        since = nixstore.max_path_id(prefix)
        # An update that replaces packages removes them first, in a generation of
        # its own that set_profile deletes again: both are claimed before either
        # is made, so that a kill in between leaves nothing unclaimed.
        count = 2 if nixstore.replaced_first(prefix, self._roots(run), run.update) else 1
        claimed = [str(g) for g in range(nxt, nxt + count)]
        # Unregistered entries nix-env leaves when stopped half-way: those already
        # there are not this run's.
        strays = nixstore.nix_env_strays(prefix)
        for g in claimed:
            generations[g] = {"sinceId": since, "strays": strays}
        receipt.save()
        run.ui.say("making the profile %s" % prefix.profile)
        crashpoints.reached("before-profile")
        between = []  # type: List[str]
        with timings.phase("profile"):
            nixstore.set_profile(prefix, run.nix_tool("nix-env"), self._roots(run),
                                 keep_others=run.update, between=between.append)
        crashpoints.reached("after-profile")
        made = nixstore.profile_generation(prefix)
        last = str(made) if made is not None else claimed[-1]
        # Claimed too, should nix-env have numbered it otherwise.
        generations.setdefault(last, {"sinceId": since})
        # What Nix made for the generation in between goes with this one.  Until
        # that is known, the claims stay as they are: a Ctrl-C in the meantime
        # reverts every claimed generation, the one in between included (whose
        # link is gone: its paths are then found by their names).
        record = {"sinceId": since, "paths": nixstore.made_by_nix_env(
            prefix, run.nix_tool, int(last), since, between)}
        # One assignment: the record is whole whenever a Ctrl-C comes.
        self.owned["generations"] = dict(
            [(g, v) for g, v in generations.items() if g not in claimed] + [(last, record)])
        return None

    def revert(self, run, receipt):
        prefix = run.prefix
        ours = dict((int(g), v) for g, v in self.owned.get("generations", {}).items())
        doomed, strays = self._made(run, ours)
        current = nixstore.profile_generation(prefix)
        others = [g for g in nixstore.generations(prefix) if g not in ours]
        if current in ours:
            if others:
                nixstore.run_nix(prefix, [run.nix_tool("nix-env"), "-p", prefix.profile,
                                          "--switch-generation", str(others[-1])])
                run.ui.say("switched %s back to generation %d" % (prefix.profile, others[-1]))
            elif os.path.lexists(prefix.profile):
                os.unlink(prefix.profile)
        for generation in ours:
            link = nixstore.generation_link(prefix, generation)
            if os.path.lexists(link):
                os.unlink(link)
        reverted = _delete_environments(run, doomed) if doomed else Reverted()
        for path in sorted(strays):
            if os.path.lexists(path):
                staging.remove_tree(path)
                if not path.endswith(".lock"):
                    reverted.removed.append(path)
        return reverted

    def _made(self, run, ours):
        # type: (Run, Dict[int, dict]) -> Tuple[Set[str], Set[str]]
        """The paths nix-env registered for the generations ``ours``, and what a
        nix-env stopped in one of them wrote but never registered."""
        doomed = set()  # type: Set[str]
        strays = set()  # type: Set[str]
        for generation, record in ours.items():
            if isinstance(record.get("strays"), list) and \
                    not isinstance(record.get("paths"), list):
                # nix-env was stopped: what it wrote but never registered (the
                # manifest or environment it was adding, their .lock files).
                strays.update(set(nixstore.nix_env_strays(run.prefix)) - set(record["strays"]))
            # "paths" is recorded once nix-env is done (an empty list too): only a
            # generation nix-env was stopped in is looked for.
            doomed.update(record["paths"] if isinstance(record.get("paths"), list) else
                          nixstore.made_by_nix_env(run.prefix, run.nix_tool, generation,
                                                   record.get("sinceId", 0)))
        return doomed, strays


def _delete_environments(run, doomed):
    # type: (Run, Set[str]) -> Reverted
    """Delete the paths nix-env made (``doomed``), and the output a failed build of an
    environment left unregistered in the store: named in its .drv (an ATerm,
    src/libstore/derivations.cc)."""
    prefix = run.prefix
    outputs = [o for d in doomed if d.endswith(".drv") for o in _drv_outputs(d)]
    removed, kept = deletion.delete_installed(prefix, run.nix_tool, doomed)
    leftover = [o for o in deletion.own_store_paths(prefix, outputs) if os.path.lexists(o)]
    valid = nixstore.valid_paths(prefix, leftover)
    for path in leftover:
        if path not in valid:
            staging.remove_tree(path)
            removed.append(path)
    for path in deletion.own_store_paths(prefix, outputs):
        lock = path + ".lock"  # Nix's path lock (src/libstore/pathlocks.cc)
        if os.path.isfile(lock) and not os.path.islink(lock) and os.path.getsize(lock) == 0:
            os.unlink(lock)
    return Reverted(removed=removed, kept=kept)


def _drv_outputs(path):
    # type: (str) -> List[str]
    """The output paths a .drv names (none if it is unreadable or not a derivation)."""
    try:
        with open(path, "rb") as f:
            drv = derivation.parse(f.read())
    except (OSError, ValueError, IndexError):
        return []
    return [o[1] for o in drv.outputs if o[1].startswith("/")]
