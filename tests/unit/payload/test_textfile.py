"""The text rule (payload/textfile.py) and rewriting a file the text or the binary way."""

from __future__ import annotations

import gzip
import io
import tracemalloc
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nix_prefix.payload import textfile
from nix_prefix.payload.rewrite import Rewriter

OLD = b"/old-long-build/store"
PADDED = b"/new//////////////store"[: len(OLD)]
NEW = b"/new/store"
H_OLD, H_NEW = b"a" * 32, b"b" * 32


def rewriters() -> tuple[Rewriter, Rewriter]:
    hashes = {H_OLD: H_NEW}
    return Rewriter(OLD, NEW, hashes), Rewriter(OLD, b"/new/" + b"/" * (
        len(OLD) - len(b"/new/store")) + b"store", hashes)


def rewrite(data: bytes, pieces: int = 1 << 16) -> tuple[bytes, bool, list[tuple]]:
    """Run a FileRewrite over ``data`` fed in ``pieces``; return the output, its verdict
    and the calls it made (("start", size) / ("write", n))."""
    out, calls = [], []
    text, binary = rewriters()

    def start(size: int) -> None:
        calls.append(("start", size))

    def write(data: bytes) -> None:
        assert calls and calls[0][0] == "start", "bytes before the size"
        calls.append(("write", len(data)))
        out.append(data)

    f = textfile.FileRewrite(len(data), text, binary, start, write)
    for i in range(0, len(data), pieces):
        f.feed(data[i:i + pieces])
    f.finish()
    result = b"".join(out)
    assert [c for c in calls if c[0] == "start"] == [("start", len(result))]
    return result, bool(f.is_text), calls


SCRIPT = b"#!" + OLD + b"/" + H_OLD + b"-bash/bin/bash\necho hi\n"

TEXT = {
    "script": SCRIPT,
    "empty": b"",
    "pkg-config": b"prefix=" + OLD + b"/x-foo\nLibs: -L${prefix}/lib -lfoo\n",
    "libtool": b"# libfoo.la\ndlname='libfoo.so.1'\nlibdir='" + OLD + b"/x/lib'\n",
    "crlf and tabs": b"a\tb\r\nc\x0b\x0cd\r\n",
    "ansi colours and a bell": b"\x1b[31mred\x1b[0m\x07\x08\n",
    "utf-8 with a byte order mark": "\ufeffgrüße aus ".encode() + OLD + b"\n",
    "latin-1": "café ".encode("latin-1") + OLD + b"\n",
    "no newline at the end": OLD,
}

BINARY = {
    "elf": b"\x7fELF\x02\x01\x01\x00" + OLD + b"\x00",
    "elf signature alone": b"\x7fELF",
    "nul at the very end": SCRIPT + b"\x00",
    "a control byte": b"abc\x01def",
    "delete": b"abc\x7f",
    "utf-16 le": "\ufeffinstalled in /old".encode("utf-16-le"),
    "utf-16 be without nul bytes": b"\xfe\xff" + "\u4e2d\u6587".encode("utf-16-be"),
    "utf-32 le": "\ufeffx".encode("utf-32-le"),
    "utf-32 be": "\ufeffx".encode("utf-32-be"),
    "gzip": gzip.compress(OLD),
    "ar archive of text members": b"!<arch>\nfoo.txt/        0           0     0     644     4"
                                  b"         `\nabc\n",
    "ascii cpio": b"070701000000010000" + OLD,
    "pdf": b"%PDF-1.4\n1 0 obj << >> endobj\nxref\n0 1\n0000000009 00000 n\n",
}


@pytest.mark.parametrize("name", sorted(TEXT))
def test_text(name: str) -> None:
    assert textfile.is_text(TEXT[name])


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary(name: str) -> None:
    assert not textfile.is_text(BINARY[name])


def test_zip_and_compressed_formats_are_binary() -> None:
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.txt", b"printable only")
    assert not textfile.is_text(z.getvalue())
    for sig in textfile.SIGNATURES:
        assert not textfile.is_text(sig + b" and then text\n"), sig


@settings(max_examples=300)
@given(st.lists(st.sampled_from([b"text ", b"\n", b"\x00", b"\x01", b"\x7fEL", b"F", b"\xff",
                                 b"\xfe", b"PK", b"\x03\x04", b"\x1b", b"BZ", b"h"]),
                max_size=12),
       st.integers(min_value=1, max_value=5))
def test_classifier_in_pieces_equals_the_whole(parts: list[bytes], step: int) -> None:
    data = b"".join(parts)
    c = textfile.Classifier()
    for i in range(0, len(data), step):
        c.feed(data[i:i + step])
    assert c.finish() == textfile.is_text(data)


def test_text_gets_the_canonical_store_dir_and_its_new_length() -> None:
    out, is_text, calls = rewrite(SCRIPT, pieces=7)
    assert is_text
    assert out == b"#!/new/store/" + H_NEW + b"-bash/bin/bash\necho hi\n"
    assert calls[0] == ("start", len(out)) and len(out) < len(SCRIPT)


def test_a_binary_keeps_its_length_and_streams_once_it_is_known() -> None:
    data = b"\x7fELF\x02\x01\x01\x00" + (b"x" * 1000 + OLD + b"/" + H_OLD + b"-lib\x00") * 3000
    out, is_text, calls = rewrite(data, pieces=4096)
    assert not is_text and len(out) == len(data)
    assert OLD not in out and out.count(b"/new/") == 3000 and H_OLD not in out
    # Written as it came, not held back to the end.
    assert len([c for c in calls if c[0] == "write"]) > 100


def test_a_script_with_a_binary_payload_appended_is_a_binary() -> None:
    # The script part alone is over the memory spool: the verdict comes late.
    script = SCRIPT * (textfile.SPOOL_MEMORY // len(SCRIPT) + 10)
    payload = gzip.compress(b"payload " + OLD)
    out, is_text, _ = rewrite(script + payload, pieces=65536)
    assert not is_text and len(out) == len(script + payload)
    _, binary = rewriters()
    assert out == binary.whole(script + payload)


def test_a_large_text_file_is_held_on_disk_not_in_memory() -> None:
    line = b"line of " + OLD + b"/" + H_OLD + b"-x, run by " + OLD + b"/" + H_OLD + b"-y\n"
    n = (4 << 20) // len(line) // 1000 * 1000
    pieces_out = []
    text, binary = rewriters()
    sizes = []
    tracemalloc.start()
    try:
        f = textfile.FileRewrite(n * len(line), text, binary, sizes.append,
                                 lambda d: pieces_out.append(len(d)))
        for _ in range(n // 1000):
            f.feed(line * 1000)
        f.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    new_line = line.replace(OLD, NEW).replace(H_OLD, H_NEW)
    assert f.is_text and sizes == [n * len(new_line)] and sum(pieces_out) == sizes[0]
    assert peak < 4 * textfile.SPOOL_MEMORY + 4 * len(line) * 1000, peak


def test_a_binary_rewriter_that_changes_the_length_is_refused() -> None:
    text, _ = rewriters()
    f = textfile.FileRewrite(len(BINARY["elf"]), text, text, lambda n: None, lambda d: None)
    f.feed(BINARY["elf"])
    with pytest.raises(ValueError, match="length"):
        f.finish()


@pytest.mark.parametrize("name", sorted(TEXT) + sorted(BINARY))
def test_file_rewrite_follows_the_rule(name: str) -> None:
    data = TEXT.get(name, BINARY.get(name))
    for pieces in (1, 3, 1 << 16):
        out, is_text, _ = rewrite(data, pieces)
        assert is_text == textfile.is_text(data)
        text, binary = rewriters()
        assert out == (text if is_text else binary).whole(data)
