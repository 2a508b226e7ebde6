"""Who published an installer: the publisher's signatures over its manifest.

An installer built with ``--sign-key`` carries, beside its manifest, the
member ``signatures.json``::

    {"format": "nix-prefix-signatures", "version": 1,
     "signatures": [{"publicKey": "NAME:BASE64", "signature": "NAME:BASE64"}]}

Each signature is a Nix-style ed25519 signature (payload/signing.py) over
``nix-prefix-installer-1;sha256:<hex of manifest.json's bytes>``.  The
manifest names the sha256 of every chunk, every store path's NAR hash, the
sh preamble's and the installer code's sha256 and every path's own Nix
signatures, so one signature covers all of it.  The prefix keeps the
message apart from a store path's fingerprint (``1;/...``): neither can be
passed off as the other.

The public key beside each signature only says who claims to have signed.
It proves nothing by itself (anyone can sign with a key of their own): what
counts are the keys the user trusts (``--trusted-key``,
``NIX_PREFIX_TRUSTED_KEYS``), and ``check`` tells them apart.
"""

import collections
import hashlib

from . import jsondoc, signing

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Iterable, List, Mapping  # noqa: F401

    from .manifest import Manifest  # noqa: F401
    from .signing import PublicKey  # noqa: F401

FORMAT = "nix-prefix-signatures"
VERSION = 1
MEMBER = "signatures.json"
MESSAGE_PREFIX = "nix-prefix-installer-1;"

Endorsement = collections.namedtuple("Endorsement", ["public_key", "signature"])
Endorsement.__doc__ = """One publisher signature and the public key it claims to be made with."""


class PublisherError(ValueError):
    """``signatures.json`` is malformed, or a signature in it does not hold."""


def trusted_keys(given, environ):
    # type: (Iterable[str], Mapping[str, str]) -> List[PublicKey]
    """The keys the user trusts: those ``given`` (``--trusted-key``) and those of
    ``NIX_PREFIX_TRUSTED_KEYS`` (space-separated, like Nix's trusted-public-keys),
    each once.  Raises signing.SigningError naming where a malformed one came from."""
    keys = []  # type: List[signing.PublicKey]
    for where, texts in (("--trusted-key", list(given)),
                         ("NIX_PREFIX_TRUSTED_KEYS",
                          environ.get("NIX_PREFIX_TRUSTED_KEYS", "").split())):
        for text in texts:
            try:
                key = signing.parse_public_key(text)
            except signing.SigningError as e:
                raise signing.SigningError("%s: %s" % (where, e))
            if key not in keys:
                keys.append(key)
    return keys


def message(manifest_json):
    # type: (bytes) -> str
    """What the publisher signs: the sha256 of the manifest's bytes, with a prefix of its own."""
    return MESSAGE_PREFIX + "sha256:" + hashlib.sha256(manifest_json).hexdigest()


def to_json(endorsements):
    # type: (Iterable[Endorsement]) -> bytes
    """Deterministic JSON for the ``signatures.json`` member."""
    doc = {"format": FORMAT, "version": VERSION,
           "signatures": [{"publicKey": str(e.public_key), "signature": str(e.signature)}
                          for e in endorsements]}
    return jsondoc.dumps(doc)


def from_json(data):
    # type: (bytes) -> List[Endorsement]
    """Parse ``signatures.json``; raise PublisherError naming the first problem."""
    doc = jsondoc.loads(data, FORMAT, VERSION, "signatures.json", PublisherError)
    entries = doc.get("signatures")
    if not isinstance(entries, list):
        raise PublisherError("signatures.json has no list of signatures")
    found = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise PublisherError("signatures.json: an entry is not an object")
        try:
            key = signing.parse_public_key(entry.get("publicKey"))
            sig = signing.parse_signature(entry.get("signature"))
        except signing.SigningError as e:
            raise PublisherError("signatures.json: %s" % e)
        if key.name != sig.key_name:
            raise PublisherError("signatures.json: signature %s is paired with the key %s of "
                                 "another name" % (sig.key_name, key.name))
        found.append(Endorsement(key, sig))
    return found


class Signer(object):
    """What signs an installer while it is written (container.py ``write_installer``):
    this one signs nothing, builder/signer.py ``KeySigner`` signs with Nix keys."""

    def sign_paths(self, manifest):
        # type: (Manifest) -> Manifest
        """The manifest with every path's signatures, made over its final NAR hash at
        the manifest's store dir; here none: old ones never carry over."""
        new = manifest.replaced()
        for p in new.paths:
            p.sigs = []
        return new

    def endorse(self, manifest_json):
        # type: (bytes) -> List[Endorsement]
        """The publisher's signatures of the installer whose manifest is these bytes
        (none: the installer is unsigned)."""
        return []


class Verdict(object):
    """What the signatures of one installer say, given the keys the user trusts."""

    def __init__(self, signed_by, trusted_keys, trusted_by):
        # type: (List[PublicKey], List[PublicKey], List[PublicKey]) -> None
        self.signed_by = signed_by  # the declared keys whose signatures hold
        self.trusted_keys = trusted_keys
        self.trusted_by = trusted_by  # the trusted keys that signed it

    @property
    def accepted(self):
        # type: () -> bool
        """No trusted key given, or one of them signed it."""
        return not self.trusted_keys or bool(self.trusted_by)

    @property
    def key_names(self):
        # type: () -> List[str]
        """The names of the keys a registered path signature may carry."""
        return sorted(set(k.name for k in self.trusted_by or self.signed_by))

    def refusal(self):
        # type: () -> str
        """Why the installer must be refused (one line), or "" if it is accepted."""
        if self.accepted:
            return ""
        trusted = ", ".join(k.name for k in self.trusted_keys)
        if not self.signed_by:
            return ("the installer is not signed, and you asked for one signed by %s "
                    "(--trusted-key or NIX_PREFIX_TRUSTED_KEYS)" % trusted)
        return ("the installer is signed by %s, none of the keys you trust (%s)"
                % (", ".join(str(k) for k in self.signed_by), trusted))

    def refusal_hint(self):
        # type: () -> str
        """What to do about ``refusal()``."""
        if self.signed_by:
            return ("get the installer from the publisher whose key you trust, or check "
                    "which key they publish")
        return ("ask its publisher for a signed one (nix-prefix build --sign-key), or give "
                "no trusted key to install it unsigned")


def check(manifest_json, endorsements, trusted_keys):
    # type: (bytes, Iterable[Endorsement], Iterable[PublicKey]) -> Verdict
    """Check every signature over ``manifest_json``; raise PublisherError if one does not
    hold under the key it names (the manifest was changed after signing, or forged)."""
    text = message(manifest_json)
    endorsements = list(endorsements)
    trusted_keys = list(trusted_keys)
    signed_by = []
    for e in endorsements:
        if not signing.verify(text, e.signature, [e.public_key]):
            raise PublisherError("signature by %s does not match the manifest (changed "
                                 "after signing?)" % str(e.public_key))
        if e.public_key not in signed_by:
            signed_by.append(e.public_key)
    # A trusted key counts if it made one of the signatures, whatever key is declared.
    trusted_by = signing.signers(text, [e.signature for e in endorsements], trusted_keys)
    return Verdict(signed_by, trusted_keys, trusted_by)
