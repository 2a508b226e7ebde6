"""A binary cache its users can read but not write (the publisher's, on NFS or a group
share): stock Nix 2.8, run as another uid, substitutes from it with --max-jobs 0 (issue
23, item 5).  Nix creates nar/, realisations/ and log/ when it opens a file:// cache
(local-binary-cache-store.cc); where it cannot, it ignores the cache."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from nix_prefix.builder.cache import LAYOUT, CacheOptions, write_cache
from nix_prefix.builder.localnix import prefix_env

from tests.conftest import NOBODY
from tests.support import as_user, build_small


def _realise_as_nobody(prefix: Path, cache: Path,
                       paths: list[str]) -> subprocess.CompletedProcess[str]:
    env = prefix_env(prefix, home=prefix / "home")
    env["USER"] = "nobody"
    nix_store = shutil.which("nix-store") or "nix-store"
    return subprocess.run(
        [*as_user(NOBODY), nix_store, "-r", *paths, "--max-jobs", "0",
         "--option", "substituters", f"file://{cache}", "--option", "require-sigs", "false"],
        env=env, capture_output=True, text=True, check=False)


def test_a_user_substitutes_from_a_cache_they_cannot_write(world_dir: Path) -> None:
    built = build_small(world_dir)
    prefix = world_dir / "q"  # the user's prefix: its store is made by their own Nix
    prefix.mkdir()
    (prefix / "home").mkdir()
    for d in (prefix, prefix / "home"):
        os.chown(d, NOBODY, NOBODY)
    cache = world_dir / "cache"
    result = write_cache([built.installer], str(prefix), cache, CacheOptions(level=1))
    # An older nix-prefix left these out; the next run over the cache adds them.
    for name in ("realisations", "log"):
        shutil.rmtree(cache / name, ignore_errors=True)
    write_cache([built.installer], str(prefix), cache, CacheOptions(level=1))
    assert all((cache / name).is_dir() for name in LAYOUT)
    # Root's, readable by all, writable by nobody else.
    for dirpath, _dirnames, filenames in os.walk(cache):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    before = sorted(str(p.relative_to(cache)) for p in cache.rglob("*"))

    wanted = [f"{prefix}/store/{name}" for name in result.written]
    done = _realise_as_nobody(prefix, cache, wanted)
    assert done.returncode == 0, done.stderr
    assert "Permission denied" not in done.stderr
    for path in wanted:
        assert Path(path).exists()
    assert sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) == before
