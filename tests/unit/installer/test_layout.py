"""The installer room's shape: no import cycle (``if MYPY:`` imports counted), no long
function, no dead code (issue 24)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOM = Path(__file__).resolve().parents[3] / "installer"
LONGEST = 60  # lines of a function, its def and docstring included


def _modules() -> dict[str, Path]:
    """Dotted name (relative to the room, "" for its __init__) -> file."""
    out = {}
    for path in sorted(ROOM.rglob("*.py")):
        parts = list(path.relative_to(ROOM).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The room's modules that module ``name`` imports, anywhere in it (under
    ``if MYPY:`` too: such an import is a cycle mypy sees, and code in the wrong place)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        if node.level - 1 > len(package):
            continue  # another room (..payload from the room's top)
        base = package[:len(package) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
        for alias in node.names:
            sub = (target + "." + alias.name).strip(".")
            found.add(sub if sub in modules else target)
    return {m for m in found if m in modules and m != name and m != ""}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_import_graph_is_read() -> None:
    """The rule below is not vacuous: it sees plain, MYPY-guarded and subpackage imports."""
    graph = _graph()
    assert "nixstore" in graph["deletion"]
    assert "run" in graph["plan"]  # under if MYPY:
    assert "plan" in graph["steps.make_dirs"]
    assert "steps.make_dirs" in graph["steps"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_installer() -> None:
    assert _cycles(_graph()) == []


def test_no_function_over_60_lines_in_the_installer() -> None:
    long = []
    for path in sorted(ROOM.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > LONGEST:
                    long.append(f"{path.relative_to(ROOM)}:{node.lineno} {node.name} {lines}")
    assert long == []


# Named once and used by no code: kept on purpose.  EXIT_CORRUPT is the installer's
# row of the exit-code table (payload's CorruptInstaller exits with it); the Sink
# methods are called through payload/tree.py's Sink.
NOT_DEAD = {"EXIT_CORRUPT", "begin_directory", "end_regular", "__all__"}


def test_no_dead_code_in_the_installer() -> None:
    """Every function, class, method and constant of the room is named somewhere else
    in the room (a name only its definition mentions is code nothing runs)."""
    texts = {p: p.read_text() for p in sorted(ROOM.rglob("*.py"))}
    everything = "\n".join(texts.values())
    dead = []
    for path, text in texts.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign) and node.col_offset == 0:
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            else:
                continue
            for name in names:
                if name.startswith("__") or name in NOT_DEAD:
                    continue
                if len(re.findall(rf"\b{re.escape(name)}\b", everything)) < 2:
                    dead.append(f"{path.relative_to(ROOM)}: {name}")
    assert dead == []


def test_every_module_of_the_room_is_embedded_in_an_installer() -> None:
    """Subpackages (steps/) included: the stub imports them from the installer's zip."""
    from nix_prefix.payload.container import embedded_code

    embedded = {name for name, _ in embedded_code()}
    on_disk = {"nix_prefix/installer/" + p.relative_to(ROOM).as_posix()
               for p in ROOM.rglob("*.py")}
    assert on_disk - embedded == set()
    assert "nix_prefix/installer/steps/make_dirs.py" in embedded
