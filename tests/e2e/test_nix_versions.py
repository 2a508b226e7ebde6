"""Nix 2.8, 2.26 and 2.34 as the shipped Nix: what a user does with each, as an unprivileged user.

Each installer ships a self-contained Nix (tests/nix_versions.py says where
each version comes from) plus the small sample, built at a longer prefix so
that every install here relocates.  One installer per version is built once
per session and shared.  What these tests check is the table in
docs/installing.md ("Supported Nix versions").
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.localnix import LocalNix
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.builder.samples import build_nix_closure, build_small_closure
from nix_prefix.payload.manifest import Manifest

from tests.conftest import NOBODY, reachable_dir
from tests.nix_versions import VERSIONS, nix_source
from tests.support import as_user, tree_snapshot

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as an unprivileged user"),
]

FULL_VERSION = {"2.8": "2.8.0", "2.26": "2.26.3", "2.34": "2.34.8"}

# Two packages a user builds with the installed Nix and adds to the profile.
PACKAGES = """\
let tool = name: derivation {
  inherit name; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  args = [ "-c" ''
    mkdir -p $out/bin
    printf '#!/bin/sh\\necho %s works\\n' ${name} > $out/bin/${name}
    chmod +x $out/bin/${name}
  '' ];
}; in { x = tool "tool-x"; y = tool "tool-y"; }
"""


@pytest.fixture(scope="session")
def versions_dir() -> Iterator[Path]:
    with reachable_dir("np-versions-") as path:
        yield path


def _build(base: Path, name: str, roots_of: Callable[[LocalNix], list[str]],
           options: BuildOptions) -> tuple[Path, Manifest]:
    prefix = base / name
    nix = LocalNix(prefix)
    info = nix.write_closure_info(roots_of(nix), base / f"{name}-closure-info")
    out = base / f"{name}.sh"
    result = build_installer(read_closure(info), out, options)
    out.chmod(0o755)
    os.rename(prefix, base / f"{name}.gone")  # the installers must stand alone
    return out, result.manifest


@pytest.fixture(scope="session")
def shipped(versions_dir: Path) -> Callable[[str], Path]:
    """The installer shipping Nix VERSION (and the small sample), built once per session."""
    built: dict[str, Path] = {}

    def get(version: str) -> Path:
        if version not in built:
            source = nix_source(version)
            built[version], _ = _build(
                versions_dir, f"nix-{version}-built-at-a-longer-prefix",
                lambda nix: [build_nix_closure(nix, source), *build_small_closure(nix)],
                BuildOptions(level=0))
        return built[version]

    return get


class User:
    """An unprivileged user with a HOME, a PATH without Nix, and a prefix of their own."""

    def __init__(self, world: Path, prefix_name: str = "p") -> None:
        self.world = world
        self.home = world / "home"
        self.prefix = world / prefix_name
        for d in (self.home, self.prefix):
            d.mkdir(exist_ok=True)
            os.chown(d, NOBODY, NOBODY)
        bin_dir = world / "bin"
        if not bin_dir.exists():
            bin_dir.mkdir()
            os.symlink("/usr/bin/python3", bin_dir / "python3")
            os.symlink("/bin/sh", bin_dir / "sh")
            bin_dir.chmod(0o755)
        self.packages = world / "packages.nix"
        self.packages.write_text(PACKAGES)
        self.env = {"PATH": str(bin_dir), "HOME": str(self.home), "USER": "nobody"}

    def run(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*as_user(NOBODY), *cmd], capture_output=True, text=True,
                              errors="replace", env=self.env, check=False, cwd=self.world)

    def install(self, installer: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("sh", str(installer), "-y", "-p", str(self.prefix), *args)

    def shell(self, script: str) -> subprocess.CompletedProcess[str]:
        """``script`` in sh after sourcing the prefix's nix.sh, as the user would."""
        return self.run("sh", "-ec", f". {self.prefix}/etc/profile.d/nix.sh\n{script}")

    def build_package(self, attr: str) -> str:
        proc = self.shell(f"nix-build --no-out-link {self.packages} -A {attr}")
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def nix_version(self) -> str:
        proc = self.shell("nix-store --version")
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().rpartition(" ")[2]

    def home_entries(self) -> set[str]:
        return {str(p.relative_to(self.home)) for p in self.home.rglob("*")}


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


# Nix writes this into the real HOME whatever its settings (docs/installing.md):
# nix-env makes ~/.nix-defexpr (src/nix-env/nix-env.cc, main).  Its caches go to the
# prefix (nix.sh: NIX_CACHE_HOME, and XDG_CACHE_HOME for an older `nix`).
ALWAYS_MADE = {".nix-defexpr"}


def assert_home_kept(user: User) -> None:
    tops = {e.split("/")[0] for e in user.home_entries()}
    assert tops <= ALWAYS_MADE, f"Nix wrote {tops - ALWAYS_MADE} under HOME"


@pytest.mark.parametrize("version", VERSIONS)
def test_shipped_nix_installs_builds_and_keeps_to_the_prefix(
        world_dir: Path, shipped: Callable[[str], Path], version: str) -> None:
    installer = shipped(version)
    user = User(world_dir)
    outside = {k: v for k, v in tree_snapshot(world_dir).items()
               if not k.startswith("p/") and k != "p"}
    ok(user.install(installer))
    assert {k: v for k, v in tree_snapshot(world_dir).items()
            if not k.startswith("p/") and k != "p"} == outside, "wrote outside the prefix"
    assert user.nix_version() == FULL_VERSION[version]

    # Its own ld.so lists what it maps: every library from the prefix's store
    # (slash-padded by the relocation, so compared canonically).
    nix_store = user.prefix / "var/nix/profiles/default/bin/nix-store"
    trace = subprocess.run([str(nix_store)], capture_output=True, text=True, check=True,
                           env={"LD_TRACE_LOADED_OBJECTS": "1"})
    loaded = [re.sub("/+", "/", p) for p in re.findall(r"(/\S+) \(0x", trace.stdout)]
    assert len(loaded) > 10 and all(p.startswith(f"{user.prefix}/store/") for p in loaded), \
        trace.stdout

    verify = user.shell("nix-store --verify --check-contents")
    assert verify.returncode == 0 and "modified" not in verify.stderr, verify.stderr
    assert ok(user.shell("hello-nix-prefix")) == "hello from nix-prefix\n"

    # nix-env -i and nix profile install go into the prefix's default profile.
    x = user.build_package("x")
    assert x.startswith(f"{user.prefix}/store/")
    assert ok(user.shell(f"nix-env -i {x} && tool-x")).endswith("tool-x works\n")
    assert "tool-x" in ok(user.shell("nix-env -q"))
    y = user.build_package("y")
    assert ok(user.shell(
        f"nix profile install --extra-experimental-features nix-command {y} && tool-y"
    )).endswith("tool-y works\n")
    profile = user.prefix / "var/nix/profiles/default"
    assert (profile / "manifest.json").exists()
    assert ok(user.shell("command -v tool-x; command -v tool-y")).split() == [
        f"{profile}/bin/tool-x", f"{profile}/bin/tool-y"]
    assert_home_kept(user)

    # The same installer again, over a profile that `nix profile` now owns.
    again = user.install(installer)
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr
    assert ok(user.shell("tool-x && tool-y")) == "tool-x works\ntool-y works\n"

    # A second prefix of the same user: its nix.sh sends nix-env to its own profile.
    second = User(world_dir, "q")
    ok(second.install(installer))
    x2 = second.build_package("x")
    assert x2.startswith(f"{second.prefix}/store/")
    assert ok(second.shell(f"nix-env -i {x2} && command -v tool-x")).endswith(
        f"{second.prefix}/var/nix/profiles/default/bin/tool-x\n")
    assert x2 not in (profile / "manifest.json").read_text()  # the first prefix's is as it was
    assert_home_kept(user)


@pytest.mark.parametrize("version", VERSIONS)
def test_uninstall_removes_the_shipped_nix(world_dir: Path, shipped: Callable[[str], Path],
                                           version: str) -> None:
    user = User(world_dir)
    ok(user.install(shipped(version)))
    store = user.prefix / "store"
    assert len(os.listdir(store)) > 5
    proc = user.install(shipped(version), "--uninstall")
    assert proc.returncode == 0, proc.stderr
    # The uninstalling nix-store's own /proc/PID/exe and maps keep nothing alive.
    assert "kept" not in proc.stderr, proc.stderr
    # The prefix was made before the install: the last uninstall leaves it empty.
    assert not store.exists() and os.listdir(user.prefix) == [], os.listdir(user.prefix)


def test_update_across_versions_with_profiles_in_either_format(
        world_dir: Path, shipped: Callable[[str], Path]) -> None:
    user = User(world_dir)
    ok(user.install(shipped("2.8")))
    x = user.build_package("x")
    ok(user.shell(f"nix-env -i {x}"))  # a nix-env profile (manifest.nix)

    # 2.26 migrates 2.8's database and replaces 2.8 in the profile; tool-x stays.
    ok(user.install(shipped("2.26"), "-u"))
    assert user.nix_version() == "2.26.3"
    assert ok(user.shell("tool-x")) == "tool-x works\n"
    listed = ok(user.shell("nix-env -q")).split()
    assert [n for n in listed if n.startswith("nix-self-contained")] == [
        "nix-self-contained-2.26.3"], listed

    y = user.build_package("y")
    ok(user.shell(f"nix profile install --extra-experimental-features nix-command {y}"))
    profile = user.prefix / "var/nix/profiles/default"
    assert json.loads((profile / "manifest.json").read_text())["version"] == 3

    # A `nix profile` profile (manifest.json): 2.34 replaces 2.26 with nix profile.
    before = os.readlink(profile)
    generations = len(os.listdir(profile.parent))
    ok(user.install(shipped("2.34"), "-u"))
    assert user.nix_version() == "2.34.8"
    assert ok(user.shell("tool-x && tool-y")) == "tool-x works\ntool-y works\n"
    elements = json.loads((profile / "manifest.json").read_text())["elements"]
    nixes = [p for e in elements.values() for p in e["storePaths"] if "nix-self-contained" in p]
    assert len(nixes) == 1 and nixes[0].endswith("-nix-self-contained-2.34.8"), elements
    # One new generation: the one that removing 2.26 made is gone again.
    assert len(os.listdir(profile.parent)) == generations + 1

    ok(user.install(shipped("2.34"), "--rollback"))
    assert os.readlink(profile) == before
    assert user.nix_version() == "2.26.3"
    ok(user.install(shipped("2.34"), "--uninstall"))
    assert user.nix_version() == "2.26.3"
    assert ok(user.shell("tool-x && tool-y")) == "tool-x works\ntool-y works\n"
    assert_home_kept(user)


def test_a_closure_with_two_nixes_ships_the_newest(versions_dir: Path, world_dir: Path) -> None:
    def roots_of(nix: LocalNix) -> list[str]:
        return [build_nix_closure(nix, None), build_nix_closure(nix, nix_source("2.26")),
                *build_small_closure(nix)]

    installer, manifest = _build(versions_dir, "two-nixes-at-a-longer-prefix", roots_of,
                                 BuildOptions(level=0))
    assert manifest.nix_store.endswith("-nix-self-contained-2.26.3/bin/nix-store")
    assert not any(r.endswith("-nix-self-contained-2.8.0") for r in manifest.roots)
    assert any(p.name.endswith("-nix-self-contained-2.8.0") for p in manifest.paths)

    user = User(world_dir)
    ok(user.install(installer))  # no collision in the profile
    assert user.nix_version() == "2.26.3"
