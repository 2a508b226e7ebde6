"""The docs' tested shell blocks run, page after page, as a reader following them would
(with the machine's Nix): what ``sh test`` means, and how the pages are found, is in
tests/rules/test_docs.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.rules.test_docs import DOCS, PENDING, pages_in_order, runnable_blocks


@pytest.mark.slow
def test_the_docs_commands_run(world_dir: Path) -> None:
    home = world_dir / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NIX_", "XDG_")) and k not in ("PATH", "HOME")}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin",
               NIX_PREFIX_LEVEL="0", NO_COLOR="1")
    ran = 0
    for name in pages_in_order():
        if name in PENDING and not (DOCS / name).exists():
            continue
        page_blocks = runnable_blocks(DOCS / name)
        if not page_blocks:
            continue
        script = "set -e\n" + "".join(
            f"echo '>>> docs/{name}:{line}' >&2\n{code}\n" for line, code in page_blocks)
        proc = subprocess.run(["sh", "-c", script], cwd=home, env=env, capture_output=True,
                              text=True, timeout=900, check=False)
        assert proc.returncode == 0, (
            f"a tested block of docs/{name} failed (exit {proc.returncode}); the last "
            f"'>>>' line names it:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
        ran += len(page_blocks)
    assert ran >= 10
