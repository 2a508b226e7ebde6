"""``nix-prefix inspect`` and ``nix-prefix verify``: an installer seen from the build side.

Both open the file through the installer's own reader
(nix_prefix.payload.container.InstallerFile), so they accept exactly what the
installer accepts: ``verify`` is the installer's ``--check``, and
``inspect`` shows the installer's ``--info`` and then the manifest in full.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..payload import publisher, signing
from ..payload.container import CorruptInstaller, InstallerFile
from ..payload.display import info_text, verdict_lines
from ..payload.machine import human_size
from ..payload.manifest import Manifest
from ..payload.publisher import Verdict
from ..payload.signing import PublicKey
from .errors import UsageError
from .inputs import Bar, check_given
from .signer import unsigned_paths

STORE_SUFFIX = "/store"


def inspect(path: Path, given_keys: Sequence[str], as_json: bool,
            environ: Mapping[str, str] = os.environ) -> str:
    """``nix-prefix inspect``: what the installer at ``path`` holds, as text or JSON;
    with trusted keys (``--trusted-key``, NIX_PREFIX_TRUSTED_KEYS), whether one signed it."""
    trusted = pinned_keys(given_keys, environ)
    if not path.exists():
        check_given(path, "an installer")  # missing: exit 2, not "damaged"
    with open_installer(path) as installer:
        verdict = installer.verdict(trusted)
        if as_json:
            return json.dumps(describe(path, installer.manifest, verdict), indent=1,
                              sort_keys=True) + "\n"
        return render(path, installer.manifest, verdict)


@dataclass
class Verified:
    """What ``verify`` found: the manifest, and who signed the installer."""

    manifest: Manifest
    verdict: Verdict

    def lines(self, path: Path) -> list[str]:
        """The summary ``verify`` prints."""
        m = self.manifest
        return [f"OK: {path} is intact: {len(m.paths)} store paths, "
                f"{human_size(m.total_nar_size)} of NAR verified",
                *(f"  {line}" for line in verdict_lines(self.verdict)),
                *([f"  every store path's Nix signature holds for {m.store_dir}"]
                  if self.verdict.signed_by else [])]


def verify(path: Path, given_keys: Sequence[str], bar: Bar,
           environ: Mapping[str, str] = os.environ) -> Verified:
    """``nix-prefix verify``: check the installer at ``path`` wholly, as its ``--check``
    does, the NAR bytes checked shown on ``bar``."""
    trusted = pinned_keys(given_keys, environ)
    check_given(path, "an installer")
    with open_installer(path) as installer:
        verdict = check_signatures(installer, trusted)
        with bar("verifying", installer.manifest.total_nar_size) as progress:
            installer.check(progress)
        return Verified(installer.manifest, verdict)


def pinned_keys(given: Sequence[str], environ: Mapping[str, str]) -> list[PublicKey]:
    """The publisher's keys ``verify`` and ``inspect`` pin: --trusted-key and
    NIX_PREFIX_TRUSTED_KEYS, as the installer reads them."""
    try:
        return publisher.trusted_keys(list(given), environ)
    except signing.SigningError as e:
        raise UsageError(str(e), "give the public key as NAME:BASE64, the line "
                                 "nix-store --generate-binary-cache-key writes to its "
                                 "public key file") from None


def open_installer(path: Path) -> InstallerFile:
    """The installer file, its manifest and preamble checked (CorruptInstaller if not)."""
    return InstallerFile(str(path))


def retarget_limits(manifest: Manifest) -> dict[str, int]:
    """How long a prefix this installer can serve (payload/retarget.py):
    any P whose ``P/store`` is no longer than the store dir in the payload."""
    return {"maxStoreDirLength": manifest.max_store_dir_length,
            "maxPrefixLength": manifest.max_store_dir_length - len(STORE_SUFFIX)}


def describe(path: Path, manifest: Manifest, verdict: Verdict) -> dict:
    """Everything ``inspect --json`` prints: the file, its manifest, what it implies."""
    size = os.path.getsize(path)
    return {
        "file": str(path),
        "size": size,
        "compressionRatio": round(manifest.payload_size / max(manifest.total_nar_size, 1), 4),
        "defaultPrefix": manifest.prefix,
        "retarget": retarget_limits(manifest),
        # The old name of "retarget", still written for one release (docs/building.md).
        "relocation": retarget_limits(manifest),
        "signatures": {"signedBy": [str(k) for k in verdict.signed_by],
                       "trustedBy": [str(k) for k in verdict.trusted_by],
                       "signedPaths": sum(1 for p in manifest.paths if p.sigs)},
        "manifest": json.loads(manifest.to_json()),
    }


def render(path: Path, manifest: Manifest, verdict: Verdict) -> str:
    """``inspect`` as text: the installer's ``--info``, then chunks and paths."""
    limits = retarget_limits(manifest)
    lines = [
        info_text(manifest, verdict).rstrip("\n"),
        f"file:          {path} ({human_size(os.path.getsize(path))}, payload "
        f"{_ratio(manifest.payload_size, manifest.total_nar_size)} of the NAR size)",
        f"retarget:      to any prefix P with len(P/store) <= {limits['maxStoreDirLength']}, "
        f"i.e. len(P) <= {limits['maxPrefixLength']} bytes",
        "",
        f"chunks ({len(manifest.chunks)}, {manifest.compression}):",
    ]
    for chunk in manifest.chunks:
        lines.append(f"  {chunk.file}  {human_size(chunk.size):>10} from "
                     f"{human_size(chunk.tar_size):>10} tar ({_ratio(chunk.size, chunk.tar_size)})"
                     f"  {len(chunk.paths)} path(s)"
                     + (f", starting {chunk.start!r}" if chunk.start else ""))
    lines += ["", f"store paths ({len(manifest.paths)}, NAR size, chunk):"]
    roots = set(manifest.roots)
    for entry in manifest.paths:
        mark = "  (root)" if entry.name in roots else ""
        lines.append(f"  {human_size(entry.nar_size):>10}  {entry.chunk:>4}  "
                     f"{manifest.store_path(entry.name)}{mark}")
    if manifest.hidden_refs:
        lines += ["", "files where a retarget cannot rewrite the store dir:"]
        lines += [f"  {ref}" for ref in manifest.hidden_refs]
    return "\n".join(lines) + "\n"


def _ratio(part: int, whole: int) -> str:
    return f"{part / max(whole, 1):.1%}"


def check_signatures(installer: InstallerFile, trusted: list[PublicKey]) -> Verdict:
    """The publisher's signatures as ``verify`` checks them: the installer's (refused
    unless a trusted key made one, when keys are given) and every store path's, with
    libsodium.  Raises CorruptInstaller (exit 3) on the first that does not hold."""
    verdict = installer.check_publisher(trusted)
    if verdict.signed_by:
        missing = unsigned_paths(installer.manifest, verdict.signed_by)
        if missing:
            raise CorruptInstaller(
                f"{len(missing)} store path(s) lack a signature by "
                f"{', '.join(k.name for k in verdict.signed_by)} that holds, e.g. {missing[0]}",
                "rebuild the installer with --sign-key")
    return verdict
