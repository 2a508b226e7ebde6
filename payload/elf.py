"""Which machine an ELF file is for, from its first 20 bytes.

Nix names a system ``<cpu>-<os>`` (src/libutil/config-global / ``nix -vv
--version``'s "System type"); for a Linux closure the cpu is the machine of
its ELF programs and libraries.  Only executables and shared objects count
(``e_type`` ET_EXEC or ET_DYN): object files and archives in a compiler's tree
may be for another machine on purpose (multilib ``crt*.o``).
"""

import struct

from .tree import Sink

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Dict, Optional, Tuple  # noqa: F401

# What an ELF header needs for machine_of: e_ident (16), e_type (2), e_machine (2).
HEADER_SIZE = 20

_ET_EXEC, _ET_DYN = 2, 3

# (e_machine, ELF class) -> Nix's cpu name (elf.h's EM_* numbers; Nix's names as
# in its `system` setting: x86_64-linux, i686-linux, aarch64-linux, ...).
_CPUS = {
    (62, 2): "x86_64",
    (3, 1): "i686",
    (183, 2): "aarch64",
    (40, 1): "armv7l",
    (243, 2): "riscv64",
    (21, 2): "powerpc64",
    (22, 2): "s390x",
    (258, 2): "loongarch64",
}  # type: Dict[Tuple[int, int], str]


def machine_of(head):
    # type: (bytes) -> Optional[str]
    """Nix's cpu name of the ELF executable or shared object whose file starts
    with ``head`` (at least HEADER_SIZE bytes), ``"elf-machine-N"`` for one
    this table does not name, None if it is neither."""
    if len(head) < HEADER_SIZE or head[:4] != b"\x7fELF":
        return None
    elf_class, data = head[4], head[5]
    if elf_class not in (1, 2) or data not in (1, 2):
        return None
    e_type, e_machine = struct.unpack("<HH" if data == 1 else ">HH", head[16:20])
    if e_type not in (_ET_EXEC, _ET_DYN):
        return None
    return _CPUS.get((e_machine, elf_class), "elf-machine-%d" % e_machine)


class MachineMismatch(Exception):
    """A file of a store path is for another machine than the closure's."""


class Machines(Sink):
    """Watches the start of every regular file of a tree and records which
    machines its ELF programs and libraries are for; with ``expected`` set, the
    first file for another machine raises MachineMismatch at once."""

    def __init__(self, expected=None):
        # type: (Optional[str]) -> None
        self.expected = expected
        self.found = {}  # type: Dict[str, bytes]  # cpu -> the first file seen for it
        self._rel = b""
        self._head = b""
        self._watching = False

    def regular(self, rel, executable, size):
        # type: (bytes, bool, int) -> None
        self._rel, self._head = rel, b""
        self._watching = size >= HEADER_SIZE

    def contents(self, data):
        # type: (bytes) -> None
        if not self._watching:
            return
        self._head += data[:HEADER_SIZE - len(self._head)]
        if len(self._head) < HEADER_SIZE:
            return
        self._watching = False
        cpu = machine_of(self._head)
        if cpu is None:
            return
        self.found.setdefault(cpu, self._rel)
        if self.expected is not None and cpu != self.expected:
            raise MachineMismatch(
                "%s is for %s, but the closure is for %s"
                % (self._rel.decode("utf-8", "replace") or "its top file", cpu, self.expected))
