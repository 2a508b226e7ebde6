"""builder/inspect.py: the limits of a retarget, under the key ``retarget`` (and the
deprecated ``relocation`` for one release), and said as "retarget" in the text."""

from __future__ import annotations

from pathlib import Path

from nix_prefix.builder.inspect import describe, render
from nix_prefix.payload.manifest import Manifest, PathEntry
from nix_prefix.payload.publisher import Verdict

STORE_DIR = "/home/alice/.nix/store"
NAME = "0" * 31 + "1-hello"


def _manifest() -> Manifest:
    entry = PathEntry(NAME, "sha256:" + "0" * 52, 1000, [])
    return Manifest(STORE_DIR, "x86_64-linux", "xz", [entry], [], [NAME],
                    hidden_refs=[f"{NAME}/bin/hello: compressed"])


def test_json_says_retarget_and_still_relocation(tmp_path: Path) -> None:
    file = tmp_path / "i.sh"
    file.write_bytes(b"#!" + bytes(98))
    doc = describe(file, _manifest(), Verdict([], [], []))
    limits = {"maxStoreDirLength": len(STORE_DIR),
              "maxPrefixLength": len(STORE_DIR) - len("/store")}
    assert doc["retarget"] == limits
    assert doc["relocation"] == doc["retarget"]  # deprecated, written for one release
    assert doc["size"] == 100


def test_text_says_retarget(tmp_path: Path) -> None:
    file = tmp_path / "i.sh"
    file.write_bytes(b"#!")
    text = render(file, _manifest(), Verdict([], [], []))
    assert f"retarget:      to any prefix P with len(P/store) <= {len(STORE_DIR)}" in text
    assert "files where a retarget cannot rewrite the store dir:" in text
    assert "relocation" not in text
