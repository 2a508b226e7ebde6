"""``nix-prefix demo``: the whole round trip on this machine, from nothing.

Builds a sample closure (a self-contained Nix made from the machine's
nix-bin, plus a small program) into a fresh store with the machine's Nix,
writes an installer for it, moves the build store away, installs into the
same prefix as an ordinary run of the installer would, and runs the
installed program and the installed Nix.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from .closure_info import read_closure
from .errors import BuildError
from .localnix import LocalNix, NixCommandError
from .pack import BuildOptions, build_installer


def _step(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def run_demo(workdir: Path | None, compression: str = "xz", level: int | None = None) -> Path:
    """Run the demo in ``workdir`` (default: a new dir under /tmp); return the prefix."""
    from . import samples

    base = Path(workdir or tempfile.mkdtemp(prefix="nix-prefix-demo-", dir="/tmp")).resolve()
    base.mkdir(parents=True, exist_ok=True)
    prefix = base / "nix"
    if prefix.exists():
        raise BuildError(f"{prefix} already exists", "pass an empty --workdir")
    try:
        _step(f"building a sample closure with this machine's Nix in {prefix}/store")
        nix = LocalNix(prefix)
        started = time.time()
        roots = [samples.build_nix_closure(nix), *samples.build_small_closure(nix)]
        info_dir = nix.write_closure_info(roots, base / "closure-info")
        print(f"    {len(nix.closure(roots))} store paths built in "
              f"{time.time() - started:.1f} s", file=sys.stderr)
    except NixCommandError as e:
        raise BuildError(str(e), "is Nix installed? (Debian: apt-get install nix-bin)") from None

    installer = base / "nix-prefix-demo-installer.sh"
    _step(f"writing the installer {installer}")
    closure = read_closure(info_dir)
    with tqdm(total=closure.total_nar_size, unit="B", unit_scale=True,
              desc="hashing and packing", file=sys.stderr) as bar:
        result = build_installer(closure, installer,
                                 BuildOptions(compression=compression, level=level),
                                 progress=bar.update)
    print(f"    {result.size / 2**20:.1f} MiB for {closure.total_nar_size / 2**20:.1f} MiB "
          f"of NAR", file=sys.stderr)

    moved = base / "nix.build"
    _step(f"moving the build store away to {moved}, so the install stands on its own")
    os.rename(prefix, moved)

    _step(f"running: sh {installer} -y")
    subprocess.run(["sh", str(installer), "-y"], check=True)

    _step("using the installed prefix")
    script = (
        f". {prefix}/etc/profile.d/nix.sh\n"
        "set -e\n"
        "echo \"\\$ hello-nix-prefix\"; hello-nix-prefix\n"
        "echo \"\\$ nix-store --version\"; nix-store --version\n"
        "echo \"\\$ nix-store --verify --check-contents\"; nix-store --verify --check-contents\n"
        "echo \"\\$ nix-build -E 'derivation {...}'\"\n"
        "nix-build --no-out-link -E 'derivation { name = \"built-in-the-prefix\"; "
        "system = builtins.currentSystem; builder = \"/bin/sh\"; "
        "args = [ \"-c\" \"echo it works > $out\" ]; }'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIX_")}
    # Only the prefix's Nix: the machine's own /usr/bin is dropped from PATH.
    env["PATH"] = "/nonexistent"
    proc = subprocess.run(["/bin/sh", "-c", script], env=env, check=False)
    if proc.returncode != 0:
        raise BuildError(f"the installed prefix {prefix} did not work (exit {proc.returncode})")
    print(f"\nDemo done. Your prefix is {prefix}; start using it with:\n"
          f"  . {prefix}/etc/profile.d/nix.sh", file=sys.stderr)
    return prefix
