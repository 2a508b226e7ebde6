"""Nix's own keys and signatures (``nix-store --generate-binary-cache-key``, ``nix
store sign``) read, checked and made the same by payload.signing and builder.signer; the
rest of their tests, which need no Nix, are in tests/unit/payload/test_signing.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nix_prefix.builder import signer
from nix_prefix.builder.errors import BuildError
from nix_prefix.builder.localnix import LocalNix
from nix_prefix.builder.samples import build_small_closure
from nix_prefix.payload import signing

from tests.unit.payload.test_signing import SMALL_NIX


def _generate(nix: LocalNix, where: Path, name: str, stem: str = "key") -> tuple[Path, Path]:
    secret, public = where / f"{stem}.sec", where / f"{stem}.pub"
    nix.run("nix-store", ["--generate-binary-cache-key", name, str(secret), str(public)])
    return secret, public


def test_keys_generated_by_nix(local_nix: LocalNix, tmp_path: Path) -> None:
    secret_file, public_file = _generate(local_nix, tmp_path, "pub.example.org-1")
    secret = signer.load_secret_key(secret_file)
    public = signing.parse_public_key(public_file.read_text())
    assert secret.name == public.name == "pub.example.org-1"
    assert secret.public_key == public
    sig = signer.sign(secret, "hello")
    assert signing.verify("hello", sig, [public])
    assert str(sig).startswith("pub.example.org-1:")


def test_public_key_file_given_as_secret(local_nix: LocalNix, tmp_path: Path) -> None:
    _, public_file = _generate(local_nix, tmp_path, "k")
    with pytest.raises(BuildError, match="it is a public key, not the secret one"):
        signer.load_secret_key(public_file)


def test_signatures_made_by_nix_verify_and_ours_are_the_same(
        local_nix: LocalNix, tmp_path: Path) -> None:
    """Every path of the small closure signed by ``nix store sign``: our fingerprint of
    what ``nix path-info`` says, checked with our ed25519, accepts Nix's signature, and
    our signer makes the very same bytes (ed25519 is deterministic)."""
    roots = build_small_closure(local_nix)
    # A path with several references, itself among them: sorting and commas count.
    roots += local_nix.build_expr(
        f"let s = import {SMALL_NIX} {{}}; in "
        'derivation { name = "refs"; system = builtins.currentSystem; builder = "/bin/sh";'
        ' args = [ "-c" "echo ${s.lonely} ${s.hello} $out > $out" ]; }')
    paths = local_nix.closure(roots)
    secret_file, public_file = _generate(local_nix, tmp_path, "nix-made-1")
    _, other_file = _generate(local_nix, tmp_path, "nix-made-1", "other")  # same name
    local_nix.run("nix", ["store", "sign", "--key-file", str(secret_file), *paths])
    infos = json.loads(local_nix.run("nix", ["path-info", "--json", "--sigs", *paths]).stdout)
    public = signing.parse_public_key(public_file.read_text())
    other = signing.parse_public_key(other_file.read_text())
    secret = signer.load_secret_key(secret_file)
    assert len(infos) == len(paths)
    with_refs = 0
    for info in infos:
        text = signing.fingerprint(info["path"], info["narHash"], info["narSize"],
                                   info["references"])
        sigs = [signing.parse_signature(s) for s in info["signatures"]]
        assert [s.key_name for s in sigs] == ["nix-made-1"]
        assert signing.verify(text, sigs[0], [public])
        assert not signing.verify(text, sigs[0], [other])
        assert signer.sign(secret, text) == sigs[0]
        with_refs += len(info["references"]) > 2
    assert with_refs == 1
