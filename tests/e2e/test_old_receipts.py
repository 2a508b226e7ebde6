"""Prefixes installed by an older installer (receipt version 1): this one takes them back.

The old installer is the real one: the builder, payload and installer code of
the commit before the plan of steps (b5a4048^), taken out with ``git archive``
and run by this checkout's Python, builds an installer from the same closure;
that installer, run as a user ran it last month, writes the version 1 receipt.
The same closure built by this checkout's builder has the same payload (the
payload format did not change), so this installer finds that receipt.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.localnix import LocalNix
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.builder.samples import build_small_closure
from nix_prefix.payload.container import InstallerFile

from tests.support import REPO, nix_store, run_installer, script_package, tree_snapshot

# The last commit whose installer wrote receipts of version 1.
OLD = "b5a4048^"

OTHER = script_package("tool-b-1.0", "tool-b", "b")


def old_code(dest: Path) -> Path:
    """The three rooms as they were at OLD, importable as nix_prefix from ``dest``."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git history of this checkout")
    tree = dest / "old-code"
    (tree / "nix_prefix").mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD, "builder", "payload",
                              "installer"], capture_output=True, check=False)
    if archive.returncode != 0:
        pytest.skip(f"git archive {OLD} failed: {archive.stderr.decode(errors='replace')}")
    subprocess.run(["tar", "-x", "-C", str(tree / "nix_prefix")], input=archive.stdout,
                   check=True)
    return tree


def build_old(tree: Path, closure_info: Path, out: Path) -> None:
    script = ("import sys; from pathlib import Path\n"
              "from nix_prefix.builder.closure_info import read_closure\n"
              "from nix_prefix.builder.pack import BuildOptions, build_installer\n"
              "import nix_prefix.installer as stub\n"
              "assert stub.__path__[0].startswith(sys.argv[3]), stub.__path__\n"
              "build_installer(read_closure(Path(sys.argv[1])), Path(sys.argv[2]), "
              "BuildOptions())\n")
    env = dict(os.environ, PYTHONPATH=str(tree))
    subprocess.run([sys.executable, "-c", script, str(closure_info), str(out), str(tree)],
                   env=env, check=True, cwd=tree)


class Installers:
    def __init__(self, base: Path) -> None:
        self.base = base
        nix = LocalNix(base / "a-long-enough-build-prefix")
        info = nix.write_closure_info(build_small_closure(nix), base / "small-ci")
        self.old = base / "old.sh"
        build_old(old_code(base), info, self.old)
        self.new = base / "new.sh"
        build_installer(read_closure(info), self.new, BuildOptions())
        # Another installer (another payload) that a user adds with -u.
        other = LocalNix(base / "b-long-enough-build-prefix")
        other_info = other.write_closure_info(other.build_expr(OTHER), base / "b-ci")
        self.other = base / "other.sh"
        build_installer(read_closure(other_info), self.other, BuildOptions())
        for name in ("a-long-enough-build-prefix", "b-long-enough-build-prefix"):
            os.rename(base / name, base / f"{name}.build")  # the installers stand alone


@pytest.fixture(scope="module")
def installers() -> Iterator[Installers]:
    base = Path(tempfile.mkdtemp(prefix="np-old-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield Installers(base)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(base)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def receipt_of(prefix: Path) -> dict:
    (path,) = (prefix / "var/nix-prefix/receipts").glob("*.json")
    return json.loads(path.read_text())


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def test_the_same_payload_from_either_builder(installers: Installers) -> None:
    """What the rest stands on: the old and the new installer name one receipt."""
    old, new = InstallerFile(str(installers.old)), InstallerFile(str(installers.new))
    try:
        assert old.manifest.payload_sha256 == new.manifest.payload_sha256
    finally:
        old.close()
        new.close()


def test_uninstall_of_an_old_install_takes_back_exactly_it(installers: Installers) -> None:
    """Installed by last month's installer into a prefix the user had made, with a file
    of theirs: this one's --uninstall leaves the prefix as it was before, and keeps a
    store path the user added since and an env script they edited."""
    prefix = installers.base / "p"
    prefix.mkdir()
    (prefix / "notes.txt").write_text("mine\n")
    before = tree_snapshot(prefix)
    ok(run_installer(installers.old, "-y", "-p", str(prefix)))
    doc = receipt_of(prefix)
    assert doc["version"] == 1 and len(doc["added"]) >= 3 and doc["generations"] == [1]
    mine = installers.base / "mine.txt"
    mine.write_text("the user's own\n")
    added = nix_store(prefix, "--add", str(mine)).stdout.strip()
    fish = prefix / "etc/profile.d/nix.fish"
    fish.write_text(fish.read_text() + "# edited\n")

    said = ok(run_installer(installers.new, "-y", "--uninstall", "-p", str(prefix)))
    for path in doc["added"]:
        assert not os.path.lexists(path), path
        assert f"- {path}" in said, said
    assert f"kept {fish}: it was changed since the install" in said
    assert Path(added).read_text() == "the user's own\n"
    assert nix_store(prefix, "--check-validity", added).returncode == 0
    assert not (prefix / "var/nix-prefix").exists()
    assert not (prefix / "var/nix/profiles/default").exists()
    # Remove what the user made since; the rest is as it was before the install.
    nix_store(prefix, "--delete", added)
    fish.unlink()
    subprocess.run(["chmod", "-R", "u+w", str(prefix / "var"), str(prefix / "store")],
                   check=False)
    for extra in ("store", "var", "etc"):
        shutil.rmtree(prefix / extra, ignore_errors=True)
    assert tree_snapshot(prefix) == before


def test_a_fresh_prefix_installed_by_the_old_installer_goes_whole(
        installers: Installers) -> None:
    """The old installer made the prefix: this one's --uninstall leaves none, also after
    this one ran over the old install (the records are kept, not overwritten)."""
    prefix = installers.base / "fresh" / "nix"
    prefix.parent.mkdir()
    ok(run_installer(installers.old, "-y", "-p", str(prefix)))
    assert receipt_of(prefix)["version"] == 1
    ok(run_installer(installers.new, "-y", "-p", str(prefix)))
    said = ok(run_installer(installers.new, "-y", "--uninstall", "-p", str(prefix)))
    assert "kept" not in said, said
    assert not prefix.exists(), sorted(str(p) for p in prefix.rglob("*"))
    assert (installers.base / "fresh").exists()  # it was there before: it stays
    (installers.base / "fresh").rmdir()


def test_update_over_an_old_install_then_uninstall_both(installers: Installers) -> None:
    """-u of another installer over an old install, then --uninstall of each, newest
    first: the first hands the shared records to the old receipt (read, written as
    version 2), the second takes back the rest; no prefix is left."""
    prefix = installers.base / "u"
    ok(run_installer(installers.old, "-y", "-p", str(prefix)))
    ok(run_installer(installers.other, "-y", "-u", "-p", str(prefix)))
    tool = prefix / "var/nix/profiles/default/bin/tool-b"
    assert subprocess.run([tool], capture_output=True, text=True).stdout == "b\n"
    ok(run_installer(installers.other, "-y", "--uninstall", "-p", str(prefix)))
    doc = receipt_of(prefix)
    assert doc["version"] == 2 and doc["upgradedFrom"] == 1
    hello = prefix / "var/nix/profiles/default/bin/hello-nix-prefix"
    assert subprocess.run([hello], capture_output=True, text=True).stdout == \
        "hello from nix-prefix\n"
    said = ok(run_installer(installers.new, "-y", "--uninstall", "-p", str(prefix)))
    assert "kept" not in said, said
    assert not prefix.exists(), sorted(str(p) for p in prefix.rglob("*"))
