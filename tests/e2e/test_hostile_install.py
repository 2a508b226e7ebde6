"""Hostile set-ups of the install (issue 28, items 5 and 6): the installer's Nix acts
on the prefix and nowhere else, and it is the closure's own Nix or none.

The installs run real installers with the machine's real Nix (2.8): a kept
nix.conf that moves the store elsewhere, a store path that is a symlink to
/usr posing as the closure's Nix.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from nix_prefix.builder.errors import BuildError
from nix_prefix.builder.nixchoice import choose
from nix_prefix.installer.prefix import Prefix

from tests.hostile_files import installer_of
from tests.support import run_installer
from tests.unit.payload.test_archive import TOP, TWO, entry, file

NOBODY = 65534


def _store_conf(prefix: Path, elsewhere: Path) -> str:
    return (f"sandbox = false\n# moved:\nstore = local?store={prefix}/store"
            f"&state={elsewhere}/state&log={elsewhere}/log\n")


def _no_nix_installer(base: Path, prefix: Path) -> Path:
    """An installer of one small store path and no Nix: the install runs the machine's
    nix-store and nix-env (on PATH)."""
    out = base / "plain.sh"
    installer_of(out, str(prefix / "store"), [entry(TOP), file(TOP + "/a", b"hello")], [TOP])
    return out


def _assert_refused_before_writing(proc: subprocess.CompletedProcess[str], prefix: Path,
                                   elsewhere: Path, *needles: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 4, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not elsewhere.exists() or not any(elsewhere.iterdir()), list(elsewhere.rglob("*"))
    # Nothing written: the prefix holds what the test put there, no more.
    assert sorted(p.relative_to(prefix).as_posix() for p in prefix.rglob("*")) == \
        ["etc", "etc/nix", "etc/nix/nix.conf"]


@pytest.mark.slow
def test_a_kept_nix_conf_that_moves_the_store_is_refused(world_dir: Path) -> None:
    prefix, elsewhere = world_dir / "p", world_dir / "elsewhere"
    installer = _no_nix_installer(world_dir, prefix)
    (prefix / "etc/nix").mkdir(parents=True)
    (prefix / "etc/nix/nix.conf").write_text(_store_conf(prefix, elsewhere))
    proc = run_installer(installer, "-y")
    _assert_refused_before_writing(proc, prefix, elsewhere, "nix.conf line 3: `store` would point")
    assert str(elsewhere) not in proc.stderr  # the store URL is not echoed


@pytest.mark.slow
def test_a_nix_conf_another_user_can_change_is_refused(world_dir: Path) -> None:
    """P/etc/nix/nix.conf a symlink to a file of another uid (who can rewrite it between
    the installer's look and Nix's)."""
    prefix, elsewhere = world_dir / "p", world_dir / "elsewhere"
    installer = _no_nix_installer(world_dir, prefix)
    theirs = world_dir / "their.conf"
    theirs.write_text(_store_conf(prefix, elsewhere))
    os.chown(theirs, NOBODY, NOBODY)
    (prefix / "etc/nix").mkdir(parents=True)
    (prefix / "etc/nix/nix.conf").symlink_to(theirs)
    proc = run_installer(installer, "-y")
    _assert_refused_before_writing(proc, prefix, elsewhere, "can be changed by another user",
                                   "uid 65534")


@pytest.mark.slow
def test_an_included_file_that_moves_the_store_is_refused(world_dir: Path) -> None:
    prefix, elsewhere = world_dir / "p", world_dir / "elsewhere"
    installer = _no_nix_installer(world_dir, prefix)
    (prefix / "etc/nix").mkdir(parents=True)
    (prefix / "etc/nix/nix.conf").write_text("!include more.conf\n")
    (world_dir / "more.conf").write_text(_store_conf(prefix, elsewhere))
    os.symlink(world_dir / "more.conf", prefix / "etc/nix/more.conf")
    proc = run_installer(installer, "-y")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 4 and len(lines) == 1, proc.stderr
    assert "more.conf line 3: `store` would point" in lines[0]
    assert not elsewhere.exists()


@pytest.mark.slow
def test_the_installers_nix_is_pinned_to_the_prefix(world_dir: Path) -> None:
    """Whatever a nix.conf says (here, read by Nix, unlike the refused ones above), Nix
    run with the installer's environment opens the prefix's store and state."""
    prefix, elsewhere = world_dir / "p", world_dir / "elsewhere"
    (prefix / "etc/nix").mkdir(parents=True)
    (prefix / "var/nix").mkdir(parents=True)
    (prefix / "var/nix-prefix/home").mkdir(parents=True)
    (prefix / "store").mkdir()
    (prefix / "etc/nix/nix.conf").write_text(_store_conf(prefix, elsewhere))
    proc = subprocess.run(["nix-store", "--load-db"], input="", text=True,
                          capture_output=True, env=Prefix(str(prefix)).nix_env(), check=False)
    assert proc.returncode == 0, proc.stderr
    assert (prefix / "var/nix/db/db.sqlite").exists()
    assert not elsewhere.exists(), list(elsewhere.rglob("*"))


@pytest.mark.slow
def test_a_clean_install_with_the_pin_still_works(world_dir: Path) -> None:
    """The pin is no obstacle: a plain install (the machine's Nix) registers and makes
    the profile in the prefix."""
    prefix = world_dir / "p"
    proc = run_installer(_no_nix_installer(world_dir, prefix), "-y")
    assert proc.returncode == 0, proc.stderr
    assert (prefix / "var/nix/db/db.sqlite").exists()
    assert (prefix / "var/nix/profiles/default/a").read_text() == "hello"


def test_which_nix_conf_lines_are_refused(tmp_path: Path) -> None:
    """Without running anything: what the preflight reads in a kept nix.conf."""
    from nix_prefix.installer.envfiles import nix_conf
    from nix_prefix.installer.errors import EnvironmentProblem
    from nix_prefix.installer.preflight import check_nix_conf
    prefix = Prefix(str(tmp_path / "p"))
    conf = Path(prefix.nix_conf)
    conf.parent.mkdir(parents=True)
    check_nix_conf(prefix)  # none at all
    for fine in (nix_conf(prefix), "# store = local?state=/elsewhere\nsandbox = false\n",
                 "substituters = https://store.example.org\n"):
        conf.write_text(fine)
        check_nix_conf(prefix)
    for refused, found in (("store = daemon\n", "line 1: `store` would point"),
                           ("a = b\nextra-plugin-files = /x.so\n", "line 2: `extra-plugin"),
                           ("sandbox=false\n", "line 1: a line is not a nix.conf line"),
                           ("include missing.conf\n!include loop.conf\n", "more than 8 deep")):
        conf.write_text(refused)
        (conf.parent / "loop.conf").write_text("include loop.conf\n")
        with pytest.raises(EnvironmentProblem, match=found):
            check_nix_conf(prefix)
    conf.unlink()
    os.mkfifo(conf)  # not opened: it would wait for a writer
    with pytest.raises(EnvironmentProblem, match="not a regular file"):
        check_nix_conf(prefix)


# -- 6. the closure's Nix is its own files ------------------------------------------------------


def _link_store(tmp_path: Path) -> tuple[Path, str]:
    store = tmp_path / "store"
    store.mkdir()
    nix = store / TWO
    (nix / "bin").mkdir(parents=True)
    (nix / "bin" / "nix").write_text("")
    (nix / "bin" / "nix-store").symlink_to("nix")
    (nix / "bin" / "nix-env").symlink_to(f"{store}/{TWO}/bin/nix")
    (store / TOP).symlink_to("/usr")
    return store, str(store)


def test_shipped_file_follows_symlinks_inside_the_closure_only(tmp_path: Path) -> None:
    from nix_prefix.payload.storepath import shipped_file
    store, store_dir = _link_store(tmp_path)
    both = [TOP, TWO]
    assert shipped_file(str(store), store_dir, both, f"{TWO}/bin/nix-store") == f"{TWO}/bin/nix"
    assert shipped_file(str(store), store_dir, both, f"{TWO}/bin/nix-env") == f"{TWO}/bin/nix"
    assert shipped_file(str(store), store_dir, both, f"{TOP}/bin/sh") is None  # out: /usr
    assert shipped_file(str(store), store_dir, [TOP], f"{TWO}/bin/nix") is None  # not ours
    assert shipped_file(str(store), store_dir, both, f"{TWO}/bin") is None  # a directory
    assert shipped_file(str(store), store_dir, both, f"{TWO}/../../x") is None  # above
    # The store read elsewhere: absolute links are taken at the store dir they name.
    moved = tmp_path / "moved"
    store.rename(moved)
    assert shipped_file(str(moved), store_dir, both, f"{TWO}/bin/nix-env") == f"{TWO}/bin/nix"


def test_build_refuses_a_nix_that_is_a_symlink_out_of_the_closure(tmp_path: Path) -> None:
    store, _ = _link_store(tmp_path)
    (store / TOP).unlink()
    (store / TOP).symlink_to("/usr")  # /usr/bin/nix-store: the machine's Nix
    assert (store / TOP / "bin" / "nix-store").exists()
    with pytest.raises(BuildError, match="is not a file of the closure"):
        choose([TOP, TWO], [TOP], store, None, roots_given=False)
    # The real one is taken.
    assert choose([TWO], [TWO], store, None, False).nix_store == \
        f"{TWO}/bin/nix-store"


@pytest.mark.slow
def test_install_refuses_a_nix_that_is_a_symlink_to_usr(world_dir: Path) -> None:
    """An installer (made without the build's check) whose "Nix" is a store path
    ``-> /usr``: installing it would run the machine's /usr/bin/nix-store."""
    assert os.path.exists("/usr/bin/nix-store")
    prefix = world_dir / "p"
    out = world_dir / "usr.sh"
    installer_of(out, str(prefix / "store"), [entry(TOP, tarfile.SYMTYPE, linkname="/usr")],
                 [TOP], nix_store=f"{TOP}/bin/nix-store")
    proc = run_installer(out, "-y")
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and "is not a file of its closure" in lines[0], proc.stderr
    assert "undone" in lines[0]
    assert not (prefix / "var/nix/db").exists() or not list((prefix / "store").iterdir())
