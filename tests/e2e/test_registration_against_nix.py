"""payload.registration against real Nix registrations (docs/nix-formats.md sections 1-2).

A small closure is built once per module with the machine's Nix; its
registration comes in both shapes Nix tooling produces: ``nix-store --dump-db``
(bare hex hashes, derivers filled) and nixpkgs closureInfo (``sha256:<nix32>``,
empty deriver lines), the latter crafted from ``nix-store -q``.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from nix_prefix.builder import localnix
from nix_prefix.builder.localnix import LocalNix
from nix_prefix.payload import hashes, registration
from nix_prefix.payload.registration import RegistrationError, ValidPathInfo

EXPR = r"""
let
  sh = attrs: builtins.derivation ({
    system = builtins.currentSystem;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
  } // attrs);
  leaf = sh { name = "leaf"; args = [ "-c" "echo leaf > $out" ]; };
  dep = sh { name = "dep"; args = [ "-c" "mkdir $out; echo ${leaf} > $out/leaf" ]; };
  top = sh {
    name = "top";
    args = [ "-c" ("mkdir $out; echo ${dep} > $out/dep; echo $out > $out/self; "
                   + "ln -s ${leaf} $out/l") ];
  };
in top
"""


@dataclass
class Closure:
    nix: LocalNix
    root: str
    paths: list[str]  # sorted, as closureInfo's store-paths
    info_dir: Path  # written by LocalNix.write_closure_info (registration = --dump-db)
    closure_info: str  # closureInfo-style registration crafted from nix-store -q

    def q(self, flag: str, path: str) -> list[str]:
        return self.nix.run("nix-store", ["-q", flag, path]).stdout.decode().split()


def craft_closure_info(nix: LocalNix, paths: list[str]) -> str:
    """What nixpkgs' closureInfo jq program prints (doc section 1), from nix-store -q."""
    out = []
    for path in paths:
        (nar_hash,) = nix.run("nix-store", ["-q", "--hash", path]).stdout.decode().split()
        (nar_size,) = nix.run("nix-store", ["-q", "--size", path]).stdout.decode().split()
        refs = sorted(nix.run("nix-store", ["-q", "--references", path]).stdout.decode().split())
        out += [path, nar_hash, nar_size, "", str(len(refs)), *refs]
    return "".join(line + "\n" for line in out)


@pytest.fixture(scope="module")
def closure(tmp_path_factory: pytest.TempPathFactory) -> Closure:
    base = tmp_path_factory.mktemp("reg")
    nix = LocalNix(base / "p")
    (root,) = nix.build_expr(EXPR)
    info = nix.write_closure_info([root], base / "closure-info")
    paths = (info / "store-paths").read_text().split()
    return Closure(nix, root, paths, info, craft_closure_info(nix, paths))


def fresh_state_env(closure: Closure, tmp_path: Path) -> dict[str, str]:
    """The closure's store dir with a new, empty DB (as an installer's first load-db)."""
    env = closure.nix.env()
    env["NIX_STATE_DIR"] = str(tmp_path / "state")
    env["NIX_LOG_DIR"] = str(tmp_path / "log")
    os.makedirs(env["NIX_STATE_DIR"])
    return env


def nix_store(env: dict[str, str], closure: Closure, *args: str,
              input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(closure.nix.bin_dir / "nix-store"), *args], input=input,
                          env=env, capture_output=True, text=True, check=False)


# -- parsing what Nix produces ------------------------------------------------------------------

def test_closure_shape(closure: Closure) -> None:
    """The sample really has references, a self-reference and derivers."""
    assert len(closure.paths) == 3
    assert closure.root in closure.q("--references", closure.root)
    assert closure.q("--deriver", closure.root)[0].endswith("-top.drv")


def test_parse_dump_db(closure: Closure) -> None:
    text = (closure.info_dir / "registration").read_text()
    infos = registration.parse(text)
    assert sorted(i.path for i in infos) == closure.paths
    for info in infos:
        (db_hash,) = closure.q("--hash", info.path)
        assert info.nar_hash == db_hash  # both sha256:<nix32>
        assert info.nar_size == int(closure.q("--size", info.path)[0])
        assert info.deriver == closure.q("--deriver", info.path)[0]
        assert sorted(info.references) == sorted(closure.q("--references", info.path))
    # --dump-db prints bare hex (doc section 2); parse normalises it.
    hex_line = text.split("\n")[1]
    assert len(hex_line) == 64 and ":" not in hex_line
    assert hashes.normalise_sha256(hex_line) == infos[0].nar_hash


def test_parse_closure_info(closure: Closure) -> None:
    infos = registration.parse(closure.closure_info)
    assert [i.path for i in infos] == closure.paths
    assert all(i.deriver == "" for i in infos)
    assert all(i.nar_hash.startswith("sha256:") and len(i.nar_hash) == 59 for i in infos)
    total = int((closure.info_dir / "total-nar-size").read_text())
    assert sum(i.nar_size for i in infos) == total
    dump_db = {i.path: i for i in registration.parse(
        (closure.info_dir / "registration").read_text())}
    for info in infos:
        other = dump_db[info.path]
        assert (info.nar_hash, info.nar_size) == (other.nar_hash, other.nar_size)
        assert sorted(info.references) == sorted(other.references)


def test_format_reproduces_closure_info_byte_for_byte(closure: Closure) -> None:
    infos = registration.parse(closure.closure_info)
    assert registration.format(infos) == closure.closure_info


def test_format_parse_round_trip(closure: Closure) -> None:
    infos = registration.parse((closure.info_dir / "registration").read_text())
    again = registration.parse(registration.format(infos))
    assert again == infos
    assert registration.format(again) == registration.format(infos)


def test_closure_info_in_batches_is_the_same(closure: Closure, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # Big closures go to Nix a few thousand paths per command line (ARG_MAX).
    assert len(closure.paths) > 2
    monkeypatch.setattr(localnix, "ARGS_PER_CALL", 2)
    again = closure.nix.write_closure_info([closure.root], tmp_path / "info")
    for name in ("store-paths", "registration", "total-nar-size"):
        assert (again / name).read_bytes() == (closure.info_dir / name).read_bytes(), name
    assert closure.nix.closure(closure.paths) == closure.paths


# -- what format() writes, nix-store --load-db reads ------------------------------------------

@pytest.mark.parametrize("source", ["dump-db", "closure-info"])
def test_format_output_loads_into_a_fresh_store(closure: Closure, tmp_path: Path,
                                                source: str) -> None:
    text = ((closure.info_dir / "registration").read_text() if source == "dump-db"
            else closure.closure_info)
    infos = registration.parse(text)
    env = fresh_state_env(closure, tmp_path)
    assert nix_store(env, closure, "--check-validity", closure.root).returncode != 0
    proc = nix_store(env, closure, "--load-db", input=registration.format(infos))
    assert proc.returncode == 0, proc.stderr
    for info in infos:
        refs = nix_store(env, closure, "-q", "--references", info.path)
        assert refs.returncode == 0, refs.stderr
        assert sorted(refs.stdout.split()) == sorted(info.references)
        assert nix_store(env, closure, "-q", "--hash", info.path).stdout.split() == \
            closure.q("--hash", info.path)
        assert nix_store(env, closure, "-q", "--size", info.path).stdout.split() == \
            [str(info.nar_size)]
        deriver = nix_store(env, closure, "-q", "--deriver", info.path).stdout.split()
        assert deriver == [info.deriver or "unknown-deriver"]
    closure_paths = nix_store(env, closure, "-qR", closure.root).stdout.split()
    assert sorted(closure_paths) == closure.paths
    verify = nix_store(env, closure, "--verify", "--check-contents")
    assert verify.returncode == 0 and "modified" not in verify.stderr, verify.stderr


def test_format_writes_sha256_nix32_and_loads_hand_made_infos(closure: Closure,
                                                              tmp_path: Path) -> None:
    """ValidPathInfo built by hand (as the builder does) loads just the same."""
    infos = []
    for path in closure.paths:
        (db_hash,) = closure.q("--hash", path)
        infos.append(ValidPathInfo(path, db_hash, int(closure.q("--size", path)[0]), "",
                                   tuple(sorted(closure.q("--references", path)))))
    text = registration.format(infos)
    assert text == closure.closure_info
    env = fresh_state_env(closure, tmp_path)
    proc = nix_store(env, closure, "--load-db", input=text)
    assert proc.returncode == 0, proc.stderr
    dumped = nix_store(env, closure, "--dump-db", *closure.paths)
    assert registration.parse(dumped.stdout) == infos


# -- errors and their line numbers --------------------------------------------------------------

def lines_of(closure: Closure) -> list[str]:
    """The closureInfo registration as lines (without the final newline)."""
    lines = closure.closure_info.split("\n")
    assert lines.pop() == ""
    return lines


def join(lines: list[str], newline: bool = True) -> str:
    return "\n".join(lines) + ("\n" if newline else "")


def record_starts(lines: list[str]) -> list[int]:
    """0-based index of each record's path line."""
    starts, i = [], 0
    while i < len(lines):
        starts.append(i)
        i += 5 + int(lines[i + 4])
    return starts


def broken_cases(closure: Closure) -> dict[str, tuple[str, int]]:
    """name -> (registration text, 1-based line the error must name)."""
    lines = lines_of(closure)
    starts = record_starts(lines)
    with_refs = next(s for s in starts if int(lines[s + 4]) >= 2)
    second = starts[1]

    def sub(i: int, value: str) -> str:
        changed = list(lines)
        changed[i] = value
        return join(changed)

    store_dir = str(closure.nix.store_dir)
    base = lines[second].rpartition("/")[2]
    cases = {
        "truncated in a record": (join(lines[:second + 2]), second + 3),
        "missing final newline": (join(lines, newline=False), len(lines)),
        "bad hash": (sub(second + 1, "sha256:xyz"), second + 2),
        "bad hash character": (sub(second + 1, lines[second + 1][:-1] + "e"), second + 2),
        "non-numeric narSize": (sub(second + 2, "12a"), second + 3),
        "negative narSize": (sub(second + 2, "-5"), second + 3),
        "non-numeric reference count": (sub(with_refs + 4, "two"), with_refs + 5),
        "negative reference count": (sub(with_refs + 4, "-1"), with_refs + 5),
        "relative path": (sub(second, lines[second].lstrip("/")), second + 1),
        "relative reference": (sub(with_refs + 5, "store/x"), with_refs + 6),
        "bad name character in path": (sub(second, lines[second] + "@x"), second + 1),
        "bad name character in reference": (sub(with_refs + 6, lines[with_refs + 6] + " x"),
                                            with_refs + 7),
        "bad name character in deriver": (sub(second + 3, f"{store_dir}/{base}!.drv"),
                                          second + 4),
        "empty name": (sub(second, lines[second].rpartition("-")[0] + "-"), second + 1),
        "empty path line": (sub(second, ""), second + 1),
        "CRLF line ends": (closure.closure_info.replace("\n", "\r\n"), 1),
    }
    # A count larger than the references that follow runs off the end of the file.
    last = starts[-1]
    too_many = list(lines[:last + 4]) + [str(int(lines[last + 4]) + 3)] + lines[last + 5:]
    cases["reference count too large"] = (join(too_many), len(too_many) + 1)
    return cases


CASES = ["truncated in a record", "missing final newline", "bad hash", "bad hash character",
         "non-numeric narSize", "negative narSize", "non-numeric reference count",
         "negative reference count", "reference count too large", "relative path",
         "relative reference", "bad name character in path",
         "bad name character in reference", "bad name character in deriver", "empty name",
         "empty path line", "CRLF line ends"]


@pytest.mark.parametrize("case", CASES)
def test_error_line_numbers(closure: Closure, tmp_path: Path, case: str) -> None:
    text, line = broken_cases(closure)[case]
    with pytest.raises(RegistrationError) as caught:
        registration.parse(text)
    assert caught.value.line == line
    assert str(caught.value).startswith(f"line {line}: ")
    # Real Nix refuses the same text.
    env = fresh_state_env(closure, tmp_path)
    proc = nix_store(env, closure, "--load-db", input=text)
    assert proc.returncode != 0, f"nix-store --load-db accepted the {case} case"


def test_truncated_at_every_line(closure: Closure) -> None:
    """Cutting the file after any line but a record's last is an error at the next line."""
    lines = lines_of(closure)
    ends = {s - 1 for s in record_starts(lines)[1:]} | {len(lines) - 1}
    for keep in range(1, len(lines)):
        text = join(lines[:keep])
        if keep - 1 in ends:
            assert len(registration.parse(text)) == sum(1 for e in ends if e < keep)
            continue
        with pytest.raises(RegistrationError) as caught:
            registration.parse(text)
        assert caught.value.line == keep + 1, keep


def test_nar_size_beyond_uint64(closure: Closure, tmp_path: Path) -> None:
    lines = lines_of(closure)
    second = record_starts(lines)[1]
    for size, ok in (("18446744073709551615", True), ("18446744073709551616", False),
                     ("99999999999999999999", False)):
        changed = list(lines)
        changed[second + 2] = size
        text = join(changed)
        env = fresh_state_env(closure, tmp_path / size)
        assert (nix_store(env, closure, "--load-db", input=text).returncode == 0) == ok
        if ok:
            assert registration.parse(text)[1].nar_size == int(size)
        else:
            with pytest.raises(RegistrationError) as caught:
                registration.parse(text)
            assert caught.value.line == second + 3

