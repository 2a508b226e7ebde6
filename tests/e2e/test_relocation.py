"""Relocation: one installer, any prefix no longer than the one it was built for."""

from __future__ import annotations

import gzip
import io
import os
import re
import subprocess
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.localnix import LocalNix, prefix_env
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.builder.retarget import retarget
from nix_prefix.builder.samples import NIX_DIR, build_c_program
from nix_prefix.payload import hashes, nar, registration, rewrite
from nix_prefix.payload.manifest import Manifest, ManifestError
from nix_prefix.payload.retarget import RetargetError, padded_store_dir

from tests.support import Built, build_small, feed_in_pieces, run_installer

LONG = "a-build-prefix-long-enough-to-relocate-from"


def canonical(path: str) -> str:
    return re.sub("/+", "/", path)


# -- the rewrite itself ---------------------------------------------------------------------

def test_padded_store_dir_keeps_length_and_shape() -> None:
    padded = padded_store_dir("/tmp/nix-build-longprefix/store", "/home/u/n/store")
    assert padded == "/home/u/n/////////////////store"
    assert len(padded) == len("/tmp/nix-build-longprefix/store")
    with pytest.raises(RetargetError, match="longer"):
        padded_store_dir("/a/store", "/abc/store")


@settings(max_examples=300)
@given(st.lists(st.sampled_from([b"x", b"/old/store", b"/old/st", b"ore/", b"\0", b"/old"]),
                max_size=30),
       st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=10))
def test_stream_rewriter_equals_a_whole_replace(parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    rw = rewrite.Rewriter(b"/old/store", b"/new//////")
    assert feed_in_pieces(rw, data, cuts) == data.replace(b"/old/store", b"/new//////")
    assert rw.count == data.count(b"/old/store")


def test_rewriter_writes_the_canonical_store_dir_into_text_and_pads_binaries(
        tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "script").write_bytes(b"#!/old/store/abc-sh/bin/sh\n")
    (tree / "lib.so").write_bytes(b"\x7fELF\x00RUNPATH=/old/store/abc-x/lib\x00")
    (tree / "lib.jar").write_bytes(b"PK /old/store inside a stored member")
    os.symlink("/old/store/abc-x/y", tree / "link")
    expected = tmp_path / "e"
    expected.mkdir()
    (expected / "script").write_bytes(b"#!/n/store/abc-sh/bin/sh\n")
    (expected / "lib.so").write_bytes(b"\x7fELF\x00RUNPATH=/n///store/abc-x/lib\x00")
    (expected / "lib.jar").write_bytes(b"PK /old/store inside a stored member")
    os.symlink("/n/store/abc-x/y", expected / "link")
    hasher = nar.NarHasher()
    relocator = rewrite.PathRewriter(hasher, b"/old/store", b"/n///store")
    nar.dump_path(os.fsencode(tree), relocator)
    assert relocator.count == 3
    assert hasher.digest() == nar.hash_path(os.fsencode(expected))[0]


def test_a_retargeted_payload_is_retargeted_again_in_both_forms(tmp_path: Path) -> None:
    # Retargeted before to /a/store (padded /a/////store in binaries): text holds
    # the canonical form, binaries the padded one; both become the new store dir.
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "conf").write_bytes(b"dir=/a/store/abc-x and /a/////store/abc-y\n")
    (tree / "bin").write_bytes(b"\x00/a/////store/abc-x\x00")
    expected = tmp_path / "e"
    expected.mkdir()
    (expected / "conf").write_bytes(b"dir=/bb/store/abc-x and /bb/store/abc-y\n")
    (expected / "bin").write_bytes(b"\x00/bb////store/abc-x\x00")
    hasher = nar.NarHasher()
    nar.dump_path(os.fsencode(tree), rewrite.PathRewriter(hasher, b"/a/////store",
                                                          b"/bb////store"))
    assert hasher.digest() == nar.hash_path(os.fsencode(expected))[0]
    assert rewrite.canonical(b"/a/b////store") == b"/a/b/store"


def test_hidden_references_are_found_in_compressed_and_checksummed_files() -> None:
    needle = b"/old/store"
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.txt", b"see /old/store/abc-x " * 50)
    cases = {
        "gzip": gzip.compress(b"path: /old/store/abc-x\n"),
        "archive": zipped.getvalue(),
        "pyc": b"\x00\x00co_filename /old/store/abc-x/lib.py",
    }
    for kind, data in cases.items():
        assert rewrite.hidden_reference(kind, data, needle), kind
    assert rewrite.hidden_reference("gzip", gzip.compress(b"nothing here"), needle) is None
    assert rewrite.hidden_reference("gzip", b"not gzip at all", needle) is None


def test_manifest_embedded_store_dir_must_be_a_padding_of_the_store_dir() -> None:
    m = Manifest("/a/b/store", "x86_64-linux", "xz", [], [], [],
                 embedded_store_dir="/a/b////store")
    assert Manifest.from_json(m.to_json()).max_store_dir_length == len("/a/b////store")
    bad = Manifest("/a/b/store", "x86_64-linux", "xz", [], [], [],
                   embedded_store_dir="/a/c////store")
    with pytest.raises(ManifestError, match="embeddedStoreDir"):
        Manifest.from_json(bad.to_json())


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
    assert "relocating" in first.stderr
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
