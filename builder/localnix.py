"""Drive the build machine's Nix against a store in a private prefix.

Nix 2.8 honours NIX_STORE_DIR, NIX_STATE_DIR, NIX_LOG_DIR and NIX_CONF_DIR at
run time (src/libstore/globals.cc, ``Settings::Settings``), so one Nix binary
can serve any number of throw-away stores.  A nix.conf with
``build-users-group =`` and ``sandbox = false`` lets it build as any user
(see ../shared/docs/nix-formats.md section 7).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

NIX_CONF = """\
build-users-group =
sandbox = false
substituters =
experimental-features = nix-command
"""


class NixCommandError(RuntimeError):
    """A Nix command failed; the message carries its last stderr line."""


def prefix_env(prefix: Path, *, home: Path | None = None) -> dict[str, str]:
    """Environment that points a Nix at the store under ``prefix``.

    Variables that would redirect Nix elsewhere (a daemon, NIX_PATH, extra
    config) are dropped so the host's Nix set-up cannot leak in.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NIX_REMOTE", "NIX_PATH", "NIX_CONFIG", "NIX_USER_CONF_FILES")
    }
    env.update(
        NIX_STORE_DIR=str(prefix / "store"),
        NIX_STATE_DIR=str(prefix / "var" / "nix"),
        NIX_LOG_DIR=str(prefix / "var" / "log" / "nix"),
        NIX_CONF_DIR=str(prefix / "etc" / "nix"),
        # Only the prefix's nix.conf counts, never ~/.config/nix/nix.conf.
        NIX_USER_CONF_FILES=str(prefix / "etc" / "nix" / "nix.conf"),
    )
    env.setdefault("USER", "root" if os.geteuid() == 0 else "nobody")
    if home is not None:
        env["HOME"] = str(home)
    return env


class LocalNix:
    """The machine's Nix (``nix-bin``) bound to a store at ``prefix/store``.

    ``state_prefix`` lets the state, log and config live somewhere other than
    the store's parent (handy when the store dir itself must later be moved
    away to prove an installer does not depend on it).
    """

    def __init__(self, prefix: Path, *, bin_dir: Path | None = None) -> None:
        self.prefix = Path(prefix)
        self.store_dir = self.prefix / "store"
        found = bin_dir or _find_nix_bin_dir()
        if found is None:
            raise NixCommandError(
                "no nix-store on PATH; install Nix (Debian: apt-get install nix-bin)"
            )
        self.bin_dir = found
        conf_dir = self.prefix / "etc" / "nix"
        conf_dir.mkdir(parents=True, exist_ok=True)
        conf = conf_dir / "nix.conf"
        if not conf.exists():
            conf.write_text(NIX_CONF)
        # Nix >= 2.10 would silently switch to a chroot store when the state
        # dir is missing; creating it first keeps every version honest.
        (self.prefix / "var" / "nix").mkdir(parents=True, exist_ok=True)
        (self.prefix / "store").mkdir(parents=True, exist_ok=True)
        self._home = self.prefix / "home"
        self._home.mkdir(exist_ok=True)

    def env(self) -> dict[str, str]:
        """The environment every Nix command of this store runs with."""
        return prefix_env(self.prefix, home=self._home)

    def run(
        self, tool: str, args: Sequence[str], *, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``tool`` (e.g. ``nix-store``) and return its result; raise on failure."""
        cmd = [str(self.bin_dir / tool), *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, env=self.env(), check=False
        )
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            last = err[-1] if err else f"exit code {proc.returncode}"
            raise NixCommandError(f"{tool} {' '.join(args[:3])} failed: {last}")
        return proc

    def build_expr(self, expr: str, *, attr: str | None = None) -> list[str]:
        """``nix-build -E expr [-A attr] --no-out-link`` and return the output paths."""
        args = ["--no-out-link", "-E", expr]
        if attr:
            args += ["-A", attr]
        out = self.run("nix-build", args).stdout.decode()
        return [line for line in out.splitlines() if line]

    def build_file(self, path: Path, *, attr: str | None = None,
                   argstrs: dict[str, str] | None = None) -> list[str]:
        """``nix-build FILE [-A attr] [--argstr k v]... --no-out-link``; return the outputs."""
        args = ["--no-out-link", str(path)]
        if attr:
            args += ["-A", attr]
        for key, value in (argstrs or {}).items():
            args += ["--argstr", key, value]
        out = self.run("nix-build", args).stdout.decode()
        return [line for line in out.splitlines() if line]

    def closure(self, roots: Sequence[str]) -> list[str]:
        """Every store path the roots need, sorted as ``nix-store -qR`` would not: by name."""
        out = self.run("nix-store", ["-qR", *roots]).stdout.decode()
        return sorted(line for line in out.splitlines() if line)

    def dump_db(self, paths: Sequence[str]) -> bytes:
        """The registration of ``paths`` as ``nix-store --dump-db`` prints it."""
        return self.run("nix-store", ["--dump-db", *paths]).stdout

    def write_closure_info(self, roots: Sequence[str], out_dir: Path) -> Path:
        """Write a closureInfo-style dir (store-paths, registration, total-nar-size).

        Same files nixpkgs' closureInfo writes (pkgs/build-support/closure-info.nix),
        with the registration taken from ``--dump-db`` (hex hashes, derivers
        filled), which ``nix-store --load-db`` reads just the same.
        """
        paths = self.closure(roots)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "store-paths").write_text("".join(p + "\n" for p in paths))
        (out_dir / "registration").write_bytes(self.dump_db(paths))
        sizes = self.run("nix-store", ["-q", "--size", *paths]).stdout.split()
        (out_dir / "total-nar-size").write_text(f"{sum(int(s) for s in sizes)}\n")
        return out_dir


def _find_nix_bin_dir() -> Path | None:
    found = shutil.which("nix-store")
    if not found:
        return None
    return Path(found).parent
