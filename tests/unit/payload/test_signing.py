"""Ed25519 verification on Python ints, Nix's key and signature formats, the signer.

Checked three ways: RFC 8032's test vectors, signatures made by PyNaCl
(libsodium) for random keys and messages, and keys and path signatures made
by the machine's Nix itself (``nix-store --generate-binary-cache-key``,
``nix store sign``, ``nix path-info --sigs``): those are in
tests/e2e/test_signing_against_nix.py.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
from pathlib import Path

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nix_prefix.builder import signer
from nix_prefix.builder.errors import BuildError
from nix_prefix.builder.samples import NIX_DIR
from nix_prefix.payload import ed25519, publisher, signing
from nix_prefix.payload.display import verdict_lines

REPO = Path(__file__).resolve().parents[3]
SMALL_NIX = NIX_DIR / "small.nix"

# RFC 8032 section 7.1: (secret seed, public key, message, signature), hex.
RFC8032 = [
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
     "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39"
     "701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
     "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f36"
     "13d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
     "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f7"
     "60984dc6594a7c15e9716ed28dc027beceea1ec40a"),
    # TEST SHA(abc): the message is SHA-512("abc").
    ("833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
     "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
     hashlib.sha512(b"abc").hexdigest(),
     "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7"
     "c66431e0303dca179c138ac17ad9bef1177331a704"),
]


def _flip(data: bytes, index: int, bit: int = 1) -> bytes:
    out = bytearray(data)
    out[index] ^= bit
    return bytes(out)


@pytest.mark.parametrize(("seed", "public", "message", "sig"), RFC8032)
def test_rfc8032_vectors(seed: str, public: str, message: str, sig: str) -> None:
    pk, msg, signature = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(sig)
    assert ed25519.verify(pk, msg, signature)
    assert ed25519.public_key_of_seed(bytes.fromhex(seed)) == pk
    # One flipped bit anywhere (message, R, S, key) and it fails.
    assert not ed25519.verify(pk, msg + b"x", signature)
    assert not ed25519.verify(pk, msg, _flip(signature, 0))
    assert not ed25519.verify(pk, msg, _flip(signature, 40))
    assert not ed25519.verify(_flip(pk, 0), msg, signature)


def test_rfc8032_vectors_agree_with_libsodium() -> None:
    """The vectors are the ones libsodium signs: the table above is not mistyped."""
    for seed, public, message, sig in RFC8032:
        key = nacl.signing.SigningKey(bytes.fromhex(seed))
        assert key.verify_key.encode().hex() == public
        assert key.sign(bytes.fromhex(message)).signature.hex() == sig


def test_refuses_a_non_canonical_s() -> None:
    """S + L verifies the same equation; libsodium refuses it, and so do we."""
    _, public, message, sig = RFC8032[0]
    raw = bytes.fromhex(sig)
    s = int.from_bytes(raw[32:], "little") + ed25519.L
    assert s < 2 ** 256
    assert not ed25519.verify(bytes.fromhex(public), bytes.fromhex(message),
                              raw[:32] + s.to_bytes(32, "little"))


def test_refuses_small_order_and_non_canonical_keys() -> None:
    message = b"anything"
    identity = (1).to_bytes(32, "little")  # y = 1, x = 0: the neutral element
    minus_one = (ed25519.P - 1).to_bytes(32, "little")  # y = -1: order 2
    not_canonical = (ed25519.P + 1).to_bytes(32, "little")  # y >= p
    # With A of small order, R = [S]B and S = 0... forge "signatures" that a
    # lax verifier would accept for every message.
    forged = ed25519.encode_point(ed25519.BASE) + (1).to_bytes(32, "little")
    for key in (identity, minus_one, not_canonical, bytes(32)):
        assert not ed25519.verify(key, message, forged)
    assert ed25519.decode_point(not_canonical) is None


def test_wrong_lengths_are_false_not_errors() -> None:
    _, public, message, sig = RFC8032[1]
    pk, msg, signature = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(sig)
    assert not ed25519.verify(pk[:31], msg, signature)
    assert not ed25519.verify(pk, msg, signature[:63])
    assert not ed25519.verify(pk, msg, signature + b"\0")


@settings(max_examples=40, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=300),
       flip=st.integers(min_value=0, max_value=64 * 8 - 1))
def test_agrees_with_libsodium(seed: bytes, message: bytes, flip: int) -> None:
    key = nacl.signing.SigningKey(seed)
    public = key.verify_key.encode()
    signature = key.sign(message).signature
    assert ed25519.public_key_of_seed(seed) == public
    assert ed25519.verify(public, message, signature)
    assert not ed25519.verify(public, message, _flip(signature, flip // 8, 1 << (flip % 8)))


def _oldest_python() -> str:
    """CPython 3.6 from pyenv when the machine has it (the stub's oldest), else this one."""
    try:
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return sys.executable
    found = sorted(Path(root, "versions").glob("3.6.*/bin/python3"))
    return str(found[0]) if found else sys.executable


def test_verifies_alone_in_the_stubs_oldest_python() -> None:
    """The module loaded by itself, as the stub's oldest Python would, accepts RFC 8032's
    signature and refuses it for another message.  (What a check costs, a few
    milliseconds, is measured by bench/verify.py, not timed here.)"""
    _, public, message, sig = RFC8032[3]
    module = str(REPO / "payload" / "ed25519.py")
    script = (
        "import importlib.util as u\n"
        f"spec = u.spec_from_file_location('ed25519', {module!r})\n"
        "m = u.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"key, msg, sig = bytes.fromhex({public!r}), bytes.fromhex({message!r}), "
        f"bytes.fromhex({sig!r})\n"
        "print(m.verify(key, msg, sig), m.verify(key, b'', sig))\n"
    )
    proc = subprocess.run([_oldest_python(), "-I", "-c", script], capture_output=True,
                          text=True, check=True)
    assert proc.stdout.split() == ["True", "False"]


# --- Nix's formats ---------------------------------------------------------------------------

PUBLIC = "k1:sxDnpLVDNAzVKG42/URC1TNQEI6xVFEFreAT76w+FBw="


def test_parse_public_key_and_back() -> None:
    key = signing.parse_public_key(PUBLIC + "\n")
    assert key.name == "k1" and len(key.key) == 32
    assert str(key) == PUBLIC


@pytest.mark.parametrize(("text", "says"), [
    ("", "not of the form NAME:BASE64"),
    ("sxDnpLVDNAzVKG42/URC1TNQEI6xVFEFreAT76w+FBw=", "not of the form NAME:BASE64"),
    (":sxDnpLVDNAzVKG42/URC1TNQEI6xVFEFreAT76w+FBw=", "not of the form NAME:BASE64"),
    ("k1:not base64!", "not base64"),
    ("k1:c3hEbnBMVkRO", "holds 9 bytes, not the 32"),
    ("k\x01:sxDnpLVDNAzVKG42/URC1TNQEI6xVFEFreAT76w+FBw=", "control characters"),
])
def test_malformed_public_keys(text: str, says: str) -> None:
    with pytest.raises(signing.SigningError, match=says):
        signing.parse_public_key(text)


def test_signature_round_trip_and_malformed() -> None:
    sig = signing.Signature("k1", bytes(range(64)))
    assert signing.parse_signature(str(sig)) == sig
    with pytest.raises(signing.SigningError, match="holds 32 bytes, not the 64"):
        signing.parse_signature("k1:" + base64.b64encode(bytes(32)).decode())
    with pytest.raises(signing.SigningError, match="NAME:BASE64"):
        signing.parse_signature(base64.b64encode(bytes(64)).decode())


def test_secret_key_messages_never_show_the_key() -> None:
    secret = "k1:" + base64.b64encode(bytes(range(63))).decode()
    with pytest.raises(signing.SigningError) as e:
        signing.parse_secret_key(secret)
    assert secret[3:20] not in str(e.value) and "63 bytes" in str(e.value)
    with pytest.raises(signing.SigningError, match="it is a public key"):
        signing.parse_secret_key(PUBLIC)


def _secret_key_text(name: str = "pub-1") -> str:
    """A real Nix secret key line (seed, then its public key), as ``nix-store
    --generate-binary-cache-key`` writes it."""
    seed = hashlib.sha256(b"a seed for the messages test").digest()
    return f"{name}:" + base64.b64encode(seed + ed25519.public_key_of_seed(seed)).decode()


def _shows_no_key_material(message: str, key_text: str) -> None:
    body = key_text.partition(":")[2]
    # No 8 characters in a row of the base64 (or of the hex of the seed) appear.
    hexed = base64.b64decode(body).hex()
    for text in (body, hexed):
        assert not any(text[i:i + 8] in message for i in range(len(text) - 7)), message


@pytest.mark.parametrize("parse", [
    signing.parse_public_key,
    lambda text: publisher.trusted_keys([text], {}),
    lambda text: publisher.trusted_keys([], {"NIX_PREFIX_TRUSTED_KEYS": text}),
], ids=["public_key", "--trusted-key", "NIX_PREFIX_TRUSTED_KEYS"])
def test_a_secret_key_given_as_a_public_key_is_named_not_shown(parse) -> None:
    secret = _secret_key_text()
    with pytest.raises(signing.SigningError) as e:
        parse(secret)
    message = str(e.value)
    assert "this is a secret key (64 bytes); give the public key " \
           "(`nix key convert-secret-to-public`)" in message and "'pub-1'" in message
    _shows_no_key_material(message, secret)


@pytest.mark.parametrize("damage", [
    lambda t: t[:-4],  # cut: not base64 any more
    lambda t: t[:-8] + "====",  # another length
    lambda t: t.replace(":", " :", 1),  # a space in the name
    lambda t: t.partition(":")[2],  # no name
], ids=["not-base64", "wrong-length", "bad-name", "no-name"])
def test_a_damaged_secret_key_given_as_a_public_key_is_not_shown(damage) -> None:
    secret = _secret_key_text()
    damaged = damage(secret)
    for parse in (signing.parse_public_key, signing.parse_signature):
        with pytest.raises(signing.SigningError) as e:
            parse(damaged)
        _shows_no_key_material(str(e.value), secret)


def test_secret_key_whose_halves_disagree() -> None:
    seed = bytes(32)
    other = nacl.signing.SigningKey(bytes([1]) * 32).verify_key.encode()
    with pytest.raises(signing.SigningError, match="does not belong to its seed"):
        signing.parse_secret_key("k:" + base64.b64encode(seed + other).decode())


def test_fingerprint_form() -> None:
    store = "/tmp/x/store"
    a = store + "/8haxsayga95ri1xk7nxv123mfnbsbd4d-libgreet-1.0"
    b = store + "/amdjh8nc5fdr462gra63lr8dbrkwwbkx-data-blob"
    hex_hash = "00" * 32
    # References sorted and each once; the hash printed as sha256:<nix32>.
    assert signing.fingerprint(a, hex_hash, 2920, [b, a, b]) == (
        f"1;{a};sha256:{'0' * 52};2920;{a},{b}")
    assert signing.fingerprint(a, hex_hash, 1, []).endswith(";1;")
    with pytest.raises(signing.SigningError, match="NAR size is not known"):
        signing.fingerprint(a, hex_hash, 0, [])


def test_verify_looks_only_at_keys_of_the_signatures_name() -> None:
    key = nacl.signing.SigningKey(bytes([7]) * 32)
    public = key.verify_key.encode()
    sig = signing.Signature("right", key.sign(b"msg").signature)
    assert signing.verify(b"msg", sig, [signing.PublicKey("right", public)])
    assert signing.verify("msg", sig, [signing.PublicKey("right", public)])
    assert not signing.verify(b"msg", sig, [signing.PublicKey("wrong", public)])
    assert not signing.verify(b"other", sig, [signing.PublicKey("right", public)])
    both = [signing.PublicKey("wrong", public), signing.PublicKey("right", public)]
    assert signing.signers(b"msg", [sig], both) == [both[1]]


# --- the signer and the key files -----------------------------------------------------------


@pytest.mark.parametrize(("content", "says"), [
    (None, "cannot read the secret key file"),
    (b"\xff\xfe", "not ASCII text"),
    (b"x" * 5000, "longer than a key"),
    (b"k1:????", "not base64"),
])
def test_bad_key_files_are_one_line(tmp_path: Path, content: bytes | None, says: str) -> None:
    path = tmp_path / "key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BuildError, match=says) as e:
        signer.load_secret_key(path)
    assert "\n" not in str(e.value) and "generate-binary-cache-key" in str(e.value)


# --- the publisher's signatures over a manifest (payload/publisher.py) ----------------------

def _endorsement(seed: int, name: str, manifest_json: bytes) -> publisher.Endorsement:
    key = nacl.signing.SigningKey(bytes([seed]) * 32)
    sig = key.sign(publisher.message(manifest_json).encode()).signature
    return publisher.Endorsement(signing.PublicKey(name, key.verify_key.encode()),
                                 signing.Signature(name, sig))


def test_publisher_round_trip_and_verdicts() -> None:
    manifest = b'{"format": "nix-prefix-manifest"}\n'
    mine, theirs = _endorsement(1, "me", manifest), _endorsement(2, "them", manifest)
    parsed = publisher.from_json(publisher.to_json([mine, theirs]))
    assert parsed == [mine, theirs]
    assert publisher.message(manifest).startswith("nix-prefix-installer-1;sha256:")
    unpinned = publisher.check(manifest, parsed, [])
    assert unpinned.accepted and unpinned.signed_by == [mine.public_key, theirs.public_key]
    assert unpinned.key_names == ["me", "them"]
    assert "--trusted-key me:" in verdict_lines(unpinned)[-1]
    pinned = publisher.check(manifest, parsed, [theirs.public_key])
    assert pinned.accepted and pinned.key_names == ["them"] and pinned.refusal() == ""
    assert "(trusted)" in verdict_lines(pinned)[1]
    assert "(trusted)" not in verdict_lines(pinned)[0]
    stranger = _endorsement(3, "me", manifest).public_key  # my name, another key
    refused = publisher.check(manifest, parsed, [stranger])
    assert not refused.accepted and str(mine.public_key) in refused.refusal()
    unsigned = publisher.check(manifest, [], [stranger])
    assert "not signed" in unsigned.refusal() and verdict_lines(unsigned) == [
        "unsigned (the publisher gave no --sign-key)"]
    with pytest.raises(publisher.PublisherError, match="does not match the manifest"):
        publisher.check(manifest + b" ", parsed, [])


@pytest.mark.parametrize(("doc", "says"), [
    (b"\xff", "not valid JSON"),
    (b"[]", "not a nix-prefix signatures.json"),
    (b'{"format": "nix-prefix-signatures", "version": 2, "signatures": []}', "version 2"),
    (b'{"format": "nix-prefix-signatures", "version": 1}', "no list"),
    (b'{"format": "nix-prefix-signatures", "version": 1, "signatures": [1]}', "not an object"),
    (b'{"format": "nix-prefix-signatures", "version": 1, "signatures": [{}]}', "must be text"),
])
def test_malformed_signature_lists(doc: bytes, says: str) -> None:
    with pytest.raises(publisher.PublisherError, match=says):
        publisher.from_json(doc)


def test_a_signature_paired_with_a_key_of_another_name() -> None:
    e = _endorsement(1, "me", b"m")
    other = publisher.Endorsement(signing.PublicKey("you", e.public_key.key), e.signature)
    with pytest.raises(publisher.PublisherError, match="another name"):
        publisher.from_json(publisher.to_json([other]))


def test_trusted_keys_from_options_and_environment() -> None:
    env = {"NIX_PREFIX_TRUSTED_KEYS": f"  {PUBLIC}\n{PUBLIC} "}
    assert publisher.trusted_keys([PUBLIC], env) == [signing.parse_public_key(PUBLIC)]
    assert publisher.trusted_keys([], {}) == []
    with pytest.raises(signing.SigningError, match="^NIX_PREFIX_TRUSTED_KEYS: "):
        publisher.trusted_keys([], {"NIX_PREFIX_TRUSTED_KEYS": "x"})
    with pytest.raises(signing.SigningError, match="^--trusted-key: "):
        publisher.trusted_keys(["x"], {})

