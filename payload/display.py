"""What people are shown about an installer: the summary of the installer's
``--info`` (and ``nix-prefix inspect``), and what its signatures say (``--check``,
``nix-prefix verify``).

Text for a reader, kept out of the format modules both sides parse with
(manifest.py, publisher.py), which so need not know each other.
"""

from .machine import human_size
from .manifest import VERSION

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import List  # noqa: F401

    from .manifest import Manifest  # noqa: F401
    from .publisher import Verdict  # noqa: F401


def verdict_lines(verdict):
    # type: (Verdict) -> List[str]
    """What ``--check``, ``--info`` and ``nix-prefix inspect`` say about the signatures."""
    if not verdict.signed_by:
        return ["unsigned (the publisher gave no --sign-key)"]
    out = []
    for key in verdict.signed_by:
        trusted = key in verdict.trusted_by
        out.append("signed by %s%s" % (key, " (trusted)" if trusted else ""))
    if not verdict.trusted_keys:
        out.append("no key is pinned, so this says only who signed: if that is the key "
                   "its publisher publishes, pass --trusted-key %s (or put it in "
                   "NIX_PREFIX_TRUSTED_KEYS) to refuse any other" % str(verdict.signed_by[0]))
    return out


def info_text(manifest, verdict):
    # type: (Manifest, Verdict) -> str
    """The summary ``--info`` prints (``nix-prefix inspect`` shows it too)."""
    lines = [
        "nix-prefix installer (format %d, built by nix-prefix %s)"
        % (VERSION, manifest.tool_version),
        "store dir:     %s" % manifest.store_dir,
        "prefix:        %s" % manifest.prefix,
        "retargets to:  any prefix of at most %d bytes (--prefix)"
        % (manifest.max_store_dir_length - len("/store")),
        "derivations:   %s" % ("yes (another --prefix gets every store path recomputed "
                               "exactly)" if manifest.derivations else "no"),
        "system:        %s" % manifest.system,
        "store paths:   %d (%s NAR)" % (len(manifest.paths),
                                        human_size(manifest.total_nar_size)),
        "payload:       %s, %d chunk(s), %s, sha256 %s" % (
            manifest.compression, len(manifest.chunks),
            human_size(manifest.payload_size), manifest.payload_sha256),
        "roots:         %s" % ", ".join(manifest.store_path(r) for r in manifest.roots),
        "nix-store:     %s" % (manifest.store_dir + "/" + manifest.nix_store
                               if manifest.nix_store else "(none in the closure)"),
    ]
    signed = sum(1 for p in manifest.paths if p.sigs)
    for i, line in enumerate(verdict_lines(verdict)):
        lines.append(("signatures:    " if i == 0 else "               ") + line)
    if verdict.signed_by:
        lines.append("               %d of %d store paths carry their Nix signature for %s"
                     % (signed, len(manifest.paths), manifest.store_dir))
    return "\n".join(lines) + "\n"
