"""Rules checked by tools: Python 3.6+ and stdlib-only for the target side, ruff clean."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

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


# The three rooms and the rooms each may import (docs/design.md): builder -> payload <- installer.
ROOMS = {"builder": {"payload"}, "payload": set(), "installer": {"payload"}}


def _imported_rooms(src: Path, room: str) -> list[tuple[int, str]]:
    """(line, room) of every import in ``src`` (a module of ``room``) that reaches a room."""
    found = []
    for node in ast.walk(ast.parse(src.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names = [node.module or ""]
            elif node.level == 1:
                names = [f"nix_prefix.{room}.{node.module or ''}"]
            else:  # from .. import x / from ..x import y
                base = (node.module or "").split(".")[0]
                names = ([f"nix_prefix.{base}"] if base
                         else [f"nix_prefix.{a.name}" for a in node.names])
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "nix_prefix" and len(parts) > 1 and parts[1] in ROOMS:
                found.append((node.lineno, parts[1]))
    return found


def test_imports_flow_builder_to_payload_from_installer() -> None:
    """builder -> payload <- installer: the builder never imports the installer, the
    installer never the builder, and payload neither (ast, so no import escapes)."""
    offenders = []
    for room, allowed in ROOMS.items():
        for src in sorted((REPO / room).glob("*.py")):
            for line, other in _imported_rooms(src, room):
                if other != room and other not in allowed:
                    offenders.append(f"{src.relative_to(REPO)}:{line}: imports {other}")
    assert offenders == []


def test_the_import_rule_sees_relative_imports(tmp_path: Path) -> None:
    """The rule above is not vacuous: each import form that reaches a room is seen."""
    src = tmp_path / "m.py"
    src.write_text("from .. import installer\nfrom ..installer.main import main\n"
                   "import nix_prefix.builder.cli\nfrom nix_prefix.payload import nar\n"
                   "from . import pack\nimport os\n")
    assert _imported_rooms(src, "builder") == [
        (1, "installer"), (2, "installer"), (3, "builder"), (4, "payload"), (5, "builder")]


def test_mypy_finds_no_error(tmp_path: Path) -> None:
    """mypy checks builder/ (hints) and payload/ and installer/ (type comments) as the
    package nix_prefix they are installed as (pyproject.toml [tool.mypy] says how)."""
    package = tmp_path / "nix_prefix"
    package.mkdir()
    for room in ROOMS:
        (package / room).symlink_to(REPO / room)
    proc = subprocess.run(
        [_tool("mypy"), "--config-file", str(REPO / "pyproject.toml"), "--no-incremental",
         *(arg for room in ROOMS for arg in ("-p", f"nix_prefix.{room}"))],
        cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no issues found in" in proc.stdout


def test_design_md_has_one_line_per_module() -> None:
    """docs/design.md matches the tree: each room's table lists exactly its modules."""
    text = (REPO / "docs" / "design.md").read_text()
    for room in ROOMS:
        section = text.split(f"## `{room}/`", 1)[1].split("\n## ", 1)[0]
        listed = re.findall(r"^\| `(\w+\.py)` \|", section, re.M)
        on_disk = {p.name for p in (REPO / room).glob("*.py")} - {"__init__.py"}
        assert sorted(listed) == sorted(on_disk), room
