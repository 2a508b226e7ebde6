"""The CPythons the installer is tested with: pyenv builds and Debian sid's 3.14.

pyenv (on PATH) holds 3.6 to 3.13 under ``$(pyenv root)/versions``.  Python
3.14 comes from Debian sid, unpacked (never installed) by .ci/setup.sh with
.ci/debian-fetch.sh into ``CACHE/python3.14/root``; it runs through its own
packaged loader, by a small wrapper script written next to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CPYTHONS = ["3.6", "3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13", "3.14"]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nix-prefix-ci"
DEBIAN_314 = CACHE / "python3.14"


def pyenv_root() -> Path | None:
    """``pyenv root``, or None without pyenv."""
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        return None
    proc = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)
    return Path(proc.stdout.strip()) if proc.returncode == 0 else None


def find_python(version: str) -> str | None:
    """An executable CPython ``version`` (``3.6``): pyenv's, or Debian's 3.14."""
    root = pyenv_root()
    if root is not None:
        builds = sorted((root / "versions").glob(f"{version}.*"))
        for build in reversed(builds):
            python = build / "bin" / "python3"
            if os.access(python, os.X_OK):
                return str(python)
    if version == "3.14":
        return debian_python314()
    return None


def debian_python314() -> str | None:
    """A wrapper running Debian's python3.14 through its packaged loader, or None."""
    root = DEBIAN_314 / "root"
    lib = root / "usr/lib/x86_64-linux-gnu"
    loader, binary = lib / "ld-linux-x86-64.so.2", root / "usr/bin/python3.14"
    if not (loader.exists() and binary.exists()):
        return None
    wrapper = DEBIAN_314 / "python3.14"
    # No --argv0: Python finds its standard library from the binary's own path.
    text = f'#!/bin/sh\nexec {loader} --library-path {lib} {binary} "$@"\n'
    if not wrapper.exists() or wrapper.read_text() != text:
        tmp = wrapper.with_name(f"{wrapper.name}.tmp-{os.getpid()}")  # two runs at once: one each
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(wrapper)
    return str(wrapper)
