"""payload.storepaths_ca: the store path formulas of Nix's content-addressed paths
(tests/e2e/test_archive_against_nix.py checks a source path against ``nix-store --add``)."""

from __future__ import annotations

from nix_prefix.payload import storepaths_ca


def test_store_path_formulas_match_nix_add() -> None:
    # `nix-store --add` of a file is a "source" path over its NAR hash;
    # builtins.toFile a "text" path over its contents.
    text = b"hello\n"
    path = storepaths_ca.make_text_path("/nix/store", "hello.txt", text, [])
    assert path.startswith("/nix/store/") and len(path.rpartition("/")[2]) == 32 + 10
    assert storepaths_ca.compress_hash(bytes(range(32)), 20)[0] == 0 ^ 20
