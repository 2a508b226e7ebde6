"""Integrity: any corruption or truncation of an installer is refused before it writes.

Every case runs the real installer on a damaged copy, alternately into a
fresh prefix (which must not appear) and into a prefix that already holds a
working install (which must stay byte-for-byte, Nix DB included), and
expects a non-zero exit with one clear line and no traceback.  The figures
go to docs/reliability.md.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nix_prefix.payload import seal

from tests.support import Built, build_and_install, run_installer, tree_snapshot

SEED = 20261125
CORRUPTIONS = 200
TRUNCATIONS = 50


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[Built, Path]]:
    base = Path(tempfile.mkdtemp(prefix="np-integrity-", dir="/tmp"))
    try:
        # A long build prefix (build_and_install), so every short prefix below is one
        # the installer can serve.
        installed = base / "i"
        yield build_and_install(base, installed), installed
    finally:
        shutil.rmtree(base, ignore_errors=True)


def regions(installer: Path) -> dict[str, tuple[int, int]]:
    """Byte ranges [start, end) of the parts of an installer file."""
    size = installer.stat().st_size
    with zipfile.ZipFile(installer) as zf:
        infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
        data = {}
        with open(installer, "rb") as f:
            for info in infos:
                f.seek(info.header_offset + 26)
                name_len = int.from_bytes(f.read(2), "little")
                extra_len = int.from_bytes(f.read(2), "little")
                start = info.header_offset + 30 + name_len + extra_len
                data[info.filename] = (start, start + info.compress_size)
        zip_start = infos[0].header_offset
        central = max(end for _, end in data.values())
    head = installer.read_bytes()[:zip_start]
    sh_end, python_end = head.index(b"\nb=\x27") + 1, head.index(b"\neval ") + 1
    chunk = next(v for k, v in data.items() if k.startswith("payload/"))
    third = (chunk[1] - chunk[0]) // 3
    return {
        # The sh code ($h), the seal checker ($b) and the padding up to the zip.
        "preamble sh": (seal.SEAL_END, sh_end),
        "preamble Python": (sh_end, python_end),
        "preamble padding": (python_end, zip_start),
        "code": (zip_start, chunk[0]),
        "payload start": (chunk[0], chunk[0] + third),
        "payload middle": (chunk[0] + third, chunk[1] - third),
        "payload end": (chunk[1] - third, chunk[1]),
        "manifest": data["manifest.json"],
        "central directory": (central, size),
        "seal": (seal.DIGEST_AT, seal.SEAL_END),
    }


def damaged_positions(installer: Path, rng: random.Random) -> list[tuple[str, int]]:
    """CORRUPTIONS positions spread evenly over the parts of the file."""
    parts = regions(installer)
    per_part = CORRUPTIONS // len(parts)
    positions = []
    for name, (start, end) in parts.items():
        positions += [(name, rng.randrange(start, end)) for _ in range(per_part)]
    return positions


def check_refused(built: Built, damaged: Path, target: Path, installed_before: dict,
                  installed: Path, fresh: bool, in_checker: bool = False) -> str:
    """Run the damaged installer; return its last line.

    ``in_checker``: the byte is in the sh code of the preamble, which runs before
    anything is checked, so sh may add a complaint of its own before (or instead
    of) ours.
    """
    proc = run_installer(damaged, "-y", "-p", str(target))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0, f"{damaged.name}: accepted"
    assert "Traceback" not in proc.stderr, proc.stderr
    if not in_checker:
        assert len(lines) == 1, proc.stderr
        assert "damaged" in lines[0] or "truncated" in lines[0] or "corrupt" in lines[0], lines[0]
    if fresh:
        assert not target.exists(), "a damaged installer created the prefix"
    else:
        assert tree_snapshot(installed) == installed_before, "the installed prefix changed"
    return lines[-1] if lines else ""


def test_every_single_byte_corruption_is_refused(world: tuple[Built, Path]) -> None:
    built, installed = world
    before = tree_snapshot(installed)
    rng = random.Random(SEED)
    original = built.installer.read_bytes()
    damaged = built.installer.with_name("damaged.sh")
    # The sh code: from the seal line to the seal checker's Python ($b).
    checker = (len(seal.SHEBANG), original.index(b"\nb=\x27") + 1)
    messages: dict[str, int] = {}
    shell_own = 0
    for i, (part, pos) in enumerate(damaged_positions(built.installer, rng)):
        data = bytearray(original)
        data[pos] ^= rng.randrange(1, 256)
        damaged.write_bytes(data)
        fresh = i % 2 == 0
        target = built.installer.with_name(f"f{i}") if fresh else installed
        in_checker = checker[0] <= pos < checker[1]
        line = check_refused(built, damaged, target, before, installed, fresh, in_checker)
        if not line.startswith("nix-prefix: error:"):
            shell_own += 1
        key = f"{part}: " + (line.split(":")[2].strip()[:50] if line.count(":") >= 2 else line)
        messages[key] = messages.get(key, 0) + 1
    assert sum(messages.values()) == CORRUPTIONS
    print(f"\n{CORRUPTIONS} corruptions refused ({shell_own} with the shell's own message, "
          f"all inside the preamble's sh code); messages:")
    for key, count in sorted(messages.items()):
        print(f"  {count:4d}  {key}")


def test_every_truncation_is_refused(world: tuple[Built, Path]) -> None:
    built, installed = world
    before = tree_snapshot(installed)
    rng = random.Random(SEED + 1)
    original = built.installer.read_bytes()
    damaged = built.installer.with_name("truncated.sh")
    # A file cut inside its "#!/bin/sh" line is, to sh, an empty script that does
    # nothing and exits 0; every longer cut must be refused.  Random lengths past
    # that line, plus the edges.
    first = original.index(b"\n") + 1
    sh_end = original.index(b"\neval ") + 1
    lengths = sorted({rng.randrange(first + 1, len(original)) for _ in range(TRUNCATIONS - 3)}
                     | {first + 1, len(original) - 1, seal.SEAL_END})
    for i, length in enumerate(lengths):
        damaged.write_bytes(original[:length])
        fresh = i % 2 == 0
        target = built.installer.with_name(f"t{i}") if fresh else installed
        # Cut inside the sh text, sh itself refuses the unfinished block, in its words.
        check_refused(built, damaged, target, before, installed, fresh, length < sh_end)
    assert len(lengths) >= TRUNCATIONS - 2
    print(f"\n{len(lengths)} truncations refused")


def test_a_cut_inside_the_first_line_does_nothing(world: tuple[Built, Path]) -> None:
    built, _ = world
    damaged = built.installer.with_name("cut.sh")
    damaged.write_bytes(built.installer.read_bytes()[:5])
    target = built.installer.with_name("c")
    proc = run_installer(damaged, "-y", "-p", str(target))
    assert proc.stderr == "" and not target.exists()


def test_check_refuses_what_install_refuses(world: tuple[Built, Path]) -> None:
    built, _ = world
    data = bytearray(built.installer.read_bytes())
    start, end = regions(built.installer)["central directory"]
    data[(start + end) // 2] ^= 0x20  # a byte no CRC covers: only the seal notices
    damaged = built.installer.with_name("check.sh")
    damaged.write_bytes(data)
    proc = run_installer(damaged, "--check")
    assert proc.returncode == 3 and "seal" in proc.stderr, proc.stderr


def test_without_sha256sum_python_checks_the_seal(world: tuple[Built, Path]) -> None:
    """On a machine without coreutils' sha256sum, the installer's Python does the check."""
    built, installed = world
    before = tree_snapshot(installed)
    bin_dir = built.installer.with_name("bin-python-only")
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "python3").exists():
        (bin_dir / "python3").symlink_to("/usr/bin/python3")
    rng = random.Random(SEED + 2)
    original = built.installer.read_bytes()
    damaged = built.installer.with_name("nosum.sh")
    start = seal.SEAL_END  # past the seal
    for _ in range(20):
        data = bytearray(original)
        data[rng.randrange(start, len(original))] ^= rng.randrange(1, 256)
        damaged.write_bytes(data)
        proc = run_installer(damaged, "-y", "-p", str(installed),
                             env={"PATH": str(bin_dir), "HOME": "/nonexistent"})
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 3 and len(lines) == 1, proc.stderr
        assert tree_snapshot(installed) == before
