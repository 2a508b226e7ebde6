"""An installer built from paths nix-prefix retargeted before: a prefix installed from an
installer (its binaries hold the store dir slash-padded) packed again and installed at
a third prefix leaves no byte of the second behind (builder/sources.py
``padded_spelling``; the bug: the canonical spelling travelled as the embedded one, so
the binaries' padded form was never rewritten)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.localnix import LocalNix, prefix_env
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.payload.container import InstallerFile

from tests.support import run_installer

# A binary (a NUL in it) naming its own path and another store path, and a script.
EXPR = """
let
  sh = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-ec" script ]; PATH = "/usr/bin:/bin";
  };
  data = sh "rebuild-data" ''
    mkdir -p $out; printf 'data\\n' > $out/message
  '';
in sh "rebuild-program" ''
  mkdir -p $out/bin $out/lib
  printf '\\177ELF\\0\\0%s/message\\0%s\\0' ${data} $out > $out/lib/blob
  printf '#!/bin/sh\\ncat %s/message\\n' ${data} > $out/bin/say
  chmod +x $out/bin/say
''
"""


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not p.is_symlink()}


@pytest.mark.slow
def test_a_retargeted_prefix_packed_again_goes_anywhere(tmp_path: Path) -> None:
    long = tmp_path / "a-long-prefix-the-closure-was-built-at-first"
    nix = LocalNix(long)
    expr = tmp_path / "rebuild.nix"
    expr.write_text(EXPR)
    root = nix.build_file(expr)[0]
    first = tmp_path / "first.sh"
    build_installer(read_closure(nix.write_closure_info([root], tmp_path / "info")), first,
                    BuildOptions(level=1))
    os.rename(long, tmp_path / "moved-away")

    # Installed at a shorter prefix: the blob holds P1's store dir slash-padded.
    p1 = tmp_path / "p1"
    done = run_installer(first, "-y", "-p", str(p1))
    assert done.returncode == 0, done.stderr
    root1 = f"{p1}/store/{root.rpartition('/')[2]}"
    blob = Path(root1, "lib/blob").read_bytes()
    assert f"{p1}/store".encode() not in blob and b"//store/" in blob

    # P1's closure, packed as it is installed.
    env = prefix_env(p1)
    paths = subprocess.run(["nix-store", "-qR", root1], env=env, capture_output=True,
                           text=True, check=True).stdout.split()
    db = tmp_path / "p1.db"
    db.write_bytes(subprocess.run(["nix-store", "--dump-db", *paths], env=env,
                                  capture_output=True, check=True).stdout)
    second = tmp_path / "second.sh"
    build_installer(read_closure(db), second, BuildOptions(level=1))
    with InstallerFile(str(second)) as packed:
        embedded = packed.manifest.embedded_store_dir
    assert embedded != f"{p1}/store" and re.sub("/+", "/", embedded) == f"{p1}/store"

    # Installed at a third prefix: nothing of P1's, in any spelling, is left.
    p2 = tmp_path / "q2"
    done = run_installer(second, "-y", "-p", str(p2))
    assert done.returncode == 0, done.stderr
    files = _files(p2 / "store")
    assert files and not [f for f, data in files.items()
                          if str(p1).encode() in data or b"/p1//" in data]
    root2 = f"{p2}/store/{root.rpartition('/')[2]}"
    assert f"{p2}/store".encode() in Path(root2, "bin/say").read_bytes()
    assert subprocess.run([f"{root2}/bin/say"], capture_output=True, text=True,
                          check=True).stdout == "data\n"
