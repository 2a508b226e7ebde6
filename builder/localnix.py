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

# Store paths per Nix command line.  Linux allows about 2 MiB of arguments and
# environment in all (ARG_MAX); a whole closure on one command line passes that
# at some 25,000 paths ("Argument list too long").
ARGS_PER_CALL = 2000


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


class Nix:
    """The machine's Nix tools, run with one environment.

    ``env`` None means this process's environment, as the user's own ``nix-store``
    would see it (``NIX_STORE_DIR``, ``NIX_REMOTE``, ... included).
    """

    def __init__(self, env: dict[str, str] | None = None, *,
                 bin_dir: Path | None = None) -> None:
        found = bin_dir or _find_nix_bin_dir()
        if found is None:
            raise NixCommandError(
                "no nix-store on PATH; install Nix (Debian: apt-get install nix-bin)"
            )
        self.bin_dir = found
        self._env = env

    def env(self) -> dict[str, str]:
        """The environment every Nix command of this store runs with."""
        return dict(os.environ) if self._env is None else dict(self._env)

    def run(
        self, tool: str, args: Sequence[str], *, input: bytes | None = None,
        show_log: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``tool`` (e.g. ``nix-store``) and return its result; raise on failure.

        ``show_log`` lets Nix's stderr (build logs, progress) through to ours.
        """
        cmd = [str(self.bin_dir / tool), *args]
        proc = subprocess.run(
            cmd, input=input, stdout=subprocess.PIPE,
            stderr=None if show_log else subprocess.PIPE, env=self.env(), check=False
        )
        if proc.returncode != 0:
            err = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
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

    def build_file(self, path: Path, *, attrs: Sequence[str] = (),
                   argstrs: dict[str, str] | None = None, show_log: bool = False) -> list[str]:
        """``nix-build FILE [-A attr]... [--argstr k v]... --no-out-link``; return the outputs."""
        args = ["--no-out-link", str(path)]
        for attr in attrs:
            args += ["-A", attr]
        for key, value in (argstrs or {}).items():
            args += ["--argstr", key, value]
        out = self.run("nix-build", args, show_log=show_log).stdout.decode()
        return [line for line in out.splitlines() if line]

    def closure(self, roots: Sequence[str]) -> list[str]:
        """Every store path the roots need, sorted as ``nix-store -qR`` would not: by name."""
        out = b"".join(self.run("nix-store", ["-qR", *batch]).stdout
                       for batch in _batches(roots)).decode()
        return sorted({line for line in out.splitlines() if line})

    def dump_db(self, paths: Sequence[str]) -> bytes:
        """The registration of ``paths`` as ``nix-store --dump-db`` prints it."""
        return b"".join(self.run("nix-store", ["--dump-db", *batch]).stdout
                        for batch in _batches(paths))

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
        sizes = b"".join(self.run("nix-store", ["-q", "--size", *batch]).stdout
                         for batch in _batches(paths)).split()
        (out_dir / "total-nar-size").write_text(f"{sum(int(s) for s in sizes)}\n")
        return out_dir


class LocalNix(Nix):
    """The machine's Nix (``nix-bin``) bound to a private store at ``prefix/store``.

    The store, state and config dirs are created (with a nix.conf for builds
    as any user) if missing; the host's Nix set-up cannot leak in.
    """

    def __init__(self, prefix: Path, *, bin_dir: Path | None = None) -> None:
        self.prefix = Path(prefix)
        self.store_dir = self.prefix / "store"
        self._home = self.prefix / "home"
        super().__init__(prefix_env(self.prefix, home=self._home), bin_dir=bin_dir)
        make_prefix(self.prefix)
        self._home.mkdir(exist_ok=True)


def _batches(args: Sequence[str]) -> list[Sequence[str]]:
    """``args`` in command lines of at most ARGS_PER_CALL (one, maybe empty, if fewer)."""
    return [args[i:i + ARGS_PER_CALL] for i in range(0, len(args), ARGS_PER_CALL)] or [args]


def make_prefix(prefix: Path) -> None:
    """Create ``prefix``'s store, state and config dirs and a nix.conf, if missing."""
    conf_dir = prefix / "etc" / "nix"
    conf_dir.mkdir(parents=True, exist_ok=True)
    conf = conf_dir / "nix.conf"
    if not conf.exists():
        conf.write_text(NIX_CONF)
    # Nix >= 2.10 would silently switch to a chroot store when the state
    # dir is missing; creating it first keeps every version honest.
    (prefix / "var" / "nix").mkdir(parents=True, exist_ok=True)
    (prefix / "store").mkdir(parents=True, exist_ok=True)


def store_nix(store_dir: Path | None, *, create: bool = False) -> Nix:
    """The machine's Nix for the user's store: the one Nix is configured for, or
    ``store_dir`` laid out as a prefix (``S/../var/nix``, ``S/../etc/nix``).

    With ``create``, a missing prefix store is made (as ``LocalNix`` does);
    without, it must exist.  The user's environment is kept (``NIX_PATH``
    included) except what would send Nix to another store.
    """
    if store_dir is None:
        return Nix()
    store_dir = Path(os.path.abspath(store_dir))
    prefix = store_dir.parent
    if store_dir.name != "store":
        raise NixCommandError(
            f"{store_dir} is not a prefix's store dir (it must be named 'store', "
            "as in PREFIX/store)")
    if create:
        make_prefix(prefix)
    elif not store_dir.is_dir():
        raise NixCommandError(f"the store dir {store_dir} does not exist")
    env = {k: v for k, v in os.environ.items() if k != "NIX_REMOTE"}
    env.update(
        NIX_STORE_DIR=str(store_dir),
        NIX_STATE_DIR=str(prefix / "var" / "nix"),
        NIX_LOG_DIR=str(prefix / "var" / "log" / "nix"),
        NIX_CONF_DIR=str(prefix / "etc" / "nix"),
    )
    installed = prefix / "var" / "nix" / "profiles" / "default" / "bin"
    bin_dir = None
    if _find_nix_bin_dir() is None and (installed / "nix-store").exists():
        bin_dir = installed  # a prefix installed by nix-prefix brings its own Nix
    return Nix(env, bin_dir=bin_dir)


def store_path_of(arg: str, store_dir: str) -> str:
    """The store path ``arg`` names: itself, a file inside it, or a link to it
    (like ``./result``), as Nix's ``followLinksToStorePath`` does."""
    for path, store in ((os.path.abspath(arg), store_dir),
                        (os.path.realpath(arg), os.path.realpath(store_dir))):
        if path.startswith(store + "/"):
            return store_dir + "/" + path[len(store) + 1:].split("/")[0]
    raise NixCommandError(f"{arg} is not in the Nix store {store_dir}")


def _find_nix_bin_dir() -> Path | None:
    found = shutil.which("nix-store")
    if not found:
        return None
    return Path(found).parent
