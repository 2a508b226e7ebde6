"""builder/errors.py: the builder's one exception-to-exit-code table, and BuildError
as the one-line error both rooms share."""

from __future__ import annotations

import signal

import pytest

from nix_prefix.builder.errors import BuildError, Terminated, UsageError, internal_error, outcome
from nix_prefix.payload.codecs import CodecError
from nix_prefix.payload.container import CorruptInstaller, UntrustedInstaller
from nix_prefix.payload.errors import OneLineError
from nix_prefix.payload.trust import BadKey


def test_build_error_is_the_shared_one_line_error() -> None:
    error = BuildError("cannot write x", "choose another -o")
    assert isinstance(error, OneLineError)
    assert str(error) == "cannot write x; choose another -o"  # as the installer says it
    assert str(BuildError("no hint")) == "no hint"


@pytest.mark.parametrize("error, code", [
    (BuildError("failed", "do this"), 1),
    (UsageError("-A and --argstr go with -f FILE.nix"), 2),
    (BadKey("--trusted-key: not NAME:BASE64"), 2),  # bad usage, from payload/
    (CorruptInstaller("x.sh is damaged"), 3),
    (UntrustedInstaller("x.sh is not signed by k"), 3),
    (CodecError("unknown compression 'lz4'"), 1),
    (KeyboardInterrupt(), 130),
    (Terminated(signal.SIGTERM), 143),
    (Terminated(signal.SIGHUP), 129),
])
def test_every_foreseen_error_has_one_line_and_its_exit_code(error: BaseException,
                                                             code: int) -> None:
    said = outcome(error)
    assert said is not None and said[1] == code
    assert "\n" not in said[0] and said[0]


def test_a_signal_and_ctrl_c_say_what_stopped_the_run() -> None:
    assert outcome(Terminated(signal.SIGTERM)) == (
        "stopped by SIGTERM; nothing half-written is left", 143)
    assert outcome(KeyboardInterrupt()) == ("interrupted; nothing half-written is left", 130)


def test_a_bug_has_no_row_and_is_called_one() -> None:
    error = ValueError("oops")
    assert outcome(error) is None
    line = internal_error(error)
    assert line.startswith("internal error: ValueError: oops") and "--debug" in line
