"""``nix-prefix inspect`` and ``nix-prefix verify``: an installer seen from the build side.

Both open the file through the installer's own reader
(nix_prefix.payload.container.InstallerFile), so they accept exactly what the
installer accepts: ``verify`` is the installer's ``--check``, and
``inspect`` shows the installer's ``--info`` and then the manifest in full.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..payload.container import CorruptInstaller, InstallerFile
from ..payload.machine import human_size
from ..payload.manifest import Manifest, info_text
from ..payload.publisher import Verdict
from ..payload.signing import PublicKey
from .signer import unsigned_paths

STORE_SUFFIX = "/store"


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
        f"relocation:    any prefix P with len(P/store) <= {limits['maxStoreDirLength']}, "
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
        lines += ["", "files where relocation cannot rewrite the store dir:"]
        lines += [f"  {ref}" for ref in manifest.hidden_refs]
    return "\n".join(lines) + "\n"


def _ratio(part: int, whole: int) -> str:
    return f"{part / max(whole, 1):.1%}"


def check_signatures(source: InstallerFile, trusted: list[PublicKey]) -> Verdict:
    """The publisher's signatures as ``verify`` checks them: the installer's (refused
    unless a trusted key made one, when keys are given) and every store path's, with
    libsodium.  Raises CorruptInstaller (exit 3) on the first that does not hold."""
    verdict = source.check_publisher(trusted)
    if verdict.signed_by:
        missing = unsigned_paths(source.manifest, verdict.signed_by)
        if missing:
            raise CorruptInstaller(
                f"{len(missing)} store path(s) lack a signature by "
                f"{', '.join(k.name for k in verdict.signed_by)} that holds, e.g. {missing[0]}",
                "rebuild the installer with --sign-key")
    return verdict
