"""Every CPython the installer promises (3.6 to 3.14) installs a real closure.

One installer is built for the module; each interpreter installs it into its
own prefix, runs ``--check``, and Nix verifies what it installed.  The
interpreters are pyenv builds ($(pyenv root)/versions) and Debian python3.14
(fetched by .ci/setup.sh, see pythons.py); one that is missing is skipped
with the reason shown, never silently.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.pythons import CPYTHONS, find_python
from tests.support import Built, build_small, nix_store, run_installer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(module_dir: Path) -> Built:
    # A long build prefix, so each short prefix below is reached by relocation.
    built = build_small(module_dir, name="a-long-enough-build-prefix-for-pythons")
    built.move_build_away()
    return built


def python_or_skip(version: str) -> str:
    python = find_python(version)
    if python is None:
        pytest.skip(f"no CPython {version} here (3.6-3.13: pyenv has none; "
                    "3.14: sh .ci/setup.sh fetches Debian's)")
    return python


def install_and_check(installer: Path, prefix: Path, env: dict[str, str]) -> None:
    check = run_installer(installer, "--check", env=env)
    assert check.returncode == 0 and "is intact" in check.stderr, check.stderr
    proc = run_installer(installer, "-y", "-p", str(prefix), env=env)
    assert proc.returncode == 0, proc.stderr
    verify = nix_store(prefix, "--verify", "--check-contents")
    assert verify.returncode == 0 and "modified" not in verify.stderr, verify.stderr
    hello = prefix / "var/nix/profiles/default/bin/hello-nix-prefix"
    out = subprocess.run([str(hello)], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip(), (out.stdout, out.stderr)


@pytest.mark.parametrize("version", CPYTHONS)
def test_installs_and_checks_with(built: Built, version: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent",
           "NIX_PREFIX_PYTHON": python_or_skip(version)}
    install_and_check(built.installer, built.installer.with_name("py" + version.replace(".", "")),
                      env)


def test_zstd_decodes_through_the_standard_library_on_314(module_dir: Path) -> None:
    """On 3.14 a zstd payload needs no zstd program: compression.zstd decodes it
    (a zstd on PATH that fails if run proves it is not used)."""
    python = python_or_skip("3.14")
    built = build_small(module_dir, compression="zstd", name="a-long-enough-zstd-build-prefix")
    built.move_build_away()
    fake = module_dir / "fake-bin"
    fake.mkdir()
    (fake / "zstd").write_text("#!/bin/sh\necho fake zstd was run >&2\nexit 1\n")
    (fake / "zstd").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "HOME": "/nonexistent", "NIX_PREFIX_PYTHON": python}
    install_and_check(built.installer, module_dir / "zstd314", env)
