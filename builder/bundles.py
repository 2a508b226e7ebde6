"""The two Python texts made of payload modules (payload/bundle.py): the preamble's
boot code and the one-file standalone verifier (``nix-prefix verifier -o FILE``).

Both are assembled from the payload modules as they are on disk, so neither
is a copy kept by hand: the verifier a user runs is the code the installer
checks itself with.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import payload as payload_pkg
from ..payload import bundle

# What boot.bootstrap needs to check the signature before importing the installer,
# in the order they load (each after what it imports).
BOOT_MODULES = ("errors", "nix32", "hashes", "ed25519", "signing", "jsondoc", "publisher",
                "seal", "trust", "boot")
VERIFIER_MODULES = (*BOOT_MODULES, "verifier")
VERIFIER_NAME = "nix-prefix-verify"


def _source(name: str) -> str:
    text = (Path(payload_pkg.__file__).parent / f"{name}.py").read_bytes()
    # Python 3.6 reads the preamble's text in the C locale as ASCII: keep it so.
    return text.decode("ascii")


def _bundle(head: str, names: tuple[str, ...], entry: str, quote: str = bundle.APOSTROPHE) -> str:
    return bundle.pack(head + _source("bundle"), [(n, _source(n)) for n in names], entry,
                       quote)


def boot_text() -> bytes:
    """The Python the sh preamble hands the file to (its ``$b``, passed as argv[4])."""
    return _bundle("# The Python the sh preamble runs: payload/bundle.py, then the modules\n"
                   "# it loads (payload/seal.py, trust.py and what they import).\n",
                   BOOT_MODULES,
                   "bootstrap = load(sys.argv[4], \"nix_prefix_boot\", QUOTE).boot.bootstrap\n",
                   bundle.QUOTE).encode("ascii")


def verifier_text() -> str:
    """The one-file verifier: ``python3 nix-prefix-verify --trusted-key K FILE``."""
    head = ("#!/usr/bin/env python3\n"
            f"# {VERIFIER_NAME}: checks a nix-prefix installer before anything of it runs\n"
            "# (payload/verifier.py), e.g.\n"
            f"#   python3 {VERIFIER_NAME} --trusted-key NAME:BASE64 installer.sh\n"
            f"#   curl -fsSL URL | python3 {VERIFIER_NAME} --trusted-key NAME:BASE64 --run "
            "-- -y\n"
            "# Python 3.6+, standard library only.  Made by `nix-prefix verifier` from\n"
            "# payload/bundle.py (below) and the modules bundled after it as comments.\n")
    entry = ("if __name__ == \"__main__\":\n"
             "    with open(__file__, \"rb\") as _f:\n"
             "        _text = _f.read().decode(\"ascii\")\n"
             "    load(_text, \"nix_prefix_verify\").verifier.main()\n")
    return _bundle(head, VERIFIER_MODULES, entry)


def write_verifier(out: Path) -> None:
    """Write the one-file verifier to ``out``, executable, atomically."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(verifier_text(), encoding="ascii")
        tmp.chmod(0o755)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
