"""Two installers in every order, and a Ctrl-C or a kill in every command.

Issue 23 (1, 2, 4): installers A (the small sample), B (a tool of its own plus
A's ``lonely`` root, so that the two share a path) and C (a newer
``hello-nix-prefix``, which an update puts in the place of A's: two profile
generations, the one in between deleted again), run on a prefix that holds
files of the user's, ``P/var/nix/notes`` among them.  Whatever the order of
install, ``-u`` and ``--uninstall``, the last uninstall leaves the prefix as
it was before the first install: every entry, mode, mtime and byte.

A Ctrl-C is sent to the installer's process group (as a terminal sends it: the
Nix running then gets it too) at the start and right after the end of each Nix
command a run makes, counted by a wrapper in front of ``nix-env`` and
``nix-store`` on PATH: the run ends "undone" with the prefix exactly as before
(the database by its rows), or done, as a run without the Ctrl-C ends; the
same for the KeyboardInterrupt of a Ctrl-C raised at lines spread over an
update (test_interrupts.py's tracer), between two Nix commands.  A ``kill
-9`` after each Nix command of an uninstall, then another uninstall, leaves
the prefix as before too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.localnix import LocalNix
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.builder.samples import build_small_closure

from .test_faults import assert_installed, prefix_state
from .test_interrupts import TRACER
from tests.support import script_package, tree_snapshot

# In front of the real nix-env and nix-store: counts the Nix commands of a run in
# $ORDERS_COUNT and, at the one $ORDERS_AT names (N:start, N:end or N:kill),
# sends SIGINT to the whole process group as it starts or once it ended, or
# kills the installer (its parent) with SIGKILL once it ended.
WRAPPER = """#!/bin/sh
n=$(($(cat "$ORDERS_COUNT" 2>/dev/null || echo 0) + 1))
echo $n > "$ORDERS_COUNT"
[ "$n" = "${ORDERS_AT%%:*}" ] || exec REAL "$@"
case ${ORDERS_AT#*:} in
start) trap : INT; kill -INT 0; trap - INT; exec REAL "$@";;
end) REAL "$@"; st=$?; trap '' INT; kill -INT 0; exit $st;;
kill) REAL "$@"; st=$?; kill -KILL $PPID; exit $st;;
half) : > "$NIX_STORE_DIR/$HALF.lock"; printf 'half' > "$NIX_STORE_DIR/$HALF"
      trap : INT; kill -INT 0; exit 130;;
esac
"""
# What a nix-env stopped while it writes its manifest leaves (src/libstore/
# local-store.cc addTextToStore: the path, unregistered, and its lock file).
HALF = "0" * 32 + "-env-manifest.nix"

USER_FILES = {"notes.txt": "mine\n", "var/nix/notes": "also mine\r\n"}


@dataclass
class Ran:
    """How a run ended, and how many Nix commands it ran."""

    returncode: int
    stderr: str
    nix_calls: int


class Kit:
    """The three installers, the wrapper dir, and the prefix the runs go to."""

    def __init__(self, base: Path) -> None:
        self.base = base
        nix = LocalNix(base / "a-long-enough-build-prefix")
        roots = build_small_closure(nix)
        lonely = [r for r in roots if r.endswith("-lonely")]
        (tool,) = nix.build_expr(script_package("tool-b-1.0", "tool-b", "b"))
        (newer,) = nix.build_expr(script_package("hello-nix-prefix-2.0", "hello-nix-prefix",
                                                 "two"))
        self.installers = {}
        for name, its_roots in (("A", roots), ("B", [tool, *lonely]), ("C", [newer])):
            info = nix.write_closure_info(its_roots, base / f"{name}-ci")
            self.installers[name] = base / f"{name}.sh"
            build_installer(read_closure(info), self.installers[name], BuildOptions(level=0))
        os.rename(base / "a-long-enough-build-prefix", base / "build.moved")
        self.wrap = base / "wrap"
        self.wrap.mkdir()
        for tool_name in ("nix-env", "nix-store"):
            real = shutil.which(tool_name)
            assert real is not None
            (self.wrap / tool_name).write_text(WRAPPER.replace("REAL", real))
            (self.wrap / tool_name).chmod(0o755)
        self.prefix = base / "p"

    def fresh(self, var_nix: bool = True) -> Path:
        """The prefix as the user had it: their files (``var_nix``: in P/var/nix too),
        no install."""
        remove(self.prefix)
        for rel, text in USER_FILES.items():
            if rel.startswith("var/nix/") and not var_nix:
                continue
            path = self.prefix / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode())
            os.utime(path, ns=(10**18, 10**18))
        return self.prefix

    def run(self, name: str, *args: str, at: str = "",
            env: dict[str, str] | None = None) -> Ran:
        """Run installer NAME on the prefix in a session of its own (a Ctrl-C to
        its group reaches nothing else), through the wrapper."""
        count = self.base / "count"
        if count.exists():
            count.unlink()
        env = dict(os.environ, PATH=f"{self.wrap}:{os.environ['PATH']}",
                   ORDERS_COUNT=str(count), ORDERS_AT=at, **(env or {}))
        proc = subprocess.Popen(["/bin/sh", str(self.installers[name]), *args, "-y", "-q",
                                 "-p", str(self.prefix)], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                errors="replace", start_new_session=True)
        _, err = proc.communicate(timeout=300)
        return Ran(proc.returncode, err, int(count.read_text()) if count.exists() else 0)

    def ok(self, name: str, *args: str) -> Ran:
        proc = self.run(name, *args)
        assert proc.returncode == 0, (name, args, proc.stderr)
        return proc

    def save(self, label: str) -> Path:
        """Keep a copy of the prefix as it is now (cp -a: modes and mtimes too)."""
        copy = self.base / f"saved-{label}"
        remove(copy)
        subprocess.run(["cp", "-a", str(self.prefix), str(copy)], check=True)
        return copy

    def restore(self, copy: Path) -> Path:
        remove(self.prefix)
        subprocess.run(["cp", "-a", str(copy), str(self.prefix)], check=True)
        return self.prefix


def remove(path: Path) -> None:
    if os.path.lexists(path):
        subprocess.run(["chmod", "-R", "u+w", str(path)], check=False, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def kit(module_dir: Path) -> Kit:
    return Kit(module_dir)


def snapshot(prefix: Path) -> dict[str, tuple]:
    """Every entry of the prefix (tree_snapshot: type, mode, size, mtime, link target,
    bytes), Nix's runtime files included, but the mtimes of directories (which an
    entry made and removed inside changes)."""
    snap = tree_snapshot(prefix)
    for rel, (mode, size, _, link, data) in snap.items():
        if (prefix / rel).is_dir() and link is None:
            snap[rel] = (mode, size, None, link, data)
    return snap


def user_files(prefix: Path) -> dict[str, tuple]:
    """The user's files, byte for byte with their modes and mtimes."""
    snap = tree_snapshot(prefix)
    return {rel: snap[rel] for rel in USER_FILES if rel in snap}


def state(prefix: Path, mtimes: bool = True) -> dict[str, object]:
    """prefix_state without the mtime of the profile links (switching a profile back
    makes its link anew: same target, new mtime), or of anything (``mtimes``
    False: a run that ended done is compared with one that ran at another time)."""
    out = prefix_state(prefix)
    for rel, value in out.items():
        if isinstance(value, tuple) and (not mtimes or (
                rel.startswith("var/nix/profiles/default") and value[4] is not None)):
            out[rel] = value[:3] + (None,) + value[4:]
    return out


# --- 1. every order of two installers ------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("first, second", [("A", "B"), ("B", "A")])
@pytest.mark.parametrize("last", ["first", "second"])
def test_two_installers_in_every_order_leave_the_prefix_as_it_was(
        kit: Kit, first: str, second: str, last: str) -> None:
    """Install one, `-u` the other, uninstall both (either one first): the other
    install stays whole in between, the last uninstall leaves the prefix as it was
    (item 1: A's paths, alive in B's generation when A went, went with B)."""
    prefix = kit.fresh()
    before = snapshot(prefix)
    kit.ok(first)
    kit.ok(second, "-u")
    gone, stays = (second, first) if last == "first" else (first, second)
    kit.ok(gone, "--uninstall")
    assert_installed(prefix, "tool-b" if stays == "B" else "hello-nix-prefix")
    kit.ok(stays, "--uninstall")
    assert snapshot(prefix) == before
    for name in (first, second):  # nothing is left to uninstall
        again = kit.run(name, "--uninstall")
        assert again.returncode != 0 and "no record" in again.stderr, again.stderr
        assert snapshot(prefix) == before


# --- 4. Nix's own state in a P/var/nix of the user's -----------------------------

@pytest.mark.slow
def test_last_uninstall_takes_nix_state_out_of_the_users_var_nix(kit: Kit) -> None:
    """`P/var/nix` held a file of the user's before the install: the last uninstall
    takes out Nix's db/, gc.lock, gcroots/, profiles/, temproots/ and var/log/nix/drvs,
    and the user's file stays byte for byte."""
    prefix = kit.fresh()
    before = snapshot(prefix)
    kit.ok("A")
    assert (prefix / "var/nix/db").is_dir()
    kit.ok("A", "--uninstall")
    assert snapshot(prefix) == before


@pytest.mark.slow
def test_uninstall_killed_after_any_nix_command_then_again(kit: Kit) -> None:
    """kill -9 of the last `--uninstall` once each of its Nix commands ended, then
    `--uninstall` again: the prefix as it was (the user environment's build log
    included, once its .drv went in the killed run)."""
    prefix = kit.fresh(var_nix=False)
    before = snapshot(prefix)
    kit.ok("A")
    installed = kit.save("killed")
    calls = kit.run("A", "--uninstall")
    n = calls.nix_calls
    assert calls.returncode == 0 and n >= 4, (n, calls.stderr)
    assert snapshot(prefix) == before
    wrong = []
    for k in range(1, n + 1):
        kit.restore(installed)
        killed = kit.run("A", "--uninstall", at=f"{k}:kill")
        assert killed.returncode == -9, (k, killed.stderr)
        again = kit.run("A", "--uninstall")
        after = snapshot(prefix)
        if again.returncode != 0 or after != before:
            wrong.append((k, again.returncode, again.stderr[-300:],
                          sorted(set(after) ^ set(before))))
    assert wrong == [], wrong


# --- 2. a Ctrl-C in every command ----------------------------------------------------

def ctrl_c_everywhere(kit: Kit, name: str, args: tuple[str, ...], start: Path,
                      every: bool = True) -> int:
    """Run ``name args`` from the prefix ``start`` once whole, then with a Ctrl-C at
    the start and at the end of each of its Nix commands (``every`` False: of the
    first and the last only); return how many runs had one.  Each ends "undone"
    (exit 130, one line) with the prefix exactly as before, or done (exit 0) with
    the prefix as after the whole run."""
    prefix = kit.restore(start)
    before = state(prefix)
    users = user_files(prefix)
    whole = kit.ok(name, *args)
    n = whole.nix_calls
    assert n >= 1
    done = state(prefix, mtimes=False)
    moments = range(1, n + 1) if every else sorted({1, n})
    wrong, tried = [], 0
    for k in moments:
        for when in ("start", "end"):
            kit.restore(start)
            proc = kit.run(name, *args, at=f"{k}:{when}")
            tried += 1
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            if proc.returncode == 130:
                ok = len(lines) == 1 and "interrupted" in lines[0] and state(prefix) == before
            else:
                ok = proc.returncode == 0 and state(prefix, mtimes=False) == done
            if not ok or user_files(prefix) != users:
                after = state(prefix)
                wrong.append((k, when, proc.returncode, proc.stderr[-300:], sorted(
                    p for p in set(before) | set(after) if before.get(p) != after.get(p))))
    assert wrong == [], f"{len(wrong)} of {tried}: {wrong[:4]}"
    return tried


@pytest.mark.slow
def test_ctrl_c_while_nix_env_writes_takes_what_it_wrote(kit: Kit) -> None:
    """A Ctrl-C that stops nix-env half-way through writing into the store (item 2,
    seen with a real one at about 1 in 10 moments): its unregistered path and .lock
    go with the undo; such a leftover of the user's from before stays."""
    kit.fresh()
    kit.ok("A")
    theirs = kit.prefix / "store" / ("1" * 32 + "-env-manifest.nix")
    theirs.write_text("left by a nix-env of the user's\n")
    Path(f"{theirs}.lock").write_text("")
    before = state(kit.prefix)
    nix_env_at = 2  # load-db, then nix-env -e: the first nix-env of the update
    proc = kit.run("C", "-u", at=f"{nix_env_at}:half", env={"HALF": HALF})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 130 and len(lines) == 1, proc.stderr
    assert state(kit.prefix) == before


# Each command, the runs that make the prefix it starts from, and whether a Ctrl-C
# goes at every Nix command of it (an uninstall holds the signals once it has
# the lock: the first and the last suffice).
COMMANDS = {
    "install": ("A", (), [], True),
    "update": ("C", ("-u",), [("A",)], True),
    "rollback": ("A", ("--rollback",), [("A",), ("C", "-u")], True),
    "uninstall-one": ("B", ("--uninstall",), [("A",), ("B", "-u")], False),
    "uninstall-last": ("A", ("--uninstall",), [("A",)], False),
}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS))
def test_ctrl_c_in_every_command(kit: Kit, command: str) -> None:
    """Install, `-u` that replaces a package (item 2: the generation in between and
    what nix-env was writing when stopped), `--rollback`, `--uninstall` of one of two
    installs and of the last: a Ctrl-C at each Nix command of each."""
    name, args, setup, every = COMMANDS[command]
    kit.fresh()
    for run in setup:
        kit.ok(*run)
    start = kit.save(command)
    tried = ctrl_c_everywhere(kit, name, args, start, every)
    print(f"{command}: {tried} runs with a Ctrl-C, each undone or done")


LINE_RUNS = 30  # lines of the update's own code tried, spread evenly over it


@pytest.mark.slow
def test_ctrl_c_at_lines_of_an_update(kit: Kit) -> None:
    """The KeyboardInterrupt a Ctrl-C raises, raised at lines spread evenly over a `-u`
    that replaces a package (test_interrupts.py's tracer): between two Nix commands,
    too, every run ends undone with the prefix exactly as before, or done."""
    kit.fresh()
    kit.ok("A")
    start = kit.save("lines")
    tracer = kit.base / "tracer.py"
    tracer.write_text(TRACER)

    def update(at: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(tracer), str(kit.installers["C"]), "-u",
                               "-y", "-q", "-p", str(kit.prefix)], capture_output=True,
                              text=True, check=False, stdin=subprocess.DEVNULL,
                              env=dict(os.environ, INTERRUPT_AT=str(at)))

    before = state(kit.prefix)
    whole = update(0)
    assert whole.returncode == 0, whole.stderr
    total = int(whole.stderr.rpartition("lines: ")[2])
    done = state(kit.prefix, mtimes=False)
    wrong, tried = [], 0
    for at in range(total // LINE_RUNS // 2 or 1, total + 1, max(1, total // LINE_RUNS)):
        kit.restore(start)
        proc = update(at)
        tried += 1
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        if proc.returncode == 130:
            ok = len(lines) == 1 and "interrupted" in lines[0] and state(kit.prefix) == before
        else:
            ok = proc.returncode == 0 and state(kit.prefix, mtimes=False) == done
        if not ok:
            after = state(kit.prefix)
            wrong.append((at, proc.returncode, proc.stderr[-300:], sorted(
                p for p in set(before) | set(after) if before.get(p) != after.get(p))))
    assert wrong == [], f"{len(wrong)} of {tried} (of {total} lines): {wrong[:4]}"
    print(f"update: Ctrl-C at {tried} of its {total} lines, each undone or done")
