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

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

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
    """The machine's Nix binary and the shared libraries it loads, in groups."""

    binary: Path
    interpreter: Path
    glibc: list[Path]
    gcc: list[Path]
    nix: list[Path]
    other: list[Path]


def find_host_nix() -> HostNix:
    """Locate the machine's ``nix`` binary and sort what ``ldd`` says it loads."""
    found = shutil.which("nix-store") or shutil.which("nix")
    if not found:
        raise BuildError("no Nix on this machine", "install it (Debian: apt-get install nix-bin)")
    binary = Path(os.path.realpath(found))
    if shutil.which("patchelf") is None:
        raise BuildError("patchelf is needed to make a self-contained Nix",
                         "install it (Debian: apt-get install patchelf)")
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(f"cannot list the libraries of {binary}: {e}",
                         "is it a dynamically linked ELF binary?") from None
    return group_libraries(binary, out)


def group_libraries(binary: Path, ldd_output: str) -> HostNix:
    """Turn ``ldd`` output into library groups (pure function, for tests)."""
    interpreter: Path | None = None
    groups: dict[str, list[Path]] = {"glibc": [], "gcc": [], "nix": [], "other": []}
    for line in ldd_output.splitlines():
        line = line.strip()
        arrow = re.match(r"^(\S+) => (/\S+) \(0x[0-9a-f]+\)$", line)
        if arrow:
            name, path = arrow.group(1), Path(arrow.group(2))
            # Keep the name the binary asks for (the soname) as the file name.
            lib = path.parent / name
            if _GLIBC.match(name):
                groups["glibc"].append(lib)
            elif _GCC_RUNTIME.match(name):
                groups["gcc"].append(lib)
            elif path.parent == binary.parent.parent / "lib" / "nix" or "/nix/" in str(path):
                groups["nix"].append(lib)
            else:
                groups["other"].append(lib)
        elif re.match(r"^/\S+ \(0x[0-9a-f]+\)$", line):
            interpreter = Path(line.split()[0])
        elif "not found" in line:
            raise BuildError(f"{binary} needs a library this machine lacks: {line}",
                             "repair the Nix installation")
    if interpreter is None:
        raise BuildError(f"{binary} has no ELF interpreter", "is it statically linked?")
    return HostNix(binary, interpreter, sorted(groups["glibc"]), sorted(groups["gcc"]),
                   sorted(groups["nix"]), sorted(groups["other"]))


def build_nix_closure(nix: Nix) -> str:
    """Build the self-contained Nix from the machine's Nix; return its store path."""
    host = find_host_nix()

    def joined(paths: list[Path]) -> str:
        return " ".join(str(p) for p in paths)

    return nix.build_file(NIX_DIR / "self-contained-nix.nix", argstrs={
        "nixBinary": str(host.binary),
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
