"""Helpers for tests that build real closures and run real installers."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.localnix import LocalNix, prefix_env
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.builder.samples import build_small_closure
from nix_prefix.payload import nar

# The one measure of a command (wall time, peak RSS, bytes), shared with bench/common.py.
from .measure import Measured, measured  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


def nar_bytes(fs_path: str | bytes) -> bytes:
    """The whole NAR of a path, in memory (small trees)."""
    parts: list[bytes] = []
    nar.dump_path(os.fsencode(fs_path), nar.NarWriter(parts.append))
    return b"".join(parts)


@dataclass
class Built:
    """A closure built by real Nix at ``prefix``, its closureInfo and an installer."""

    prefix: Path
    closure_info: Path
    installer: Path
    roots: list[str]
    nix: LocalNix

    def move_build_away(self) -> Path:
        """Move the build prefix (store and DB) aside so the install stands alone."""
        moved = self.prefix.with_name(self.prefix.name + ".build")
        os.rename(self.prefix, moved)
        return moved


PLAIN_DEP = "0" * 31 + "1-dep"
PLAIN_APP = "0" * 31 + "2-app"


def plain_closure(base: Path) -> tuple[Path, Path]:
    """A two-path closure made by hand, no Nix: ``PLAIN_APP`` (a script naming
    ``PLAIN_DEP``, and a symlink to it) and ``PLAIN_DEP`` in ``base/p/store``, its
    registration from our own NAR hashes in the closureInfo dir ``base/ci``.
    Returns (closureInfo dir, store dir)."""
    from nix_prefix.payload import hashes, nar, registration
    from nix_prefix.payload.registration import ValidPathInfo

    store = base / "p" / "store"
    (store / PLAIN_APP / "bin").mkdir(parents=True)
    (store / PLAIN_DEP).write_bytes(b"a dependency\n" * 100)
    (store / PLAIN_APP / "bin" / "app").write_text(f"#!/bin/sh\ncat {store}/{PLAIN_DEP}\n")
    (store / PLAIN_APP / "bin" / "app").chmod(0o755)
    (store / PLAIN_APP / "dep").symlink_to(f"{store}/{PLAIN_DEP}")
    infos = []
    for name, refs in ((PLAIN_APP, [PLAIN_DEP]), (PLAIN_DEP, [])):
        digest, size = nar.hash_path(str(store / name))
        infos.append(ValidPathInfo(f"{store}/{name}", hashes.format_sha256(digest), size, "",
                                   tuple(f"{store}/{r}" for r in refs)))
    ci = base / "ci"
    ci.mkdir()
    (ci / "registration").write_text(registration.format(infos))
    return ci, store


def build_small(base: Path, *, compression: str = "xz", name: str = "p") -> Built:
    """Build the small sample closure at BASE/NAME and an installer for it."""
    nix = LocalNix(base / name)
    roots = build_small_closure(nix)
    info = nix.write_closure_info(roots, base / f"{name}-closure-info")
    out = base / f"{name}-installer.sh"
    build_installer(read_closure(info), out, BuildOptions(compression=compression))
    return Built(base / name, info, out, roots, nix)


def build_and_install(base: Path, prefix: Path) -> Built:
    """Build the small closure at a long prefix under BASE, move the build away and
    install it into PREFIX (shorter, so by relocation): a prefix to test against."""
    built = build_small(base, name="a-long-enough-build-prefix")
    built.move_build_away()
    proc = run_installer(built.installer, "-y", "-p", str(prefix))
    assert proc.returncode == 0, proc.stderr
    return built


def script_package(name: str, program: str, says: str) -> str:
    """A Nix expression for the package NAME whose ``bin/PROGRAM`` prints SAYS (a plain
    derivation built by /bin/sh: the machine's Nix builds it without nixpkgs)."""
    return f"""derivation {{
  name = "{name}"; system = builtins.currentSystem; builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  args = [ "-c" ("mkdir -p $out/bin; printf '#!/bin/sh\\necho {says}\\n' > $out/bin/{program}; "
                 + "chmod +x $out/bin/{program}") ];
}}"""


def as_user(uid: int) -> list[str]:
    """Command prefix that runs the rest as ``uid`` (its own group, no others).

    setpriv is looked up here, not by the child: tests run with minimal PATHs.
    """
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def run_installer(installer: Path, *args: str, env: dict[str, str] | None = None,
                  user: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``sh INSTALLER ARGS`` (optionally as another uid) and capture its output."""
    cmd = ["/bin/sh", str(installer), *args]
    if user is not None:
        cmd = [*as_user(user), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env,
                          check=False)


def installed_nix(prefix: Path, tool: str, *args: str,
                  user: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run a Nix tool from the prefix's default profile against the prefix."""
    env = prefix_env(prefix, home=prefix / "var" / "nix-prefix" / "home")
    env["PATH"] = "/usr/bin:/bin"
    cmd = [str(prefix / "var/nix/profiles/default/bin" / tool), *args]
    if user is not None:
        cmd = [*as_user(user), *cmd]
        env["USER"] = "nobody"
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env,
                          check=False)


def nix_store(prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the machine's nix-store against the store of ``prefix``."""
    env = prefix_env(prefix, home=prefix / "var/nix-prefix/home")
    return subprocess.run(["nix-store", *args], env=env, capture_output=True, text=True,
                          check=False)


def tree_snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` with its type, mode, size, mtime and link target."""
    snap: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            target = os.readlink(full) if os.path.islink(full) else None
            content = None
            if os.path.isfile(full) and not os.path.islink(full) and st.st_size < 1 << 20:
                with open(full, "rb") as f:
                    content = f.read()
            snap[os.path.relpath(full, root)] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                                 target, content)
    return snap


def feed_in_pieces(rewriter, data: bytes, cuts: list[int]) -> bytes:
    """Feed ``data`` to a stream rewriter in pieces of the sizes ``cuts`` (cycled), then flush."""
    out, pos, i = [], 0, 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        out.append(rewriter.feed(data[pos:pos + step]))
        pos += step
        i += 1
    out.append(rewriter.flush())
    return b"".join(out)


@contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at the existing dir ``path`` with mount ``options`` (a small
    size for a full disk, noexec), unmounted afterwards; the test is skipped where
    mounting is not allowed (it needs root)."""
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)

