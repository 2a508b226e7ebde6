"""What ``nix-prefix build`` packs: a closureInfo dir, store paths, or a Nix file.

Each input ends as the same ``Closure`` (closure_info.py checks it); roots
given by the user also become the profile's default roots.  Store paths and
Nix files go through the machine's Nix (localnix.py): ``nix-build`` for a
file, then ``nix-store -qR`` and ``--dump-db`` into a closureInfo-style dir.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .closure_info import Closure, read_closure
from .errors import BuildError, UsageError
from .localnix import Nix, NixCommandError, store_path_of

NOT_IN_STORE_HINT = ("build it first, or point at its store with --store-dir or "
                     "NIX_STORE_DIR")


@dataclass
class Input:
    """A checked closure and the roots the user named (None: from a closureInfo)."""

    closure: Closure
    roots: list[str] | None


def from_closure_info(path: Path) -> Input:
    """A closureInfo dir or a ``nix-store --dump-db`` file."""
    return Input(read_closure(path), None)


def from_roots(nix: Nix, roots: Sequence[str]) -> Input:
    """The closure of ``roots`` (store paths, or links to them such as ./result)."""
    with tempfile.TemporaryDirectory(prefix="nix-prefix-closure-") as tmp:
        info = write_closure_info(nix, roots, Path(tmp))
        closure = read_closure(info)
    try:
        resolved = [store_path_of(root, closure.store_dir) for root in roots]
    except NixCommandError as e:
        raise BuildError(str(e), NOT_IN_STORE_HINT) from None
    return Input(closure, sorted(set(resolved)))


def from_nix_file(nix: Nix, file: Path, attrs: Sequence[str], argstrs: Sequence[str],
                  say: Callable[[str], object] = print) -> Input:
    """``nix-build FILE [-A ATTR]... [--argstr NAME VALUE]...``, then its outputs' closure."""
    if not file.exists() and not str(file).startswith("<"):  # <nixpkgs> is Nix's to find
        raise BuildError(f"{file} does not exist", "pass a Nix file to build with -f")
    args = parse_argstrs(argstrs)
    shown = " ".join([str(file), *(f"-A {a}" for a in attrs)])
    say(f"building {shown} with nix-build")
    try:
        outputs = nix.build_file(file, attrs=attrs, argstrs=args, show_log=True)
    except NixCommandError as e:
        raise BuildError(str(e), "see Nix's messages above") from None
    if not outputs:
        raise BuildError(f"nix-build {shown} built nothing", "pick an attribute with -A")
    return from_roots(nix, outputs)


def write_closure_info(nix: Nix, roots: Sequence[str], out_dir: Path) -> Path:
    """``nix-prefix closure``: a closureInfo-style dir for ``roots`` from the local Nix."""
    if not roots:
        raise BuildError("no store paths given", "name at least one root")
    try:
        return nix.write_closure_info(roots, out_dir)
    except NixCommandError as e:
        raise BuildError(str(e), NOT_IN_STORE_HINT) from None
    except OSError as e:
        raise BuildError(f"cannot write {out_dir}: {e.strerror}") from None


def parse_argstrs(items: Sequence[str]) -> dict[str, str]:
    """``NAME=VALUE`` strings as nix-build's ``--argstr NAME VALUE`` pairs."""
    argstrs = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise UsageError(f"--argstr {item!r} is not NAME=VALUE",
                             "write e.g. --argstr prefix=/tmp/nix")
        argstrs[name] = value
    return argstrs
