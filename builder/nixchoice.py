"""Which Nix of a closure the installer uses, when the closure holds several.

The installer registers the paths with one ``nix-store`` and makes the
profile with that Nix's ``nix-env``; the profile must not hold two Nixes
(their ``bin/nix*`` and ``libexec/nix/build-remote`` collide in the user
environment).  By default the newest Nix wins, by the version in its store
path name as Nix itself reads it (``DrvName`` and ``compareVersions`` in
src/libexpr/names.cc); ``build --nix-store`` chooses another.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..payload import elf
from ..payload.machine import host_system
from ..payload.storepath import shipped_file, split_drv_name
from .errors import BuildError


@dataclass(frozen=True)
class NixChoice:
    """The Nix chosen (``<base name>/bin/nix-store``, or None) and the profile roots."""

    nix_store: str | None
    roots: list[str]
    notes: list[str]


def version_key(version: str) -> list[tuple[int, int, str]]:
    """A sort key ordering versions as ``compareVersions`` does (src/libexpr/names.cc):
    components are digit runs or letter runs, a missing one counts as "", and
    ``pre`` < "" < letters < numbers (numbers compared as numbers), so
    2.26pre1 < 2.26 < 2.26.3."""
    key = []
    for part in re.findall(r"\d+|[^\d.\-]+", version):
        if part.isdigit():
            key.append((3, int(part), ""))
        elif part == "pre":
            key.append((0, 0, ""))
        else:
            key.append((2, 0, part))
    return key + [(1, 0, "")]  # the end: as Nix's missing (empty) component


def _store_name(entry_name: str) -> str:
    return entry_name.partition("-")[2]  # drop the hash part


def _check_shipped(names: list[str], name: str, store_root: Path, store_dir: str) -> None:
    """Refuse a Nix whose tools are not regular files of the closure: a store path that
    is a symlink to /usr would have the installer run the machine's own Nix."""
    for tool in ("nix-store", "nix-env"):
        rel = f"{name}/bin/{tool}"
        if tool != "nix-store" and not os.path.lexists(store_root / rel):
            continue
        if shipped_file(str(store_root), store_dir, names, rel) is None:
            where = os.path.realpath(store_root / rel)
            raise BuildError(f"{store_dir}/{rel} is not a file of the closure (it leads to "
                             f"{where}): the installer must ship Nix's own files",
                             "pack a closure whose Nix is a real build of Nix (not a symlink "
                             "to the machine's), or leave that path out")


def choose(names: list[str], roots: list[str], store_root: Path, wanted: str | None,
           roots_given: bool, store_dir: str | None = None) -> NixChoice:
    """Pick the Nix among ``names`` (store path base names) that have ``bin/nix-store``.

    ``wanted`` (a store path, its base name, or a path inside it) picks one;
    else the newest of the Nixes among ``roots``, or of all if none is a root.
    Other Nixes among the automatic roots are left out of the profile (they
    stay in the closure); explicitly given roots holding two Nixes are
    refused, since their profile would collide.  Every Nix's ``bin/nix-store`` (and
    ``bin/nix-env``) must be a regular file of the closure, symlinks followed at
    ``store_dir`` (default: ``store_root``, where the store physically is).
    """
    nixes = [n for n in names if os.path.lexists(store_root / n / "bin" / "nix-store")]
    for n in nixes:
        _check_shipped(names, n, store_root, store_dir or str(store_root))
    if wanted is not None:
        base = wanted.rstrip("/")
        base = base[len(str(store_root)) + 1:] if base.startswith(str(store_root) + "/") else base
        base = base.rpartition("/store/")[2].split("/")[0] if "/" in base else base
        if base not in nixes:
            raise BuildError(f"--nix-store {wanted} is not a Nix in the closure",
                             "choose one of: " + (", ".join(nixes) or "(the closure has no Nix)"))
        chosen = base
    elif nixes:
        # A Nix the user asked for (a root) before one pulled in as a dependency;
        # among those the newest version, then by name (deterministic).
        candidates = [n for n in nixes if n in roots] or nixes
        chosen = max(candidates, key=lambda n: (version_key(split_drv_name(_store_name(n))[1]), n))
    else:
        return NixChoice(None, roots, [])
    others = [n for n in nixes if n != chosen]
    notes = []
    if others:
        notes.append(f"the closure holds {len(nixes)} Nixes; {chosen} registers the paths and "
                     "goes into the profile (choose another with --nix-store)")
    other_roots = [r for r in roots if r in others]
    if other_roots and roots_given:
        raise BuildError(
            f"the profile roots hold two Nixes ({chosen} and {', '.join(other_roots)}), "
            "whose files collide in the profile",
            "give one of them as --profile-root (the other stays in the closure)")
    if other_roots:
        notes.append("left out of the profile (they stay in the store): "
                     + ", ".join(other_roots))
    kept = [r for r in roots if r not in others]
    if other_roots and chosen not in kept:
        kept = sorted(kept + [chosen])  # the profile still gets a Nix: the chosen one
    return NixChoice(f"{chosen}/bin/nix-store", kept, notes)


def closure_system(store_root: Path, store_dir: str, names: Sequence[str],
                   nix_store: str | None, given: str | None) -> str:
    """The Nix system of a closure (the store paths ``names`` of ``store_dir``, read at
    ``store_root``): that of the ELF of its Nix (``nix_store``, a
    ``<base name>/bin/nix-store``, resolved inside the closure as the installer resolves
    it), else ``given`` (--system), else this machine's.  A --system that contradicts
    the closure's Nix is refused."""
    cpu = None
    found_file = (shipped_file(str(store_root), store_dir, names, nix_store)
                  if nix_store is not None else None)
    if found_file is not None:
        try:
            with open(store_root / found_file, "rb") as f:
                cpu = elf.machine_of(f.read(elf.HEADER_SIZE))
        except OSError:
            cpu = None  # nixchoice and the packing itself name an unreadable Nix
    if cpu is None:
        return given or host_system()
    found = cpu + "-linux"
    if given is not None and given != found:
        raise BuildError(f"--system {given}, but the closure's Nix ({nix_store}) is for {found}",
                         "leave --system out: the closure's Nix tells")
    return found
