"""Relocation: one installer, any prefix no longer than the one it was built for."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.localnix import LocalNix, prefix_env
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.builder.retarget import retarget
from nix_prefix.builder.samples import NIX_DIR, build_c_program
from nix_prefix.payload import hashes, nar, registration

from tests.support import Built, build_small, run_installer

LONG = "a-build-prefix-long-enough-to-relocate-from"


def canonical(path: str) -> str:
    return re.sub("/+", "/", path)


# -- the rewrite itself ---------------------------------------------------------------------


# -- real closures, real installs ------------------------------------------------------------

def registered(prefix: Path) -> dict[str, registration.ValidPathInfo]:
    """The prefix's registration as the host's Nix dumps it."""
    env = prefix_env(prefix, home=prefix / "var/nix-prefix/home")

    def nix_store(*args: str) -> str:
        return subprocess.run(["nix-store", *args], env=env, capture_output=True, text=True,
                              check=True).stdout

    paths = nix_store("-q", "--requisites", str(prefix / "var/nix/profiles/default")).split()
    return {i.path: i for i in registration.parse(nix_store("--dump-db", *paths))}


@pytest.fixture
def long_built(world_dir: Path) -> Built:
    built = build_small(world_dir, name=LONG)
    built.move_build_away()
    return built


def test_installs_into_a_shorter_prefix(long_built: Built, world_dir: Path) -> None:
    prefix = world_dir / "short"
    first = run_installer(long_built.installer, "-y", "-p", str(prefix))
    assert first.returncode == 0, first.stderr
    assert "retargeting" in first.stderr
    # The gzip file that hides the store dir is named, not silently broken.
    assert "where.gz" in first.stderr and "warning" in first.stderr

    hello = subprocess.run([prefix / "var/nix/profiles/default/bin/hello-nix-prefix"],
                           capture_output=True, text=True, check=True)
    assert hello.stdout == "hello from nix-prefix\n"
    old_store = str(long_built.prefix / "store")
    for path in (prefix / "store").iterdir():
        if path.name.startswith(".") or path.name.endswith(".drv"):
            continue
        for dirpath, _, files in os.walk(path):
            for f in files:
                full = os.path.join(dirpath, f)
                target = os.readlink(full) if os.path.islink(full) else None
                if target is not None:
                    assert old_store not in target
                elif not f.endswith(".gz"):
                    assert old_store.encode() not in Path(full).read_bytes(), full

    # Nix agrees with every byte (host Nix on the prefix: this closure has no Nix).
    env = prefix_env(prefix, home=prefix / "var/nix-prefix/home")
    verify = subprocess.run(["nix-store", "--verify", "--check-contents"], env=env,
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and "modified" not in verify.stderr, verify.stderr
    for path, info in registered(prefix).items():
        digest, size = nar.hash_path(os.fsencode(path))
        assert (hashes.format_sha256(digest), size) == (info.nar_hash, info.nar_size)

    again = run_installer(long_built.installer, "-y", "-p", str(prefix))
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr


def test_a_longer_prefix_is_refused_and_nothing_is_written(long_built: Built,
                                                           world_dir: Path) -> None:
    prefix = world_dir / ("x" * (len(LONG) + 1))
    proc = run_installer(long_built.installer, "-y", "-p", str(prefix))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "too long" in lines[0] and "at most" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not prefix.exists()


def test_retarget_is_deterministic_and_installs(long_built: Built, world_dir: Path) -> None:
    prefix = world_dir / "rt"
    one, two = world_dir / "one.sh", world_dir / "two.sh"
    retarget(long_built.installer, str(prefix), one)
    retarget(long_built.installer, str(prefix), two)
    assert one.read_bytes() == two.read_bytes()
    proc = run_installer(one, "-y")  # its default prefix is the new one
    assert proc.returncode == 0, proc.stderr
    assert (prefix / "var/nix/profiles/default/bin/hello-nix-prefix").exists()
    hello = subprocess.run([prefix / "var/nix/profiles/default/bin/hello-nix-prefix"],
                           capture_output=True, text=True, check=True)
    assert hello.stdout == "hello from nix-prefix\n"
    env = prefix_env(prefix, home=prefix / "var/nix-prefix/home")
    verify = subprocess.run(["nix-store", "--verify", "--check-contents"], env=env,
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and "modified" not in verify.stderr, verify.stderr

    # A retargeted installer relocates again, to any prefix as short as the first one.
    again = run_installer(one, "-y", "-p", str(world_dir / "rt2"))
    assert again.returncode == 0, again.stderr
    # And the closureInfo route gives an installer whose paths hash the same.
    from_info = world_dir / "from-info.sh"
    moved = long_built.prefix.with_name(long_built.prefix.name + ".build")
    retarget(long_built.closure_info, str(prefix), from_info, store_root=moved / "store")
    assert _hashes(from_info) == _hashes(one)


def _hashes(installer: Path) -> dict[str, str]:
    from nix_prefix.payload.container import InstallerFile
    source = InstallerFile(str(installer))
    try:
        return {p.name: p.nar_hash for p in source.manifest.paths}
    finally:
        source.close()


def test_c_program_runs_after_relocation_with_the_build_store_gone(world_dir: Path) -> None:
    nix = LocalNix(world_dir / LONG)
    root = build_c_program(nix)
    info = nix.write_closure_info([root], world_dir / "c-info")
    installer = world_dir / "c.sh"
    build_installer(read_closure(info), installer, BuildOptions(level=1))
    os.rename(world_dir / LONG, world_dir / "gone")
    prefix = world_dir / "c"
    proc = run_installer(installer, "-y", "-p", str(prefix))
    assert proc.returncode == 0, proc.stderr
    program = prefix / "var/nix/profiles/default/bin/hello-c"
    run = subprocess.run([program], capture_output=True, text=True, check=False,
                         env={"PATH": "/nonexistent"})
    assert run.returncode == 0, run.stderr
    first, second = run.stdout.splitlines()
    assert first == "hello from C"
    read_from = canonical(second.removeprefix("greeting read from "))
    assert read_from.startswith(f"{prefix}/store/") and read_from.endswith("-c-greeting")
    interp = subprocess.run(["readelf", "-l", str(program.resolve())], capture_output=True,
                            text=True, check=True).stdout
    assert canonical(re.search(r"interpreter: (\S+)\]", interp).group(1)).startswith(
        f"{prefix}/store/")


def test_nixpkgs_recipe_parses_and_walks_stdenv_stages(local_nix: LocalNix) -> None:
    local_nix.run("nix-instantiate", ["--parse", str(NIX_DIR / "nix-for-prefix.nix")])
    expr = (f"let s = (import {NIX_DIR}/stdenv-stages.nix).stagesOf; "
            "st1 = { n = 1; __bootPackages = { __raw = true; stdenv = { n = 0; }; }; }; "
            "st2 = { n = 2; __bootPackages = { stdenv = st1; }; }; "
            "st3 = { n = 3; __bootPackages = { stdenv = st2; }; }; "
            "alone = { n = 9; }; "
            "in [ (map (x: x.n) (s st3)) (map (x: x.n) (s alone)) ]")
    out = local_nix.run("nix-instantiate", ["--eval", "--strict", "--json", "-E", expr])
    assert out.stdout.strip() == b"[[3,2,1],[9]]"

