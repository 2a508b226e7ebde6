"""Delete exactly the store paths an installer added, and nothing else.

Nix's garbage collector is never run over the store: ``nix-store --gc`` (even
``--print-live``/``--print-dead`` in Nix 2.8) deletes every entry of the store
dir that is not a valid path, a user's ``P/store/docs/thesis.tex`` included.
Instead: ``nix-store --gc --print-roots`` (which only reads) names the roots,
their closure is what is alive, and ``nix-store --delete`` gets exactly the
installer's paths that are not alive and that nothing outside them refers to.

``--ignore-liveness`` is passed because the deleting ``nix-store`` is itself
a runtime root of the Nix closure it runs from (src/libstore/gc.cc
``findRuntimeRoots`` reads every ``/proc/PID/maps``): without it the last
uninstall could never remove the Nix it shipped.  Liveness is decided here
instead, from every root but that one process; Nix still refuses a path
that a valid path outside the set refers to.
"""

import os

from ..payload import registration, storepath
from . import nixstore, staging

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Callable, Iterable, List, Set, Tuple  # noqa: F401

    from .prefix import Prefix  # noqa: F401

ARGS_PER_CALL = 2000  # store paths per command line, well under ARG_MAX


def own_store_paths(prefix, paths):
    # type: (Prefix, Iterable[str]) -> List[str]
    """The entries of ``paths`` that are store paths directly in the prefix's store dir
    (a receipt is data: anything else in it is never deleted)."""
    out = []
    for path in paths:
        try:
            store_dir, _ = storepath.split(path)
        except storepath.StorePathError:
            continue
        if store_dir == prefix.store_dir:
            out.append(path)
    return sorted(set(out))


def _batches(items):
    # type: (List[str]) -> List[List[str]]
    return [items[i:i + ARGS_PER_CALL] for i in range(0, len(items), ARGS_PER_CALL)]


def live_paths(prefix, nix_store):
    # type: (Prefix, str) -> Set[str]
    """Every store path alive in the prefix: the closure of its GC roots, runtime
    roots of other processes included, but not those of the querying nix-store."""
    pid = []  # type: List[int]
    out = nixstore.run_nix(prefix, [nix_store, "--gc", "--print-roots"], started=pid.append)
    # Its own runtime roots, and its temporary ones ("{temp:PID}", Nix >= 2.2x).
    own = ("/proc/%d/" % pid[0], "{temp:%d}" % pid[0]) if pid else None
    roots = set()
    for line in out.splitlines():
        link, sep, target = line.rpartition(" -> ")
        if link[:1] == '"' and link[-1:] == '"':
            link = link[1:-1]  # Nix 2.34 quotes the link: "/proc/PID/exe" -> ...
        if not sep or (own and link.startswith(own)):
            continue
        roots.add(target.strip())
    valid_roots = sorted(nixstore.valid_paths(prefix, own_store_paths(prefix, roots)))
    live = set()  # type: Set[str]
    for batch in _batches(valid_roots):
        live.update(nixstore.run_nix(prefix, [nix_store, "-qR"] + batch).split())
    return live


def _referrers_closure(prefix, nix_store, paths):
    # type: (Prefix, str, List[str]) -> Set[str]
    found = set()
    for batch in _batches(paths):
        found.update(nixstore.run_nix(
            prefix, [nix_store, "-q", "--referrers-closure"] + batch).split())
    return found


def _referrers_first(prefix, nix_store, paths):
    # type: (Prefix, str, List[str]) -> List[str]
    """``paths`` ordered so that a path comes before those it refers to: each
    command line then holds every referrer of its paths that is still there."""
    refs = {}
    for batch in _batches(paths):
        for info in registration.parse(nixstore.run_nix(prefix, [nix_store, "--dump-db"] + batch)):
            refs[info.path] = [r for r in info.references if r != info.path]
    order, seen = [], set()

    def visit(path):
        # Iterative post-order over references, reversed at the end.
        stack = [(path, iter(refs.get(path, ())))]
        seen.add(path)
        while stack:
            node, it = stack[-1]
            for ref in it:
                if ref in refs and ref not in seen:
                    seen.add(ref)
                    stack.append((ref, iter(refs.get(ref, ()))))
                    break
            else:
                stack.pop()
                order.append(node)

    for p in paths:
        if p not in seen:
            visit(p)
    order.reverse()
    return order


def delete_store_paths(prefix, nix_store, paths):
    # type: (Prefix, str, Iterable[str]) -> Tuple[List[str], List[str]]
    """Delete those of ``paths`` that are valid and no longer needed; remove those
    that are present but not valid (placed, never registered).  Returns (removed,
    kept): kept are still alive or referred to by a path not in ``paths``."""
    mine = own_store_paths(prefix, paths)
    valid = nixstore.valid_paths(prefix, mine)
    removed = []
    for path in mine:
        if path not in valid and os.path.lexists(path):
            staging.remove_tree(path)
            removed.append(path)
    candidates = sorted(valid)
    if not candidates:
        return removed, []
    live = live_paths(prefix, nix_store)
    doomed = [p for p in candidates if p not in live]
    kept = set(p for p in candidates if p in live)
    # A path outside the set that refers to one of ours (a user's build on top
    # of our libraries) keeps it, and whatever that one refers to.
    outside = _referrers_closure(prefix, nix_store, doomed) - set(doomed) if doomed else set()
    if outside:
        for path in doomed:
            if _referrers_closure(prefix, nix_store, [path]) & outside:
                kept.add(path)
        doomed = [p for p in doomed if p not in kept]
    if len(doomed) > ARGS_PER_CALL:
        doomed = _referrers_first(prefix, nix_store, doomed)
    for batch in _batches(doomed):
        nixstore.run_nix(prefix, [nix_store, "--delete", "--ignore-liveness"] + batch)
    return removed + doomed, sorted(kept)


def delete_installed(prefix, nix_tool, paths):
    # type: (Prefix, Callable[[str], str], Iterable[str]) -> Tuple[List[str], List[str]]
    """Delete exactly these store paths an install made (delete_store_paths); return
    (removed, kept).  The build log of each derivation among them that is gone goes
    too, also of one an earlier, killed run deleted.  ``nix_tool(name)`` is the Nix
    program to run, asked for only when there is something to delete."""
    paths = own_store_paths(prefix, paths)
    if not paths:
        return [], []  # no Nix needed (nor, for a refused one, run)
    socket_dir = os.path.join(prefix.state_dir, "gc-socket")
    had_socket = os.path.lexists(socket_dir)
    removed, kept = delete_store_paths(prefix, nix_tool("nix-store"), paths)
    if not had_socket and os.path.isdir(socket_dir):
        # Made by the collector's server in this nix-store --delete
        # (src/libstore/gc.cc): Nix's runtime state, not there before.
        staging.remove_tree(socket_dir)
    for path in paths:
        if path.endswith(".drv") and not os.path.lexists(path):
            # Nix's build log of a derivation the install built (the user
            # environment's): src/libstore/local-fs-store.cc getBuildLogExact.
            base = os.path.basename(path)
            for suffix in ("", ".bz2"):
                log = os.path.join(prefix.log_dir, "drvs", base[:2], base[2:] + suffix)
                if os.path.lexists(log):
                    os.unlink(log)
                    staging.rmdir_quietly(os.path.dirname(log))
    return removed, kept
