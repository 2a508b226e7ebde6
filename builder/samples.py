"""Sample closures built with the machine's own Nix, for the demo and the tests.

Two kinds, both made by real Nix from the expressions in ``builder/nix/``:

* the *small* closure: a handful of paths covering every corner of the
  formats we handle (references, self-references, symlinks of every kind,
  executables, empty files and dirs, odd names) and one program,
  ``hello-nix-prefix``;
* the *self-contained Nix*: the machine's Nix binary (e.g. Debian's
  ``nix-bin``) with every shared library it loads copied into the store and
  re-linked there with patchelf, so that the installed Nix runs on a machine
  that has no Nix and no ``/usr/lib/nix``.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from ..payload import elf
from ..payload.machine import host_system
from . import elflibs
from .errors import BuildError
from .localnix import Nix

NIX_DIR = Path(__file__).resolve().parent / "nix"

# Libraries that belong to the C library itself.  They are copied unchanged
# (ld.so and libc must not be edited) and loaded by soname from the store.
_GLIBC = re.compile(
    r"^(ld-linux.*|libc|libm|libmvec|libresolv|libpthread|libdl|librt|libutil|libanl"
    r"|libnss_\w+|libBrokenLocale|libcrypt)\.so(\.\d+)*$"
)
_GCC_RUNTIME = re.compile(r"^(libstdc\+\+|libgcc_s|libatomic)\.so(\.\d+)*$")


def build_small_closure(nix: Nix) -> list[str]:
    """Build the small sample closure; return its roots (the paths nothing refers to)."""
    expr = NIX_DIR / "small.nix"
    return [nix.build_file(expr, attrs=[attr])[0] for attr in ("hello", "lonely")]


@dataclass(frozen=True)
class HostNix:
    """A Nix binary and the shared libraries it loads, in groups.

    ``nix`` (Nix's own libraries, e.g. bookworm's /usr/lib/nix) is empty when
    they are linked statically, as in trixie's and sid's ``nix-bin``.
    """

    binary: Path
    interpreter: Path
    version: str
    glibc: list[Path]
    gcc: list[Path]
    nix: list[Path]
    other: list[Path]


# Where a Debian tree (``dpkg-deb -x`` of nix-bin and its dependencies, as
# .ci/debian-fetch.sh makes) keeps its loader and libraries (merged /usr).
_TREE_LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu", "usr/lib/nix",
                  "usr/lib64", "lib64")
_TREE_LOADER = "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"


def find_host_nix(nix: Path | None = None) -> HostNix:
    """Locate a Nix binary and sort the libraries it loads.

    ``nix`` None is the machine's own Nix (``nix-store`` on PATH), listed by
    its own ELF interpreter.  Otherwise ``nix`` is a Nix binary or a Debian
    tree holding ``usr/bin/nix`` (another release's ``nix-bin`` unpacked, e.g.
    by .ci/debian-fetch.sh): its libraries are listed by the tree's own
    loader with ``--list --library-path``, since the machine's ``ldd`` uses
    the machine's loader, which cannot load a newer glibc.
    """
    if shutil.which("patchelf") is None:
        raise BuildError("patchelf is needed to make a self-contained Nix",
                         "install it (Debian: apt-get install patchelf)")
    tree: Path | None = None
    if nix is None:
        found = shutil.which("nix-store") or shutil.which("nix")
        if not found:
            raise BuildError("no Nix on this machine",
                             "install it (Debian: apt-get install nix-bin), or pass --nix")
        binary = Path(os.path.realpath(found))
    elif Path(nix).is_dir():
        tree = Path(nix).resolve()
        binary = Path(os.path.realpath(tree / "usr" / "bin" / "nix"))
        if not binary.is_file():
            raise BuildError(f"{nix} holds no usr/bin/nix",
                             "pass a Nix binary or a tree with nix-bin unpacked into it")
    else:
        binary = Path(os.path.realpath(nix))
        if not binary.is_file():
            raise BuildError(f"{nix} is not a Nix binary", "pass the path of nix or nix-store")
        # .../usr/bin/nix inside an unpacked tree: use that tree's loader.
        candidate = binary.parent.parent.parent
        if binary.parent.name == "bin" and (candidate / _TREE_LOADER).exists():
            tree = candidate
    if tree is not None and _foreign(binary):
        return _foreign_tree_nix(binary, tree)
    if tree is not None:
        loader = tree / _TREE_LOADER
        if not loader.exists():
            raise BuildError(f"{tree} has no loader {_TREE_LOADER}",
                             "unpack libc6 into the tree too (.ci/debian-fetch.sh does)")
        lib_path = ":".join(str(tree / d) for d in _TREE_LIB_DIRS if (tree / d).is_dir())
        lister = [str(loader), "--library-path", lib_path]
    else:
        lister = [_elf_interpreter(binary)]
        lib_path = ""
    out = _run([*lister, "--list", str(binary)], binary)
    version = _run([*lister, str(binary), "--version"], binary)
    libs = group_libraries(binary, out, loader=Path(lister[0]))
    return replace(libs, version=nix_version(version))


def _foreign(binary: Path) -> bool:
    """Whether ``binary`` is an ELF program for another machine than this one."""
    with open(binary, "rb") as f:
        cpu = elf.machine_of(f.read(elf.HEADER_SIZE))
    return cpu is not None and cpu != host_system().partition("-")[0]


# A Debian tree's library dirs, for any machine (its multiarch triplet's dirs).
_MULTIARCH = ("x86_64-linux-gnu", "aarch64-linux-gnu", "riscv64-linux-gnu")
_ANY_LIB_DIRS = tuple(f"{top}/{t}" for t in _MULTIARCH for top in ("usr/lib", "lib")) + (
    "usr/lib/nix", "usr/lib64", "lib64", "usr/lib", "lib")


def _foreign_tree_nix(binary: Path, tree: Path) -> HostNix:
    """A Nix of another machine in a Debian tree: its libraries listed by reading
    the ELF files (builder/elflibs.py), since this machine cannot run its loader,
    and its version from the package's changelog."""
    try:
        loader, found = elflibs.list_libraries(binary, tree, list(_ANY_LIB_DIRS))
    except (OSError, elflibs.ElfError) as e:
        raise BuildError(f"cannot list the libraries of {binary}: {e}",
                         "unpack nix-bin with every package it depends on into the tree "
                         "(.ci/debian-fetch.sh does)") from None
    out = "".join(f"\t{name} => {path} (0x0)\n" for name, path in found)
    libs = group_libraries(binary, f"\t{loader} (0x0)\n" + out, loader=loader)
    return replace(libs, version=_packaged_version(tree))


def _packaged_version(tree: Path) -> str:
    """The upstream version of the tree's nix-bin, from its Debian changelog's first line
    (``nix (2.8.0-1.1) unstable; urgency=medium``)."""
    changelog = tree / "usr/share/doc/nix-bin/changelog.Debian.gz"
    try:
        with gzip.open(changelog, "rt", encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except OSError as e:
        raise BuildError(f"cannot tell the version of the Nix in {tree}: {e}",
                         "unpack Debian's nix-bin package into the tree") from None
    match = re.match(r"^\S+ \((?:\d+:)?(\d+(?:\.\d+)*)", first)
    if not match:
        raise BuildError(f"cannot tell the Nix version from {changelog}",
                         "unpack Debian's nix-bin package into the tree")
    return match.group(1)


def _elf_interpreter(binary: Path) -> str:
    """The PT_INTERP of ``binary`` (the loader the kernel would start)."""
    out = _run(["patchelf", "--print-interpreter", str(binary)], binary).strip()
    if not out:
        raise BuildError(f"{binary} has no ELF interpreter", "is it statically linked?")
    return out


def _run(cmd: list[str], binary: Path) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise BuildError(f"cannot list the libraries of {binary}: {detail.strip()}",
                         "is it a dynamically linked ELF binary for this machine?") from None


def nix_version(version_output: str) -> str:
    """``2.26.3`` from ``nix-store (Nix) 2.26.3`` (what ``--version`` prints)."""
    match = re.search(r"\(Nix\) (\d+(?:\.\d+)*)", version_output)
    if not match:
        raise BuildError(f"cannot tell the Nix version from {version_output.strip()!r}",
                         "pass a Nix binary")
    return match.group(1)


def group_libraries(binary: Path, ldd_output: str, loader: Path | None = None) -> HostNix:
    """Turn ``ldd`` / ``ld.so --list`` output into library groups (pure, for tests).

    The loader appears as ``/lib64/ld-linux-x86-64.so.2 (0x...)`` when the
    machine's loader lists, and as ``/lib64/ld-linux-x86-64.so.2 => TREE/...``
    when another tree's loader does: then ``loader`` (that tree's) is the one
    to copy.  A Nix library is one in ``<prefix>/lib/nix`` or named ``libnix*``.
    """
    interpreter: Path | None = None
    groups: dict[str, list[Path]] = {"glibc": [], "gcc": [], "nix": [], "other": []}
    for line in ldd_output.splitlines():
        line = line.strip()
        arrow = re.match(r"^(\S+) => (/\S+) \(0x[0-9a-f]+\)$", line)
        if arrow and arrow.group(1).startswith("/"):
            interpreter = loader or Path(arrow.group(2))
        elif arrow:
            name, path = arrow.group(1), Path(arrow.group(2))
            # Keep the name the binary asks for (the soname) as the file name.
            lib = path.parent / name
            if _GLIBC.match(name):
                groups["glibc"].append(lib)
            elif _GCC_RUNTIME.match(name):
                groups["gcc"].append(lib)
            elif (path.parent == binary.parent.parent / "lib" / "nix" or "/nix/" in str(path)
                  or name.startswith("libnix")):
                groups["nix"].append(lib)
            else:
                groups["other"].append(lib)
        elif re.match(r"^/\S+ \(0x[0-9a-f]+\)$", line):
            interpreter = loader or Path(line.split()[0])
        elif "not found" in line:
            raise BuildError(f"{binary} needs a library this machine lacks: {line}",
                             "repair the Nix installation")
    if interpreter is None:
        raise BuildError(f"{binary} has no ELF interpreter", "is it statically linked?")
    return HostNix(binary, interpreter, "", sorted(groups["glibc"]), sorted(groups["gcc"]),
                   sorted(groups["nix"]), sorted(groups["other"]))


def build_nix_closure(nix: Nix, host_nix: Path | None = None) -> str:
    """Build a self-contained Nix from ``host_nix`` (a Nix binary or an unpacked
    Debian tree; default: the machine's Nix) with ``nix``; return its store path,
    named ``nix-self-contained-VERSION``."""
    host = find_host_nix(host_nix)

    def joined(paths: list[Path]) -> str:
        return " ".join(str(p) for p in paths)

    return nix.build_file(NIX_DIR / "self-contained-nix.nix", argstrs={
        "nixBinary": str(host.binary),
        "version": host.version,
        "interpreter": str(host.interpreter),
        "glibcLibs": joined(host.glibc),
        "gccLibs": joined(host.gcc),
        "otherLibs": joined(host.other),
        "nixLibs": joined(host.nix),
    })[0]


def build_c_program(nix: Nix) -> str:
    """Build ``hello-c`` (gcc, interpreter and RUNPATH in the store); return its path."""
    if shutil.which("gcc") is None:
        raise BuildError("gcc is needed for the C sample", "install it (apt-get install gcc)")
    host = find_host_nix()
    libc = next((p for p in host.glibc if p.name.startswith("libc.so")), None)
    if libc is None:
        raise BuildError("cannot find libc among the libraries of the machine's Nix")
    return nix.build_file(NIX_DIR / "c-program.nix", argstrs={
        "interpreter": str(host.interpreter), "libc": str(libc)})[0]
