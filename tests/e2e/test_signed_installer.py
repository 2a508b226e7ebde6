"""Signed installers, end to end with real Nix: ``--sign-key`` on the build side, the
installer's ``--trusted-key`` / ``NIX_PREFIX_TRUSTED_KEYS``, and the publisher's path
signatures in the prefix's Nix database, checked by stock Nix's ``nix store verify``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.localnix import LocalNix, prefix_env
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.builder.samples import build_nix_closure, build_small_closure
from nix_prefix.builder.signer import KeySigner, load_secret_key
from nix_prefix.payload import container, publisher

from tests.nix_versions import VERSIONS, nix_source
from tests.support import build_small, installed_nix, run_installer

BIN = Path(sys.executable).parent
NIX = ["nix", "--extra-experimental-features", "nix-command"]


@dataclass
class Keys:
    """Key files made by nix-store --generate-binary-cache-key."""

    secret: Path
    public: str  # NAME:BASE64


@dataclass
class World:
    base: Path
    build_prefix: Path  # the prefix the closure was built for (moved away after building)
    store_root: Path  # where its store now is
    closure_info: Path
    paths: list[str]
    unsigned: Path
    signed: Path
    publisher: Keys
    other: Keys  # another name
    impostor: Keys  # the publisher's name, another key


def _keys(nix: LocalNix, base: Path, name: str, stem: str) -> Keys:
    secret, public = base / f"{stem}.sec", base / f"{stem}.pub"
    nix.run("nix-store", ["--generate-binary-cache-key", name, str(secret), str(public)])
    return Keys(secret, public.read_text().strip())


def nix_prefix_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "nix-prefix"), *args], capture_output=True, text=True,
                          check=False)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    base = Path(tempfile.mkdtemp(prefix="np-signed-", dir="/tmp"))
    base.chmod(0o755)
    try:
        built = build_small(base, name="a-long-enough-build-prefix")
        nix = built.nix
        keys = [_keys(nix, base, "publisher.example.org-1", "publisher"),
                _keys(nix, base, "other.example.org-1", "other"),
                _keys(nix, base, "publisher.example.org-1", "impostor")]
        signed = base / "signed.sh"
        proc = nix_prefix_cli("build", str(built.closure_info), "-o", str(signed),
                              "--sign-key", str(keys[0].secret))
        assert proc.returncode == 0, proc.stderr
        assert "signed by publisher.example.org-1" in proc.stderr
        paths = (built.closure_info / "store-paths").read_text().split()
        store_root = built.move_build_away() / "store"
        yield World(base, built.prefix, store_root, built.closure_info, paths, built.installer,
                    signed, *keys)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def nix_at(prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The machine's stock Nix (2.8) on the prefix's store."""
    env = prefix_env(prefix, home=prefix / "var" / "nix-prefix" / "home")
    return subprocess.run([*NIX, *args], capture_output=True, text=True, env=env, check=False)


def path_sigs(prefix: Path, paths: list[str]) -> dict[str, list[str]]:
    proc = nix_at(prefix, "path-info", "--json", "--sigs", *paths)
    assert proc.returncode == 0, proc.stderr
    return {info["path"]: info.get("signatures", []) for info in json.loads(proc.stdout)}


def verify_sigs(prefix: Path, key: str, paths: list[str]) -> subprocess.CompletedProcess[str]:
    return nix_at(prefix, "store", "verify", "--no-contents", "--sigs-needed", "1",
                  "--option", "trusted-public-keys", key, *paths)


def moved(paths: list[str], new: Path) -> list[str]:
    """The store paths at another prefix of the same length (same-length relocation keeps
    the names)."""
    return [str(new / "store" / p.rpartition("/")[2]) for p in paths]


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# --- checking before anything is written ---------------------------------------------------

def test_check_without_trusted_keys_says_who_signed_and_how_to_pin(world: World) -> None:
    proc = run_installer(world.signed, "--check")
    assert proc.returncode == 0, proc.stderr
    assert f"signed by {world.publisher.public}" in proc.stderr
    assert f"--trusted-key {world.publisher.public}" in proc.stderr
    unsigned = run_installer(world.unsigned, "--check")
    assert unsigned.returncode == 0 and "unsigned" in unsigned.stderr


def test_check_and_info_with_the_trusted_key(world: World) -> None:
    proc = run_installer(world.signed, "--check", "--trusted-key", world.publisher.public)
    assert proc.returncode == 0, proc.stderr
    assert f"signed by {world.publisher.public} (trusted)" in proc.stderr
    info = run_installer(world.signed, "--info")
    assert f"signatures:    signed by {world.publisher.public}" in info.stdout
    assert f"{len(world.paths)} of {len(world.paths)} store paths carry" in info.stdout


@pytest.mark.parametrize("how", ["option", "environment"])
def test_signed_by_another_key_is_refused_before_anything_is_written(
        world: World, how: str) -> None:
    target = world.base / f"refused-{how}"
    args, env = ["-y", "-p", str(target)], dict(os.environ)
    # The impostor's key has the publisher's name: the name alone proves nothing.
    untrusted = f"{world.other.public} {world.impostor.public}"
    if how == "option":
        args += ["--trusted-key", world.other.public, "--trusted-key", world.impostor.public]
    else:
        env["NIX_PREFIX_TRUSTED_KEYS"] = untrusted
    proc = run_installer(world.signed, *args, env=env)
    line = one_error_line(proc)
    assert proc.returncode == 3
    assert f"signed by {world.publisher.public}" in line
    assert "other.example.org-1" in line
    assert not target.exists()
    check = run_installer(world.signed, "--check", *args[3:], env=env)
    assert check.returncode == 3


def test_unsigned_is_refused_when_a_key_is_trusted(world: World) -> None:
    target = world.base / "refused-unsigned"
    env = dict(os.environ, NIX_PREFIX_TRUSTED_KEYS=world.publisher.public)
    proc = run_installer(world.unsigned, "-y", "-p", str(target), env=env)
    line = one_error_line(proc)
    assert proc.returncode == 3 and "not signed" in line and "publisher.example.org-1" in line
    assert not target.exists()


@pytest.mark.parametrize("key", ["no-colon", "k:not!base64", "k:AAAA", ":AAAA"])
def test_malformed_trusted_keys_are_usage_errors(world: World, key: str) -> None:
    for proc in (run_installer(world.signed, "--check", "--trusted-key", key),
                 run_installer(world.signed, "--check",
                               env=dict(os.environ, NIX_PREFIX_TRUSTED_KEYS=key))):
        line = one_error_line(proc)
        assert proc.returncode == 2 and "NAME:BASE64" in line


def test_a_secret_key_given_as_the_trusted_key_is_never_shown(world: World,
                                                              tmp_path: Path) -> None:
    """``--trusted-key "$(cat KEY.sec)"``, everywhere a public key is taken, and the
    secret key's text given as a --sign-key file: one line naming the mistake, no
    key material in it."""
    secret = world.publisher.secret.read_text().strip()
    body = secret.partition(":")[2]
    env = dict(os.environ, NIX_PREFIX_TRUSTED_KEYS=secret)
    out = str(tmp_path / "out")
    runs = [
        run_installer(world.signed, "--check", "--trusted-key", secret),
        run_installer(world.signed, "-y", "-p", out, env=env),
        nix_prefix_cli("verify", str(world.signed), "--trusted-key", secret),
        nix_prefix_cli("inspect", str(world.signed), "--trusted-key", secret),
        nix_prefix_cli("build", "--from-cache", "file:///nonexistent", str(world.paths[0]),
                       "-o", out, "--trusted-key", secret),
    ]
    for proc in runs:
        line = one_error_line(proc)
        assert proc.returncode == 2 and "this is a secret key (64 bytes)" in line, line
        assert "nix key convert-secret-to-public" in line
    for args in (["build", str(world.closure_info), "-o", out],
                 ["cache", str(world.signed), "--prefix", out, "-o", out],
                 ["serve", str(world.signed), "--listen", "127.0.0.1:0"]):
        proc = nix_prefix_cli(*args, "--sign-key", secret)
        assert proc.returncode != 0 and "a key's text" in one_error_line(proc), proc.stderr
        runs.append(proc)
    for proc in runs:
        said = proc.stdout + proc.stderr
        assert not any(body[i:i + 8] in said for i in range(len(body) - 7)), said
    assert not os.path.exists(out)


# --- forged installers: what an attacker with nix-prefix of their own can make -------------

def _forged(world: World, out: Path, monkeypatch: pytest.MonkeyPatch,
            endorsements=None, code_sha256: str | None = None) -> Path:
    """An installer of the same closure, signed by the impostor's key, and then given
    ``endorsements`` instead (e.g. the publisher's, taken from the genuine file)."""
    if endorsements is not None:
        monkeypatch.setattr(KeySigner, "endorse", lambda self, manifest_json: endorsements)
    if code_sha256 is not None:
        monkeypatch.setattr(container, "code_digest", lambda members: code_sha256)
    build_installer(read_closure(world.closure_info), out,
                    BuildOptions(store_root=world.store_root,
                                 sign_keys=[load_secret_key(world.impostor.secret)]))
    monkeypatch.undo()
    return out


def _endorsements(installer: Path) -> list[publisher.Endorsement]:
    with zipfile.ZipFile(installer) as zf:
        return publisher.from_json(zf.read(publisher.MEMBER))


def test_an_impostor_of_the_same_name_is_refused(world: World,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    forged = _forged(world, world.base / "impostor.sh", monkeypatch)
    proc = run_installer(forged, "-y", "--trusted-key", world.publisher.public)
    assert proc.returncode == 3
    assert world.impostor.public in one_error_line(proc)


def test_the_publishers_signature_on_another_manifest_is_refused(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The genuine signatures.json in a file whose manifest differs (here: the paths'
    signatures are the impostor's) is refused even without trusted keys."""
    forged = _forged(world, world.base / "replayed.sh", monkeypatch,
                     endorsements=_endorsements(world.signed))
    for args in ([], ["--trusted-key", world.publisher.public]):
        proc = run_installer(forged, "-y", "-p", str(world.base / "replayed"), *args)
        assert proc.returncode == 3
        line = one_error_line(proc)
        assert "the installer's signature by " in line and "does not match the manifest" in line
    assert not (world.base / "replayed").exists()


def test_code_that_is_not_what_the_manifest_names_is_refused(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    forged = _forged(world, world.base / "code.sh", monkeypatch, code_sha256="0" * 64)
    proc = run_installer(forged, "--check")
    assert proc.returncode == 3 and "code does not match" in one_error_line(proc)


def test_a_malformed_signature_list_is_damage(world: World,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publisher, "to_json", lambda endorsements: b'{"format": 1}')
    forged = _forged(world, world.base / "malformed.sh", monkeypatch)
    proc = run_installer(forged, "--check")
    assert proc.returncode == 3 and "signatures.json" in one_error_line(proc)


# --- the prefix's Nix knows the signatures -------------------------------------------------

def test_signatures_are_registered_and_stock_nix_verifies_them(world: World) -> None:
    prefix = world.build_prefix  # the prefix the closure was built and signed for
    proc = run_installer(world.signed, "-y", "--trusted-key", world.publisher.public)
    assert proc.returncode == 0, proc.stderr
    assert f"signatures of {len(world.paths)} store paths" in proc.stderr
    try:
        sigs = path_sigs(prefix, world.paths)
        assert all(len(s) == 1 and s[0].startswith("publisher.example.org-1:")
                   for s in sigs.values()), sigs
        assert verify_sigs(prefix, world.publisher.public, world.paths).returncode == 0
        for key in (world.other.public, world.impostor.public):
            refused = verify_sigs(prefix, key, world.paths)
            assert refused.returncode != 0 and "untrusted" in refused.stderr
        # Run again: nothing to add, nothing changes.
        again = run_installer(world.signed, "-y")
        assert again.returncode == 0 and "nothing to do" in again.stderr
        assert path_sigs(prefix, world.paths) == sigs
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def test_a_path_relocated_at_install_time_gets_no_signature(world: World) -> None:
    prefix = world.base / "reloc"
    proc = run_installer(world.signed, "-y", "-p", str(prefix), "--trusted-key",
                         world.publisher.public)
    assert proc.returncode == 0, proc.stderr
    assert "recorded the publisher's signatures" not in proc.stderr
    paths = moved(world.paths, prefix)
    assert all(s == [] for s in path_sigs(prefix, paths).values())
    assert verify_sigs(prefix, world.publisher.public, paths).returncode != 0


def test_retarget_with_a_key_signs_for_the_new_prefix(world: World) -> None:
    prefix = world.base / "retargeted"
    out = world.base / "retargeted.sh"
    proc = nix_prefix_cli("retarget", str(world.signed), "-p", str(prefix), "-o", str(out),
                          "--sign-key", str(world.other.secret))
    assert proc.returncode == 0, proc.stderr
    assert "is unsigned" not in proc.stderr
    install = run_installer(out, "-y", "--trusted-key", world.other.public)
    assert install.returncode == 0, install.stderr
    paths = moved(world.paths, prefix)
    sigs = path_sigs(prefix, paths)
    assert all(len(s) == 1 and s[0].startswith("other.example.org-1:") for s in sigs.values())
    assert verify_sigs(prefix, world.other.public, paths).returncode == 0
    assert verify_sigs(prefix, world.publisher.public, paths).returncode != 0
    # The old signer's key is no longer the one: it is refused.
    refused = run_installer(out, "--check", "--trusted-key", world.publisher.public)
    assert refused.returncode == 3


def test_retarget_without_a_key_says_its_output_is_unsigned(world: World) -> None:
    out = world.base / "retargeted-unsigned.sh"
    proc = nix_prefix_cli("retarget", str(world.signed), "-p", str(world.base / "ru"),
                          "-o", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "is unsigned" in one_error_line(proc) and "--sign-key" in proc.stderr
    assert "unsigned" in run_installer(out, "--check").stderr
    refused = run_installer(out, "--check", "--trusted-key", world.publisher.public)
    assert refused.returncode == 3 and "not signed" in refused.stderr


# --- the build side ------------------------------------------------------------------------

def test_verify_and_inspect_report_the_signatures(world: World) -> None:
    proc = nix_prefix_cli("verify", str(world.signed), "--trusted-key", world.publisher.public)
    assert proc.returncode == 0, proc.stderr
    assert "(trusted)" in proc.stderr and "every store path's Nix signature holds" in proc.stderr
    refused = nix_prefix_cli("verify", str(world.signed), "--trusted-key", world.other.public)
    assert refused.returncode == 3 and "none of the keys you trust" in one_error_line(refused)
    text = nix_prefix_cli("inspect", str(world.signed))
    assert f"signed by {world.publisher.public}" in text.stdout
    doc = json.loads(nix_prefix_cli("inspect", "--json", str(world.signed)).stdout)
    assert doc["signatures"] == {"signedBy": [world.publisher.public], "trustedBy": [],
                                 "signedPaths": len(world.paths)}
    bad = nix_prefix_cli("inspect", str(world.signed), "--trusted-key", "nonsense")
    assert bad.returncode == 2 and "NAME:BASE64" in one_error_line(bad)


def test_build_is_deterministic_with_a_key(world: World, tmp_path: Path) -> None:
    """ed25519 is deterministic: the same closure and key give the same bytes."""
    options = BuildOptions(store_root=world.store_root,
                           sign_keys=[load_secret_key(world.publisher.secret)])
    build_installer(read_closure(world.closure_info), tmp_path / "again.sh", options)
    assert (tmp_path / "again.sh").read_bytes() == world.signed.read_bytes()


@pytest.mark.parametrize(("content", "says"), [
    (None, "cannot read the secret key file"),
    (b"publisher:AAAA", "holds 3 bytes"),
    ("public", "it is a public key, not the secret one"),
])
def test_bad_sign_key_files_stop_the_build(world: World, tmp_path: Path,
                                           content: bytes | str | None, says: str) -> None:
    key = tmp_path / "key"
    if content == "public":
        key.write_text(world.publisher.public)
    elif content is not None:
        key.write_bytes(content)
    out = tmp_path / "out.sh"
    for args in (["build", str(world.closure_info)],
                 ["retarget", str(world.signed), "-p", str(tmp_path / "p")]):
        proc = nix_prefix_cli(*args, "-o", str(out), "--sign-key", str(key))
        assert proc.returncode == 1 and says in one_error_line(proc), proc.stderr
        assert not out.exists()


@pytest.mark.slow
def test_exact_retarget_signs_the_recomputed_paths(tmp_path: Path) -> None:
    """``retarget --exact --sign-key``: the new paths carry signatures stock Nix accepts at
    the new prefix; the source installed there by exact relocation gets none."""
    from .test_exact_retarget import build_at_s1

    _, s1, nix, _, _, closure, roots = build_at_s1(tmp_path, "s1-a-build-prefix-longer-than-s2")
    keys = _keys(nix, tmp_path, "exact.example.org-1", "exact")
    source = tmp_path / "with-drvs.sh"
    build_installer(closure, source, BuildOptions(level=1, roots=roots, derivations=True,
                                                  sign_keys=[load_secret_key(keys.secret)]))
    shutil.move(str(s1), str(tmp_path / "s1.build"))
    s2, s3 = tmp_path / "s2", tmp_path / "s3"
    out = tmp_path / "exact.sh"
    proc = nix_prefix_cli("retarget", "--exact", str(source), "-p", str(s2), "-o", str(out),
                          "--sign-key", str(keys.secret))
    assert proc.returncode == 0, proc.stderr
    install = run_installer(out, "-y", "--trusted-key", keys.public)
    assert install.returncode == 0, install.stderr
    paths = run_installer(out, "--list").stdout.split()
    assert all(p.startswith(f"{s2}/store/") for p in paths)
    assert all(len(s) == 1 for s in path_sigs(s2, paths).values())
    assert verify_sigs(s2, keys.public, paths).returncode == 0
    # The source, recomputed at install time for s3: other paths, no signature.
    direct = run_installer(source, "-y", "-p", str(s3), "--trusted-key", keys.public)
    assert direct.returncode == 0, direct.stderr
    listed = nix_at(s3, "path-info", "--all").stdout.split()
    assert listed and all(s == [] for s in path_sigs(s3, listed).values())


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_the_shipped_nix_verifies_the_signatures(tmp_path: Path, version: str) -> None:
    """Each supported Nix, shipped in a signed installer and installed where the closure
    was signed for, accepts the registered signatures under the publisher's key and
    refuses them under another (``nix store verify --sigs-needed 1``)."""
    prefix = tmp_path / "p-built-here"
    nix = LocalNix(prefix)
    roots = [build_nix_closure(nix, nix_source(version)), *build_small_closure(nix)]
    info = nix.write_closure_info(roots, tmp_path / "closure-info")
    mine = _keys(nix, tmp_path, "publisher.example.org-1", "mine")
    other = _keys(nix, tmp_path, "publisher.example.org-1", "other")
    out = tmp_path / "signed.sh"
    build_installer(read_closure(info), out,
                    BuildOptions(level=1, sign_keys=[load_secret_key(mine.secret)]))
    paths = (info / "store-paths").read_text().split()
    os.rename(prefix, tmp_path / "p-built-here.gone")
    proc = run_installer(out, "-y", "--trusted-key", mine.public)
    assert proc.returncode == 0, proc.stderr
    assert f"signatures of {len(paths)} store paths" in proc.stderr
    flags = ["--extra-experimental-features", "nix-command"]
    shown = installed_nix(prefix, "nix", *flags, "path-info", "--sigs", *paths)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("publisher.example.org-1:") == len(paths)
    verify = ["store", "verify", "--no-contents", "--sigs-needed", "1", "--option",
              "trusted-public-keys"]
    good = installed_nix(prefix, "nix", *flags, *verify, mine.public, *paths)
    assert good.returncode == 0, good.stderr
    bad = installed_nix(prefix, "nix", *flags, *verify, other.public, *paths)
    assert bad.returncode != 0 and "untrusted" in bad.stderr, bad.stderr
