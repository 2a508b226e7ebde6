"""--modify-profile and --unmodify-profile own their marked block and no other byte:
CRLF files, a lone carriage return, no final newline and bytes that are not UTF-8
come back exactly as they were (issue 23, item 3).  The same through a real installer:
tests/e2e/test_shellrc_bytes.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from nix_prefix.installer import shellrc

ROOT = "/tmp/mine"

ORIGINALS = {
    "crlf": b"# my bashrc\r\nalias ll='ls -l'\r\nexport EDITOR=vi\r\n",
    "crlf, no final newline": b"# my bashrc\r\nalias ll='ls -l'",
    "lone carriage return in a quoted PS1": b"PS1='\\u@\\h\r$ '\nexport PS1\n",
    "no final newline": b"export A=1",
    "not UTF-8": b"# caf\xe9 \xff\xfe latin-1\nexport B='\xe9'\n",
    "empty": b"",
    "only a newline": b"\n",
    "another prefix's block": (b"x\r\n" + shellrc.block("/opt/other").encode() + b"y"),
}


@pytest.mark.parametrize("original", ORIGINALS.values(), ids=list(ORIGINALS))
def test_the_block_comes_and_goes_leaving_every_other_byte(tmp_path: Path,
                                                             original: bytes) -> None:
    rc = tmp_path / ".bashrc"
    rc.write_bytes(original)
    (tmp_path / ".profile").write_bytes(original)

    assert shellrc.add_block(ROOT, home=str(tmp_path)) == [str(tmp_path / ".profile"),
                                                          str(rc)]
    added = rc.read_bytes()
    # What was there is still there, first, unchanged; the block follows on its own lines.
    assert added.startswith(original)
    assert shellrc.block(ROOT).encode().rstrip(b"\n") in added
    assert shellrc.holds_block(str(rc), ROOT)
    # Adding again changes nothing.
    shellrc.add_block(ROOT, home=str(tmp_path))
    assert rc.read_bytes() == added

    shellrc.remove_block(ROOT, home=str(tmp_path))
    assert rc.read_bytes() == original
    assert (tmp_path / ".profile").read_bytes() == original
    assert not shellrc.holds_block(str(rc), ROOT)


def test_blocks_of_other_prefixes_and_half_blocks_are_left_alone(tmp_path: Path) -> None:
    rc = tmp_path / ".profile"
    other = shellrc.block("/opt/other")
    rc.write_text("before\n" + other + "after\n")
    assert shellrc.add_block("/tmp/mine", home=str(tmp_path)) == [str(rc)]
    assert rc.read_text() == "before\n" + other + "after\n" + shellrc.block("/tmp/mine")
    assert shellrc.remove_block("/tmp/mine", home=str(tmp_path)) == [str(rc)]
    assert rc.read_text() == "before\n" + other + "after\n"
    assert shellrc.remove_block("/tmp/mine", home=str(tmp_path)) == []

    # A begin marker whose end was deleted by hand: nothing is removed.
    broken = "x\n" + shellrc.begin_marker("/tmp/mine") + "\nkeep me\n"
    rc.write_text(broken)
    assert shellrc.remove_block("/tmp/mine", home=str(tmp_path)) == []
    assert rc.read_text() == broken
