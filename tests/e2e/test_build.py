"""The builder: closureInfo in, one deterministic installer file out, bad input refused."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nix_prefix.builder.cli import app
from nix_prefix.payload import hashes, nix32

from tests.support import build_small, tmpfs

runner = CliRunner()


def nix_prefix(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def small(world_dir: Path):
    return build_small(world_dir)


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code != 0
    out = result.output
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    assert lines[0].startswith("nix-prefix: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def assert_nothing_written(directory: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in os.listdir(directory) if ".tmp-" in p]


def test_build_from_closure_info_and_dump_db(small, world_dir: Path) -> None:
    out = world_dir / "a.sh"
    result = nix_prefix("build", small.closure_info, "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"#!/bin/sh\n")
    assert os.access(out, os.X_OK)
    # A plain `nix-store --dump-db` file is accepted as well.
    dump = world_dir / "dump-db"
    dump.write_bytes(small.nix.dump_db(small.nix.closure(small.roots)))
    out2 = world_dir / "b.sh"
    result = nix_prefix("build", dump, "-o", out2, "--quiet")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("compression", ["xz", "zstd"])
def test_two_builds_are_byte_identical(small, world_dir: Path, compression: str) -> None:
    outs = []
    for name in ("one.sh", "two.sh"):
        out = world_dir / name
        result = nix_prefix("build", small.closure_info, "-o", out, "--quiet",
                            "--compression", compression)
        assert result.exit_code == 0, result.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert small.installer.read_bytes() != outs[0] or compression == "xz"


def test_store_root_reads_a_moved_store(small, world_dir: Path) -> None:
    moved = small.move_build_away()
    out = world_dir / "moved.sh"
    result = nix_prefix("build", small.closure_info, "-o", out, "--quiet")
    assert_one_line_error(result, "is missing from", "--store-root")
    assert_nothing_written(world_dir, out)
    result = nix_prefix("build", small.closure_info, "-o", out, "--quiet",
                        "--store-root", moved / "store")
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == small.installer.read_bytes()


def _edit_registration(small, world_dir: Path, edit) -> Path:
    bad = world_dir / "bad-closure-info"
    shutil.copytree(small.closure_info, bad)
    reg = bad / "registration"
    reg.write_text(edit(reg.read_text()))
    return bad


def _first_hash_line(text: str) -> str:
    return text.splitlines()[1]


BAD_REGISTRATIONS = {
    "bad hash": (lambda t: t.replace(_first_hash_line(t), "sha256:not-a-hash", 1),
                 ["registration:2:", "not a sha256 hash"]),
    "bad size": (lambda t: "\n".join(
        line if i != 2 else "12x" for i, line in enumerate(t.split("\n"))),
        ["registration:3:", "narSize"]),
    "truncated": (lambda t: "\n".join(t.split("\n")[:-3]) + "\n",
                  ["registration:", "truncated"]),
    "no final newline": (lambda t: t.rstrip("\n"), ["registration:", "newline"]),
    "relative path": (lambda t: t.replace("/", "", 1), ["registration:1:", "not an absolute"]),
}


@pytest.mark.parametrize("case", sorted(BAD_REGISTRATIONS))
def test_malformed_registration_names_file_and_line(small, world_dir: Path, case: str) -> None:
    edit, needles = BAD_REGISTRATIONS[case]
    bad = _edit_registration(small, world_dir, edit)
    out = world_dir / "out.sh"
    result = nix_prefix("build", bad, "-o", out)
    assert_one_line_error(result, *needles)
    assert_nothing_written(world_dir, out)


def _records(text: str) -> list[list[str]]:
    lines = text.split("\n")[:-1]
    records, i = [], 0
    while i < len(lines):
        n = int(lines[i + 4])
        records.append(lines[i:i + 5 + n])
        i += 5 + n
    return records


def _join(records: list[list[str]]) -> str:
    return "".join(line + "\n" for r in records for line in r)


def test_reference_outside_the_closure(small, world_dir: Path) -> None:
    def drop_referenced(text: str) -> str:
        records = _records(text)
        referenced = {ref for r in records for ref in r[5:] if ref != r[0]}
        return _join([r for r in records if r[0] not in referenced])

    bad = _edit_registration(small, world_dir, drop_referenced)
    (bad / "store-paths").unlink()
    (bad / "total-nar-size").unlink()
    result = nix_prefix("build", bad, "-o", world_dir / "out.sh")
    assert_one_line_error(result, "references", "not in the closure")


def test_mixed_store_dirs(small, world_dir: Path) -> None:
    def other_store(text: str) -> str:
        records = _records(text)
        leaf = next(r for r in records if r[4] == "0")
        leaf[0] = "/other/store/" + leaf[0].rpartition("/")[2]
        return _join(records)

    bad = _edit_registration(small, world_dir, other_store)
    (bad / "store-paths").unlink()
    (bad / "total-nar-size").unlink()
    result = nix_prefix("build", bad, "-o", world_dir / "out.sh")
    assert_one_line_error(result, "mixes store dirs")


def test_total_nar_size_mismatch(small, world_dir: Path) -> None:
    bad = world_dir / "bad-closure-info"
    shutil.copytree(small.closure_info, bad)
    total = int((bad / "total-nar-size").read_text())
    (bad / "total-nar-size").write_text(f"{total + 8}\n")
    result = nix_prefix("build", bad, "-o", world_dir / "out.sh")
    assert_one_line_error(result, "total-nar-size", str(total + 8), str(total))


def test_store_paths_and_registration_disagree(small, world_dir: Path) -> None:
    bad = world_dir / "bad-closure-info"
    shutil.copytree(small.closure_info, bad)
    lines = (bad / "store-paths").read_text().splitlines()
    (bad / "store-paths").write_text("\n".join(lines[1:]) + "\n")
    result = nix_prefix("build", bad, "-o", world_dir / "out.sh")
    assert_one_line_error(result, "store-paths", "registered but not listed")


def test_missing_store_path(small, world_dir: Path) -> None:
    def add_ghost(text: str) -> str:
        records = _records(text)
        store_dir = records[0][0].rpartition("/")[0]
        ghost = [f"{store_dir}/{'0' * 32}-ghost", "sha256:" + nix32.encode(b"\0" * 32), "8",
                 "", "0"]
        return _join(records + [ghost])

    bad = _edit_registration(small, world_dir, add_ghost)
    (bad / "store-paths").unlink()
    (bad / "total-nar-size").unlink()
    out = world_dir / "out.sh"
    result = nix_prefix("build", bad, "-o", out)
    assert_one_line_error(result, "0000-ghost", "is missing")
    assert_nothing_written(world_dir, out)


def test_hash_mismatch_is_caught_unless_no_verify(small, world_dir: Path) -> None:
    def wrong_hash(text: str) -> str:
        records = _records(text)
        records[0][1] = hashes.format_sha256(b"\x01" * 32)
        return _join(records)

    bad = _edit_registration(small, world_dir, wrong_hash)
    out = world_dir / "out.sh"
    result = nix_prefix("build", bad, "-o", out, "--quiet")
    assert_one_line_error(result, "does not match its registration", "--no-verify")
    assert_nothing_written(world_dir, out)
    result = nix_prefix("build", bad, "-o", out, "--quiet", "--no-verify")
    assert result.exit_code == 0, result.output
    assert out.exists()


def test_unknown_input_and_codec(small, world_dir: Path) -> None:
    result = nix_prefix("build", world_dir / "nope", "-o", world_dir / "out.sh")
    assert_one_line_error(result, "does not exist")
    result = nix_prefix("build", small.closure_info, "-o", world_dir / "o.sh",
                        "--compression", "gzip")
    assert_one_line_error(result, "unknown compression")
    assert result.exit_code == 2


def test_output_that_is_not_a_regular_file_is_refused(small, world_dir: Path) -> None:
    """The atomic rename replaces only a regular file: never a device, dir, FIFO or link."""
    import stat

    fifo = world_dir / "fifo"
    os.mkfifo(fifo)
    (world_dir / "dir").mkdir()
    (world_dir / "link").symlink_to(world_dir / "elsewhere.sh")
    targets = [Path("/dev/null"), fifo, world_dir / "dir", world_dir / "link"]
    before = {t: os.lstat(t) for t in targets}
    dev_before = sorted(os.listdir("/dev"))
    for target, kind in zip(targets, ["a device", "not a regular file", "a directory",
                                      "a symlink"], strict=True):
        result = nix_prefix("build", small.closure_info, "-o", target, "--quiet")
        assert_one_line_error(result, str(target), kind, "regular file")
        st = os.lstat(target)
        assert (stat.S_IFMT(st.st_mode), st.st_ino, st.st_rdev) == (
            stat.S_IFMT(before[target].st_mode), before[target].st_ino,
            before[target].st_rdev), target
    assert sorted(os.listdir("/dev")) == dev_before
    assert not (world_dir / "elsewhere.sh").exists()
    assert not [p for p in os.listdir(world_dir) if ".tmp-" in p]


def test_an_output_dir_that_is_missing_or_unwritable_is_named_at_once(small,
                                                                      world_dir: Path) -> None:
    result = nix_prefix("build", small.closure_info, "-o", world_dir / "nodir" / "out.sh",
                        "--quiet")
    assert_one_line_error(result, "there is no directory", str(world_dir / "nodir"))
    assert not (world_dir / "nodir").exists()
    if os.geteuid() != 0:  # root may write anywhere; as a user, a 0555 dir is refused
        ro = world_dir / "ro"
        ro.mkdir(mode=0o555)
        result = nix_prefix("build", small.closure_info, "-o", ro / "out.sh", "--quiet")
        assert_one_line_error(result, "not writable")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to mount a small tmpfs)")
def test_a_full_disk_while_writing_is_one_line_and_leaves_nothing(small,
                                                                  world_dir: Path) -> None:
    full = world_dir / "full"
    full.mkdir()
    with tmpfs(full, "size=256k"):
        result = nix_prefix("build", small.closure_info, "-o", full / "out.sh", "--quiet")
        assert_one_line_error(result, "cannot write", "No space left", "free some space")
        assert os.listdir(full) == []  # no temporary file left
