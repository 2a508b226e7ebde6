"""A binary cache nix-prefix writes at the same store dir is what ``nix copy --to file://``
writes; the narinfo tests that need no Nix are in tests/unit/payload/test_narinfo.py."""

from __future__ import annotations

from pathlib import Path

from nix_prefix.builder.cache import CacheOptions, write_cache
from nix_prefix.builder.localnix import LocalNix
from nix_prefix.payload import narinfo


def test_same_store_dir_cache_matches_nix_copy(local_nix: LocalNix, world_dir: Path) -> None:
    """For the closure's own prefix and no compression, `nix-prefix cache` writes the
    NARs `nix copy --to file://...?compression=none` writes, and the same narinfos but
    for the CA line (a closureInfo does not record it) and the deriver (never one that
    is not in the cache)."""
    src = world_dir / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("hello\n")
    (src / "sub" / "link").symlink_to("f")
    added = local_nix.run("nix-store", ["--add", str(src)]).stdout.decode().strip()
    info = local_nix.write_closure_info([added], world_dir / "ci")
    theirs, ours = world_dir / "theirs", world_dir / "ours"
    local_nix.run("nix", ["--extra-experimental-features", "nix-command", "copy", "--to",
                          f"file://{theirs}?compression=none", added])
    write_cache([info], str(local_nix.prefix), ours, CacheOptions(compression="none"))
    assert (ours / "nix-cache-info").read_text() == (theirs / "nix-cache-info").read_text()
    name = narinfo.narinfo_file(added.rpartition("/")[2])
    nix_text = (theirs / name).read_text()
    our_text = (ours / name).read_text()
    drop = ("CA: ", "Deriver: ")
    assert [line for line in our_text.splitlines() if not line.startswith(drop)] == [
        line for line in nix_text.splitlines() if not line.startswith(drop)]
    url = narinfo.parse(our_text, name).url
    assert (ours / url).read_bytes() == (theirs / url).read_bytes()
