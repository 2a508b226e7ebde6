"""``build --with-derivations``: the closure plus the derivations of its paths.

Exact retarget (payload/exact.py, payload/retarget.py) gives every store
path the path a native build at the new store dir would give it, at
``retarget --exact`` or at install time.  It needs the derivations: the
closure plus the ``.drv`` closure of every deriver, from the local Nix
(``with_derivations``), checked to be plannable before anything is packed
(``check_exact``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..payload import exact
from ..payload.manifest import PathEntry, has_derivations
from ..payload.retarget import TEXT_LIMIT
from .closure_info import Closure, read_closure
from .errors import BuildError
from .localnix import Nix, NixCommandError, store_nix


def with_derivations(closure: Closure, nix: Nix | None = None) -> tuple[Closure, list[str]]:
    """The closure plus the ``.drv`` closure of its derivers, and its original roots.

    The derivers come from the registration; ``nix-store -qR`` and
    ``--dump-db`` of the local Nix (bound to the closure's store) give the rest.
    """
    derivers = sorted({i.deriver for i in closure.infos if i.deriver})
    if not derivers:
        raise BuildError("no path of the closure has a deriver in its registration",
                         "register the closure with its derivers (nix-store --dump-db does)")
    paths = {i.path for i in closure.infos}
    referenced = {r for i in closure.infos for r in i.references if r != i.path}
    roots = sorted(paths - referenced)
    try:
        if nix is None:
            default = os.environ.get("NIX_STORE_DIR", "/nix/store")
            nix = store_nix(None if closure.store_dir == default else Path(closure.store_dir))
        drv_closure = nix.closure(derivers)
        dump = nix.dump_db(sorted(paths | set(drv_closure)))
    except NixCommandError as e:
        raise BuildError(f"cannot get the derivations of the closure: {e}",
                         "the .drv files must still be in the store (not garbage-collected)"
                         ) from None
    with tempfile.TemporaryDirectory() as tmp:
        reg = Path(tmp) / "registration"
        reg.write_bytes(dump)
        return read_closure(reg), roots


def read_store_contents(paths: list[PathEntry], root: Path) -> dict[str, bytes]:
    """What the exact planner needs of ``paths`` (exact.needs_contents), read from the
    store at ``root``: the small one-file paths among them."""
    contents: dict[str, bytes] = {}
    for name in sorted(exact.needs_contents(paths)):
        path = root / name
        if path.is_file() and not path.is_symlink() and path.stat().st_size <= TEXT_LIMIT:
            contents[name] = path.read_bytes()
    return contents


def check_exact(closure: Closure, store_root: Path | None = None) -> None:
    """Refuse a closure that exact retarget could not plan, naming why.

    Plans the closure for its own store dir (which must give back every path),
    reading the one-file paths the planner needs from ``store_root`` (default:
    the store dir), so that an installer marked as holding its derivations
    can be retargeted exactly, by ``retarget --exact`` or at install time.
    """
    paths = [PathEntry.from_registration(i) for i in closure.infos]
    contents = read_store_contents(paths, Path(store_root or closure.store_dir))
    if not has_derivations(paths):
        raise BuildError(f"the closure at {closure.store_dir} holds no .drv files",
                         "build with --with-derivations")
    try:
        exact.renaming(paths, closure.store_dir, closure.store_dir, contents)
    except exact.ExactError as e:
        raise BuildError(f"exact retarget could not recompute this closure: {e}",
                         "build without --with-derivations (same-length retarget only)") from None
