"""The shared libraries an ELF program loads, found by reading files, never by
running a loader: so a Debian tree of another machine (arm64's ``nix-bin`` on an
x86_64 build machine) can be listed as well as this machine's.

It follows what glibc's loader does (elf/dl-load.c): the program's
``PT_INTERP``; then breadth-first over ``DT_NEEDED``, each name looked up in the
needing object's ``DT_RUNPATH`` (``DT_RPATH`` when it has no RUNPATH), then the
tree's library dirs; ``$ORIGIN`` is the needing object's dir.  Absolute paths
are taken inside the tree.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

_PT_INTERP, _PT_DYNAMIC, _PT_LOAD = 3, 2, 1
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_RPATH, _DT_RUNPATH = 0, 1, 5, 15, 29


class ElfError(Exception):
    """Not an ELF file this reader understands."""


@dataclass(frozen=True)
class Dynamic:
    """What the loader reads of one ELF object."""

    interpreter: str | None
    needed: list[str]
    runpath: list[str]
    machine: int


def read_dynamic(path: Path) -> Dynamic:
    """The interpreter, DT_NEEDED names and search path of the ELF object ``path``."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        raise ElfError(f"{path} is not an ELF file")
    wide, end = data[4] == 2, "<" if data[5] == 1 else ">"
    try:
        if wide:
            machine, = struct.unpack_from(end + "H", data, 18)
            phoff, = struct.unpack_from(end + "Q", data, 32)
            phentsize, phnum = struct.unpack_from(end + "HH", data, 54)
            ph_fmt, dyn_fmt = end + "IIQQQQQQ", end + "qQ"
        else:
            machine, = struct.unpack_from(end + "H", data, 18)
            phoff, = struct.unpack_from(end + "I", data, 28)
            phentsize, phnum = struct.unpack_from(end + "HH", data, 42)
            ph_fmt, dyn_fmt = end + "IIIIIIII", end + "iI"
        loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
        interp, dynamic = None, None
        for i in range(phnum):
            fields = struct.unpack_from(ph_fmt, data, phoff + i * phentsize)
            if wide:
                p_type, _, p_offset, p_vaddr, _, p_filesz = fields[:6]
            else:
                p_type, p_offset, p_vaddr, _, p_filesz = fields[:5]
            if p_type == _PT_INTERP:
                interp = data[p_offset:p_offset + p_filesz].rstrip(b"\0").decode()
            elif p_type == _PT_DYNAMIC:
                dynamic = (p_offset, p_filesz)
            elif p_type == _PT_LOAD:
                loads.append((p_vaddr, p_offset, p_filesz))
        needed_offsets: list[int] = []
        paths: dict[int, int] = {}
        strtab = None
        if dynamic is not None:
            step = struct.calcsize(dyn_fmt)
            for at in range(dynamic[0], dynamic[0] + dynamic[1], step):
                tag, value = struct.unpack_from(dyn_fmt, data, at)
                if tag == _DT_NULL:
                    break
                if tag == _DT_NEEDED:
                    needed_offsets.append(value)
                elif tag == _DT_STRTAB:
                    strtab = _file_offset(value, loads)
                elif tag in (_DT_RPATH, _DT_RUNPATH):
                    paths[tag] = value
    except (struct.error, UnicodeDecodeError) as e:
        raise ElfError(f"{path}: a damaged ELF file ({e})") from None

    def string(offset: int) -> str:
        if strtab is None:
            raise ElfError(f"{path} has dynamic entries but no string table")
        start = strtab + offset
        return data[start:data.index(b"\0", start)].decode()

    search = paths.get(_DT_RUNPATH, paths.get(_DT_RPATH))
    return Dynamic(interp, [string(o) for o in needed_offsets],
                   [p for p in string(search).split(":") if p] if search is not None else [],
                   machine)


def _file_offset(vaddr: int, loads: list[tuple[int, int, int]]) -> int:
    for start, offset, size in loads:
        if start <= vaddr < start + size:
            return offset + vaddr - start
    raise ElfError(f"address {vaddr:#x} is in no loaded segment")


def list_libraries(binary: Path, tree: Path,
                   lib_dirs: list[str]) -> tuple[Path, list[tuple[str, Path]]]:
    """The loader (inside ``tree``) of ``binary`` and every library it loads,
    as (name asked for, file in the tree), in the loader's order.

    ``lib_dirs`` are the tree's default library dirs, relative to it.  A library
    found nowhere is an ElfError naming it and who needs it.
    """
    top = read_dynamic(binary)
    if top.interpreter is None:
        raise ElfError(f"{binary} has no ELF interpreter (is it statically linked?)")
    loader = _merged(tree, top.interpreter)
    found: dict[str, Path] = {}
    queue: list[tuple[Path, Dynamic]] = [(binary, top)]
    while queue:
        obj, dyn = queue.pop(0)
        for name in dyn.needed:
            if name in found or name == os.path.basename(top.interpreter):
                continue  # loaded already (the loader itself: libc needs it by name)
            origin = str(obj.parent)
            dirs = [d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
                    for d in dyn.runpath] + ["/" + d for d in lib_dirs]
            hit = next((p for p in (_merged(tree, f"{d}/{name}") for d in dirs) if p.is_file()),
                       None)
            if hit is None:
                raise ElfError(f"{obj.name} needs {name}, which {tree} does not hold")
            found[name] = hit
            lib = read_dynamic(hit)
            if lib.machine != top.machine:
                continue  # another machine's file of the same name: the loader skips it too
            queue.append((hit, lib))
    return loader, list(found.items())


def _merged(tree: Path, path: str) -> Path:
    """``path`` inside ``tree``, also where the tree is merged-/usr (Debian since
    trixie) and so holds /lib/X only as /usr/lib/X."""
    found = _inside(tree, path)
    if not found.exists() and path.split("/")[1:2] in (["lib"], ["lib64"], ["bin"], ["sbin"]):
        return _inside(tree, "/usr" + path)
    return found


def _inside(tree: Path, *parts: str) -> Path:
    """``parts`` joined as a path inside ``tree`` (an absolute one is taken from the tree's
    root; a symlink in the tree to an absolute target is followed inside the tree)."""
    path = tree
    for part in "/".join(parts).split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            path = path.parent if path != tree else tree
            continue
        path = path / part
        hops = 0
        while path.is_symlink() and hops < 40:
            target = os.readlink(path)
            path = _inside(tree, target) if target.startswith("/") else \
                _inside(tree, str(path.parent.relative_to(tree)), target)
            hops += 1
    return path
