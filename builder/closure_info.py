"""Read a closure description: nixpkgs' closureInfo output or ``--dump-db`` text.

closureInfo (nixpkgs pkgs/build-support/closure-info.nix) writes three files:
``store-paths`` (one path a line), ``registration`` (see
nix_prefix.payload.registration) and ``total-nar-size`` (a decimal number).
A plain file is taken as a registration alone, as ``nix-store --dump-db``
prints it.  Everything is cross-checked so that a closure the installer
cannot register is refused here, with the file and line named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..payload import registration, storepath
from ..payload.container import not_a_file
from ..payload.registration import ValidPathInfo
from .errors import BuildError


@dataclass(frozen=True)
class Closure:
    """A checked closure: every path's info, all in one store dir."""

    store_dir: str
    infos: list[ValidPathInfo]  # sorted by path

    @property
    def total_nar_size(self) -> int:
        return sum(i.nar_size for i in self.infos)


def read_closure(source: Path) -> Closure:
    """Read and check a closureInfo dir or a registration file."""
    if source.is_dir():
        reg_file = source / "registration"
        if not reg_file.is_file():
            raise BuildError(f"{source} has no 'registration' file",
                             "pass the output directory of nixpkgs' closureInfo")
        infos = _parse_registration(reg_file)
        store_paths = _read_store_paths(source / "store-paths")
        total = _read_total(source / "total-nar-size")
    elif source.is_file():
        reg_file = source
        infos = _parse_registration(source)
        store_paths = None
        total = None
    else:
        what = not_a_file(str(source))
        raise BuildError(f"{source} {'is ' + what if what else 'does not exist'}",
                         "pass a closureInfo directory or a `nix-store --dump-db` file")

    by_path: dict[str, ValidPathInfo] = {}
    for info in infos:
        if info.path in by_path:
            raise BuildError(f"{reg_file}: store path {info.path} is registered twice")
        by_path[info.path] = info
    if not by_path:
        raise BuildError(f"{reg_file} lists no store paths", "the closure is empty")

    store_dirs = sorted({storepath.split(p)[0] for p in by_path})
    if len(store_dirs) > 1:
        raise BuildError(
            f"{reg_file}: the closure mixes store dirs {', '.join(store_dirs)}",
            "build every path for one store dir")
    for info in by_path.values():
        for ref in info.references:
            if ref not in by_path:
                raise BuildError(
                    f"{reg_file}: {info.path} references {ref}, which is not in the closure",
                    "take the registration of the whole closure (nix-store -qR)")
    check_acyclic({p: i.references for p, i in by_path.items()}, str(reg_file))

    if store_paths is not None:
        file, lines = store_paths
        listed = set(lines)
        for lineno, path in enumerate(lines, 1):
            if path not in by_path:
                raise BuildError(f"{file}:{lineno}: {path} is not in the registration")
        for path in by_path:
            if path not in listed:
                raise BuildError(f"{file}: {path} is registered but not listed")
    if total is not None:
        file, value = total
        actual = sum(i.nar_size for i in by_path.values())
        if value != actual:
            raise BuildError(
                f"{file}: says {value} bytes, but the registration's narSizes add up to "
                f"{actual}", "regenerate the closureInfo")
    return Closure(store_dirs[0], [by_path[p] for p in sorted(by_path)])


def check_acyclic(references: Mapping[str, Sequence[str]], where: str) -> None:
    """Refuse ``references`` (store path -> the paths it references) that form a cycle
    (a path referencing itself is normal): ``nix-store --load-db`` fails on one
    ("cycle detected"), at the end of an install."""
    cycle = registration.find_cycle(dict(references))
    if cycle:
        raise BuildError(f"{where}: the references of {len(cycle) - 1} store paths form a "
                         f"cycle, which Nix cannot register: {' -> '.join(cycle)}",
                         "a closure's references must not loop; rebuild it with Nix")


def _parse_registration(file: Path) -> list[ValidPathInfo]:
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise BuildError(f"{file}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise BuildError(f"{file}: cannot read ({e.strerror})") from None
    try:
        return registration.parse(text)
    except registration.RegistrationError as e:
        raise BuildError(f"{file}:{e.line}: {str(e).split(': ', 1)[1]}") from None


def _read_store_paths(file: Path) -> tuple[Path, list[str]] | None:
    if not file.exists():
        return None
    lines = file.read_text(errors="replace").splitlines()
    for lineno, line in enumerate(lines, 1):
        try:
            storepath.split(line)
        except storepath.StorePathError as e:
            raise BuildError(f"{file}:{lineno}: {e}") from None
    return file, lines


def _read_total(file: Path) -> tuple[Path, int] | None:
    if not file.exists():
        return None
    text = file.read_text(errors="replace").strip()
    if not text.isdigit():
        raise BuildError(f"{file}:1: {text!r} is not a number of bytes")
    return file, int(text)
