"""payload.hashes against the real ``nix-hash`` (docs/nix-formats.md sections 2 and 4)."""

from __future__ import annotations

import base64
import hashlib
import random
import shutil
import subprocess

import pytest

from nix_prefix.payload import hashes, nix32

from tests.unit.payload.test_hashes import GOOD, GOOD_B32, GOOD_B64


def run_nix_hash(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("nix-hash")
    assert exe, "nix-hash is not on PATH"
    return subprocess.run([exe, *args], capture_output=True, text=True, check=False)


def nix_to(base: str, *hashes_: str) -> list[str]:
    """``nix-hash --type sha256 --to-base16/--to-base32`` of each argument."""
    proc = run_nix_hash("--type", "sha256", "--to-" + base, *hashes_)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def forms(digest: bytes) -> dict[str, str]:
    """Every way Nix prints (and parseAny reads) one sha256."""
    b32 = nix32.encode(digest)
    b64 = base64.b64encode(digest).decode()
    return {
        "sha256:nix32": "sha256:" + b32,
        "bare nix32": b32,
        "bare hex": digest.hex(),
        "bare HEX": digest.hex().upper(),
        "sha256:hex": "sha256:" + digest.hex(),
        "SRI": "sha256-" + b64,
        "sha256:base64": "sha256:" + b64,
        "bare base64": b64,
    }


DIGESTS = [hashlib.sha256(b"abc").digest(), bytes(32), b"\xff" * 32,
           *(random.Random(42).randbytes(32) for _ in range(5))]


@pytest.mark.parametrize("digest", DIGESTS, ids=lambda d: d.hex()[:8])
def test_every_form_parses_to_the_same_digest_as_nix(digest: bytes) -> None:
    texts = forms(digest)
    # Nix's own reading of every form.
    assert nix_to("base16", *texts.values()) == [digest.hex()] * len(texts)
    assert nix_to("base32", *texts.values()) == [nix32.encode(digest)] * len(texts)
    for form, text in texts.items():
        assert hashes.parse_sha256(text) == digest, form
        assert hashes.normalise_sha256(text) == "sha256:" + nix32.encode(digest), form


def test_format_is_what_nix_prints_for_closure_info() -> None:
    """closureInfo's form is sha256:<nix32>, i.e. Nix's base32 with the prefix."""
    rng = random.Random(5)
    digests = [rng.randbytes(32) for _ in range(20)]
    nix = nix_to("base32", *(d.hex() for d in digests))
    assert [hashes.format_sha256(d) for d in digests] == ["sha256:" + n for n in nix]


GARBAGE = [
    "",
    "sha256:",
    "garbage",
    "sha256-",
    "sha1:" + GOOD.hex(),
    "md5:" + GOOD.hex(),
    "SHA256:" + GOOD.hex(),
    "sha512-" + GOOD_B64,
    "md5-" + GOOD_B64,
    GOOD.hex()[:-1],
    GOOD.hex() + "0",
    GOOD.hex()[:-1] + "g",
    GOOD_B32[:-1] + "e",
    GOOD_B32.upper(),
    "z" + "0" * 51,
    GOOD_B32[:-1],
    " " + GOOD.hex(),
    "sha256-" + GOOD.hex(),
    "sha256-" + GOOD_B64.replace("+", "-").replace("/", "_"),
    "sha256-" + base64.b64encode(GOOD[:31]).decode(),
    "sha256:" + GOOD_B32 + "0",
]


@pytest.mark.parametrize("text", GARBAGE)
def test_rejects_garbage_like_nix(text: str) -> None:
    proc = run_nix_hash("--type", "sha256", "--to-base16", text)
    assert proc.returncode != 0, f"Nix accepted {text!r}: {proc.stdout}"
    with pytest.raises(ValueError):
        hashes.parse_sha256(text)

