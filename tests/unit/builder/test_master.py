"""builder/master.py: serve's master, an installer decoded once (no Nix: a closure made
by hand, packed into an installer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.master import Master, ServeOptions
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.payload import storepath
from nix_prefix.payload.container import InstallerFile

from tests.support import plain_closure


@pytest.fixture(scope="module")
def installer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("master")
    ci, _ = plain_closure(tmp)
    out = tmp / "app.sh"
    build_installer(read_closure(ci), out, BuildOptions(compression="xz", level=0))
    return out


def served(master: Master, store_dir: str) -> dict[str, tuple[bytes, bytes]]:
    """Every path's narinfo and NAR (uncompressed) as ``master`` serves them at
    ``store_dir``."""
    view = master.view(store_dir)
    out = {}
    for source in master.sources:
        for entry in source.manifest.paths:
            hash_part = storepath.hash_part(entry.name)
            pieces: list[bytes] = []
            view.stream(hash_part, pieces.append)
            out[hash_part] = (view.narinfo(hash_part) or b"", b"".join(pieces))
    return out


def test_an_installer_master_decodes_no_chunk_per_request(
        installer: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    per_request = Master([installer], ServeOptions(compression="none", decode_limit=0))
    expected = served(per_request, "/q/store")
    master = Master([installer], ServeOptions(compression="none"))
    unpacked: list[object] = []
    real = InstallerFile.unpack

    def counting(self, *args, **kw):
        unpacked.append(args)
        return real(self, *args, **kw)

    monkeypatch.setattr(InstallerFile, "unpack", counting)
    try:
        # Byte for byte what a master that decodes for every request serves.
        assert served(master, "/q/store") == expected
        assert unpacked == []
        assert served(per_request, "/r/store") and unpacked  # which decodes every time
    finally:
        master.close()
        per_request.close()
