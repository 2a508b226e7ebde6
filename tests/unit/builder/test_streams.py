"""builder/streams.py's producers: ``FromStart`` makes a producer that can only begin at
the first byte one that starts anywhere, and catches one that makes other bytes."""

from __future__ import annotations

import pytest

from nix_prefix.builder.streams import Diverged, FromStart


class _Full(Exception):
    """The pipe takes nothing more (a park)."""


def taking(limit: int, into: list[bytes]):
    """An emit that takes pieces until ``limit`` bytes are taken, then raises."""
    def emit(data: bytes) -> None:
        if sum(map(len, into)) + len(data) > limit:
            raise _Full()
        into.append(data)
    return emit


def test_a_run_again_resumes_where_the_last_stopped() -> None:
    pieces = [b"abc", b"defgh", b"ij", b"klmnop"]
    produce = FromStart(lambda emit: [emit(p) for p in pieces])
    got: list[bytes] = []
    with pytest.raises(_Full):
        produce(taking(9, got), 0)
    assert b"".join(got) == b"abcdefgh"  # "ij" was refused: not counted as made
    more: list[bytes] = []
    produce(more.append, len(b"".join(got)))
    assert b"".join(got + more) == b"".join(pieces)


@pytest.mark.parametrize("second", [[b"abc", b"dXfgh", b"ij"], [b"abc", b"de"]],
                         ids=["other-bytes", "fewer-bytes"])
def test_other_bytes_on_a_second_run_are_refused(second: list[bytes]) -> None:
    runs = [[b"abc", b"defgh", b"ij"], second]
    produce = FromStart(lambda emit: [emit(p) for p in runs.pop(0)])
    got: list[bytes] = []
    with pytest.raises(_Full):
        produce(taking(8, got), 0)
    with pytest.raises(Diverged):
        produce(lambda data: None, 8)


def test_a_start_it_did_not_reach_is_refused() -> None:
    produce = FromStart(lambda emit: emit(b"abc"))
    with pytest.raises(Diverged):
        produce(lambda data: None, 2)
