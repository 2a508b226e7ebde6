"""The installer's --prefix retargets exactly when the payload holds the derivations.

Built with real Nix at a long S1 (the expressions of test_exact_retarget.py),
packed with the derivations, the build store moved away, then installed by
the installer itself at a shorter S2: a Nix at S2 evaluating the same
expressions finds every .drv and output already there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import Closure, read_closure
from nix_prefix.builder.derivations import check_exact
from nix_prefix.builder.errors import BuildError
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.builder.retarget import retarget, retarget_exact
from nix_prefix.installer import install as install_mod
from nix_prefix.installer.errors import InstallError
from nix_prefix.installer.install import install_steps, new_run, plan_lines, receipt_plan
from nix_prefix.installer.prefix import Prefix
from nix_prefix.installer.ui import UI
from nix_prefix.payload import derivation, hashes, nar, storepaths_ca
from nix_prefix.payload import retarget as retarget_mod
from nix_prefix.payload.container import InstallerFile
from nix_prefix.payload.registration import ValidPathInfo

from .test_exact_retarget import ATTRS, assert_nothing_to_build, build_at_s1, nix_at
from tests.support import run_installer


def manifest_of(installer: Path):
    f = InstallerFile(str(installer))
    try:
        return f.manifest
    finally:
        f.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("exact-install")
    expr, s1, _, _, info, closure, roots = build_at_s1(
        base, "s1-a-build-prefix-longer-than-the-targets")
    check_exact(closure)
    installer = base / "with-drvs.sh"
    # Small chunks: the first pass reads only those holding derivations and texts.
    build_installer(closure, installer,
                    BuildOptions(compression="xz", level=1, roots=roots, derivations=True,
                                 chunk_size=1024))
    # The exact retarget of the builder, for S2: what the installer must give too.
    s2 = base / "s2"
    expected = retarget_exact(installer, str(s2), base / "expected.sh", level=1).manifest
    plain = base / "plain.sh"
    build_installer(read_closure(info), plain, BuildOptions(compression="xz", level=1))
    # Nothing may still need the build store.
    shutil.move(str(s1), str(base / "s1.build"))
    return {"base": base, "expr": expr, "s1": s1, "s2": s2, "installer": installer,
            "expected": expected, "plain": plain}


@pytest.mark.slow
def test_the_manifest_says_it_holds_the_derivations(built: dict) -> None:
    assert manifest_of(built["installer"]).derivations is True
    assert manifest_of(built["plain"]).derivations is False
    info = run_installer(built["installer"], "--info")
    assert "derivations:   yes" in info.stdout


@pytest.mark.slow
def test_install_at_another_prefix_is_what_a_native_build_gives(built: dict) -> None:
    s2 = built["s2"]
    done = run_installer(built["installer"], "-y", "-p", str(s2))
    assert done.returncode == 0, done.stderr
    assert "reading the derivations" in done.stderr
    # The first pass is made once: main hands its result to the checks, the plan
    # and the install.
    assert done.stderr.count("reading the derivations:") == 1

    # The same store paths, NAR hashes, references and derivers as retarget --exact gives.
    expected = built["expected"]
    installed = {p.name for p in os.scandir(s2 / "store") if not p.name.startswith(".")
                 and "env-manifest" not in p.name and "user-environment" not in p.name}
    assert installed == {p.name for p in expected.paths}
    # The store dir is in every store path's fingerprint: no name is kept.
    assert not installed & {p.name for p in manifest_of(built["installer"]).paths}
    for p in expected.paths:
        path = f"{s2}/store/{p.name}"
        assert nix_at(s2, "nix-store", "-q", "--hash", path).stdout.strip() == p.nar_hash
        assert nix_at(s2, "nix-store", "-q", "--deriver", path).stdout.strip() == (
            f"{s2}/store/{p.deriver}" if p.deriver else "unknown-deriver")
        assert sorted(nix_at(s2, "nix-store", "-q", "--references", path).stdout.split()) == (
            sorted(f"{s2}/store/{r}" for r in p.references))

    # nix-instantiate at S2 gives the installed .drv and output paths.
    inst = nix_at(s2, "nix-instantiate", str(built["expr"]), *ATTRS)
    assert inst.returncode == 0, inst.stderr
    drvs = inst.stdout.split()
    outs = nix_at(s2, "nix-store", "-q", "--outputs", *drvs).stdout.split()
    every_drv = nix_at(s2, "nix-store", "-qR", *drvs).stdout.split()
    assert len(every_drv) == 6  # 4 .drv and 2 toFile texts
    for path in drvs + outs + every_drv:
        assert path.startswith(f"{s2}/store/")
        assert path.rpartition("/")[2] in installed, path

    # The store verifies, contents included; nothing to build.
    verify = nix_at(s2, "nix-store", "--verify", "--check-contents")
    assert verify.returncode == 0, verify.stderr
    assert all(line.startswith(("reading the Nix store", "checking "))
               for line in verify.stderr.splitlines()), verify.stderr
    assert_nothing_to_build(s2, built["expr"], outs)
    profile = s2 / "var/nix/profiles/default/bin/b"
    run = nix_at(s2, str(profile))
    assert run.returncode == 0 and "lib" in run.stdout and "configured by" in run.stdout, run

    # Run again: nothing to do (no -u needed, the profile holds the new names).
    again = run_installer(built["installer"], "-y", "-p", str(s2))
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr

    # The receipt names the new paths: uninstall takes every one of them out.
    gone = run_installer(built["installer"], "-y", "--uninstall", "-p", str(s2))
    assert gone.returncode == 0, gone.stderr
    # The last uninstall takes out all the install made (issue 13): only the HOME
    # that nix_at gave Nix here is left.
    assert sorted(os.listdir(s2)) == ["home"], sorted(os.listdir(s2))


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["write:5", "renamed:3", "before-load-db:1", "after-load-db:1",
                                    "before-profile:1"])
def test_a_crash_then_a_rerun_gives_the_exact_store(built: dict, moment: str) -> None:
    prefix = built["base"] / f"c-{moment.partition(':')[0]}"
    env = dict(os.environ, NIX_PREFIX_TEST_CRASH_AT=moment)
    crashed = run_installer(built["installer"], "-y", "-p", str(prefix), env=env)
    assert crashed.returncode in (-9, 137), crashed.stderr
    done = run_installer(built["installer"], "-y", "-p", str(prefix))
    assert done.returncode == 0, done.stderr
    verify = nix_at(prefix, "nix-store", "--verify", "--check-contents")
    assert verify.returncode == 0 and "error" not in verify.stderr, verify.stderr
    dry = nix_at(prefix, "nix-build", "--dry-run", "--no-out-link", str(built["expr"]), *ATTRS)
    assert dry.returncode == 0, dry.stderr
    assert "will be built" not in dry.stderr


@pytest.mark.slow
def test_an_exactly_retargeted_installer_is_recomputed_again(built: dict) -> None:
    # expected.sh: retarget --exact for S2; installed at S9 it gives what the
    # original installer gives for S9, byte for byte.
    base = built["base"]
    s9 = base / "s9"
    direct = retarget_exact(built["installer"], str(s9), base / "direct.sh", level=1).manifest
    done = run_installer(base / "expected.sh", "-y", "-p", str(s9))
    assert done.returncode == 0, done.stderr
    for p in direct.paths:
        path = f"{s9}/store/{p.name}"
        assert nix_at(s9, "nix-store", "-q", "--hash", path).stdout.strip() == p.nar_hash
    inst = nix_at(s9, "nix-instantiate", str(built["expr"]), *ATTRS)
    assert inst.returncode == 0, inst.stderr
    assert {d.rpartition("/")[2] for d in inst.stdout.split()} <= {p.name for p in direct.paths}
    verify = nix_at(s9, "nix-store", "--verify", "--check-contents")
    assert verify.returncode == 0, verify.stderr


@pytest.mark.slow
def test_plan_says_the_paths_are_recomputed(built: dict) -> None:
    source = InstallerFile(str(built["installer"]))
    try:
        prefix = Prefix(str(built["base"] / "s5"))
        exact = install_mod.at_prefix(source, prefix, UI(quiet=True))
        assert isinstance(exact, retarget_mod.Exact)
        assert install_mod.at_prefix(source, prefix, UI(quiet=True)).manifest.to_json() == (
            exact.manifest.to_json())
        run = new_run(source, prefix, UI(quiet=True), exact)
        text = "\n".join(plan_lines(run, receipt_plan(run, install_steps(run))))
        assert f"recompute every store path exactly for {prefix.store_dir}" in text
        assert ", ".join(exact.manifest.roots) in text
        assert not set(exact.manifest.roots) & set(source.manifest.roots)
        # At its own prefix nothing is recomputed (nor read).
        assert not isinstance(install_mod.at_prefix(source, Prefix(str(built["s1"])), UI()),
                              retarget_mod.Exact)
    finally:
        source.close()


@pytest.mark.slow
def test_plain_retarget_of_derivations_is_refused(built: dict) -> None:
    # Its .drv files would keep their hash parts, which nix-store --load-db refuses.
    out = built["base"] / "plain-retarget.sh"
    with pytest.raises(BuildError, match="holds .drv files") as e:
        retarget(built["installer"], str(built["base"] / "s8"), out, level=1)
    assert "--exact" in e.value.hint
    assert not out.exists()


@pytest.mark.slow
def test_an_installer_without_the_derivations_relocates_plainly(built: dict) -> None:
    s4 = built["base"] / "s4"
    done = run_installer(built["plain"], "-y", "-p", str(s4))
    assert done.returncode == 0, done.stderr
    assert "reading the derivations" not in done.stderr
    names = {p.name for p in manifest_of(built["plain"]).paths}
    assert names <= {p.name for p in os.scandir(s4 / "store")}


@pytest.mark.slow
def test_a_too_long_prefix_is_refused_before_reading(built: dict) -> None:
    long = built["base"] / ("x" * 80)
    done = run_installer(built["installer"], "-y", "-p", str(long))
    assert done.returncode == 4, done.stderr  # an environment problem, as documented
    assert "too long" in done.stderr and "reading the derivations" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not long.exists()


@pytest.mark.slow
def test_a_damaged_installer_writes_nothing(built: dict) -> None:
    damaged = built["base"] / "damaged.sh"
    data = bytearray(built["installer"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    target = built["base"] / "s7"
    done = run_installer(damaged, "-y", "-p", str(target))
    assert done.returncode == 3, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not target.exists()


@pytest.mark.slow
def test_check_exact_refuses_a_closure_without_derivations(built: dict) -> None:
    # The closure without its .drv files (the build store is back for the read).
    base = built["base"]
    shutil.move(str(base / "s1.build"), str(built["s1"]))
    try:
        with pytest.raises(BuildError, match="no .drv files"):
            check_exact(read_closure(base / "closure-info"))
    finally:
        shutil.move(str(built["s1"]), str(base / "s1.build"))


# -- fast: a closure made by hand, the way Nix makes it -------------------------------------------

CONFIG = b"greeting=hello\n"


def _derive(store: str) -> dict[str, object]:
    """A builtins.toFile text and a derivation using it, as Nix writes them at ``store``
    (derivationStrict: outputs masked, hashDerivationModulo, makeOutputPath)."""
    text = storepaths_ca.make_text_path(store, "config.txt", CONFIG, [])
    env = [("builder", "/bin/sh"), ("cfg", text), ("name", "greet"), ("out", ""),
           ("system", "x86_64-linux")]
    drv = derivation.Derivation([("out", "", "", "")], [], [text], "x86_64-linux", "/bin/sh",
                                ["-c", "echo $cfg > $out"], env)
    masked = hashlib.sha256(drv.unparse(True, {})).digest()
    out = storepaths_ca.make_output_path(store, "greet", "out", masked)
    drv.outputs = [("out", out, "", "")]
    drv.env = [(k, out if k == "out" else v) for k, v in env]
    data = drv.unparse()
    drv_path = storepaths_ca.make_text_path(store, "greet.drv", data, [text])
    return {"text": text, "drv": drv_path, "drv_data": data, "out": out}


def _closure(base: Path) -> tuple[Closure, dict[str, object]]:
    """The closure of _derive at a long store dir, written to disk."""
    store = str(base / "s1-a-long-enough-build-prefix" / "store")
    os.makedirs(store)
    d = _derive(store)
    Path(d["text"]).write_bytes(CONFIG)
    Path(d["drv"]).write_bytes(d["drv_data"])
    out = Path(d["out"])
    (out / "bin").mkdir(parents=True)
    (out / "bin" / "greet").write_bytes(b"#!/bin/sh\ncat %s\n" % d["text"].encode())
    (out / "bin" / "greet").chmod(0o755)
    (out / "config").symlink_to(d["text"])
    infos = []
    for path, refs, deriver in [(d["text"], [], ""), (d["drv"], [d["text"]], ""),
                                (d["out"], [d["text"]], d["drv"])]:
        digest, size = nar.hash_path(path)
        infos.append(ValidPathInfo(path, hashes.format_sha256(digest), size, deriver,
                                   tuple(refs)))
    return Closure(store, sorted(infos)), d


def test_installer_plans_what_nix_computes_and_installs_it(tmp_path: Path) -> None:
    closure, old = _closure(tmp_path)
    check_exact(closure)
    installer = tmp_path / "greet.sh"
    build_installer(closure, installer, BuildOptions(compression="xz", level=1, chunk_size=2048,
                                                     roots=[old["out"]], derivations=True))
    prefix = Prefix(str(tmp_path / "s2"))
    new = _derive(prefix.store_dir)
    base = {k: str(v).rpartition("/")[2] for k, v in new.items() if k != "drv_data"}
    source = InstallerFile(str(installer))
    try:
        assert source.manifest.derivations
        exact = install_mod.at_prefix(source, prefix, UI(quiet=True))
        assert isinstance(exact, retarget_mod.Exact)
        assert exact.plan.names == {
            old[k].rpartition("/")[2]: base[k] for k in ("text", "drv", "out")}
        m = exact.manifest
        assert m.store_dir == prefix.store_dir and m.roots == [base["out"]]
        by_name = {p.name: p for p in m.paths}
        assert by_name[base["out"]].deriver == base["drv"]
        assert by_name[base["drv"]].references == [base["text"]]
        # The .drv is the one Nix writes at S2; its NAR size is known before unpacking.
        assert exact.plan.texts[old["drv"].rpartition("/")[2]] == new["drv_data"]
        drv_size = by_name[base["drv"]].nar_size

        assert install_mod.install(source, prefix.root, UI(quiet=True), target=exact)
    finally:
        source.close()
    store = Path(prefix.store_dir)
    assert (store / base["drv"]).read_bytes() == new["drv_data"]
    assert (store / base["text"]).read_bytes() == CONFIG
    # Outputs: new hash parts; a text file (the script) gets the canonical store dir.
    greet = (store / base["out"] / "bin" / "greet").read_bytes()
    assert f"{prefix.store_dir}/{base['text']}".encode() in greet and b"/s2//" not in greet
    assert os.readlink(store / base["out"] / "config").endswith(base["text"])
    # Registered with the NAR hashes of what is on disk, derivers included.
    for name in by_name:
        digest, size = nar.hash_path(str(store / name))
        registered = [nix_at(Path(prefix.root), "nix-store", "-q", query,
                             str(store / name)).stdout.strip() for query in ("--hash", "--size")]
        assert registered == [hashes.format_sha256(digest), str(size)]
    assert by_name[base["drv"]].nar_size == drv_size
    verify = nix_at(Path(prefix.root), "nix-store", "--verify", "--check-contents")
    assert verify.returncode == 0, verify.stderr
    deriver = nix_at(Path(prefix.root), "nix-store", "-q", "--deriver", str(store / base["out"]))
    assert deriver.stdout.strip() == str(store / base["drv"])


def test_a_too_long_prefix_is_refused_before_the_payload_is_read(tmp_path: Path) -> None:
    closure, _ = _closure(tmp_path)
    installer = tmp_path / "greet.sh"
    build_installer(closure, installer, BuildOptions(compression="xz", level=1,
                                                     derivations=True))
    source = InstallerFile(str(installer))
    try:
        source.unpack = None  # any read of the payload would fail
        with pytest.raises(InstallError, match="too long"):
            install_mod.at_prefix(source, Prefix(str(tmp_path / ("x" * 80))), UI())
        assert not isinstance(install_mod.at_prefix(
            source, Prefix(closure.store_dir[:-len("/store")]), UI()), retarget_mod.Exact)
    finally:
        source.close()
