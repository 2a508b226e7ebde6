"""What both sides ask of the machine they run on: its Nix system, its CPUs, its
processes, sizes for people."""

import errno
import os
import platform

# platform.machine() names that Nix spells differently.
_MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}


def host_system():
    # type: () -> str
    """The Nix system name of this machine (e.g. ``x86_64-linux``)."""
    machine = platform.machine().lower()
    return "%s-%s" % (_MACHINES.get(machine, machine), platform.system().lower())


def usable_cpus():
    # type: () -> int
    """The CPUs this process may run on: its affinity mask (which batch
    schedulers and taskset narrow), else all of the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def process_alive(pid):
    # type: (int) -> bool
    """Whether process ``pid`` exists (one of another user's too), e.g. the writer
    of a temporary file named for its pid."""
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


def human_size(n):
    # type: (int) -> str
    """``n`` bytes for people: ``512 B``, ``1.5 KiB`` ... ``3.2 GiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return ("%d %s" % (size, unit)) if unit == "B" else ("%.1f %s" % (size, unit))
        size /= 1024
    return "%d B" % n
