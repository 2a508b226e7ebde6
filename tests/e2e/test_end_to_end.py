"""End to end: a self-contained Nix closure, installed by an unprivileged user, works."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.localnix import LocalNix
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.builder.samples import build_nix_closure, build_small_closure

from tests.conftest import NOBODY
from tests.support import as_user, tree_snapshot

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as an unprivileged user"),
]


def as_nobody(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*as_user(NOBODY), *cmd],
        capture_output=True, text=True, env=env, check=False)


def minimal_bin(directory: Path) -> Path:
    """A PATH with a Python and a shell only: no Nix of the machine's."""
    directory.mkdir()
    for tool in ("python3", "sh"):
        os.symlink(f"/usr/bin/{tool}" if tool == "python3" else "/bin/sh", directory / tool)
    directory.chmod(0o755)
    return directory


def registration_records(text: str) -> dict[str, list[str]]:
    lines, records, i = text.split("\n"), {}, 0
    while i < len(lines) - 1:
        n = int(lines[i + 4])
        records[lines[i]] = lines[i + 5:i + 5 + n]
        i += 5 + n
    return records


@pytest.mark.parametrize("build_name, install_name, level", [
    # Fast xz levels keep the builds cheap (the default level is the demo's,
    # test_cli.py::test_demo_runs_end_to_end).
    ("nix", "nix", 0),
    # Built at a long prefix, installed (relocated) into a shorter one.
    ("nix-built-at-a-longer-prefix-for-relocation", "n", 1),
], ids=["same-prefix", "relocated"])
def test_self_contained_nix_installed_by_unprivileged_user(
        world_dir: Path, build_name: str, install_name: str, level: int | None) -> None:
    build_prefix = world_dir / build_name
    nix = LocalNix(build_prefix)
    roots = [build_nix_closure(nix), *build_small_closure(nix)]
    info = nix.write_closure_info(roots, world_dir / "closure-info")
    installer = world_dir / "installer.sh"
    build_installer(read_closure(info), installer, BuildOptions(level=level))
    installer.chmod(0o755)
    os.rename(build_prefix, world_dir / "nix.build")  # the source store is gone

    prefix = world_dir / install_name
    prefix.mkdir()
    os.chown(prefix, NOBODY, NOBODY)
    home = world_dir / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    env = {"PATH": str(minimal_bin(world_dir / "bin")), "HOME": str(home), "USER": "nobody"}
    outside_before = {k: v for k, v in tree_snapshot(world_dir).items()
                      if not k.startswith(f"{install_name}/")}

    first = as_nobody(["sh", str(installer), "-y", "-p", str(prefix)], env)
    assert first.returncode == 0, first.stderr
    assert f". {prefix}/etc/profile.d/nix.sh" in first.stderr
    outside_after = {k: v for k, v in tree_snapshot(world_dir).items()
                     if not k.startswith(f"{install_name}/") and k != install_name}
    outside_before.pop(install_name, None)
    assert outside_after == outside_before, "the installer wrote outside the prefix"

    profile_bin = prefix / "var/nix/profiles/default/bin"
    nix_store = profile_bin / "nix-store"
    # The installed Nix loads every library from the prefix's store, none from the host:
    # its own ld.so (not the host's, as `ldd` would use) lists what it maps.
    trace = subprocess.run([str(nix_store)], capture_output=True, text=True, check=True,
                           env={"LD_TRACE_LOADED_OBJECTS": "1"})
    # A relocated store dir is slash-padded inside the binaries: compare canonically.
    loaded = [re.sub("/+", "/", p) for p in re.findall(r"(/\S+) \(0x", trace.stdout)]
    assert len(loaded) > 10, trace.stdout
    assert all(lib.startswith(f"{prefix}/store/") for lib in loaded), trace.stdout

    use = f". {prefix}/etc/profile.d/nix.sh && "
    verify = as_nobody(["sh", "-c", use + "nix-store --verify --check-contents"], env)
    assert verify.returncode == 0, verify.stderr
    assert "modified" not in verify.stderr and "error" not in verify.stderr

    built_text = (info / "registration").read_text()
    records = registration_records(
        built_text.replace(f"{build_prefix}/store/", f"{prefix}/store/"))
    paths = " ".join(records)
    query = as_nobody(["sh", "-c", use + "for p in " + paths +
                       "; do echo \"== $p\"; nix-store -q --references $p; done"], env)
    assert query.returncode == 0, query.stderr
    got: dict[str, list[str]] = {}
    for line in query.stdout.splitlines():
        if line.startswith("== "):
            current = line[3:]
            got[current] = []
        else:
            got[current].append(line)
    assert {p: sorted(r) for p, r in got.items()} == {p: sorted(r) for p, r in records.items()}

    expr = ('derivation { name = "built-in-prefix"; system = builtins.currentSystem; '
            'builder = "/bin/sh"; args = [ "-c" "echo built by the installed nix > $out" ]; }')
    build = as_nobody(["sh", "-c", use + f"nix-build --no-out-link -E '{expr}'"], env)
    assert build.returncode == 0, build.stderr
    out = build.stdout.strip()
    assert out.startswith(f"{prefix}/store/") and out.endswith("-built-in-prefix")
    assert Path(out).read_text() == "built by the installed nix\n"
    hello = as_nobody(["sh", "-c", use + "hello-nix-prefix"], env)
    assert hello.stdout == "hello from nix-prefix\n", hello.stderr

    store_before = tree_snapshot(prefix / "store")
    again = as_nobody(["sh", str(installer), "-y", "-p", str(prefix)], env)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr
    assert tree_snapshot(prefix / "store") == store_before
