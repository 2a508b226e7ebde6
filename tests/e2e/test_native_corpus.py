"""A corpus of derivation corner cases: is the retargeted store what a native build gives?

tests/corpus/corner-cases.nix (scripts with ``#!`` lines, .pc/.la/.desktop and
config text, three outputs, fixed outputs flat and recursive, toFile,
builtins.path, filterSource, passAsFile, an evaluation that reads a built
output with ``builtins.readFile`` and one that imports it, a script with a
binary payload appended, UTF-16 text, NUL-separated data, a large text file)
is built by real Nix at a long store dir S1, retargeted exactly to a shorter
Q (by ``retarget --exact`` and by the installer itself with ``-p Q``), and
compared path by path with the same expressions built natively at Q: the
share of paths whose NAR hash equals the native build's, and whether
``nix-build`` at Q has anything left to build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.derivations import check_exact, with_derivations
from nix_prefix.builder.localnix import LocalNix, prefix_env
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.builder.retarget import retarget_exact
from nix_prefix.payload import registration, textfile
from nix_prefix.payload.retarget import padded_store_dir

from tests.support import REPO, run_installer

CORPUS = REPO / "tests" / "corpus"
S1_NAME = "s1-a-long-store-dir-for-the-corpus-of-corner-cases"
# Paths holding a file that is not text and names the store dir: they keep
# the same-length padding (offsets inside matter), so they cannot match.
BINARY = {"libfoo-lib", "self-extracting", "utf16", "nul-separated"}
PROFILE_PATHS = ("-user-environment", "-user-environment.drv", "-env-manifest.nix")
# The shares reached (matching paths / paths): the test fails below them.
# Slash padding everywhere gave 27 of 40 paths, 27 of the 36 without binaries;
# the canonical store dir in text gives every path without binaries.
FLOOR = {"all": 36 / 40, "text_only": 1.0}


@dataclass
class Share:
    """How many retargeted paths equal the native build's, overall and without BINARY."""

    matched: list[str]
    differ: list[str]

    def of(self, names: list[str]) -> float:
        return len([n for n in names if n in self.matched]) / len(names)

    @property
    def all(self) -> float:
        return self.of(self.matched + self.differ)

    @property
    def text_only(self) -> float:
        return self.of([n for n in self.matched + self.differ if _name(n) not in BINARY])


def _name(base: str) -> str:
    return base[33:]


def _nar_hashes(nix_env: dict[str, str], paths: list[str]) -> dict[str, str]:
    """Base name -> NAR hash of ``paths`` as the store's Nix registered them."""
    dump = subprocess.run(["nix-store", "--dump-db", *paths], env=nix_env, capture_output=True,
                          check=True).stdout.decode()
    return {i.path.rpartition("/")[2]: i.nar_hash for i in registration.parse(dump)}


def _nix_at(prefix: Path, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    home = prefix / "home"
    home.mkdir(exist_ok=True)
    return subprocess.run([tool, *args], capture_output=True, text=True,
                          env=prefix_env(prefix, home=home), check=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The corpus built at S1 (an installer with its derivations) and natively at Q."""
    base = tmp_path_factory.mktemp("corpus")
    expr_dir = base / "corpus"
    shutil.copytree(CORPUS, expr_dir)
    expr = expr_dir / "corner-cases.nix"

    s1 = LocalNix(base / S1_NAME)
    outs = s1.build_file(expr)
    info = s1.write_closure_info(outs, base / "closure-info")
    closure, roots = with_derivations(read_closure(info), s1)
    check_exact(closure)
    installer = base / "with-drvs.sh"
    build_installer(closure, installer, BuildOptions(compression="xz", level=1, roots=roots,
                                                     derivations=True))

    q = base / "q"
    native = LocalNix(q)
    native_outs = native.build_file(expr)
    # An output attribute prints as DRV!OUTPUT.
    drvs = {d.partition("!")[0]
            for d in native.run("nix-instantiate", [str(expr)]).stdout.decode().split()}
    native_hashes = _nar_hashes(native.env(), native.closure(native_outs + sorted(drvs)))
    os.rename(q, base / "q-native")
    return {"base": base, "expr": expr, "q": q, "installer": installer, "s1": s1.store_dir,
            "closure_info": info, "native": native_hashes, "paths": len(closure.infos)}


def _compare(corpus: dict, route: str) -> Share:
    q = corpus["q"]
    # Every valid path at Q but the profile's (nix-env's user environment).
    installed = {n: h for n, h in _nar_hashes(prefix_env(q, home=q / "home"), []).items()
                 if not n.endswith(PROFILE_PATHS)}
    assert len(installed) == corpus["paths"], sorted(installed)
    native = corpus["native"]
    matched = sorted(n for n, h in installed.items() if native.get(n) == h)
    share = Share(matched, sorted(set(installed) - set(matched)))
    # The figure goes to the CI log whatever the outcome.
    print(f"\ncorpus ({route}): {len(matched)}/{len(installed)} paths ({share.all:.0%}) equal "
          f"the native build at Q; without binaries {share.text_only:.0%}; differ: "
          + ", ".join(_name(n) for n in share.differ))
    return share


def _builds_nothing(corpus: dict) -> bool:
    dry = _nix_at(corpus["q"], "nix-build", "--dry-run", "--no-out-link", str(corpus["expr"]))
    assert dry.returncode == 0, dry.stderr
    return "will be built" not in dry.stderr and "will be fetched" not in dry.stderr


def _check(corpus: dict, route: str, capsys: pytest.CaptureFixture) -> None:
    q = corpus["q"]
    try:
        verify = _nix_at(q, "nix-store", "--verify", "--check-contents")
        assert verify.returncode == 0 and "modified" not in verify.stderr, verify.stderr
        with capsys.disabled():
            share = _compare(corpus, route)
            nothing = _builds_nothing(corpus)
            print(f"corpus ({route}): nix-build at Q builds {'nothing' if nothing else 'some'}")
        assert share.all >= FLOOR["all"] and share.text_only >= FLOOR["text_only"], share
        assert nothing
    finally:
        os.rename(q, q.with_name(f"q-{route}"))


@pytest.mark.slow
def test_retarget_exact_matches_the_native_build(corpus: dict,
                                                 capsys: pytest.CaptureFixture) -> None:
    out = corpus["base"] / "exact.sh"
    retarget_exact(corpus["installer"], str(corpus["q"]), out, level=1)
    done = run_installer(out, "-y")
    assert done.returncode == 0, done.stderr
    _check(corpus, "retarget --exact", capsys)


@pytest.mark.slow
def test_install_time_exact_relocation_matches_the_native_build(
        corpus: dict, capsys: pytest.CaptureFixture) -> None:
    done = run_installer(corpus["installer"], "-y", "-p", str(corpus["q"]))
    assert done.returncode == 0, done.stderr
    _check(corpus, "install -p", capsys)


@pytest.mark.slow
def test_plain_relocation_writes_the_canonical_store_dir_into_text(corpus: dict) -> None:
    """Without the derivations the hash parts stay, but every text file and symlink
    gets the canonical store dir and every binary the padded one."""
    q = corpus["q"]
    plain = corpus["base"] / "plain.sh"
    build_installer(read_closure(corpus["closure_info"]), plain,
                    BuildOptions(compression="xz", level=1))
    try:
        done = run_installer(plain, "-y", "-p", str(q))
        assert done.returncode == 0, done.stderr
        verify = _nix_at(q, "nix-store", "--verify", "--check-contents")
        assert verify.returncode == 0 and "modified" not in verify.stderr, verify.stderr
        old = str(corpus["s1"]).encode()
        canonical = f"{q}/store".encode()
        padded = padded_store_dir(old.decode(), canonical.decode()).encode()
        seen = {"text": 0, "binary": 0, "symlink": 0}
        for top in read_closure(corpus["closure_info"]).infos:
            base = top.path.rpartition("/")[2]
            for src, dst in _walk(corpus["s1"] / base, q / "store" / base):
                if src.is_symlink():
                    target = os.readlink(src).encode()
                    assert os.readlink(dst).encode() == target.replace(old, canonical), dst
                    seen["symlink"] += old in target
                    continue
                data = src.read_bytes()
                kind = "text" if textfile.is_text(data) else "binary"
                new = canonical if kind == "text" else padded
                assert dst.read_bytes() == data.replace(old, new), dst
                seen[kind] += old in data
        # Each kind occurs, with the store dir inside.
        assert all(seen.values()), seen
    finally:
        os.rename(q, q.with_name("q-plain"))


def _walk(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """Every file and symlink under ``src`` (itself if it is one), paired with ``dst``'s."""
    if src.is_symlink() or src.is_file():
        return [(src, dst)]
    pairs = []
    for dirpath, dirnames, filenames in os.walk(src):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            if full.is_symlink() or full.is_file():
                pairs.append((full, dst / full.relative_to(src)))
    return pairs
