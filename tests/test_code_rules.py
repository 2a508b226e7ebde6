"""Rules checked by tools: Python 3.6+ and stdlib-only for the target side, ruff clean."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

TARGET_SIDE = [REPO / "installer", REPO / "payload"]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in {BIN}: run .ci/setup.sh")
    return str(path)


def test_target_side_runs_on_python_3_6() -> None:
    """vermin proves no syntax, module or function newer than 3.6 is used."""
    proc = subprocess.run(
        [_tool("vermin"), "-t=3.6-", "--no-tips", "--violations", "--eval-annotations",
         *map(str, TARGET_SIDE)],
        capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Is this import inside a try whose handlers catch ImportError?"""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                names = ast.unparse(handler.type) if handler.type else ""
                if "ImportError" in names or "ModuleNotFoundError" in names:
                    return True
    return False


def test_target_side_imports_only_the_standard_library() -> None:
    """Every absolute import is stdlib, except optional ones guarded by ImportError."""
    stdlib = set(sys.stdlib_module_names)
    offenders = []
    for folder in TARGET_SIDE:
        for src in sorted(folder.glob("*.py")):
            tree = ast.parse(src.read_text())
            parents = {child: node for node in ast.walk(tree)
                       for child in ast.iter_child_nodes(node)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    modules = [node.module or ""]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top not in stdlib and not _guarded(node, parents):
                        offenders.append(f"{src.relative_to(REPO)}:{node.lineno}: {module}")
    assert offenders == []


def test_optional_zstd_decoders_are_guarded() -> None:
    """The check above is not vacuous: codecs.py does import non-stdlib modules."""
    text = (REPO / "payload" / "codecs.py").read_text()
    assert "zstandard" in text


def test_ruff_clean() -> None:
    proc = subprocess.run([_tool("ruff"), "check", "builder", "payload", "installer", "tests"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
