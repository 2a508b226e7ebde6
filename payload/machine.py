"""What both sides ask of the machine they run on: its Nix system, its CPUs, its
processes, sizes for people."""

import errno
import os
import platform

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Optional  # noqa: F401

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


def available_memory(meminfo="/proc/meminfo", cgroup_root="/sys/fs/cgroup"):
    # type: (str, str) -> Optional[int]
    """Bytes this process may still use: the kernel's MemAvailable, or less
    where its cgroup (v2, as batch schedulers set one per job) is limited;
    None where neither can be read."""
    found = []
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/proc/self/cgroup") as f:
            paths = [line.strip()[3:] for line in f if line.startswith("0::")]
        for path in paths:
            group = os.path.join(cgroup_root, path.lstrip("/"))
            with open(os.path.join(group, "memory.max")) as f:
                limit = f.read().strip()
            if limit != "max":
                with open(os.path.join(group, "memory.current")) as f:
                    found.append(max(0, int(limit) - int(f.read().strip())))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


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
