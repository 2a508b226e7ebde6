"""Nothing of a tampered installer runs when the user named the publisher's key
(issue 22, item 3).

Really tampered files, resealed so that only the signature can tell: a module
of the installer that writes a marker when imported, a preamble that writes
one when sh reads it, a flipped byte in a chunk, a broken signature, and a
file an impostor signed.  The installer's own check (``--trusted-key``) must
refuse a changed module before importing it; the standalone verifier
(``nix-prefix-verify``, from pip and as the one file ``nix-prefix verifier``
writes) must refuse every one of them before any byte runs, from a file and
piped, on every CPython from 3.6 to 3.14.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.builder.signer import load_secret_key, sign
from nix_prefix.installer import main as installer_main
from nix_prefix.payload import bundle, container, jsondoc, publisher, seal, trust

from tests.pythons import CPYTHONS, find_python
from tests.support import build_small

BIN = Path(sys.executable).parent
SUMMARY = "nix_prefix/installer/summary.py"
LAST_LINE = b'eval "$h"; exit 3; } #\n'


# --- fast: the pieces --------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["--trusted-key", "a:b"], ["--trusted-key=a:b"], ["--trusted", "a:b"], ["--tru=a:b"],
    ["-y", "--trusted-key", "a:b", "-p", "/x", "--trust", "c:d"],
    ["--check", "--", "--trusted-key", "a:b"], ["-p", "--trusted-key"],
])
def test_the_boot_finds_every_trusted_key_argparse_finds(argv: list[str]) -> None:
    """The preamble's scan (trust.given_keys) misses no key the installer's own parser
    takes, abbreviations included: one it missed would let the code run unchecked."""
    try:
        parsed = installer_main._parser("x").parse_args(argv).trusted_keys
    except SystemExit:
        parsed = []
    found = trust.given_keys(argv)
    assert all(k in found for k in parsed), (parsed, found)


def test_a_bundle_runs_its_modules_as_a_package_of_their_own() -> None:
    source = "from . import a\nVALUE = a.X + 1\n"
    text = bundle.pack("import sys\n", [("a", "X = 41\n"), ("b", source)], "# end\n")
    assert bundle.unpack(text) == [("a", "X = 41\n"), ("b", source)]
    pkg = bundle.load(text, "np_test_bundle")
    try:
        assert pkg.b.VALUE == 42  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="starts like a bundled one"):
            bundle.pack("#= evil\n", [], "")
    finally:
        for name in [n for n in sys.modules if n.startswith("np_test_bundle")]:
            del sys.modules[name]


# --- the world: a signed installer and its tampered copies ---------------------------------

@dataclass
class World:
    base: Path
    genuine: Path
    public: str  # the publisher's NAME:BASE64
    impostor_secret: Path
    marker: Path  # what tampered code writes
    tampered: dict[str, Path] = field(default_factory=dict)


def _keys(nix, base: Path, stem: str) -> tuple[Path, str]:
    secret, public = base / f"{stem}.sec", base / f"{stem}.pub"
    nix.run("nix-store", ["--generate-binary-cache-key", "publisher.example.org-1",
                          str(secret), str(public)])
    return secret, public.read_text().strip()


def resealed(installer: Path, out: Path, head: Callable[[bytes], bytes] = lambda h: h,
             change: Callable[[str, bytes], bytes] = lambda name, data: data) -> Path:
    """``installer`` written again as a forger would: its preamble through ``head``, each
    zip member's bytes through ``change``, in the same order, then sealed anew."""
    data = installer.read_bytes()
    start = seal.masked(data[:seal.HEAD_SIZE])
    new_head = head(start)
    assert len(new_head) == seal.HEAD_SIZE
    with zipfile.ZipFile(installer) as zf:
        members = [(info.filename, zf.read(info)) for info in zf.infolist()]
    with open(out, "wb") as f:
        f.write(new_head)
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
            for name, member in members:
                zf.writestr(container._zip_info(name), change(name, member))
    seal.seal(str(out))
    out.chmod(0o755)
    return out


def _writes_marker(marker: Path) -> bytes:
    return f"open({str(marker)!r}, 'a').write('module ran\\n')\n".encode()


def _re_signed(secret: Path) -> Callable[[Path, Path], Path]:
    """A forger with a key of their own: changed code, a manifest naming it, signed."""
    key = load_secret_key(secret)

    def make(source: Path, out: Path) -> Path:
        with zipfile.ZipFile(source) as zf:
            manifest_json = zf.read(container.MANIFEST)
            doc = json.loads(manifest_json)
            code = trust.code_members(zf, [c["file"] for c in doc["chunks"]])
        doc["codeSha256"] = trust.code_digest(code)
        new_manifest = jsondoc.dumps(doc)
        signature = sign(key, publisher.message(new_manifest))
        endorsed = publisher.to_json([publisher.Endorsement(key.public_key, signature)])
        return resealed(source, out, change=lambda name, data: (
            new_manifest if name == container.MANIFEST
            else endorsed if name == publisher.MEMBER else data))
    return make


@pytest.fixture(scope="module")
def world(module_dir: Path) -> World:
    built = build_small(module_dir, name="a-long-enough-build-prefix-for-trust")
    secret, public = _keys(built.nix, module_dir, "publisher")
    impostor, _ = _keys(built.nix, module_dir, "impostor")
    genuine = module_dir / "genuine.sh"
    build_installer(read_closure(built.closure_info), genuine,
                    BuildOptions(sign_keys=[load_secret_key(secret)]))
    built.move_build_away()
    marker = module_dir / "MARKER"
    w = World(module_dir, genuine, public, impostor, marker)

    def module(name: str, data: bytes) -> bytes:
        return _writes_marker(marker) + data if name == SUMMARY else data

    def preamble(head: bytes) -> bytes:
        line = f"echo preamble ran >> {marker}; ".encode() + LAST_LINE
        text = head.rstrip(b"\n") + b"\n"
        assert text.endswith(LAST_LINE)
        text = text[:-len(LAST_LINE)] + line
        return text + b"\n" * (seal.HEAD_SIZE - len(text))

    def chunk(name: str, data: bytes) -> bytes:
        if name != "payload/0000.tar.xz":
            return data
        return data[:100] + bytes([data[100] ^ 1]) + data[101:]

    def signature(name: str, data: bytes) -> bytes:
        if name != publisher.MEMBER:
            return data
        doc = json.loads(data)
        sig = doc["signatures"][0]["signature"]
        name_, _, b64 = sig.partition(":")
        flipped = ("B" if b64[10] == "A" else "A")
        doc["signatures"][0]["signature"] = f"{name_}:{b64[:10]}{flipped}{b64[11:]}"
        return jsondoc.dumps(doc)

    w.tampered["module"] = resealed(genuine, module_dir / "t-module.sh", change=module)
    w.tampered["preamble"] = resealed(genuine, module_dir / "t-preamble.sh", head=preamble)
    w.tampered["chunk"] = resealed(genuine, module_dir / "t-chunk.sh", change=chunk)
    w.tampered["signature"] = resealed(genuine, module_dir / "t-signature.sh", change=signature)
    w.tampered["impostor"] = _re_signed(impostor)(w.tampered["module"],
                                                  module_dir / "t-impostor.sh")
    return w


def run(cmd: list[str] | str, env: dict[str, str] | None = None,
        **kw) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                          env={**base, **(env or {})}, check=False, shell=isinstance(cmd, str),
                          timeout=600, **kw)


def one_line(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def nothing_ran(world: World) -> None:
    assert not world.marker.exists(), world.marker.read_text()


@pytest.fixture(autouse=True)
def _no_marker(world: World):
    world.marker.unlink(missing_ok=True)
    yield
    world.marker.unlink(missing_ok=True)


# --- the installer's own check: before any module of the file is imported ---------------

@pytest.mark.slow
@pytest.mark.parametrize("how", ["file", "piped"])
def test_a_changed_module_is_refused_before_it_is_imported(world: World, how: str) -> None:
    """The issue's case: a resealed file whose summary.py writes a file when imported,
    run with the real publisher's key: exit 3 and nothing written."""
    installer = world.tampered["module"]
    for keys in (["--trusted-key", world.public], []):
        cmd = (["sh", str(installer), "--check", *keys] if how == "file" else
               f"cat {installer} | sh -s -- --check {' '.join(keys)}")
        one_line(run(cmd), 3, "code does not match")
        nothing_ran(world)


@pytest.mark.slow
@pytest.mark.parametrize("keys", [
    lambda k: (["--trusted-key", k], {}),
    lambda k: ([f"--trusted={k}"], {}),
    lambda k: ([], {"NIX_PREFIX_TRUSTED_KEYS": k}),
], ids=["option", "abbreviated", "environment"])
def test_code_an_impostor_signed_is_refused_before_it_is_imported(world: World,
                                                                  keys) -> None:
    args, env = keys(world.public)
    proc = run(["sh", str(world.tampered["impostor"]), "-y", "-p",
                str(world.base / "impostor-prefix"), *args], env=env)
    one_line(proc, 3, "none of the keys you trust")
    nothing_ran(world)
    assert not (world.base / "impostor-prefix").exists()


@pytest.mark.slow
def test_a_replaced_preamble_defeats_the_check_inside_the_file(world: World) -> None:
    """What the docs say: the file's own check is its preamble; replace that, and it runs
    (here it only writes the marker, then carries on and is refused)."""
    proc = run(["sh", str(world.tampered["preamble"]), "--check", "--trusted-key",
                world.public])
    assert proc.returncode == 3, proc.stderr
    assert world.marker.read_text() == "preamble ran\n"


# --- the standalone verifier ------------------------------------------------------------

@pytest.fixture(scope="module")
def one_file(world: World) -> Path:
    out = world.base / "nix-prefix-verify"
    proc = run([str(BIN / "nix-prefix"), "verifier", "-o", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert os.stat(out).st_mode & 0o777 == 0o755
    return out


def verifiers(one_file: Path, python: str = "/usr/bin/python3") -> dict[str, list[str]]:
    return {"one-file": [python, str(one_file)],
            "pip": [str(BIN / "nix-prefix-verify")]}


def fake_sh(world: World) -> Path:
    """A PATH whose sh notes that it ran before running /bin/sh: the verifier's
    ``sh COPY`` shows up in the marker."""
    fake = world.base / "fake-bin"
    if not fake.exists():
        fake.mkdir()
        (fake / "sh").write_text(f"#!/bin/sh\necho sh ran >> {world.marker}\nexec /bin/sh \"$@\"\n")
        (fake / "sh").chmod(0o755)
    return fake


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["one-file", "pip"])
def test_the_genuine_file_verifies_from_a_file_and_piped(world: World, one_file: Path,
                                                         kind: str, tmp_path: Path) -> None:
    verify = verifiers(one_file)[kind]
    proc = run([*verify, "--trusted-key", world.public, str(world.genuine)])
    one_line(proc, 0, "OK", "publisher.example.org-1", "(trusted)")
    piped = run(f"{' '.join(verify)} --trusted-key {world.public} < {world.genuine}")
    one_line(piped, 0, "OK", "standard input")
    # --run: checked, then run as sh COPY ARGS; the copy is gone afterwards.
    env = {"TMPDIR": str(tmp_path), "PATH": f"{fake_sh(world)}:/usr/bin:/bin"}
    prefix = world.base / f"i-{kind}"  # short: the closure relocates no further
    ran = run(f"cat {world.genuine} | {' '.join(verify)} --trusted-key {world.public} "
              f"--run -- -y -p {prefix}", env=env)
    assert ran.returncode == 0, ran.stderr
    assert "OK" in ran.stderr and f". {prefix}/etc/profile.d/nix.sh" in ran.stderr
    assert world.marker.read_text() == "sh ran\n"
    assert (prefix / "var/nix/profiles/default/bin").is_dir()
    assert os.listdir(tmp_path) == []  # no copy left behind


@pytest.mark.slow
@pytest.mark.parametrize("tamper", ["preamble", "module", "chunk", "signature", "impostor"])
@pytest.mark.parametrize("kind", ["one-file", "pip"])
def test_a_tampered_file_is_refused_before_any_byte_of_it_runs(
        world: World, one_file: Path, kind: str, tamper: str, tmp_path: Path) -> None:
    verify = verifiers(one_file)[kind]
    installer = world.tampered[tamper]
    says = {"preamble": "sh preamble does not match", "module": "code does not match",
            "chunk": "0000.tar.xz does not match", "signature": "does not match the manifest",
            "impostor": "none of the keys you trust"}[tamper]
    env = {"TMPDIR": str(tmp_path), "PATH": f"{fake_sh(world)}:/usr/bin:/bin"}
    for cmd in ([*verify, "--trusted-key", world.public, str(installer)],
                f"cat {installer} | {' '.join(verify)} --trusted-key {world.public} --run "
                f"-- -y -p {tmp_path / 'nix'}",
                [*verify, "--trusted-key", world.public, "--run", str(installer), "--",
                 "--check"]):
        proc = run(cmd, env=env)
        one_line(proc, 3, says)
        nothing_ran(world)
        assert os.listdir(tmp_path) == []  # no copy, no prefix


@pytest.mark.slow
def test_verifier_usage_errors(world: World, one_file: Path) -> None:
    secret = (world.base / "publisher.sec").read_text().strip()
    for verify in verifiers(one_file).values():
        one_line(run([*verify, str(world.genuine)]), 2, "no trusted key given")
        said = one_line(run([*verify, "--trusted-key", secret, str(world.genuine)]), 2,
                        "this is a secret key (64 bytes)")
        assert secret.partition(":")[2][:12] not in said
        one_line(run([*verify, "--trusted-key", world.public, str(world.base / "absent")]),
                 3, "cannot read")
        one_line(run([*verify, "--trusted-key", world.public, str(world.genuine), "--",
                      "-y"]), 2, "only with --run")


@pytest.mark.slow
def test_ctrl_c_while_reading_leaves_no_copy(world: World, one_file: Path,
                                             tmp_path: Path) -> None:
    """Interrupted half-way through the stream: exit 130, nothing ran, the copy is gone."""
    proc = subprocess.Popen(
        ["/usr/bin/python3", str(one_file), "--trusted-key", world.public, "--run", "--",
         "--check"], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
        env={"PATH": f"{fake_sh(world)}:/usr/bin:/bin", "TMPDIR": str(tmp_path)},
        # As from a terminal, even where this test runs with SIGINT ignored (a
        # background job), which Python would inherit and keep.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(world.genuine.read_bytes()[:200_000])
    proc.stdin.flush()
    deadline = time.monotonic() + 120
    while not os.listdir(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)  # until the private copy exists
    proc.send_signal(signal.SIGINT)
    # Ctrl-C stops curl too (one process group): the pipe ends.  A Python blocked in
    # read() sees the signal there, a read in progress when it came first returns.
    proc.stdin.close()
    assert proc.wait(timeout=120) == 130
    assert b"interrupted" in proc.stderr.read()
    assert os.listdir(tmp_path) == []
    nothing_ran(world)


# --- every CPython ------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("version", CPYTHONS)
def test_the_checks_on_every_python(world: World, one_file: Path, version: str,
                                    tmp_path: Path) -> None:
    python = find_python(version)
    if python is None:
        pytest.skip(f"no CPython {version} here (3.6-3.13: pyenv has none; "
                    "3.14: sh .ci/setup.sh fetches Debian's)")
    verify = [python, str(one_file)]
    env = {"PATH": f"{fake_sh(world)}:/usr/bin:/bin", "TMPDIR": str(tmp_path),
           "NIX_PREFIX_PYTHON": python}
    one_line(run([*verify, "--trusted-key", world.public, str(world.genuine)], env=env), 0, "OK")
    for tamper in ("preamble", "module", "chunk"):
        installer = world.tampered[tamper]
        one_line(run(f"cat {installer} | {' '.join(verify)} --trusted-key {world.public} "
                     f"--run -- --check", env=env), 3)
        nothing_ran(world)
    # The installer's own check runs in this Python too, before its modules are imported.
    one_line(run(["/bin/sh", str(world.tampered["module"]), "--check", "--trusted-key",
                  world.public], env=env), 3, "code does not match")
    nothing_ran(world)
    ran = run(f"cat {world.genuine} | {' '.join(verify)} --trusted-key {world.public} "
              f"--run -- --check", env=env)
    assert ran.returncode == 0 and "is intact" in ran.stderr, ran.stderr
    assert os.listdir(tmp_path) == []
