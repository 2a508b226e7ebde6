"""payload/container.py: the code every installer carries."""

from __future__ import annotations

from pathlib import Path

from nix_prefix.payload.container import embedded_code

INSTALLER = Path(__file__).resolve().parents[3] / "installer"


def test_every_module_of_the_installer_is_embedded_its_packages_too() -> None:
    """installer/steps/ included: the stub imports it from the installer's zip."""
    embedded = {name for name, _ in embedded_code()}
    on_disk = {"nix_prefix/installer/" + p.relative_to(INSTALLER).as_posix()
               for p in INSTALLER.rglob("*.py") if "__pycache__" not in p.parts}
    assert on_disk <= embedded
    assert "nix_prefix/installer/steps/make_dirs.py" in embedded
