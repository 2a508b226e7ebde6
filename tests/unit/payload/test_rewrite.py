"""payload.rewrite: store dirs and hash parts replaced in bytes, in any pieces."""

from __future__ import annotations

import gzip
import io
import os
import zipfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from nix_prefix.payload import nar, rewrite

from tests.support import feed_in_pieces


@settings(max_examples=200)
@given(st.lists(st.sampled_from([b"x", b"/old/store", b"/old/st", b"ore/", b"/",
                                 b"a" * 20, b"a" * 12, b"q" * 32, b"0123"]), max_size=30),
       st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=10))
def test_rewriter_in_pieces_equals_whole(parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    hashes = {b"a" * 32: b"b" * 32, b"q" * 32: b"r" * 32}
    whole = rewrite.Rewriter(b"/old/store", b"/new//////", hashes).whole(data)
    rw = rewrite.Rewriter(b"/old/store", b"/new//////", hashes)
    assert feed_in_pieces(rw, data, cuts) == whole
    assert len(whole) == len(data)
    if b"a" * 20 not in data and b"q" * 32 not in data:
        assert whole == data.replace(b"/old/store", b"/new//////")


def test_rewriter_examples() -> None:
    hashes = {b"a" * 32: b"b" * 32}
    rw = rewrite.Rewriter(b"/old/store", b"/new", hashes)
    assert rw.whole(b"#!/old/store/" + b"a" * 32 + b"-sh/bin/sh /old/store") == (
        b"#!/new/" + b"b" * 32 + b"-sh/bin/sh /new")
    # Inside a longer nix32 run every 32-char window is looked at, as Nix scans.
    assert rw.whole(b"x" + b"a" * 32 + b"c") == b"x" + b"b" * 32 + b"c"
    assert rw.whole(b"zz" + b"a" * 32) == b"zz" + b"b" * 32


@settings(max_examples=300)
@given(st.lists(st.sampled_from([b"x", b"/old/store", b"/old/st", b"ore/", b"\0", b"/old"]),
                max_size=30),
       st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=10))
def test_stream_rewriter_equals_a_whole_replace(parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    rw = rewrite.Rewriter(b"/old/store", b"/new//////")
    assert feed_in_pieces(rw, data, cuts) == data.replace(b"/old/store", b"/new//////")
    assert rw.count == data.count(b"/old/store")


def test_rewriter_writes_the_canonical_store_dir_into_text_and_pads_binaries(
        tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "script").write_bytes(b"#!/old/store/abc-sh/bin/sh\n")
    (tree / "lib.so").write_bytes(b"\x7fELF\x00RUNPATH=/old/store/abc-x/lib\x00")
    (tree / "lib.jar").write_bytes(b"PK /old/store inside a stored member")
    os.symlink("/old/store/abc-x/y", tree / "link")
    expected = tmp_path / "e"
    expected.mkdir()
    (expected / "script").write_bytes(b"#!/n/store/abc-sh/bin/sh\n")
    (expected / "lib.so").write_bytes(b"\x7fELF\x00RUNPATH=/n///store/abc-x/lib\x00")
    (expected / "lib.jar").write_bytes(b"PK /old/store inside a stored member")
    os.symlink("/n/store/abc-x/y", expected / "link")
    hasher = nar.NarHasher()
    relocator = rewrite.PathRewriter(hasher, b"/old/store", b"/n///store")
    nar.dump_path(os.fsencode(tree), relocator)
    assert relocator.count == 3
    assert hasher.digest() == nar.hash_path(os.fsencode(expected))[0]


def test_a_retargeted_payload_is_retargeted_again_in_both_forms(tmp_path: Path) -> None:
    # Retargeted before to /a/store (padded /a/////store in binaries): text holds
    # the canonical form, binaries the padded one; both become the new store dir.
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "conf").write_bytes(b"dir=/a/store/abc-x and /a/////store/abc-y\n")
    (tree / "bin").write_bytes(b"\x00/a/////store/abc-x\x00")
    expected = tmp_path / "e"
    expected.mkdir()
    (expected / "conf").write_bytes(b"dir=/bb/store/abc-x and /bb/store/abc-y\n")
    (expected / "bin").write_bytes(b"\x00/bb////store/abc-x\x00")
    hasher = nar.NarHasher()
    nar.dump_path(os.fsencode(tree), rewrite.PathRewriter(hasher, b"/a/////store",
                                                          b"/bb////store"))
    assert hasher.digest() == nar.hash_path(os.fsencode(expected))[0]
    assert rewrite.canonical(b"/a/b////store") == b"/a/b/store"


def test_hidden_references_are_found_in_compressed_and_checksummed_files() -> None:
    needle = b"/old/store"
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.txt", b"see /old/store/abc-x " * 50)
    cases = {
        "gzip": gzip.compress(b"path: /old/store/abc-x\n"),
        "archive": zipped.getvalue(),
        "pyc": b"\x00\x00co_filename /old/store/abc-x/lib.py",
    }
    for kind, data in cases.items():
        assert rewrite.hidden_reference(kind, data, needle), kind
    assert rewrite.hidden_reference("gzip", gzip.compress(b"nothing here"), needle) is None
    assert rewrite.hidden_reference("gzip", b"not gzip at all", needle) is None
