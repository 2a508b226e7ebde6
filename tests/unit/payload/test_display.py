"""What ``--info`` and ``inspect`` show, made from a manifest and a signature verdict."""

from __future__ import annotations

from nix_prefix.payload import display, signing
from nix_prefix.payload.manifest import Chunk, Manifest, PathEntry
from nix_prefix.payload.publisher import Verdict

A = "a" * 32 + "-nix-2.8"
KEY = signing.PublicKey("pub-1", bytes(32))
OTHER = signing.PublicKey("pub-2", bytes([1]) * 32)


def manifest(signed: bool) -> Manifest:
    sigs = [str(signing.Signature("pub-1", bytes(64)))] if signed else []
    return Manifest("/home/u/.nix/store", "x86_64-linux", "xz",
                    [PathEntry(A, "sha256:" + "1" * 52, 3 << 20, [], sigs=sigs)],
                    [Chunk("payload/0000.tar.xz", 1 << 20, "0" * 64, 3 << 20, [A])], [A],
                    A + "/bin/nix-store", payload_size=1 << 20, payload_sha256="f" * 64,
                    tool_version="9.9")


def test_info_text_of_an_unsigned_installer() -> None:
    text = display.info_text(manifest(False), Verdict([], [], []))
    assert text.endswith("\n")
    lines = text.splitlines()
    assert lines[0] == "nix-prefix installer (format 4, built by nix-prefix 9.9)"
    assert "prefix:        /home/u/.nix" in lines
    assert "retargets to:  any prefix of at most 12 bytes (--prefix)" in lines
    assert "nix-store:     /home/u/.nix/store/" + A + "/bin/nix-store" in lines
    assert lines[-1] == "signatures:    unsigned (the publisher gave no --sign-key)"


def test_info_text_of_a_signed_installer_counts_the_signed_paths() -> None:
    lines = display.info_text(manifest(True), Verdict([KEY], [KEY], [KEY])).splitlines()
    assert lines[-2] == f"signatures:    signed by {KEY} (trusted)"
    assert lines[-1] == ("               1 of 1 store paths carry their Nix signature for "
                         "/home/u/.nix/store")


def test_verdict_lines_name_the_trusted_signer_and_advise_pinning() -> None:
    pinned = display.verdict_lines(Verdict([KEY, OTHER], [OTHER], [OTHER]))
    assert pinned == [f"signed by {KEY}", f"signed by {OTHER} (trusted)"]
    unpinned = display.verdict_lines(Verdict([KEY], [], []))
    assert unpinned[0] == f"signed by {KEY}"
    assert f"pass --trusted-key {KEY}" in unpinned[1]
