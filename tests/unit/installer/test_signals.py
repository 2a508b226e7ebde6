"""installer/signals.py: how Ctrl-C, SIGTERM and SIGHUP stop an install."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from nix_prefix.installer import signals


@pytest.fixture(autouse=True)
def restored() -> Iterator[None]:
    old = [(s, signal.getsignal(s)) for s in signals.STOP_SIGNALS]
    yield
    for s, handler in old:
        signal.signal(s, handler)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_each_stops_like_ctrl_c(signum: int) -> None:
    signals.handle_stops()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signum)


def test_held_while_reverting() -> None:
    signals.handle_stops()
    with signals.signals_held():
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: nothing raised
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_deferred_to_the_end_of_the_block() -> None:
    signals.handle_stops()
    done = []
    with pytest.raises(KeyboardInterrupt):
        with signals.signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("the rest of the block ran")
    assert done == ["the rest of the block ran"]


def test_ignored_once_the_outcome_is_decided() -> None:
    signals.handle_stops()
    signals.outcome_decided()
    os.kill(os.getpid(), signal.SIGINT)
    assert all(signal.getsignal(s) is signal.SIG_IGN for s in signals.STOP_SIGNALS)
