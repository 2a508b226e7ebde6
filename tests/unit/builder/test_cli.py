"""The nix-prefix command line without a closure: help, colours, completion, --debug;
every command ends a failure through the one exit-code table, as one line; --cache-key
is build's and closure's narinfo trust, the old --trusted-key spelling still taken
there, hidden, with a deprecation notice.  The commands run against a real closure
in tests/e2e/test_cli.py."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import nacl.signing
import pytest
from typer.testing import CliRunner

from nix_prefix.builder.cache import CacheOptions, write_cache
from nix_prefix.builder.cli import app
from nix_prefix.payload import hashes, nar, registration
from nix_prefix.payload.registration import ValidPathInfo
from nix_prefix.payload.signing import SecretKey

runner = CliRunner()
NIX_PREFIX = Path(sys.executable).parent / "nix-prefix"
APP = "0" * 31 + "1-app"
NOT_A_KEY = "k:notbase64"


def nix_prefix(*args: object, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    full.update(env)
    return subprocess.run([str(NIX_PREFIX), *args], capture_output=True, text=True, env=full,
                          check=False)


def test_debug_shows_the_traceback(world_dir: Path) -> None:
    result = nix_prefix("inspect", world_dir / "nope.sh", "--debug")
    assert result.exit_code == 2
    assert "Traceback" in result.output
    assert result.output.splitlines()[-1].startswith("nix-prefix: error: ")


def test_every_command_has_help() -> None:
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert {"closure", "build", "inspect", "verify", "retarget", "sample", "demo"} <= set(names)
    for name in names:
        result = nix_prefix(name, "--help")
        assert result.exit_code == 0, (name, result.output)
        assert "Usage:" in result.output
    result = nix_prefix("--help")
    assert "Exit codes" in result.output


def test_no_color_is_respected() -> None:
    # A terminal that has colours: under the caller's TERM=dumb (Emacs, some CI
    # runners) rich rightly gives none even with FORCE_COLOR.
    coloured = _run("build", "--help", FORCE_COLOR="1", TERM="xterm-256color")
    assert coloured.returncode == 0
    assert "\x1b[" in coloured.stdout  # the check below is not vacuous
    plain = _run("build", "--help", FORCE_COLOR="1", NO_COLOR="1", TERM="xterm-256color")
    assert plain.returncode == 0
    assert "\x1b[" not in plain.stdout + plain.stderr
    assert "--roots" in plain.stdout


def test_shell_completion() -> None:
    # Typer guesses the shell from the parent processes (shellingham): a run with
    # no shell above it (a detached CI job) finds none; name it instead.
    script = _run("--show-completion", "bash", _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert script.returncode == 0, script.stderr
    assert "_NIX_PREFIX_COMPLETE" in script.stdout
    words = _run(_NIX_PREFIX_COMPLETE="complete_bash", COMP_WORDS="nix-prefix ins",
                 COMP_CWORD="1")
    assert words.stdout.split() == ["inspect"]
    options = _run(_NIX_PREFIX_COMPLETE="complete_bash", COMP_WORDS="nix-prefix build --ro",
                   COMP_CWORD="2")
    assert "--roots" in options.stdout.split()


def plain(*args: object):
    return runner.invoke(app, [str(a) for a in args], env={"NO_COLOR": "1"})


def one_error_line(result, code: int, *needles: str) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("nix-prefix: error: "), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args, code, needle", [
    (["build", "ci", "--compression", "lz4"], 2, "unknown compression"),
    (["build", "-A", "x", "ci"], 2, "-A and --argstr go with -f"),
    (["build", "ci", "--cache-key", NOT_A_KEY], 2, "--cache-key checks the narinfos"),
    (["build", "--from-cache", "file:///nowhere", "/s/x", "--cache-key", NOT_A_KEY], 2,
     "--cache-key: "),
    (["closure", "/s/x", "-o", "out", "--cache-key", NOT_A_KEY], 2,
     "--cache-key checks the narinfos"),
    (["inspect", "nope.sh"], 2, "nope.sh: no such file"),
    (["verify", "nope.sh"], 2, "nope.sh: no such file"),
    (["inspect", "nope.sh", "--trusted-key", NOT_A_KEY], 2, "--trusted-key"),
    (["cache", "nope.sh", "-p", "/tmp/q", "-o", "c", "--compression", "lz4"], 1,
     "unknown compression 'lz4'; use one of xz, zstd, none"),
    (["serve", "nope.sh", "--compression", "lz4"], 1,
     "unknown compression 'lz4'; use one of xz, zstd, none"),
    (["serve", "nope.sh", "--listen", "nowhere"], 1, "is not HOST:PORT"),
    (["verifier", "-o", "no/such/dir/verify"], 1, "there is no directory"),
])
def test_every_command_fails_with_one_line_and_its_exit_code(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], code: int,
        needle: str) -> None:
    monkeypatch.chdir(tmp_path)
    one_error_line(plain(*args), code, needle)


def test_the_hint_follows_a_semicolon_as_the_installer_writes_it(tmp_path: Path) -> None:
    line = one_error_line(plain("verifier", "-o", tmp_path / "no" / "verify"), 1)
    assert line.endswith("; create it, or choose another -o"), line


def test_cache_key_is_listed_and_the_old_spelling_is_hidden() -> None:
    for command in ("build", "closure"):
        shown = plain(command, "--help").output
        assert "--cache-key" in shown and "--trusted-key" not in shown, shown
    assert "pin the publisher" in plain("verify", "--help").output


@pytest.fixture
def signed_cache(tmp_path: Path) -> tuple[Path, str, SecretKey]:
    """A file:// binary cache of one store path, its narinfo signed by a fresh key."""
    store = tmp_path / "p" / "store"
    store.mkdir(parents=True)
    (store / APP).write_bytes(b"an app\n")
    digest, size = nar.hash_path(str(store / APP))
    ci = tmp_path / "ci"
    ci.mkdir()
    (ci / "registration").write_text(registration.format(
        [ValidPathInfo(f"{store}/{APP}", hashes.format_sha256(digest), size, "", ())]))
    seed = hashlib.sha256(b"the cache key of test_cli").digest()
    key = SecretKey("cache-1", seed + bytes(nacl.signing.SigningKey(seed).verify_key))
    out = tmp_path / "cache"
    write_cache([ci], str(tmp_path / "p"), out, CacheOptions(level=0, sign_keys=[key]))
    return out, f"{store}/{APP}", key


def test_closure_from_cache_trusts_a_cache_key(signed_cache, tmp_path: Path) -> None:
    cache, root, key = signed_cache
    done = plain("closure", "--from-cache", f"file://{cache}", root, "-o",
                      tmp_path / "a", "--cache-key", key.public_key)
    assert done.exit_code == 0, done.output
    assert (tmp_path / "a" / "store" / APP).is_file()
    assert "warning" not in done.output
    other = SecretKey("other", key.key[:32] + bytes(32))  # a name nobody signed with
    refused = plain("closure", "--from-cache", f"file://{cache}", root, "-o",
                         tmp_path / "b", "--cache-key", other.public_key)
    one_error_line(refused, 1, "not signed by any trusted key (other)", "--cache-key")


def test_the_old_spelling_still_works_and_says_it_is_old(signed_cache,
                                                         tmp_path: Path) -> None:
    cache, root, key = signed_cache
    done = plain("closure", "--from-cache", f"file://{cache}", root, "-o",
                      tmp_path / "a", "--trusted-key", key.public_key, "-q")
    assert done.exit_code == 0, done.output
    assert (tmp_path / "a" / "store" / APP).is_file()
    lines = done.output.splitlines()
    assert len(lines) == 1 and "--trusted-key with --from-cache is now --cache-key" in lines[0]
