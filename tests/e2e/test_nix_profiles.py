"""The prefix's profile in either format, Nix's own error lines, which Nix a closure ships,
and the roots of the nix-store that looks: with the machine's real Nix."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nix_prefix.builder import nixchoice
from nix_prefix.builder.errors import BuildError
from nix_prefix.builder.localnix import LocalNix
from nix_prefix.builder.samples import group_libraries
from nix_prefix.installer import deletion, nixstore
from nix_prefix.installer.errors import InstallError
from nix_prefix.installer.prefix import Prefix

PACKAGES = """\
let pkg = name: file: derivation {
  inherit name; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  args = [ "-c" "mkdir -p $out/bin; echo ${name} > $out/bin/${file}" ];
}; in {
  alpha = pkg "alpha-1.0" "same"; beta = pkg "beta-1.0" "same";
  alpha2 = pkg "alpha-2.0" "same"; gamma = pkg "gamma-1.0" "gamma";
}
"""


@pytest.fixture
def prefix(local_nix: LocalNix) -> Prefix:
    p = Prefix(str(local_nix.prefix))
    os.makedirs(p.home)
    os.makedirs(p.profiles_dir)
    return p


def build(nix: LocalNix, attr: str) -> str:
    expr = nix.prefix.parent / "packages.nix"
    expr.write_text(PACKAGES)
    return nix.build_file(expr, attrs=[attr])[0]


def test_a_collision_shows_nix_own_error_lines(local_nix: LocalNix, prefix: Prefix) -> None:
    alpha, beta = build(local_nix, "alpha"), build(local_nix, "beta")
    nix_env = str(local_nix.bin_dir / "nix-env")
    with pytest.raises(InstallError) as e:
        nixstore.set_profile(prefix, nix_env, [alpha, beta])
    message = str(e.value)
    assert message.startswith("nix-env -i failed: error: ")
    # Nix's explanation (the conflicting files), not only its last line.
    assert f"{alpha}/bin/same" in message and f"{beta}/bin/same" in message, message
    assert "user-environment.drv' failed" in message


def test_nix_error_keeps_the_error_block_and_drops_the_noise() -> None:
    stderr = ("warning: something harmless\n\x1b[31;1merror:\x1b[0m builder failed\n"
              "       last 3 log lines:\n       > error: collision\n")
    assert nixstore.nix_error(stderr, 1) == (
        "error: builder failed\n    last 3 log lines:\n    > error: collision")
    assert nixstore.nix_error("just a line\n", 1) == "just a line"
    assert nixstore.nix_error("", 7) == "exit code 7"
    many = "error: x\n" + "".join(f"  line {i}\n" for i in range(40))
    assert nixstore.nix_error(many, 1).endswith("... (26 more lines)")


def test_profiles_in_either_format(local_nix: LocalNix, prefix: Prefix) -> None:
    nix_env = str(local_nix.bin_dir / "nix-env")
    alpha, gamma = build(local_nix, "alpha"), build(local_nix, "gamma")
    nixstore.set_profile(prefix, nix_env, [alpha])
    assert nixstore.profile_format(prefix.profile) == "nix-env"
    assert nixstore.profile_paths(prefix) == {alpha}

    # `nix profile` converts the profile to manifest.json (version 2 for Nix 2.8).
    local_nix.run("nix", ["profile", "install", "--profile", prefix.profile, gamma])
    assert nixstore.profile_format(prefix.profile) == "nix profile"
    assert nixstore.profile_paths(prefix) == {alpha, gamma}

    # An update replaces the same-named package with `nix profile`, keeps the others,
    # and adds one generation only.
    alpha2 = build(local_nix, "alpha2")
    generation = nixstore.profile_generation(prefix)
    nixstore.set_profile(prefix, nix_env, [alpha2], keep_others=True)
    assert nixstore.profile_paths(prefix) == {alpha2, gamma}
    assert nixstore.profile_generation(prefix) == generation + 2
    assert not os.path.lexists(f"{prefix.profile}-{generation + 1}-link")
    assert os.path.lexists(f"{prefix.profile}-{generation}-link")


def test_profile_paths_reads_every_manifest_json_version(tmp_path: Path) -> None:
    prefix = Prefix(str(tmp_path))
    generation = tmp_path / "gen"
    generation.mkdir()
    os.makedirs(prefix.profiles_dir)
    os.symlink(generation, prefix.profile)
    docs = {
        1: {"version": 1, "elements": [{"storePaths": ["/s/a-x"], "active": True, "uri": ""}]},
        2: {"version": 2, "elements": [{"storePaths": ["/s/a-x", "/s/b-x"], "active": True}]},
        3: {"version": 3, "elements": {"x": {"storePaths": ["/s/a-x"], "active": True},
                                       "off": {"storePaths": ["/s/c-x"], "active": False}}},
    }
    for version, doc in docs.items():
        (generation / "manifest.json").write_text(json.dumps(doc))
        expected = {"/s/a-x", "/s/b-x"} if version == 2 else {"/s/a-x"}
        assert nixstore.profile_paths(prefix) == expected
    (generation / "manifest.json").write_text("{not json")
    assert nixstore.profile_paths(prefix) == set()


def test_live_paths_follows_the_other_roots(local_nix: LocalNix, prefix: Prefix) -> None:
    # The machine's nix-store runs from /usr, so its own runtime roots hold nothing
    # here; that the shipped Nix's own exe and maps keep nothing alive is checked by
    # test_nix_versions.py::test_uninstall_removes_the_shipped_nix.  Here: a root in
    # gcroots keeps its path, and nothing else is kept.
    gamma = build(local_nix, "gamma")
    alpha = build(local_nix, "alpha")
    os.makedirs(os.path.join(prefix.state_dir, "gcroots"), exist_ok=True)
    os.symlink(gamma, os.path.join(prefix.state_dir, "gcroots", "keep-gamma"))
    live = deletion.live_paths(prefix, str(local_nix.bin_dir / "nix-store"))
    assert gamma in live and alpha not in live


def write_nix(store: Path, name: str) -> str:
    (store / name / "bin").mkdir(parents=True)
    (store / name / "bin" / "nix-store").write_text("")
    return name


H = "0" * 32


def test_the_newest_nix_is_chosen_and_the_others_stay_out_of_the_profile(
        tmp_path: Path) -> None:
    old = write_nix(tmp_path, f"{H}-nix-2.8.0")
    new = write_nix(tmp_path, f"{'1' * 32}-nix-2.26.3")
    pre = write_nix(tmp_path, f"{'2' * 32}-nix-2.26pre20240101")
    tool = f"{'3' * 32}-hello-2.12"
    names = [old, new, pre, tool]
    choice = nixchoice.choose(names, [old, new, tool], tmp_path, None, roots_given=False)
    assert choice.nix_store == f"{new}/bin/nix-store"
    assert choice.roots == [new, tool]
    assert any("left out of the profile" in n and old in n for n in choice.notes)

    chosen = nixchoice.choose(names, [old, new, tool], tmp_path, str(tmp_path / old / "bin"),
                              roots_given=False)
    assert chosen.nix_store == f"{old}/bin/nix-store" and chosen.roots == [old, tool]
    with pytest.raises(BuildError, match="is not a Nix in the closure"):
        nixchoice.choose(names, [tool], tmp_path, tool, roots_given=False)
    with pytest.raises(BuildError, match="collide in the profile"):
        nixchoice.choose(names, [old, new], tmp_path, None, roots_given=True)
    # A Nix pulled in as a dependency only: still the one that registers.
    assert nixchoice.choose([old, tool], [tool], tmp_path, None, False).nix_store == \
        f"{old}/bin/nix-store"


def test_versions_order_as_nix_compares_them() -> None:
    ordered = ["2.3", "2.8.0", "2.18.1", "2.26pre1", "2.26", "2.26.3", "2.34.8"]
    assert sorted(ordered, key=nixchoice.version_key) == ordered


def test_libraries_listed_by_another_tree_loader_are_grouped() -> None:
    tree = "/c/root/usr/lib/x86_64-linux-gnu"
    listing = f"""\
\tlinux-vdso.so.1 (0x00007f1c78b39000)
\tlibarchive.so.13 => {tree}/libarchive.so.13 (0x00007f1c78a65000)
\tlibstdc++.so.6 => {tree}/libstdc++.so.6 (0x00007f1c76e00000)
\tlibc.so.6 => {tree}/libc.so.6 (0x00007f1c76c0c000)
\t/lib64/ld-linux-x86-64.so.2 => {tree}/ld-linux-x86-64.so.2 (0x00007f1c78b3b000)
"""
    loader = Path(f"{tree}/ld-linux-x86-64.so.2")
    host = group_libraries(Path("/c/root/usr/bin/nix"), listing, loader=loader)
    assert host.interpreter == loader
    assert host.nix == []  # statically linked: an empty group
    assert [p.name for p in host.glibc] == ["libc.so.6"]
    assert [p.name for p in host.gcc] == ["libstdc++.so.6"]
    assert [p.name for p in host.other] == ["libarchive.so.13"]
