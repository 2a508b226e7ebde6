"""Faults after preflight: each install ends done, or with the prefix as it was.

Issue 13's cases, with the fault injected where it cannot be had for real:
LD_PRELOAD shims compiled here with gcc (a disk quota running out inside
``nix-store --load-db``, a filesystem without locks), ``ulimit -v``,
signals, a closed pipe, a TMPDIR that is gone, two roots colliding in the
profile, a prefix of another user.  "As it was" is checked on every file,
mode, size, link and byte of the prefix and on Nix's database rows.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.localnix import LocalNix, prefix_env
from nix_prefix.builder.pack import BuildOptions, build_installer

from tests.conftest import NOBODY
from tests.support import Built, build_small, run_installer

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (to switch users)")

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

/* Fails writes (SHIM_MODE=quota: EDQUOT) or flock (SHIM_MODE=nolock: ENOLCK) on
   files under SHIM_UNDER, as a full quota or an NFS mount without lockd would;
   with SHIM_ONLY, only in programs whose path contains it. */
static int hit(int fd, const char *mode) {
    const char *want = getenv("SHIM_UNDER"), *m = getenv("SHIM_MODE");
    const char *only = getenv("SHIM_ONLY");
    char link[64], path[4096];
    ssize_t n;
    if (!want || !m || strcmp(m, mode) != 0) return 0;
    if (only) {
        n = readlink("/proc/self/exe", path, sizeof path - 1);
        if (n < 0) return 0;
        path[n] = 0;
        if (!strstr(path, only)) return 0;
    }
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    return strncmp(path, want, strlen(want)) == 0;
}
#define REAL(name) static __typeof__(name) *real; if (!real) real = dlsym(RTLD_NEXT, #name)
ssize_t write(int fd, const void *b, size_t n) {
    REAL(write); if (hit(fd, "quota")) { errno = EDQUOT; return -1; } return real(fd, b, n);
}
ssize_t pwrite(int fd, const void *b, size_t n, off_t o) {
    REAL(pwrite); if (hit(fd, "quota")) { errno = EDQUOT; return -1; } return real(fd, b, n, o);
}
ssize_t pwrite64(int fd, const void *b, size_t n, off_t o) {
    REAL(pwrite64); if (hit(fd, "quota")) { errno = EDQUOT; return -1; } return real(fd, b, n, o);
}
int ftruncate(int fd, off_t len) {
    REAL(ftruncate); if (hit(fd, "quota")) { errno = EDQUOT; return -1; } return real(fd, len);
}
int flock(int fd, int op) {
    REAL(flock); if (hit(fd, "nolock")) { errno = ENOLCK; return -1; } return real(fd, op);
}
"""

COLLIDING = r"""
let tool = version: derivation {
  name = "foo-${version}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  args = [ "-c" ("mkdir -p $out/bin; printf '#!/bin/sh\necho ${version}\n' > $out/bin/foo; "
                + "chmod +x $out/bin/foo") ];
}; in [ (tool "1.0") (tool "2.0") ]
"""


@pytest.fixture(scope="module")
def base() -> Path:
    path = Path(subprocess.check_output(["mktemp", "-d", "/tmp/np-faults-XXXXXX"], text=True)
                .strip())
    path.chmod(0o755)
    yield path
    subprocess.run(["chmod", "-R", "u+w", str(path)], check=False)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def small(base: Path) -> Built:
    built = build_small(base, name="a-long-enough-build-prefix")
    built.move_build_away()
    return built


@pytest.fixture(scope="module")
def shim(base: Path) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to build the LD_PRELOAD shim")
    src = base / "shim.c"
    src.write_text(SHIM)
    out = base / "shim.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(out), str(src), "-ldl"],
                   check=True)
    out.chmod(0o755)
    return out


@pytest.fixture(scope="module")
def colliding(base: Path) -> Path:
    nix = LocalNix(base / "collide-build-prefix")
    roots = nix.build_expr(COLLIDING)
    info = nix.write_closure_info(roots, base / "collide-ci")
    out = base / "collide.sh"
    build_installer(read_closure(info), out, BuildOptions(level=0))
    os.rename(base / "collide-build-prefix", base / "collide-build-prefix.build")
    return out


def one_line(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The run failed with ``code`` and said so in one message, no traceback: one line,
    which may carry Nix's own error on indented lines after it (nixstore.nix_error)."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("nix-prefix: "), proc.stderr
    assert all(line.startswith("    ") for line in lines[1:]), proc.stderr
    message = "\n".join(lines)
    for needle in needles:
        assert needle in message, message
    return message


# Files Nix itself rewrites when it merely runs (its database, locks and
# per-process roots): the database is compared by its rows instead.
NIX_RUNTIME = ("var/nix/db/", "var/nix/temproots", "var/nix/gc.lock", "var/nix/userpool")


def prefix_state(prefix: Path) -> dict[str, object]:
    """Everything of a prefix that "as it was" covers: every entry's type, mode, owner,
    size, link target and bytes (directories without their mtimes), and Nix's rows."""
    if not os.path.lexists(prefix):
        return {}
    state: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(prefix):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, prefix)
            if rel.startswith(NIX_RUNTIME) or rel == "var/nix/db":
                continue
            st = os.lstat(full)
            link = os.readlink(full) if os.path.islink(full) else None
            data = None
            if os.path.isfile(full) and not os.path.islink(full):
                with open(full, "rb") as f:
                    data = f.read()
            mtime = None if os.path.isdir(full) and not link else st.st_mtime_ns
            state[rel] = (st.st_mode, st.st_uid, st.st_size, mtime, link, data)
    if (prefix / "var/nix/db/db.sqlite").exists():
        state["(rows)"] = nix_store(prefix, "--dump-db").stdout
    return state


def nix_store(prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = prefix_env(prefix, home=prefix / "var/nix-prefix/home")
    return subprocess.run(["nix-store", *args], env=env, capture_output=True, text=True,
                          check=False)


def assert_installed(prefix: Path, program: str = "hello-nix-prefix") -> None:
    verify = nix_store(prefix, "--verify", "--check-contents")
    assert verify.returncode == 0 and "modified" not in verify.stderr, verify.stderr
    assert not [n for n in os.listdir(prefix / "store") if n.startswith(".nix-prefix-staging")]
    out = subprocess.run([prefix / "var/nix/profiles/default/bin" / program],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip()


@pytest.fixture
def existing(small: Built, base: Path, request) -> Path:
    """A prefix holding a working install of the small closure."""
    prefix = base / f"e{abs(hash(request.node.name)) % 10**8}"
    proc = run_installer(small.installer, "-y", "-q", "-p", str(prefix))
    assert proc.returncode == 0, proc.stderr
    yield prefix
    subprocess.run(["chmod", "-R", "u+w", str(prefix)], check=False)
    shutil.rmtree(prefix, ignore_errors=True)


def fresh(base: Path, name: str) -> Path:
    prefix = base / name
    subprocess.run(["chmod", "-R", "u+w", str(prefix)], check=False, capture_output=True)
    shutil.rmtree(prefix, ignore_errors=True)
    return prefix


def nobodys(base: Path, name: str) -> Path:
    """A fresh, empty prefix dir that belongs to nobody."""
    prefix = fresh(base, name)
    prefix.mkdir()
    os.chown(prefix, NOBODY, NOBODY)
    return prefix


# --- 3. late failures -------------------------------------------------------

def test_missing_tmpdir_still_installs(small: Built, base: Path) -> None:
    """TMPDIR that does not exist: Nix gets /tmp instead of failing the profile step."""
    prefix = fresh(base, "tmpdir")
    env = dict(os.environ, TMPDIR=str(base / "no-such-dir"))
    proc = run_installer(small.installer, "-y", "-q", "-p", str(prefix), env=env)
    assert proc.returncode == 0, proc.stderr
    assert_installed(prefix)


@needs_root
def test_unwritable_tmpdir_still_installs(small: Built, base: Path) -> None:
    prefix = nobodys(base, "tmpdir-ro")
    ro = base / "ro-tmp"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(ro), "HOME": str(prefix)}
    proc = run_installer(small.installer, "-y", "-q", "-p", str(prefix), env=env, user=NOBODY)
    assert proc.returncode == 0, proc.stderr
    assert_installed(prefix)


@pytest.mark.parametrize("kib", [102400, 61440, 30720])
def test_memory_limit_ends_done_or_as_it_was(small: Built, base: Path, kib: int) -> None:
    """`ulimit -v` of 100, 60 or 30 MiB: either the install fits, or it fails in one
    line with the prefix as it was; a run without the limit then installs."""
    prefix = fresh(base, f"ulimit-{kib}")
    proc = subprocess.run(["/bin/sh", "-c", f'ulimit -v {kib}; exec /bin/sh "$0" -y -q -p "$1"',
                           str(small.installer), str(prefix)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        one_line(proc, 1)
        assert not prefix.exists(), os.listdir(prefix)
    print(f"ulimit -v {kib}: exit {proc.returncode}: {proc.stderr.strip()}")
    again = run_installer(small.installer, "-y", "-q", "-p", str(prefix))
    assert again.returncode == 0, again.stderr
    assert_installed(prefix)


@pytest.mark.parametrize("where", ["fresh", "existing"])
def test_quota_running_out_inside_load_db(small: Built, base: Path, shim: Path, where: str,
                                          colliding: Path) -> None:
    """Every write to P/var/nix/db fails with EDQUOT once load-db starts: exit 1 with the
    prefix as it was (the first install leaves no half-made database); rerun: done."""
    prefix = fresh(base, f"quota-{where}")
    installer = small.installer
    if where == "existing":
        assert run_installer(small.installer, "-y", "-q", "-p", str(prefix)).returncode == 0
        installer = colliding.with_name("collide-free.sh")
        if not installer.exists():
            build_free_installer(base, installer)
    before = prefix_state(prefix)
    env = dict(os.environ, LD_PRELOAD=str(shim), SHIM_MODE="quota",
               SHIM_UNDER=str(prefix / "var/nix/db"), SHIM_ONLY="nix")
    args = ["-y", "-q", "-p", str(prefix)] + (["-u"] if where == "existing" else [])
    proc = run_installer(installer, *args, env=env)
    one_line(proc, 1, "load-db", "the prefix is as it was")
    assert prefix_state(prefix) == before
    again = run_installer(installer, *args)
    assert again.returncode == 0, again.stderr
    assert_installed(prefix, "hello-nix-prefix" if where == "fresh" else "other-tool")


def build_free_installer(base: Path, out: Path) -> None:
    """An installer of another small closure for the same store dir (no collisions)."""
    nix = LocalNix(base / "a-long-enough-build-prefix")
    expr = ('derivation { name = "other-tool"; system = builtins.currentSystem; '
            'builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" "mkdir -p $out/bin; '
            "printf '#!/bin/sh\\\\necho other\\\\n' > $out/bin/other-tool; "
            'chmod +x $out/bin/other-tool" ]; }')
    try:
        root = nix.build_expr(expr)[0]
        info = nix.write_closure_info([root], base / "free-ci")
        build_installer(read_closure(info), out, BuildOptions(level=0))
    finally:
        shutil.rmtree(base / "a-long-enough-build-prefix", ignore_errors=True)


def test_closed_pipe_install_finishes(small: Built, base: Path) -> None:
    """`sh installer -y 2>&1 | head -1`: the reader goes after one line; the install
    still ends done (no exit 120, nothing unregistered), and a rerun has nothing to do
    and no false "does not match" about relocated copies."""
    prefix = fresh(base, "pipe")
    proc = subprocess.Popen(["/bin/sh", str(small.installer), "-y", "-p", str(prefix)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does
    assert proc.wait(timeout=120) == 0
    assert_installed(prefix)
    again = run_installer(small.installer, "-y", "-p", str(prefix))
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr
    assert "does not match" not in again.stderr


@pytest.mark.parametrize("where", ["fresh", "existing"])
def test_colliding_roots_revert_everything(colliding: Path, base: Path, small: Built,
                                           where: str) -> None:
    """foo-1.0 and foo-2.0 both have bin/foo: nix-env refuses the profile; the paths
    registered before are deleted again, rows and all (exit 1, one line)."""
    prefix = fresh(base, f"collide-{where}")
    if where == "existing":
        assert run_installer(small.installer, "-y", "-q", "-p", str(prefix)).returncode == 0
    before = prefix_state(prefix)
    args = ["-y", "-q", "-p", str(prefix)] + (["-u"] if where == "existing" else [])
    proc = run_installer(colliding, *args)
    one_line(proc, 1, "nix-env", "the prefix is as it was")
    assert prefix_state(prefix) == before
    if where == "existing":
        assert_installed(prefix)


# --- 4. ownership -------------------------------------------------------------

@needs_root
def test_root_refuses_a_prefix_of_another_user_unless_as_owner(small: Built, base: Path) -> None:
    prefix = nobodys(base, "theirs")
    before = prefix_state(prefix)
    proc = run_installer(small.installer, "-y", "-u", "-p", str(prefix))
    one_line(proc, 4, "belongs to nobody", "--as-owner")
    assert prefix_state(prefix) == before
    proc = run_installer(small.installer, "-y", "-q", "--as-owner", "-p", str(prefix))
    assert proc.returncode == 0, proc.stderr
    for dirpath, dirnames, filenames in os.walk(prefix):
        for name in [""] + dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), os.path.join(dirpath, name)
    # The owner's own uninstall works, and leaves the prefix as it was.
    env = {"PATH": os.environ["PATH"], "HOME": str(prefix)}
    gone = run_installer(small.installer, "-y", "-q", "--uninstall", "-p", str(prefix),
                         env=env, user=NOBODY)
    assert gone.returncode == 0, gone.stderr
    assert os.listdir(prefix) == [] and prefix_state(prefix) == before


@needs_root
def test_a_lock_file_of_another_user_is_one_line(small: Built, base: Path) -> None:
    prefix = fresh(base, "lock-theirs")
    (prefix / "var/nix-prefix").mkdir(parents=True)
    (prefix / "var/nix-prefix/lock").write_text("")
    for path in (prefix, prefix / "var", prefix / "var/nix-prefix"):
        os.chown(path, NOBODY, NOBODY)
    before = prefix_state(prefix)
    env = {"PATH": os.environ["PATH"], "HOME": str(prefix)}
    proc = run_installer(small.installer, "-y", "-p", str(prefix), env=env, user=NOBODY)
    one_line(proc, 4, "lock", "belongs to root")
    assert prefix_state(prefix) == before


# --- 5. the last uninstall ---------------------------------------------------

def test_last_uninstall_leaves_the_prefix_as_it_was(small: Built, base: Path) -> None:
    """A prefix whose parents did not exist (6: created like mkdir -p), and one the user
    made with a file of theirs in it: after install + uninstall each is as it was."""
    top = fresh(base, "deep")
    nested = top / "a" / "b" / "nix"
    proc = run_installer(small.installer, "-y", "-q", "-p", str(nested))
    assert proc.returncode == 0, proc.stderr
    assert_installed(nested)
    gone = run_installer(small.installer, "-y", "--uninstall", "-p", str(nested))
    assert gone.returncode == 0, gone.stderr
    assert not top.exists()

    mine = fresh(base, "mine")
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    before = prefix_state(mine)
    assert run_installer(small.installer, "-y", "-q", "-p", str(mine)).returncode == 0
    sh = mine / "etc/profile.d/nix.sh"
    sh.write_text(sh.read_text() + "export EDITED=1\n")
    gone = run_installer(small.installer, "-y", "--uninstall", "-p", str(mine))
    assert gone.returncode == 0, gone.stderr
    assert f"kept {sh}: it was changed since the install" in gone.stderr
    after = prefix_state(mine)
    assert after.pop("etc/profile.d/nix.sh")[-1].endswith(b"export EDITED=1\n")
    assert {k: v for k, v in after.items() if not k.startswith("etc")} == before
    assert sorted(after) == sorted([*before, "etc", "etc/profile.d"])


@pytest.mark.slow
def test_last_uninstall_of_the_shipped_nix_leaves_nothing(base: Path) -> None:
    """With its own Nix in the closure (74 MiB), the last uninstall still empties the
    store: the deleting nix-store's own runtime roots do not keep it."""
    from nix_prefix.builder.samples import build_nix_closure, build_small_closure

    nix = LocalNix(base / "nix-built-at-a-longer-prefix")
    roots = [build_nix_closure(nix), *build_small_closure(nix)]
    info = nix.write_closure_info(roots, base / "nix-ci")
    installer = base / "nix.sh"
    build_installer(read_closure(info), installer, BuildOptions(level=1))
    os.rename(base / "nix-built-at-a-longer-prefix", base / "nix-built.build")
    prefix = fresh(base, "shipped")
    prefix.mkdir()
    proc = run_installer(installer, "-y", "-q", "-p", str(prefix))
    assert proc.returncode == 0, proc.stderr
    gone = run_installer(installer, "-y", "--uninstall", "-p", str(prefix))
    assert gone.returncode == 0, gone.stderr
    assert "kept" not in gone.stderr, gone.stderr
    assert os.listdir(prefix) == [], sorted(os.listdir(prefix))


# --- 6. smaller ---------------------------------------------------------------

def test_a_filesystem_without_locks_is_one_line(small: Built, base: Path, shim: Path) -> None:
    prefix = fresh(base, "nolock")
    env = dict(os.environ, LD_PRELOAD=str(shim), SHIM_MODE="nolock", SHIM_UNDER=str(prefix))
    proc = run_installer(small.installer, "-y", "-p", str(prefix), env=env)
    one_line(proc, 4, "without file locks", "local disk")
    assert not prefix.exists()


def test_without_y_and_without_a_terminal_nothing_happens(small: Built, existing: Path,
                                                          base: Path) -> None:
    prefix = fresh(base, "no-tty")
    proc = subprocess.run(["/bin/sh", str(small.installer), "-p", str(prefix)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    one_line(proc, 2, "no -y", "pass -y")
    assert not prefix.exists()
    before = prefix_state(existing)
    proc = subprocess.run(["/bin/sh", str(small.installer), "--uninstall", "-p", str(existing)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    one_line(proc, 2, "no -y")
    assert prefix_state(existing) == before


@needs_root
def test_modify_profile_with_an_unwritable_home_changes_nothing(small: Built,
                                                                base: Path) -> None:
    prefix = nobodys(base, "rc")
    home = base / "ro-home"
    home.mkdir(exist_ok=True)
    home.chmod(0o555)
    before = prefix_state(prefix)
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    proc = run_installer(small.installer, "-y", "--modify-profile", "-p", str(prefix), env=env,
                         user=NOBODY)
    one_line(proc, 4, "--modify-profile", str(home))
    assert prefix_state(prefix) == before


@pytest.mark.parametrize("piped", [False, True], ids=["file", "piped"])
@pytest.mark.parametrize("delay", [0.0, 0.03, 0.08, 0.15, 0.25])
def test_ctrl_c_in_the_first_quarter_second(small: Built, base: Path, delay: float,
                                            piped: bool) -> None:
    """SIGINT while Python starts or imports: no traceback, at most one line, and
    whatever had begun is undone (piped: the seal checker's private copy too)."""
    prefix = fresh(base, f"early-int-{int(delay * 100)}-{piped}")
    tmp = fresh(base, f"early-int-tmp-{int(delay * 100)}-{piped}")
    tmp.mkdir()
    args = ["-s", "--"] if piped else [str(small.installer)]
    with open(small.installer, "rb") as stdin:
        proc = subprocess.Popen(["/bin/sh", *args, "-y", "-q", "-p", str(prefix)],
                                stdin=stdin if piped else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, TMPDIR=str(tmp)))
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    if err.startswith("Fatal Python error: init_"):
        # SIGINT inside the interpreter's own start-up, before any of the
        # installer's code runs: Python's words, not ours; nothing was written.
        assert "nix_prefix" not in err and "seal checker" not in err, err
        assert not prefix.exists()
        return
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    if proc.returncode == 0:  # it was done before the signal came
        assert_installed(prefix)
        return
    assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, err)
    assert len(lines) <= 1, err
    assert not prefix.exists(), sorted(os.listdir(prefix))
    assert not os.listdir(tmp), f"left in TMPDIR: {os.listdir(tmp)}"


INTERRUPT_POINTS = [("write", 4), ("renamed", 2), ("env-file", 2), ("before-load-db", 1),
                    ("after-load-db", 1), ("after-profile", 1)]
# Three of the twelve in the default run; all with --slow.
FAST_INTERRUPTS = {("renamed", 2, "TERM"), ("after-load-db", 1, "INT"),
                   ("after-profile", 1, "TERM")}


@pytest.mark.parametrize("moment, n, sig", [
    pytest.param(m, n, sig, id=f"{sig}-{m}-{n}",
                 marks=[] if (m, n, sig) in FAST_INTERRUPTS else [pytest.mark.slow])
    for m, n in INTERRUPT_POINTS for sig in ("TERM", "INT")])
def test_signal_during_the_install_undoes_it(small: Built, base: Path, moment: str, n: int,
                                             sig: str) -> None:
    """SIGTERM or Ctrl-C at a moment of the plan: exit 130, one line, the prefix as it
    was (a first install: no prefix at all); a rerun installs."""
    prefix = fresh(base, f"sig-{moment}-{n}-{sig}")
    env = dict(os.environ, NIX_PREFIX_TEST_CRASH_AT=f"{moment}:{n}:{sig}")
    proc = run_installer(small.installer, "-y", "-q", "-p", str(prefix), env=env)
    one_line(proc, 130, "interrupted", "as it was")
    assert not prefix.exists(), sorted(os.listdir(prefix))
    again = run_installer(small.installer, "-y", "-q", "-p", str(prefix))
    assert again.returncode == 0, again.stderr
    assert_installed(prefix)
