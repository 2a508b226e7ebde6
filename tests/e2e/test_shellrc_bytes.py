"""--modify-profile and --unmodify-profile of a real installer keep the bytes of CRLF
start-up files (issue 23, item 3); tests/unit/installer/test_shellrc.py has every case."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support import build_small, run_installer
from tests.unit.installer.test_shellrc import ORIGINALS


def test_installer_modify_and_unmodify_profile_keep_crlf_bytes(world_dir: Path) -> None:
    """The same through the installer's own command line."""
    built = build_small(world_dir)
    built.move_build_away()
    home = world_dir / "home"
    home.mkdir()
    files = {".bashrc": ORIGINALS["crlf"],
             ".profile": ORIGINALS["lone carriage return in a quoted PS1"],
             ".zshrc": ORIGINALS["not UTF-8"] + ORIGINALS["no final newline"]}
    for name, data in files.items():
        (home / name).write_bytes(data)
    env = dict(os.environ, HOME=str(home))

    proc = run_installer(built.installer, "-y", "--modify-profile", env=env)
    assert proc.returncode == 0, proc.stderr
    for name, data in files.items():
        assert (home / name).read_bytes().startswith(data), name
    undo = run_installer(built.installer, "--unmodify-profile", env=env)
    assert undo.returncode == 0, undo.stderr
    assert {n: (home / n).read_bytes() for n in files} == files
