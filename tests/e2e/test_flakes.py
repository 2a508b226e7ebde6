"""Flakes with Nix 2.26 and 2.34 as the shipped Nix, as an unprivileged user would run them.

A local ``path:`` flake whose package the publisher's master holds is
substituted at a relocated prefix from ``nix-prefix serve``, building
nothing; two prefixes used alternately from one HOME each keep their own
eval cache, fetcher cache and narinfo cache (nix.sh's NIX_CACHE_HOME); the
settings for that come from --extra-conf; an uninstall leaves the prefix as
it was.  The flake needs no nixpkgs (no network): its package is a
``builtins.derivation`` built by /bin/sh.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.derivations import with_derivations
from nix_prefix.builder.localnix import LocalNix
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.payload.machine import host_system

from .test_nix_versions import User, ok, shipped, versions_dir  # noqa: F401 - fixtures
from .test_serve import serving
from tests.conftest import NOBODY

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as an unprivileged user"),
]

PACKAGE = """\
derivation {
  name = "flaky"; system = "SYSTEM"; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  args = [ "-c" ''
    mkdir -p $out/bin
    printf '#!/bin/sh\\necho flaky works\\n' > $out/bin/flaky
    chmod +x $out/bin/flaky
  '' ];
}
""".replace("SYSTEM", host_system())

FLAKE = """\
{
  outputs = { self }: {
    packages.SYSTEM.default = import ./package.nix;
  };
}
""".replace("SYSTEM", host_system())


@pytest.fixture(scope="module")
def master(versions_dir: Path) -> dict:  # noqa: F811
    """The publisher's master: the flake's package (with its derivation) built with the
    machine's Nix at a long prefix, as an installer, and the key the server signs with."""
    base = versions_dir / "flakes"
    base.mkdir()
    (base / "package.nix").write_text(PACKAGE)
    nix = LocalNix(base / "a-publisher-master-prefix-longer-than-the-users")
    outs = nix.run("nix-build", ["--no-out-link", str(base / "package.nix")]).stdout.decode()
    info = nix.write_closure_info(outs.split(), base / "closure-info")
    closure, roots = with_derivations(read_closure(info), nix)
    installer = base / "master.sh"
    build_installer(closure, installer, BuildOptions(level=1, roots=roots))
    nix.run("nix-store", ["--generate-binary-cache-key", "publisher", str(base / "publisher.sec"),
                          str(base / "publisher.pub")])
    return {"installer": installer, "sec": base / "publisher.sec",
            "pub": (base / "publisher.pub").read_text().strip()}


def _flake(world: Path) -> Path:
    flake = world / "myflake"
    flake.mkdir()
    (flake / "flake.nix").write_text(FLAKE)
    (flake / "package.nix").write_text(PACKAGE)
    for path in (flake, flake / "flake.nix", flake / "package.nix"):
        os.chown(path, NOBODY, NOBODY)  # Nix writes flake.lock beside flake.nix
    return flake


def _install(user: User, installer: Path, url: str, key: str) -> str:
    """The shipped Nix at the user's prefix, the server as its binary cache, set with
    --extra-conf (the installer itself is not signed, so not --substituter)."""
    return ok(user.install(installer,
                           "--extra-conf", f"substituters = {url}{user.prefix}/store",
                           "--extra-conf", f"trusted-public-keys = {key}",
                           "--extra-conf", "max-jobs = 0"))


def _tarball(flake: Path) -> Path:
    """The flake as a tarball: a flake reference Nix locks by its NAR hash."""
    out = flake.with_suffix(".tar.gz")
    with tarfile.open(out, "w:gz") as tar:
        tar.add(flake, arcname="myflake")
    return out


def _build(user: User, ref: str, env: str = "") -> str:
    """``nix build REF`` at the user's prefix: it may build nothing (max-jobs 0);
    returns the output, which must be in the prefix's store."""
    proc = user.shell(f"{env} nix build --no-link --print-out-paths '{ref}'")
    assert proc.returncode == 0, proc.stderr
    assert "will be built" not in proc.stderr and "building '" not in proc.stderr, proc.stderr
    out = proc.stdout.strip()
    assert out.startswith(f"{user.prefix}/store/") and out.endswith("-flaky"), out
    return out


@pytest.mark.parametrize("version", ["2.26", "2.34"])
def test_a_flake_is_substituted_from_the_server_in_two_prefixes_of_one_home(
        world_dir: Path, shipped: Callable[[str], Path], master: dict,  # noqa: F811
        version: str) -> None:
    installer = shipped(version)
    flake = _flake(world_dir)
    p, q = User(world_dir, "p"), User(world_dir, "q")  # one HOME, two prefixes
    with serving(str(master["installer"]), "--sign-key", str(master["sec"])) as url:
        _install(p, installer, url, master["pub"])
        _install(q, installer, url, master["pub"])
        # Flakes are on by default: nothing on the command line enables them.
        refs = [f"path:{flake}", f"tarball+file://{_tarball(flake)}"]
        first = _build(p, refs[0])
        assert ok(p.shell(f"{first}/bin/flaky")) == "flaky works\n"

        # The other prefix, then the first again, a path: and a tarball flake (which Nix
        # 2.26 and 2.34 both keep in their eval and fetcher caches): each prefix reads and
        # writes its own caches, in the prefix, and the shared HOME stays empty.
        other = _build(q, refs[0])
        assert other.rpartition("/")[2] != first.rpartition("/")[2]
        for ref in refs:
            for user, out in ((p, first), (q, other), (p, first), (q, other)):
                assert _build(user, ref) == out
        for user in (p, q):
            cache = user.prefix / "var/nix-prefix/home/.cache/nix"
            names = sorted(e.name for e in cache.iterdir())
            assert {"eval-cache", "fetcher-cache", "binary-cache"} <= {
                n.partition("-v")[0] for n in names}, names

        # nix profile add (install before 2.27) builds nothing either.
        verb = "install" if version == "2.26" else "add"
        added = p.shell(f"nix profile {verb} {refs[0]} && flaky")
        assert added.returncode == 0, added.stderr
        assert added.stdout.endswith("flaky works\n")
        assert "will be built" not in added.stderr and "building '" not in added.stderr
        # Nothing of either prefix's Nix in the shared HOME.
        assert p.home_entries() == set(), sorted(p.home_entries())

    # Back to the installer's generation, the user's garbage collected: the uninstall
    # leaves the prefix as it was before the install (empty), caches, nix.conf and all.
    ok(p.shell("nix profile rollback && nix profile wipe-history && nix-collect-garbage"))
    gone = p.install(installer, "--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert "kept" not in gone.stderr, gone.stderr
    assert os.listdir(p.prefix) == [], sorted(os.listdir(p.prefix))
    # The other prefix is untouched by all of it.
    assert ok(q.shell(f"{other}/bin/flaky")) == "flaky works\n"
