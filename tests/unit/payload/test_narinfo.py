"""narinfo, nix-cache-info and NAR reading: as Nix 2.8 writes and reads them.  A cache
written next to ``nix copy``'s is in tests/e2e/test_narinfo_against_nix.py."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nix_prefix.payload import nar, narinfo

from tests.support import nar_bytes

# What `nix copy --to file://` wrote with Nix 2.8 (../shared/docs/nix-formats.md section 9).
NIX_WROTE = """\
StorePath: /tmp/x/p/store/8qygh497d0bm7qzmrzr2323k5i648c17-greet-app-2.1
URL: nar/1bdfwlni82zssmjmm91layx59gcmfwwzz00l37dcv2zfn8flhrl7.nar.xz
Compression: xz
FileHash: sha256:1bdfwlni82zssmjmm91layx59gcmfwwzz00l37dcv2zfn8flhrl7
FileSize: 436
NarHash: sha256:0k9wr4gxg094wzd4n1wrq6cagvbhycnz6d0mmyhwmsdzjwayh0da
NarSize: 2920
References: 8haxsayga95ri1xk7nxv123mfnbsbd4d-libgreet-1.0 amdjh8nc5fdr462gra63lr8dbrkwwbkx-data-blob
Deriver: 5rwbcwvh4bwq0cnc2d6q26w66kawby2c-greet-app-2.1.drv
Sig: k1:/VHWeXswRtwHXNPMiQkZw3GHOLBDE5Lf73NcAWfe2pYXXgOzc0/zDoWn8p2ahzxaEqXq7vO52qSzKeIm/x1ECg==
"""


def test_a_narinfo_nix_wrote_prints_back_identically() -> None:
    info = narinfo.parse(NIX_WROTE, "test", "/tmp/x/p/store")
    assert info.to_text() == NIX_WROTE
    assert info.name == "8qygh497d0bm7qzmrzr2323k5i648c17-greet-app-2.1"
    assert info.fingerprint() == (
        "1;/tmp/x/p/store/8qygh497d0bm7qzmrzr2323k5i648c17-greet-app-2.1;"
        "sha256:0k9wr4gxg094wzd4n1wrq6cagvbhycnz6d0mmyhwmsdzjwayh0da;2920;"
        "/tmp/x/p/store/8haxsayga95ri1xk7nxv123mfnbsbd4d-libgreet-1.0,"
        "/tmp/x/p/store/amdjh8nc5fdr462gra63lr8dbrkwwbkx-data-blob")
    assert narinfo.narinfo_file(info.name) == "8qygh497d0bm7qzmrzr2323k5i648c17.narinfo"


def test_what_nix_assumes_when_fields_are_missing() -> None:
    text = ("StorePath: /s/store/" + "0" * 32 + "-x\nURL: nar/a.nar.bz2\n"
            "NarHash: sha256:" + "1" * 52 + "\nNarSize: 8\nDeriver: unknown-deriver\n"
            "Unknown: skipped\n")
    info = narinfo.parse(text, "t")
    assert info.compression == "bzip2" and info.deriver == "" and info.references == []
    assert info.file_hash == "" and info.file_size == 0


@pytest.mark.parametrize("change, why", [
    (lambda t: t.replace("StorePath: /tmp/x/p/store/", "StorePath: /elsewhere/store/"),
     "not in the cache's store dir"),
    (lambda t: t.replace("URL: nar/", "URL: ../../etc/"), "not a path inside the cache"),
    (lambda t: t.replace("URL: nar/", "URL: /etc/"), "not a path inside the cache"),
    (lambda t: t.replace("URL: nar/", "URL: http://evil/"), "not a path inside the cache"),
    (lambda t: t.replace("NarSize: 2920", "NarSize: -1"), "NarSize"),
    (lambda t: t.replace("NarSize: 2920", "NarSize: 0"), "no NarSize"),
    (lambda t: t.replace("NarHash: sha256:0k9", "NarHash: md5:0k9"), "not sha256"),
    (lambda t: t + "References: \n", "References given twice"),
    (lambda t: t.replace("References: 8haxsayga", "References: ../"), "not a store path"),
    (lambda t: t.replace("\nURL: ", "\nXRL: "), "no URL"),
    (lambda t: t.rstrip("\n"), "no newline"),
    (lambda t: t + "garbage\n", "'Name: value'"),
    (lambda t: t + "CA: fixed:r:sha256:$(reboot)\n", "CA"),
])
def test_a_hostile_narinfo_is_refused_with_a_reason(change, why: str) -> None:
    with pytest.raises(narinfo.NarInfoError, match="corrupt: .*" + why):
        narinfo.parse(change(NIX_WROTE), "test", "/tmp/x/p/store")


def test_nix_cache_info() -> None:
    assert narinfo.cache_info_text("/a/store") == "StoreDir: /a/store\n"
    assert narinfo.parse_cache_info("WantMassQuery: 1\nStoreDir:  /a/store \nPriority: 40\n",
                                    "x") == "/a/store"
    with pytest.raises(narinfo.NarInfoError, match="names no StoreDir"):
        narinfo.parse_cache_info("WantMassQuery: 1\n", "x")
    with pytest.raises(narinfo.NarInfoError, match="not a usable store directory"):
        narinfo.parse_cache_info("StoreDir: relative/store\n", "x")


def test_nar_urls_follow_binary_cache_store() -> None:
    digest = bytes(range(32))
    base = narinfo.nar_url(digest, "none")
    assert base.startswith("nar/") and base.endswith(".nar") and len(base) == 4 + 52 + 4
    assert narinfo.nar_url(digest, "xz") == base + ".xz"
    assert narinfo.nar_url(digest, "zstd") == base + ".zst"


# -- NAR reading --------------------------------------------------------------------------


def _nar_of(tmp: Path) -> bytes:
    return nar_bytes(str(tmp))


def test_parse_gives_back_the_nar_of_a_tree(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "x").write_bytes(b"#!/bin/sh\n" * 1000)
    (tmp_path / "bin" / "x").chmod(0o755)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "link").symlink_to("bin/x")
    data = _nar_of(tmp_path)
    out: list[bytes] = []
    assert nar.parse(io.BytesIO(data).read, nar.NarWriter(out.append)) == len(data)
    assert b"".join(out) == data


def _s(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b + b"\0" * ((8 - len(b) % 8) % 8)


def _dir(*entries: tuple[bytes, bytes]) -> bytes:
    body = b"".join(_s(b"entry") + _s(b"(") + _s(b"name") + _s(n) + _s(b"node") + node
                    + _s(b")") for n, node in entries)
    return _s(b"(") + _s(b"type") + _s(b"directory") + body + _s(b")")


_FILE = _s(b"(") + _s(b"type") + _s(b"regular") + _s(b"contents") + _s(b"x") + _s(b")")


@pytest.mark.parametrize("body, why", [
    (_dir((b"b", _FILE), (b"a", _FILE)), "not sorted"),
    (_dir((b"a", _FILE), (b"a", _FILE)), "not sorted"),
    (_dir((b"..", _FILE),), "invalid file name"),
    (_dir((b"a/b", _FILE),), "invalid file name"),
    (_dir((b"", _FILE),), "invalid file name"),
    (_s(b"(") + _s(b"type") + _s(b"fifo") + _s(b")"), "unknown file type"),
    (_FILE[:-20], "ends early"),
    (_s(b"(") + _s(b"type") + _s(b"symlink") + _s(b"target") + _s(b"x" * 5000) + _s(b")"),
     "longer than"),
    (_s(b"(") + _s(b"type") + _s(b"regular") + _s(b"contents") + b"\x01\0\0\0\0\0\0\0x\x01"
     + b"\0" * 6 + _s(b")"), "padding"),
])
def test_a_hostile_nar_is_refused(body: bytes, why: str) -> None:
    with pytest.raises(nar.NarError, match=why):
        nar.parse(io.BytesIO(_s(nar.MAGIC) + body).read, nar.NarHasher())


def test_a_too_deep_nar_is_refused() -> None:
    node = _FILE
    for _ in range(nar.MAX_DEPTH + 2):
        node = _dir((b"d", node))
    with pytest.raises(nar.NarError, match="deeper"):
        nar.parse(io.BytesIO(_s(nar.MAGIC) + node).read, nar.NarHasher())


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=400))
def test_parse_never_fails_but_with_nar_error(junk: bytes) -> None:
    try:
        nar.parse(io.BytesIO(_s(nar.MAGIC) + junk).read, nar.NarHasher())
    except nar.NarError:
        pass


# -- against Nix ----------------------------------------------------------------------------

