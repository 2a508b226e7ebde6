"""The nix-prefix command line: closure, build from roots or a Nix file, inspect, verify.

Every command runs through typer's CliRunner against a small closure built by
the machine's real Nix; what the terminal sees (help, colours, completion) runs
as a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from nix_prefix.builder.cli import app
from nix_prefix.builder.localnix import store_path_of
from nix_prefix.builder.samples import NIX_DIR

from .test_build import assert_one_line_error
from tests.nix_versions import nix_source
from tests.support import build_small
from tests.unit.builder.test_cli import nix_prefix, runner


@pytest.fixture
def small(world_dir: Path):
    return build_small(world_dir)


def store_dir_of(small) -> str:
    return str(small.prefix / "store")


def test_closure_writes_what_nix_says(small, world_dir: Path) -> None:
    out = world_dir / "ci"
    result = nix_prefix("closure", "--store-dir", store_dir_of(small), *small.roots, "-o", out)
    assert result.exit_code == 0, result.output
    paths = small.nix.closure(small.roots)
    assert (out / "store-paths").read_text() == "".join(p + "\n" for p in paths)
    assert (out / "registration").read_bytes() == small.nix.dump_db(paths)
    sizes = small.nix.run("nix-store", ["-q", "--size", *paths]).stdout.split()
    assert (out / "total-nar-size").read_text() == f"{sum(map(int, sizes))}\n"
    assert f"{len(paths)} store paths" in result.output


def test_closure_honours_the_environment_like_nix_does(small, world_dir: Path) -> None:
    """Without --store-dir the machine's Nix decides: NIX_STORE_DIR and friends count."""
    out = world_dir / "ci"
    link = world_dir / "result"
    link.symlink_to(small.roots[0])
    result = nix_prefix("closure", link, "-o", out, "--quiet", env=small.nix.env())
    assert result.exit_code == 0, result.output
    assert result.output == ""
    expected = small.nix.closure([small.roots[0]])
    assert (out / "store-paths").read_text().split() == expected


def test_closure_of_something_not_in_the_store(small, world_dir: Path) -> None:
    result = nix_prefix("closure", "--store-dir", store_dir_of(small), world_dir,
                        "-o", world_dir / "ci")
    assert_one_line_error(result, "--store-dir")
    result = nix_prefix("closure", "--store-dir", world_dir / "nope" / "store", "x",
                        "-o", world_dir / "ci")
    assert_one_line_error(result, "does not exist")


def test_store_path_of_follows_links_and_subpaths(small, world_dir: Path) -> None:
    store = store_dir_of(small)
    root = small.roots[0]
    (world_dir / "a").symlink_to(root)
    (world_dir / "b").symlink_to(world_dir / "a")
    assert store_path_of(str(world_dir / "b"), store) == root
    assert store_path_of(root + "/bin/hello-nix-prefix", store) == root
    assert store_path_of(str(world_dir / "b" / "bin"), store) == root


def test_build_from_roots_equals_build_from_closure_info(small, world_dir: Path) -> None:
    """Same closure, same registration (--dump-db), same roots: the same bytes."""
    out = world_dir / "roots.sh"
    link = world_dir / "result"
    link.symlink_to(small.roots[0])
    result = nix_prefix("build", "--store-dir", store_dir_of(small), "--roots", link,
                        small.roots[1], "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == small.installer.read_bytes()


def test_build_from_a_nix_file(small, world_dir: Path) -> None:
    out = world_dir / "file.sh"
    result = nix_prefix("build", "--store-dir", store_dir_of(small), "-f", NIX_DIR / "small.nix",
                        "-A", "hello", "-A", "lonely", "-o", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == small.installer.read_bytes()
    # The summary: what was written, how big, how long, where it installs, what next.
    assert "building" in result.output and "nix-build" in result.output
    summary = result.output[result.output.index("wrote "):]
    for needle in ("3 store paths", "KiB NAR ->", "KiB installer (", "%, xz) in",
                   f"installs into {small.prefix}", f"sh {out}"):
        assert needle in summary, summary


def test_build_from_a_nix_file_only_the_profile_is_the_attribute(small, world_dir: Path) -> None:
    out = world_dir / "hello.sh"
    result = nix_prefix("build", "--store-dir", store_dir_of(small), "-f", NIX_DIR / "small.nix",
                        "-A", "hello", "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    doc = json.loads(nix_prefix("inspect", out, "--json").output)
    hello = small.roots[0].rpartition("/")[2]
    assert doc["manifest"]["roots"] == [hello]
    assert hello.endswith("hello-nix-prefix")


def test_build_of_a_broken_nix_file(small, world_dir: Path) -> None:
    bad = world_dir / "bad.nix"
    bad.write_text("{ x = throw \"no such thing\"; }\n")
    result = nix_prefix("build", "--store-dir", store_dir_of(small), "-f", bad, "-A", "x",
                        "-o", world_dir / "o.sh", "--quiet")
    assert result.exit_code == 1
    assert result.output.splitlines()[-1].startswith("nix-prefix: error: nix-build")
    assert not (world_dir / "o.sh").exists()


@pytest.mark.parametrize("args, needle", [
    (["-f", "x.nix", "ci"], "-f builds its own roots"),
    (["--roots"], "--roots needs"),
    (["ci", "ci2"], "give one CLOSURE_INFO"),
    ([], "give one CLOSURE_INFO"),
    (["-A", "hello", "ci"], "-A and --argstr go with -f"),
    (["-f", "x.nix", "--argstr", "novalue"], "NAME=VALUE"),
])
def test_build_usage_errors(world_dir: Path, args: list[str], needle: str,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    (world_dir / "x.nix").write_text("{}\n")
    monkeypatch.chdir(world_dir)
    result = nix_prefix("build", *args, "-o", world_dir / "o.sh")
    assert_one_line_error(result, needle)
    assert result.exit_code == 2


def test_inspect_text_and_json(small) -> None:
    result = nix_prefix("inspect", small.installer)
    assert result.exit_code == 0, result.output
    text = result.output
    store = store_dir_of(small)
    limit = len(store) - len("/store")
    assert f"store dir:     {store}" in text
    assert f"len(P) <= {limit} bytes" in text
    assert "payload/0000.tar.xz" in text
    for path in small.nix.closure(small.roots):
        assert path in text
    assert text.count("(root)") == len(small.roots)

    result = nix_prefix("inspect", small.installer, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["relocation"] == {"maxStoreDirLength": len(store), "maxPrefixLength": limit}
    assert doc["size"] == small.installer.stat().st_size
    assert doc["manifest"]["storeDir"] == store
    assert len(doc["manifest"]["paths"]) == len(small.nix.closure(small.roots))
    assert doc["defaultPrefix"] == str(small.prefix)


def test_verify_passes_and_catches_damage(small, world_dir: Path) -> None:
    result = nix_prefix("verify", small.installer)
    assert result.exit_code == 0, result.output
    assert "is intact" in result.output
    data = bytearray(small.installer.read_bytes())
    start = data.index(b"\xfd7zXZ")  # the first xz chunk
    data[start + 200] ^= 0xFF
    bad = world_dir / "bad.sh"
    bad.write_bytes(bytes(data))
    result = nix_prefix("verify", bad)
    assert_one_line_error(result, str(bad), "is damaged")
    assert result.exit_code == 3
    result = nix_prefix("inspect", bad)  # the installer's own reader refuses it as well
    assert_one_line_error(result, "is damaged")
    assert result.exit_code == 3
    result = nix_prefix("inspect", world_dir / "nope.sh")
    assert_one_line_error(result, "nope.sh")
    assert result.exit_code == 2  # no such file: usage, not a damaged installer


def test_sample_builds_into_a_new_store(world_dir: Path) -> None:
    store = world_dir / "s" / "store"
    result = runner.invoke(app, ["sample", "--store-dir", str(store)])
    assert result.exit_code == 0, result.output
    roots = result.stdout.split()
    assert len(roots) == 3
    assert all(r.startswith(f"{store}/") and os.path.lexists(r) for r in roots)
    assert any(re.search(r"-nix-self-contained-2\.\d+\.\d+$", r) for r in roots)
    assert (store.parent / "etc/nix/nix.conf").exists()


def test_sample_packages_another_nix(world_dir: Path) -> None:
    # Debian trixie's nix-bin (fetched by .ci/setup.sh): Nix's libraries linked
    # statically, its glibc newer than the machine's, listed by its own loader.
    store = world_dir / "s" / "store"
    result = runner.invoke(app, ["sample", "--store-dir", str(store),
                                 "--nix", str(nix_source("2.26"))])
    assert result.exit_code == 0, result.output
    nix = next(r for r in result.stdout.split() if "-nix-self-contained-" in r)
    assert nix.endswith("-nix-self-contained-2.26.3")
    version = subprocess.run([f"{nix}/bin/nix-store", "--version"], capture_output=True,
                             text=True, env={}, check=True)
    assert version.stdout == "nix-store (Nix) 2.26.3\n"
    result = nix_prefix("sample", "--store-dir", store, "--nix", world_dir / "nowhere")
    assert_one_line_error(result, "is not a Nix binary")


def test_retarget_through_the_cli(small, world_dir: Path) -> None:
    out = world_dir / "short.sh"
    prefix = world_dir / "s"
    result = nix_prefix("retarget", small.installer, "--prefix", prefix, "-o", out)
    assert result.exit_code == 0, result.output
    assert f"for {prefix}/store" in result.output
    doc = json.loads(nix_prefix("inspect", out, "--json").output)
    assert doc["manifest"]["storeDir"] == f"{prefix}/store"
    assert doc["relocation"]["maxStoreDirLength"] == len(store_dir_of(small))
    assert nix_prefix("verify", out, "-q").exit_code == 0
    too_long = nix_prefix("retarget", small.installer, "--prefix", world_dir / ("x" * 40),
                          "-o", world_dir / "long.sh")
    assert too_long.exit_code == 1 and "nix-prefix: error: " in too_long.output


@pytest.mark.slow
def test_demo_runs_end_to_end(world_dir: Path) -> None:
    result = runner.invoke(app, ["demo", "--workdir", str(world_dir / "demo")],
                           env={"NIX_PREFIX_LEVEL": "0"})
    assert result.exit_code == 0, result.output
    assert "Demo done" in result.output
    assert (world_dir / "demo" / "nix" / "var/nix/profiles/default/bin/nix-store").exists()

