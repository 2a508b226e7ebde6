"""payload/machine.py: what both sides ask of the machine."""

from __future__ import annotations

import os
import subprocess

from nix_prefix.payload.machine import human_size, process_alive


def test_process_alive_tells_a_running_from_a_finished_process() -> None:
    assert process_alive(os.getpid())
    assert process_alive(1)  # init: another user's (or ours as root), alive either way
    done = subprocess.Popen(["true"])
    done.wait()  # reaped: its pid names no process now
    assert not process_alive(done.pid)


def test_human_size() -> None:
    assert human_size(512) == "512 B"
    assert human_size(1536) == "1.5 KiB"
