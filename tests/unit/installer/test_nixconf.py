"""Settings given at install time (--extra-conf, --nix-conf), the env scripts that keep
Nix's caches per prefix, and the default of -j.  A real installer given them is in
tests/e2e/test_nix_conf.py; the Nix-run scenarios are in tests/e2e/test_flakes.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nix_prefix.installer import envfiles, nixconf, preflight
from nix_prefix.installer.prefix import Prefix
from nix_prefix.payload import machine


def test_settings_a_prefix_cannot_take_are_named() -> None:
    def why(line: str, userns: bool = True) -> str | None:
        return nixconf.first_problem([line], lambda: userns)

    assert "another store" in (why("store = daemon") or "")
    assert "another store" in (why("extra-store = /nix") or "")
    assert "group's users" in (why("build-users-group = nixbld") or "")
    assert why("build-users-group =") is None
    assert "user namespaces" in (why("sandbox = true", userns=False) or "")
    assert why("sandbox = true", userns=True) is None
    assert why("sandbox = false", userns=False) is None
    for fine in ("max-jobs = 8", "use-sqlite-wal = false  # NFS", "# a comment", "",
                 "experimental-features = nix-command flakes", "include /etc/other.conf"):
        assert why(fine) is None, fine


def test_store_eq_without_spaces_is_malformed() -> None:
    # Nix itself splits on whitespace: "store=local" is an illegal line, named as such.
    assert "not a nix.conf line" in (nixconf.first_problem(["store=local"]) or "")


def test_given_lines_replace_ours_of_the_same_name(tmp_path: Path) -> None:
    prefix = Prefix(str(tmp_path))
    plain = envfiles.nix_conf(prefix)
    assert "experimental-features = nix-command flakes" in plain.splitlines()
    conf = envfiles.nix_conf(prefix, None, ["sandbox = relaxed", "max-jobs = 3",
                                            "experimental-features = nix-command"])
    lines = conf.splitlines()
    assert lines.count("sandbox = relaxed") == 1 and "sandbox = false" not in lines
    assert "experimental-features = nix-command flakes" not in lines
    assert lines[-3:] == ["sandbox = relaxed", "max-jobs = 3",
                          "experimental-features = nix-command"]
    assert "build-users-group =" in lines and "substituters =" in lines


def _scripts(tmp_path: Path) -> tuple[Prefix, Path]:
    """nix.sh and nix.fish of a prefix at TMP/p, and a `nix` on PATH that prints
    where its caches would go."""
    prefix = Prefix(str(tmp_path / "p"))
    os.makedirs(prefix.profile_d)
    os.makedirs(prefix.conf_dir)
    for path, content in envfiles.planned_files(prefix):
        Path(path).write_text(content)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nix"
    fake.write_text('#!/bin/sh\necho "cache=${XDG_CACHE_HOME-} nix=${NIX_CACHE_HOME-} '
                    'data=${XDG_DATA_HOME-} home=$HOME"\n')
    fake.chmod(0o755)
    return prefix, bin_dir


@pytest.mark.parametrize("shell", ["sh", "bash", "fish"])
def test_env_scripts_keep_nix_caches_in_the_prefix_and_others_untouched(
        tmp_path: Path, shell: str) -> None:
    if shell == "fish" and not os.path.exists("/usr/bin/fish"):
        pytest.skip("no fish here")
    prefix, bin_dir = _scripts(tmp_path)
    script = "nix.fish" if shell == "fish" else "nix.sh"
    source = "source" if shell == "fish" else "."
    body = (f"{source} {prefix.profile_d}/{script}\n"
            "nix build x\nnix develop x\nnix profile list\n"
            "echo \"outside=$XDG_CACHE_HOME\"\n")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path / "home"),
           "XDG_CACHE_HOME": "/users/own/cache"}
    proc = subprocess.run([shell, "-c", body], capture_output=True, text=True, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    cache = f"{prefix.home}/.cache"
    data = f"{prefix.home}/.local/share"
    build, develop, profile, outside = proc.stdout.splitlines()
    # Every Nix reads NIX_CACHE_HOME from 2.25 on; an older one XDG_CACHE_HOME, set
    # for `nix` alone, and not where the command runs your programs with it.
    assert build == f"cache={cache} nix={cache}/nix data={data} home={env['HOME']}"
    assert develop == f"cache=/users/own/cache nix={cache}/nix data= home={env['HOME']}"
    assert profile == f"cache={cache} nix={cache}/nix data={data} home={prefix.home}"
    assert outside == "outside=/users/own/cache"


def test_jobs_default_to_the_cpus_bounded_by_chunks_and_memory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Manifest:
        compression = "xz"
        chunks = list(range(17))

    monkeypatch.setattr(preflight, "usable_cpus", lambda: 64)
    monkeypatch.setattr(preflight, "available_memory", lambda: 64 << 30)
    assert preflight.default_jobs(None, Manifest()) == 17  # a 64-core login node
    monkeypatch.setattr(preflight, "available_memory", lambda: 600 << 20)
    assert preflight.default_jobs(None, Manifest()) == 4  # 300 MiB / 72 MiB per decoder
    monkeypatch.setattr(preflight, "available_memory", lambda: 1 << 20)
    assert preflight.default_jobs(None, Manifest()) == 1
    monkeypatch.setattr(preflight, "usable_cpus", lambda: 2)
    monkeypatch.setattr(preflight, "available_memory", lambda: None)
    assert preflight.default_jobs(None, Manifest()) == 2
    assert preflight.default_jobs("9", Manifest()) == 9  # NIX_PREFIX_JOBS as given


def test_available_memory_reads_meminfo_and_a_cgroup_limit(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemAvailable:  2048 kB\n")
    cgroups = tmp_path / "cgroup"
    with open("/proc/self/cgroup") as f:
        own = [line.strip()[3:] for line in f if line.startswith("0::")]
    assert machine.available_memory(str(meminfo), str(cgroups)) == 2048 * 1024
    if own:
        group = cgroups / own[0].lstrip("/")
        group.mkdir(parents=True)
        (group / "memory.max").write_text("1048576\n")
        (group / "memory.current").write_text("524288\n")
        assert machine.available_memory(str(meminfo), str(cgroups)) == 524288

