"""payload/elf.py and builder/elflibs.py: which machine an ELF file is for, and the
libraries a program loads, read from files alone (no Nix, no loader run)."""

from __future__ import annotations

import gzip
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from nix_prefix.builder import elflibs
from nix_prefix.builder.errors import BuildError
from nix_prefix.builder.samples import _packaged_version
from nix_prefix.payload import elf
from nix_prefix.payload.machine import host_system
from nix_prefix.payload.tree import Tee


def header(machine: int, elf_class: int = 2, e_type: int = 3, big: bool = False) -> bytes:
    """The first 20 bytes of an ELF file."""
    ident = b"\x7fELF" + bytes([elf_class, 2 if big else 1, 1]) + bytes(9)
    return ident + struct.pack(">HH" if big else "<HH", e_type, machine)


@pytest.mark.parametrize(("machine", "elf_class", "cpu"), [
    (62, 2, "x86_64"), (183, 2, "aarch64"), (243, 2, "riscv64"), (3, 1, "i686"),
    (40, 1, "armv7l"), (999, 2, "elf-machine-999")])
def test_machine_of_names_nix_cpus(machine: int, elf_class: int, cpu: str) -> None:
    assert elf.machine_of(header(machine, elf_class)) == cpu


def test_machine_of_reads_big_endian_headers() -> None:
    assert elf.machine_of(header(22, big=True)) == "s390x"


@pytest.mark.parametrize("head", [
    header(62, e_type=1),        # an object file (multilib crt*.o): not a program
    header(62, e_type=4),        # a core dump
    b"#!/bin/sh\necho hello world\n",
    b"\x7fELF\x02",              # too short to tell
    b"\x7fELF" + bytes([3, 1, 1]) + bytes(9) + b"\x03\x00\x3e\x00",  # no such class
])
def test_machine_of_ignores_what_is_no_program(head: bytes) -> None:
    assert elf.machine_of(head) is None


def test_machine_of_this_python_is_this_machine() -> None:
    with open(sys.executable, "rb") as f:  # a real ELF file, not a hand-made header
        head = f.read(elf.HEADER_SIZE)
    assert elf.machine_of(head) == host_system().partition("-")[0]


def feed(sink: elf.Machines, files: dict[bytes, bytes], piece: int = 3) -> None:
    for rel, data in files.items():
        sink.regular(rel, False, len(data))
        for i in range(0, len(data), piece):  # the header arrives in pieces too
            sink.contents(data[i:i + piece])
        sink.end_regular()


def test_machines_records_each_machine_with_its_first_file() -> None:
    sink = elf.Machines()
    feed(sink, {b"/bin/a": header(183) + b"rest", b"/lib/b.so": header(183),
                b"/lib/c.so": header(62), b"/share/d": b"text only", b"/e.o": header(62, e_type=1)})
    assert sink.found == {"aarch64": b"/bin/a", "x86_64": b"/lib/c.so"}


def test_machines_stops_at_the_first_file_of_another_machine() -> None:
    sink = elf.Machines("aarch64")
    with pytest.raises(elf.MachineMismatch, match="/lib/c.so is for x86_64, but the closure is "
                                                  "for aarch64"):
        feed(sink, {b"/bin/a": header(183), b"/lib/c.so": header(62), b"/never": header(62)})


def test_machines_works_behind_a_tee() -> None:
    sink = elf.Machines("x86_64")
    tee = Tee(None, sink)
    tee.regular(b"/x", True, 20)
    with pytest.raises(elf.MachineMismatch):
        tee.contents(header(243))


HOST_LIB_DIRS = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "usr/lib64",
                 "lib", "usr/lib"]


@pytest.mark.skipif(shutil.which("ldd") is None or host_system() != "x86_64-linux",
                    reason="compares with this x86_64 machine's ldd")
@pytest.mark.parametrize("program", ["/bin/ls", sys.executable])
def test_the_libraries_read_from_files_are_what_the_loader_loads(program: str) -> None:
    """On this machine's own programs (the tree is /), the ELF reading lists the very
    libraries ldd (the loader itself) lists, by the name they are asked for."""
    binary = Path(program).resolve()
    loader, found = elflibs.list_libraries(binary, Path("/"), HOST_LIB_DIRS)
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True)
    expected = dict(re.findall(r"^\s*(\S+) => (/\S+) \(0x", ldd.stdout, re.M))
    assert {name for name, _ in found} == set(expected)
    for name, path in found:
        assert path.resolve() == Path(expected[name]).resolve()
    interp = re.search(r"^\s*(/\S*ld-linux\S*) \(0x", ldd.stdout, re.M)
    assert interp and loader.resolve() == Path(interp.group(1)).resolve()


def test_a_library_the_tree_lacks_is_named(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    shutil.copy(sys.executable, tree / "usr/bin/python")
    with pytest.raises(elflibs.ElfError, match=r"python needs \S+, which .* does not hold"):
        elflibs.list_libraries(tree / "usr/bin/python", tree, ["usr/lib"])


def test_a_file_that_is_no_elf_is_refused(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(elflibs.ElfError, match="is not an ELF file"):
        elflibs.read_dynamic(script)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(Path(sys.executable).read_bytes()[:64])
    with pytest.raises(elflibs.ElfError):
        elflibs.read_dynamic(truncated)


def test_the_version_of_a_tree_comes_from_its_changelog(tmp_path: Path) -> None:
    doc = tmp_path / "usr/share/doc/nix-bin"
    doc.mkdir(parents=True)
    for line, version in (("nix (2.34.8+dfsg-1) unstable; urgency=medium", "2.34.8"),
                          ("nix (2.8.0-1.1) unstable; urgency=medium", "2.8.0"),
                          ("nix (1:2.26.3-2) unstable; urgency=low", "2.26.3")):
        with gzip.open(doc / "changelog.Debian.gz", "wt") as f:
            f.write(line + "\n\n  * more\n")
        assert _packaged_version(tmp_path) == version
    with gzip.open(doc / "changelog.Debian.gz", "wt") as f:
        f.write("garbage\n")
    with pytest.raises(BuildError, match="cannot tell the Nix version"):
        _packaged_version(tmp_path)
    with pytest.raises(BuildError, match="cannot tell the version of the Nix in"):
        _packaged_version(tmp_path / "nothing")


def test_the_closure_system_is_that_of_its_nix(tmp_path: Path) -> None:
    """build's system: the ELF of the closure's Nix tells; a --system that contradicts
    it is refused; a closure without an ELF Nix takes --system, else this machine's."""
    from nix_prefix.builder.pack import closure_system

    bin_dir = tmp_path / "aaaa-nix-2.34/bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "nix").write_bytes(header(183) + bytes(100))
    (bin_dir / "nix-store").symlink_to("nix")
    nix_store = "aaaa-nix-2.34/bin/nix-store"

    def system(nix: str | None, given: str | None) -> str:
        # The store dir as the closure names it; its paths physically at tmp_path.
        return closure_system(tmp_path, "/elsewhere/store", ["aaaa-nix-2.34"], nix, given)

    assert system(nix_store, None) == "aarch64-linux"
    assert system(nix_store, "aarch64-linux") == "aarch64-linux"
    with pytest.raises(BuildError, match=r"--system x86_64-linux, but the closure's Nix .* is "
                                         r"for aarch64-linux"):
        system(nix_store, "x86_64-linux")
    # An absolute link names the store dir, not where the store physically is.
    (bin_dir / "nix-store").unlink()
    (bin_dir / "nix-store").symlink_to("/elsewhere/store/aaaa-nix-2.34/bin/nix")
    assert system(nix_store, None) == "aarch64-linux"
    (bin_dir / "nix").write_bytes(b"#!/bin/sh\nexec something else entirely\n")
    assert system(nix_store, "riscv64-linux") == "riscv64-linux"
    assert system(None, None) == host_system()
