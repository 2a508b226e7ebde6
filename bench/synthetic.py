"""Synthetic closures of any size, written into a store by the real Nix in one process.

``make_closure(nix, paths, files_per_path)`` generates ``paths`` store paths of
``files_per_path`` files each and imports them all with one
``nix-store --import``: this module writes the stream ``nix-store --export``
would (NixOS/nix 2.8 src/libstore/export-import.cc, ``exportPath``):

    for each path, dependencies first:
        u64 1, NAR, u64 0x4558494e, str(path), u64 #refs, str(ref)..., str(deriver), u64 0
    u64 0

(integers little-endian, strings length-prefixed and zero-padded to 8 bytes,
as in the NAR format).  Nix unpacks every NAR into the store itself, hashes it
and registers the path with its references, so the store is Nix's own work;
no derivation is built, so 5,000 paths take no 5,000 builder processes.

Each path is deterministic in (seed, index): small files of pseudo-random
text (150 B to 3 KiB, log-uniform), one pseudo-binary library, scripts and
the library executable, files in subdirectories, three symlinks (one into a
dependency).  References form a DAG of depth about log3(paths) whose top
(the last path) reaches every path: path h of the heap order (0 = top)
refers to 3h+1..3h+3, to the first path built (a shared "libc") and to one
random deeper path; each reference is written into the files that use it
(scripts, the library's RUNPATH-like string, nix-support/, a symlink).
Store paths are computed as Nix computes a NAR-hashed path with references
(``makeFixedOutputPath`` with method recursive; payload/storepaths_ca.py).
"""

from __future__ import annotations

import hashlib
import math
import random
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass

from nix_prefix.builder.localnix import LocalNix, NixCommandError
from nix_prefix.payload import nar, storepaths_ca

EXPORT_MAGIC = 0x4558494E
MIN_FILES = 10
_u64 = struct.Struct("<Q").pack


def _str(data: bytes) -> bytes:
    return _u64(len(data)) + data + b"\0" * (-len(data) % 8)


_WORDS_RNG = random.Random(0x5CA1E)
VOCABULARY = ["".join(_WORDS_RNG.choice("abcdefghijklmnopqrstuvwxyz_")
                      for _ in range(_WORDS_RNG.randint(2, 10))) for _ in range(2048)]


@dataclass
class SyntheticClosure:
    root: str
    paths: list[str]  # in build (import) order, root last
    files: int  # regular files and symlinks
    nar_bytes: int
    seconds: float  # generate + import, wall clock


def _size(rng: random.Random, lo: int = 150, hi: int = 3072) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _text(rng: random.Random, size: int, head: str = "") -> bytes:
    words = rng.choices(VOCABULARY, k=size // 6 + 1)
    lines = [" ".join(words[j:j + 11]) for j in range(0, len(words), 11)]
    return (head + "\n".join(lines))[:size].encode() + b"\n"


def _tree(index: int, name: str, refs: list[str], files: int, rng: random.Random) -> dict:
    """The path's files: {relative path: ("f", bytes, executable) | ("l", target)}."""
    ref_names = [r.rpartition("/")[2] for r in refs]
    dep = refs[0] if refs else None
    out: dict = {}
    for k, tool in enumerate((name, f"{name}-helper", f"{name}-tool")):
        call = f"exec {dep}/bin/{ref_names[0].split('-', 1)[1]} \"$@\"\n" if dep and k == 0 \
            else ""
        out[f"bin/{tool}"] = ("f", _text(rng, _size(rng), f"#!/bin/sh\n{call}# "), True)
    runpath = ":".join(f"{r}/lib" for r in refs).encode()
    out[f"lib/lib{name}.so.1"] = ("f", b"\x7fELF" + rng.randbytes(_size(rng, 400, 6000))
                                  + b"\0RUNPATH=" + runpath + b"\0", True)
    out[f"lib/lib{name}.so"] = ("l", f"lib{name}.so.1")
    out[f"bin/{name}-alias"] = ("l", name)
    out[f"share/{name}/dep"] = ("l", f"{dep}/share" if dep else "../../lib")
    out["nix-support/propagated-build-inputs"] = ("f", " ".join(refs).encode() + b"\n", False)
    out[f"etc/{name}.conf"] = ("f", _text(rng, _size(rng), f"# {name} {index}\n"), False)
    for k in range(files - len(out)):
        where = (f"lib/{name}/mod{k}.py", f"share/doc/{name}/ch{k}.txt",
                 f"share/{name}/data/d{k % 4}/f{k}.dat")[k % 3]
        out[where] = ("f", _text(rng, _size(rng)), k % 10 == 9)
    return out


def _nest(flat: dict) -> dict:
    root: dict = {}
    for rel, node in flat.items():
        *dirs, base = rel.encode().split(b"/")
        d = root
        for part in dirs:
            d = d.setdefault(part, {})
        d[base] = node
    return root


def _emit(node, w: nar.NarWriter) -> None:
    if isinstance(node, dict):
        w.begin_directory()
        for name in sorted(node):
            w.begin_entry(name)
            _emit(node[name], w)
            w.end_entry()
        w.end_directory()
    elif node[0] == "f":
        w.regular(b"", node[2], len(node[1]))
        w.contents(node[1])
        w.end_regular()
    else:
        w.symlink(b"", node[1].encode())


def references(paths: int, seed: int) -> list[list[int]]:
    """For each path in build order, the build-order indexes of the paths it refers to."""
    out = []
    for i in range(paths):
        h = paths - 1 - i  # heap index: 0 is the top, built last
        deps = {paths - 1 - c for c in range(3 * h + 1, min(3 * h + 4, paths))}
        rng = random.Random(seed * 1_000_003 + i)
        if i > 0:
            deps.add(0)
        if h + 1 < paths:
            deps.add(paths - 1 - rng.randrange(h + 1, paths))
        out.append(sorted(deps))
    return out


def make_closure(nix: LocalNix, paths: int, files_per_path: int = 40,
                 seed: int = 1) -> SyntheticClosure:
    """Generate the closure and ``nix-store --import`` it into ``nix``'s store."""
    if files_per_path < MIN_FILES:
        raise ValueError(f"files_per_path must be at least {MIN_FILES}")
    started = time.perf_counter()
    store_dir = str(nix.store_dir)
    refs_of = references(paths, seed)
    done: list[str] = []
    nar_bytes = files = 0
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([str(nix.bin_dir / "nix-store"), "--import"], env=nix.env(),
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        try:
            for i in range(paths):
                rng = random.Random(seed * 7_919 + i)
                name = f"syn{i:05d}-{VOCABULARY[i % len(VOCABULARY)].replace('_', '')}"
                refs = sorted(done[j] for j in refs_of[i])
                flat = _tree(i, name, refs, files_per_path, rng)
                files += len(flat)
                parts: list[bytes] = []
                writer = nar.NarWriter(parts.append)
                _emit(_nest(flat), writer)
                blob = b"".join(parts)
                path = storepaths_ca.make_source_path(store_dir, name,
                                                      hashlib.sha256(blob).digest(), refs)
                nar_bytes += len(blob)
                proc.stdin.write(b"".join([
                    _u64(1), blob, _u64(EXPORT_MAGIC), _str(path.encode()), _u64(len(refs)),
                    *(_str(r.encode()) for r in refs), _str(b""), _u64(0)]))
                done.append(path)
            proc.stdin.write(_u64(0))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        if proc.wait() != 0:
            err.seek(0)
            lines = err.read().decode(errors="replace").strip().splitlines()
            raise NixCommandError(f"nix-store --import failed: {lines[-1] if lines else ''}")
    return SyntheticClosure(done[-1], done, files, nar_bytes, time.perf_counter() - started)
