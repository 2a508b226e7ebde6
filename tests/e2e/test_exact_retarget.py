"""Exact retarget: the relocated store is what a native build at the new prefix gives."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.derivations import with_derivations
from nix_prefix.builder.errors import BuildError
from nix_prefix.builder.localnix import LocalNix, prefix_env
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.builder.retarget import retarget_exact
from nix_prefix.payload import derivation
from nix_prefix.payload.container import InstallerFile

from tests.support import run_installer

# Several builtins.derivation depending on each other, builtins.toFile inputs
# (one referring to the other), a flat fixed-output derivation and a
# multi-output one; every derivation's output is in the runtime closure.
EXPR = r'''
let
  mk = attrs: builtins.derivation ({ system = builtins.currentSystem; builder = "/bin/sh";
                                     PATH = "/usr/bin:/bin"; } // attrs);
  cfg = builtins.toFile "config.txt" "greeting=hello\ttab \"quoted\" back\\slash\n";
  script = builtins.toFile "script.sh" ''
    echo "configured by ${cfg}"
  '';
  fod = mk {
    name = "fixed.txt";
    args = [ "-c" "printf 'fixed content\\n' > $out" ];
    outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "adcf791ae2803c0c10f0dab9c430c39ac580bf95d6a834a248f4dedd72c69665";
  };
  multi = mk {
    name = "multi";
    outputs = [ "out" "dev" ];
    args = [ "-c" ("mkdir -p $out $dev; echo lib > $out/lib; echo ${cfg} > $dev/include; "
                   + "ln -s $out/lib $dev/lib-link") ];
  };
  a = mk {
    name = "a";
    args = [ "-c" ("mkdir $out; ln -s ${fod} $out/fixed; echo ${multi.dev} > $out/dev-ref; "
                   + ". ${script} > $out/msg") ];
  };
  b = mk {
    name = "b";
    args = [ "-c" ("mkdir -p $out/bin; echo '#!/bin/sh' > $out/bin/b; "
                   + "echo 'cat ${a}/msg ${multi}/lib' >> $out/bin/b; chmod +x $out/bin/b") ];
  };
in { inherit a b multi fod; }
'''
ATTRS = ["-A", "b", "-A", "multi"]


def nix_at(prefix: Path, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = prefix_env(prefix, home=prefix / "home")
    (prefix / "home").mkdir(exist_ok=True)
    return subprocess.run([tool, *args], capture_output=True, text=True, env=env, check=False)


def assert_nothing_to_build(store: Path, expr: Path,
                            outs: list[str]) -> subprocess.CompletedProcess[str]:
    """nix-build of EXPR at STORE builds and fetches nothing and gives exactly the
    root outputs among OUTS (store paths at STORE); returns that nix-build."""
    dry = nix_at(store, "nix-build", "--dry-run", "--no-out-link", str(expr), *ATTRS)
    assert dry.returncode == 0, dry.stderr
    assert "will be built" not in dry.stderr and "will be fetched" not in dry.stderr
    real = nix_at(store, "nix-build", "--no-out-link", str(expr), *ATTRS)
    assert real.returncode == 0, real.stderr
    assert "building" not in real.stderr
    assert sorted(real.stdout.split()) == sorted(o for o in outs if o.endswith(("-b", "-multi")))
    return real


def build_at_s1(base: Path, s1_name: str) -> tuple:
    """Build EXPR's ATTRS with real Nix at BASE/S1_NAME; return the expression file,
    the store prefix, its Nix, the outputs, the closureInfo dir, and the closure
    with its derivations and their roots."""
    expr = base / "expr.nix"
    expr.write_text(EXPR)
    s1 = base / s1_name
    nix = LocalNix(s1)
    outs = nix.run("nix-build", ["--no-out-link", str(expr), *ATTRS]).stdout.decode().split()
    info = nix.write_closure_info(outs, base / "closure-info")
    closure, roots = with_derivations(read_closure(info), nix)
    return expr, s1, nix, outs, info, closure, roots


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("exact")
    expr, s1, nix, outs, _, closure, roots = build_at_s1(
        base, "s1-a-build-prefix-longer-than-the-target")
    installer = base / "with-drvs.sh"
    build_installer(closure, installer, BuildOptions(compression="xz", level=1, roots=roots))
    return {"base": base, "expr": expr, "s1": s1, "nix": nix, "outs": outs,
            "installer": installer, "roots": roots}


def test_derivation_round_trip_and_self_check(built: dict) -> None:
    store = built["s1"] / "store"
    drvs = sorted(store.glob("*.drv"))
    assert len(drvs) == 4  # a, b, multi, fixed.txt
    for drv in drvs:
        data = drv.read_bytes()
        assert derivation.parse(data).unparse() == data
    f = InstallerFile(str(built["installer"]))
    try:
        names = {p.name for p in f.manifest.paths}
    finally:
        f.close()
    assert {d.name for d in drvs} <= names
    # --with-derivations keeps the profile roots to the outputs (b; multi is b's).
    assert [r.rpartition("/")[2] for r in built["roots"]] == [
        o.rpartition("/")[2] for o in built["outs"] if o.endswith("-b")]


def test_exact_retarget_installs_what_a_native_build_gives(built: dict) -> None:
    base = built["base"]
    s2 = base / "s2"  # shorter than s1
    out = base / "exact.sh"
    result = retarget_exact(built["installer"], str(s2), out, level=1)
    again = base / "exact-again.sh"
    retarget_exact(built["installer"], str(s2), again, level=1)
    assert out.read_bytes() == again.read_bytes()
    new_names = {p.name for p in result.manifest.paths}
    # Still the derivations of its paths: installing it elsewhere recomputes them again.
    assert result.manifest.derivations

    done = run_installer(out, "-y", "-p", str(s2))
    assert done.returncode == 0, done.stderr

    # nix-instantiate at S2 gives the retargeted .drv and output paths.
    inst = nix_at(s2, "nix-instantiate", str(built["expr"]), *ATTRS)
    assert inst.returncode == 0, inst.stderr
    drvs = inst.stdout.split()
    outs = nix_at(s2, "nix-store", "-q", "--outputs", *drvs).stdout.split()
    for path in drvs + outs:
        assert path.startswith(f"{s2}/store/")
        assert path.rpartition("/")[2] in new_names, path
    every_drv = nix_at(s2, "nix-store", "-qR", *drvs).stdout.split()
    assert len(every_drv) == 6  # 4 .drv and 2 toFile texts
    for path in every_drv:
        assert path.rpartition("/")[2] in new_names, path

    # Nothing to build.
    real = assert_nothing_to_build(s2, built["expr"], outs)
    run = subprocess.run([f"{real.stdout.split()[0]}/bin/b"], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0 and "lib" in run.stdout and "configured by" in run.stdout

    # The installed store verifies, contents included, with the derivers registered.
    verify = nix_at(s2, "nix-store", "--verify", "--check-contents")
    assert verify.returncode == 0, verify.stderr
    assert all(line.startswith(("reading the Nix store", "checking "))
               for line in verify.stderr.splitlines()), verify.stderr
    for o in outs:
        deriver = nix_at(s2, "nix-store", "-q", "--deriver", o).stdout.strip()
        assert deriver in drvs or deriver in every_drv


def test_exact_retarget_to_the_same_store_dir_changes_no_path(built: dict) -> None:
    out = built["base"] / "same.sh"
    result = retarget_exact(built["installer"], str(built["s1"]), out, level=1)
    f = InstallerFile(str(built["installer"]))
    try:
        assert [(p.name, p.nar_hash, p.references, p.deriver) for p in f.manifest.paths] == [
            (p.name, p.nar_hash, p.references, p.deriver) for p in result.manifest.paths]
    finally:
        f.close()


def test_exact_retarget_refuses_an_installer_without_derivations(built: dict) -> None:
    base = built["base"]
    plain = base / "plain.sh"
    build_installer(read_closure(base / "closure-info"), plain,
                    BuildOptions(compression="xz", level=1))
    with pytest.raises(BuildError, match="no .drv files") as e:
        retarget_exact(plain, str(base / "s3"), base / "never.sh")
    assert "--with-derivations" in e.value.hint
    assert not (base / "never.sh").exists()


def test_cli_build_with_derivations_and_retarget_exact(built: dict) -> None:
    from typer.testing import CliRunner

    from nix_prefix.builder.cli import app

    base = built["base"]
    runner = CliRunner()
    inst = base / "cli.sh"
    res = runner.invoke(app, ["build", str(base / "closure-info"), "-o", str(inst),
                              "--with-derivations", "--level", "1", "-q"])
    assert res.exit_code == 0, res.output
    out = base / "cli-exact.sh"
    res = runner.invoke(app, ["retarget", str(inst), "-p", str(base / "s4"), "-o", str(out),
                              "--exact", "-q"])
    assert res.exit_code == 0, res.output
    f = InstallerFile(str(out))
    try:
        assert any(p.name.endswith("-b.drv") for p in f.manifest.paths)
        assert f.manifest.store_dir == f"{base}/s4/store"
    finally:
        f.close()
    # A closure without derivations: a one-line error with a hint, no traceback.
    plain = base / "cli-plain.sh"
    runner.invoke(app, ["build", str(base / "closure-info"), "-o", str(plain), "-q"])
    res = runner.invoke(app, ["retarget", str(plain), "-p", str(base / "s5"), "-o",
                              str(base / "cli-never.sh"), "--exact", "-q"])
    assert res.exit_code == 1
    assert "no .drv files" in res.output and "Traceback" not in res.output

