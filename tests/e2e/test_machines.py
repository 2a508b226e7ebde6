"""Installers for other machines: aarch64 (and riscv64) built on this x86_64 machine,
then installed, verified, built with, retargeted, cached, served and uninstalled under
qemu-user emulation, as an unprivileged user.

.ci/emulation.sh registers qemu-user with binfmt_misc (so aarch64 programs, the
shipped Nix among them, run as if native) and fetches Debian's arm64 nix-bin of
bookworm (2.8) and sid (2.34), riscv64's of trixie (2.26), and a Python of each
machine, which runs the installer: it is what tells the installer which machine it
is on.  Without emulation these tests skip, saying why.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.errors import BuildError
from nix_prefix.builder.localnix import LocalNix, prefix_env
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.builder.samples import build_c_program, build_nix_closure, build_small_closure
from nix_prefix.payload.container import InstallerFile

from .test_serve import serving
from tests.conftest import NOBODY, reachable_dir
from tests.pythons import CACHE
from tests.support import as_user, build_small

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as an unprivileged user"),
]

EMULATION = CACHE / "emulation"
# machine -> (its Python in the emulation cache, the Nixes there by version)
PYTHONS = {"aarch64": "python3.11", "riscv64": "python3.13"}
NIXES = {"aarch64": ["2.8", "2.34"], "riscv64": ["2.26"]}
# qemu-user runs a program of another machine inside this machine's kernel, which
# cannot load that machine's seccomp filter (Nix 2.34 loads one for every build:
# "unable to load seccomp BPF program"); on the real machine the filter stays on.
EMULATED_CONF = ["--extra-conf", "filter-syscalls = false"]


def emulation_missing(machine: str) -> str | None:
    """Why ``machine``'s programs cannot run here, or None if they can."""
    handler = Path(f"/proc/sys/fs/binfmt_misc/qemu-{machine}")
    try:
        if not handler.read_text().startswith("enabled"):
            return f"qemu-{machine} is registered with binfmt_misc but disabled"
    except OSError:
        return (f"no qemu-{machine} handler in binfmt_misc (.ci/emulation.sh registers one, "
                "as root)")
    for tree in [EMULATION / "qemu", EMULATION / machine / "python",
                 *(EMULATION / machine / f"nix-{v}"
                                                   for v in NIXES[machine])]:
        if not (tree / "root/usr/bin").is_dir():
            return f"{tree} is missing: run .ci/emulation.sh"
    return None


def needs(machine: str) -> None:
    reason = emulation_missing(machine)
    if reason is not None:
        pytest.skip(f"{machine} emulation: {reason}")


class Machine:
    """An emulated machine for an unprivileged user: its Python first on PATH (so the
    installer runs on it), a HOME, and this world's dirs."""

    def __init__(self, world: Path, machine: str) -> None:
        self.machine = machine
        self.world = world
        root = world / f"{machine}-python"
        if not root.exists():  # the cache is root's own; the user gets a copy
            shutil.copytree(EMULATION / machine / "python/root", root, symlinks=True)
        bin_dir = world / f"{machine}-bin"
        bin_dir.mkdir(exist_ok=True)
        qemu = bin_dir / f"qemu-{machine}-static"
        shutil.copy(EMULATION / f"qemu/root/usr/bin/qemu-{machine}-static", qemu)
        # Python's own loader and libraries are in its tree, not at / (-L); what Python
        # runs (the shipped Nix) is found by binfmt_misc as any program is.
        python = bin_dir / "python3"
        python.write_text(f'#!/bin/sh\nexec {qemu} -L {root} '
                          f'{root}/usr/bin/{PYTHONS[machine]} "$@"\n')
        python.chmod(0o755)
        self.home = world / f"{machine}-home"
        self.home.mkdir(exist_ok=True)
        os.chown(self.home, NOBODY, NOBODY)
        self.env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(self.home),
                    "USER": "nobody"}

    def run(self, *cmd: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*as_user(NOBODY), *cmd], capture_output=True, text=True,
                              errors="replace", env=env or self.env, cwd=self.world,
                              check=False, timeout=900)

    def prefix(self, name: str) -> Path:
        """An empty dir the user owns, to install into."""
        path = self.world / name
        path.mkdir()
        os.chown(path, NOBODY, NOBODY)
        return path

    def shell(self, prefix: Path, script: str) -> subprocess.CompletedProcess[str]:
        """``script`` in sh after sourcing the prefix's nix.sh, as the user would."""
        return self.run("sh", "-ec", f". {prefix}/etc/profile.d/nix.sh\n{script}")


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def world() -> Iterator[Path]:
    with reachable_dir("np-machines-") as path:
        yield path


def build_for(world: Path, machine: str, version: str) -> tuple[Path, list[str]]:
    """An installer shipping ``machine``'s Nix ``version`` and the small sample, built on
    this machine at a longer prefix than any the tests install into, which is then
    moved away (the installer stands alone); and the base names of its roots."""
    name = f"{machine}-nix-{version.replace('.', '')}-built-at-a-long-prefix"
    installer = world / f"{name}.sh"
    if installer.exists():
        return installer, InstallerFile(str(installer)).manifest.roots
    nix = LocalNix(world / name)
    tree = EMULATION / machine / f"nix-{version}" / "root"
    roots = [build_nix_closure(nix, tree), *build_small_closure(nix)]
    info = nix.write_closure_info(roots, world / f"{name}-closure-info")
    result = build_installer(read_closure(info), installer,
                             BuildOptions(compression="zstd", level=3))
    assert result.manifest.system == f"{machine}-linux"
    installer.chmod(0o755)
    os.rename(world / name, world / f"{name}.gone")
    return installer, [r.rpartition("/")[2] for r in roots]


NIX_CONF = """build-users-group =
sandbox = false
filter-syscalls = false
substituters = {url}
trusted-public-keys = {key}
require-sigs = true
"""


def substitute_the_nix(m: Machine, installed: Path, at: Path, url: str, key: str,
                       nix_name: str) -> None:
    """The emulated Nix installed at ``installed`` fills the empty store at ``at`` from the
    binary cache ``url``, with signatures required: the shipped Nix's whole closure,
    retargeted to ``at`` by nix-prefix; then that copy of Nix runs from there."""
    (at / "etc/nix").mkdir(parents=True)
    (at / "etc/nix/nix.conf").write_text(NIX_CONF.format(url=url, key=key))
    for d in (at, at / "etc", at / "etc/nix"):
        os.chown(d, NOBODY, NOBODY)
    env = {**prefix_env(at, home=m.home), "PATH": "/usr/bin:/bin", "USER": "nobody"}
    nix_store = str(installed / "var/nix/profiles/default/bin/nix-store")
    ok(m.run(nix_store, "-r", f"{at}/store/{nix_name}", "--max-jobs", "0", env=env))
    ok(m.run(nix_store, "--verify", "--check-contents", env=env))
    # The copy at ``at`` runs against its own store: it lists the paths it came with.
    listed = ok(m.run(f"{at}/store/{nix_name}/bin/nix-store", "-q", "--requisites",
                      f"{at}/store/{nix_name}", env=env))
    assert f"{at}/store/{nix_name}" in listed.split()


@pytest.mark.parametrize("version", NIXES["aarch64"])
def test_an_aarch64_installer_installs_builds_and_goes_under_emulation(
        world: Path, version: str) -> None:
    """Built here, installed by an aarch64 Python into a relocated prefix as an
    unprivileged user: its aarch64 Nix verifies every path, says it is aarch64-linux,
    builds, and the install is taken back whole by --uninstall (once what the user
    built is deleted: that would be kept)."""
    needs("aarch64")
    m = Machine(world, "aarch64")
    installer, roots = build_for(world, "aarch64", version)
    prefix = m.prefix(f"a64-{version.replace('.', '')}")
    ok(m.run("sh", str(installer), "-y", "-p", str(prefix), *EMULATED_CONF))
    nix = next(r for r in roots if "nix-self-contained" in r)
    assert "aarch64" in subprocess.run(["file", "-L", f"{prefix}/store/{nix}/bin/nix"],
                                       capture_output=True, text=True, check=True).stdout
    script = f"""
        nix-store --verify --check-contents
        nix-instantiate --eval -E builtins.currentSystem
        nix-build --no-out-link -E 'derivation {{ name = "built-on-{version}";
          system = builtins.currentSystem; builder = "/bin/sh";
          args = [ "-c" "echo built > $out" ]; }}'
        hello-nix-prefix
    """
    out = ok(m.shell(prefix, script)).split()
    assert out[0] == '"aarch64-linux"'
    assert out[1].startswith(f"{prefix}/store/") and out[1].endswith(f"-built-on-{version}")
    assert Path(out[1]).read_text() == "built\n"
    assert "hello" in " ".join(out[2:])

    # What the user built is theirs: --uninstall would keep it (and the database with it),
    # so the user collects it first.  Its build log stays: theirs too.
    ok(m.shell(prefix, "nix-store --gc"))
    assert not Path(out[1]).exists()
    gone = m.run("sh", str(installer), "-p", str(prefix), "--uninstall", "-y")
    ok(gone)
    left = [str(p.relative_to(prefix)) for p in prefix.rglob("*") if not p.is_dir()]
    assert len(left) == 1 and re.fullmatch(
        rf"var/log/nix/drvs/../[a-z0-9]{{30}}-built-on-{re.escape(version)}\.drv\.bz2", left[0]), \
        (left, gone.stderr)


def test_an_aarch64_closure_is_retargeted_cached_and_served(world: Path) -> None:
    """The aarch64 installer retargeted (checked whole by the aarch64 Python), made a
    signed binary cache for another prefix, and served for a third: at each, the
    emulated Nix substitutes the shipped Nix's closure, whose ELF files nix-prefix
    rewrote, and that Nix then runs from there."""
    needs("aarch64")
    m = Machine(world, "aarch64")
    installer, roots = build_for(world, "aarch64", "2.8")
    nix = next(r for r in roots if "nix-self-contained" in r)
    home = m.prefix("a64-home")
    ok(m.run("sh", str(installer), "-y", "-p", str(home), *EMULATED_CONF))

    keys = world / "aarch64-publisher"
    subprocess.run(["nix-store", "--generate-binary-cache-key", "aarch64-publisher-1",
                    f"{keys}.sec", f"{keys}.pub"], check=True)
    key = Path(f"{keys}.pub").read_text().strip()
    cli = [str(Path(sys.executable).parent / "nix-prefix")]

    retargeted = world / "a64-retargeted.sh"
    q1 = world / "a64-q1"
    subprocess.run([*cli, "retarget", str(installer), "--prefix", str(q1), "-o",
                    str(retargeted), "-q"], check=True)
    manifest = InstallerFile(str(retargeted)).manifest
    assert (manifest.system, manifest.store_dir) == ("aarch64-linux", f"{q1}/store")
    checked = m.run("sh", str(retargeted), "--check")
    ok(checked)
    assert checked.stderr.startswith(f"OK: {retargeted} is intact"), checked.stderr

    cache, q2 = world / "a64-cache", world / "a64-q2"
    subprocess.run([*cli, "cache", str(installer), "--prefix", str(q2), "-o", str(cache),
                    "--sign-key", f"{keys}.sec", "-q"], check=True)
    substitute_the_nix(m, home, q2, f"file://{cache}", key, nix)

    q3 = world / "a64-q3"
    with serving(str(installer), "--sign-key", f"{keys}.sec") as url:
        substitute_the_nix(m, home, q3, f"{url}{q3}/store", key, nix)


def test_each_installer_refuses_the_other_machine_before_writing(world: Path) -> None:
    """An x86_64 installer run by an aarch64 Python, and an aarch64 installer run by
    this machine's: exit 4, one line naming both machines, nothing written."""
    needs("aarch64")
    m = Machine(world, "aarch64")
    native = build_small(world, compression="zstd", name="x86-64-small").installer
    native.chmod(0o755)
    aarch64_installer, _ = build_for(world, "aarch64", "2.8")
    for installer, env, machines in (
            (native, m.env, ("x86_64-linux", "aarch64-linux")),
            (aarch64_installer, {**m.env, "PATH": "/usr/bin:/bin"},
             ("aarch64-linux", "x86_64-linux"))):
        prefix = world / f"refused-{installer.stem}"
        proc = m.run("sh", str(installer), "-y", "-p", str(prefix), env=env)
        assert proc.returncode == 4, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert f"this installer is for {machines[0]}, but this machine is {machines[1]}" \
            in lines[0]
        assert not prefix.exists()


def test_a_closure_mixing_machines_is_refused_unless_asked_for(world: Path) -> None:
    """An aarch64 Nix and an x86_64 program in one closure: the build names the file of
    the other machine; --allow-mixed-systems packs it, for the Nix's machine."""
    needs("aarch64")
    nix = LocalNix(world / "mixed")
    roots = [build_nix_closure(nix, EMULATION / "aarch64/nix-2.8/root"), build_c_program(nix)]
    closure = read_closure(nix.write_closure_info(roots, world / "mixed-closure-info"))
    with pytest.raises(BuildError) as refused:
        build_installer(closure, world / "mixed.sh", BuildOptions(compression="zstd"))
    assert "is for x86_64, but the closure is for aarch64" in str(refused.value)
    assert "--allow-mixed-systems" in refused.value.hint
    assert not (world / "mixed.sh").exists()
    result = build_installer(closure, world / "mixed.sh",
                             BuildOptions(compression="zstd", mixed_systems=True))
    assert result.manifest.system == "aarch64-linux"


def test_a_riscv64_installer_installs_and_verifies_under_emulation(world: Path) -> None:
    """riscv64 the same way: trixie's nix-bin 2.26 for riscv64, installed by a riscv64
    Python into a relocated prefix, verifies every path and builds."""
    needs("riscv64")
    m = Machine(world, "riscv64")
    installer, _ = build_for(world, "riscv64", "2.26")
    prefix = m.prefix("rv-226")
    ok(m.run("sh", str(installer), "-y", "-p", str(prefix), *EMULATED_CONF))
    out = ok(m.shell(prefix, """
        nix-store --verify --check-contents
        nix-instantiate --eval -E builtins.currentSystem
        nix-build --no-out-link -E 'derivation { name = "built-on-riscv64";
          system = builtins.currentSystem; builder = "/bin/sh";
          args = [ "-c" "echo built > $out" ]; }'
    """)).split()
    assert out[0] == '"riscv64-linux"'
    assert Path(out[1]).read_text() == "built\n"
