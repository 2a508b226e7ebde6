"""Rules of the house checked by tools and by ``ast``: Python 3.6+ and stdlib-only for
the target side, imports flowing builder -> payload <- installer and never round in
a circle, ruff and mypy clean, no function over 60 lines, no dead code shipped,
docs/design.md's tables and glossary matching the tree, and issue 24's vocabulary."""

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

# Issue 24's rules of shape: no import cycle inside a room, no function over 60
# lines, no dead code shipped; and its vocabulary: docs/design.md's glossary naming
# code that exists, the docs the code names existing, "retarget" in the code.  Every
# offender is reported: there is no list of exceptions.


def _sources(folder: Path) -> list[Path]:
    """Every module of a room, its packages' modules included (installer/steps/...)."""
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


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
        for src in _sources(folder):
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


def _module_name(src: Path, root: Path = REPO) -> tuple[str, bool]:
    """(dotted name under nix_prefix, is it a package) of a room's file:
    installer/steps/place.py -> ("installer.steps.place", False)."""
    parts = list(src.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _imports(src: Path, module: str, package: bool = False) -> list[tuple[int, str]]:
    """(line, dotted name under nix_prefix) of every import of the project in ``src``,
    the module ``module``: absolute and relative, at the top, under ``if MYPY:`` or
    ``if TYPE_CHECKING:`` and inside functions alike (ast.walk sees them all).  A
    ``from X import a`` gives ``X.a``: a module if there is one, else a name in X."""
    here = module.split(".") if package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(src.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            elif node.level - 1 > len(here):
                continue  # above nix_prefix: not the project's
            else:
                base = ".".join(["nix_prefix", *here[:len(here) - (node.level - 1)],
                                 *([node.module] if node.module else [])])
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found.extend((node.lineno, name.split(".", 1)[1]) for name in names
                     if name.startswith("nix_prefix.") and name.split(".")[1] in ROOMS)
    return found


def _imported_rooms(src: Path, room: str) -> list[tuple[int, str]]:
    """(line, room) of every import in ``src`` (a top-level module of ``room``) that
    reaches a room."""
    return [(line, name.split(".")[0]) for line, name in _imports(src, f"{room}.{src.stem}")]


def test_imports_flow_builder_to_payload_from_installer() -> None:
    """builder -> payload <- installer: the builder never imports the installer, the
    installer never the builder, and payload neither (ast, so no import escapes)."""
    offenders = []
    for room, allowed in ROOMS.items():
        for src in _sources(REPO / room):
            module, package = _module_name(src)
            for line, name in _imports(src, module, package):
                other = name.split(".")[0]
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


def test_relative_imports_resolve_inside_a_package(tmp_path: Path) -> None:
    """A module of a room's package (installer/steps/x.py) resolves ``..`` one level
    further up than a room's own module does."""
    src = tmp_path / "installer" / "steps" / "place.py"
    src.parent.mkdir(parents=True)
    src.write_text("from . import base\nfrom ..plan import Plan\nfrom ...payload import nar\n"
                   "from .... import beyond\n")
    assert _imports(src, *_module_name(src, tmp_path)) == [
        (1, "installer.steps.base"), (2, "installer.plan.Plan"), (3, "payload.nar")]


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


# Issue 24's rules of shape; their known offenders are listed at the top.
MAX_FUNCTION_LINES = 60


def _import_graph(root: Path = REPO) -> dict[str, dict[str, int]]:
    """module -> {module of the project it imports: line}, every room's module (and
    package) a node.  ``from X import a`` is an edge to X.a when that is a module, else
    to X; importing X.a is not counted as importing X's package too."""
    modules = {_module_name(src, root)[0]: src for room in ROOMS
               for src in _sources(root / room)}
    graph: dict[str, dict[str, int]] = {}
    for module, src in modules.items():
        edges = graph.setdefault(module, {})
        for line, name in _imports(src, module, src.name == "__init__.py"):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                edges.setdefault(name, line)
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm,
    iterative): every import cycle lies within one of them, and each of them holds one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        while work:
            node, edges = work[-1]
            step = next(edges, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    work.append((step, iter(sorted(graph[step]))))
                elif step in stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _cycle_offenders(root: Path = REPO) -> dict[str, str]:
    """offender -> the imports that close the cycle (module:line -> module)."""
    graph = _import_graph(root)
    return {"import cycle: " + " ".join(cycle):
            ", ".join(f"{a}:{graph[a][b]} -> {b}" for a in cycle for b in graph[a] if b in cycle)
            for cycle in _cycles(graph)}


def _is_typer_command(function: ast.AST) -> bool:
    """Decorated ``@app.command(...)`` or ``@app.callback(...)`` (any typer app)."""
    for decorator in getattr(function, "decorator_list", []):
        called = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(called, ast.Attribute) and called.attr in ("command", "callback"):
            return True
    return False


def _function_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's length: its lines from ``def`` to its last line, as a reader
    scrolls them: signature, docstring, comments, blank lines and nested functions
    included, decorators not.  A typer command counts from its body's first statement
    (its docstring, which is its --help): its signature is the command line's
    declaration, one option a line, not procedure."""
    first = function.body[0].lineno if _is_typer_command(function) else function.lineno
    return (function.end_lineno or function.lineno) - first + 1


def _long_functions(root: Path = REPO) -> dict[str, str]:
    """offender -> its length, for every function or method over MAX_FUNCTION_LINES in
    the rooms.  Nested functions count within their parent, and on their own too."""
    found = {}
    for room in ROOMS:
        for src in _sources(root / room):
            work: list[tuple[ast.AST, str]] = [(ast.parse(src.read_text()), "")]
            while work:
                node, prefix = work.pop()
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        lines = _function_lines(child)
                        if lines > MAX_FUNCTION_LINES:
                            name = f"{src.relative_to(root)}:{prefix}{child.name}"
                            found[f"long: {name}"] = f"{lines} lines from line {child.lineno}"
                        work.append((child, f"{prefix}{child.name}."))
                    elif isinstance(child, ast.ClassDef):
                        work.append((child, f"{prefix}{child.name}."))
                    else:
                        work.append((child, prefix))
    return found


WORD = re.compile(r"[A-Za-z_]\w*")
# Files besides the rooms' Python that name the rooms' functions: entry points and the
# preamble's calls into the stub.
ENTRY_POINT_FILES = ["pyproject.toml", "builder/preamble.sh"]


def _names_used(src: Path) -> list[tuple[str, int]]:
    """(name, line) of every name ``src`` mentions: as a name, an attribute, an
    imported name, a word in a string (code the builder bundles, a name looked up) or
    in a type comment (payload/ and installer/ type with comments)."""
    text = src.read_text()
    used = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Name):
            used.append((node.id, node.lineno))
        elif isinstance(node, ast.Attribute):
            used.append((node.attr, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            used.extend((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            used.extend((w, node.lineno) for w in WORD.findall(node.value))
    for number, line in enumerate(text.splitlines(), 1):
        comment = re.search(r"#\s*type:(.*)", line)
        if comment:
            used.extend((w, number) for w in WORD.findall(comment.group(1)))
    return used


def _dead_code(root: Path = REPO) -> dict[str, str]:
    """offender -> what it is, for every public function, class and method (name not
    starting with ``_``) at the top of a payload/ or installer/ module that nothing in
    the rooms (or their entry points) names outside its own definition; tests and
    bench do not count as use.  By name, as vulture does: a name used anywhere for
    anything counts, so this misses some dead code; it could only wrongly accuse a
    method that nothing but the standard library calls by name (none today)."""
    defined = []
    used: dict[str, list[tuple[Path, int]]] = {}
    for room in ROOMS:
        for src in _sources(root / room):
            for name, line in _names_used(src):
                used.setdefault(name, []).append((src, line))
            if room == "builder":
                continue
            for node in ast.parse(src.read_text()).body:
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    continue
                members = [(node, node.name)]
                if isinstance(node, ast.ClassDef):
                    members += [(m, f"{node.name}.{m.name}") for m in node.body
                                if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
                defined += [(src, m, name) for m, name in members
                            if not name.rpartition(".")[2].startswith("_")]
    for extra in ENTRY_POINT_FILES:
        for number, line in enumerate((root / extra).read_text().splitlines(), 1):
            for word in WORD.findall(line):
                used.setdefault(word, []).append((root / extra, number))
    found = {}
    for src, node, name in defined:
        elsewhere = [(where, line) for where, line in used.get(node.name, [])
                     if where != src or not node.lineno <= line <= (node.end_lineno or 0)]
        if not elsewhere:
            found[f"dead: {src.relative_to(root)}:{name}"] = "named nowhere else in the rooms"
    return found


def _doc_links(root: Path = REPO) -> dict[str, str]:
    """offender -> where, for every docs/NAME.md a room's file names (a message's
    "see docs/...", a comment) that is not in docs/."""
    found = {}
    for src in _room_files(root):
        text = src.read_text(errors="replace")
        for m in re.finditer(r"(?<![\w/.])docs/[\w.-]+\.md", text):  # not ../shared/docs/
            if not (root / m.group()).exists():
                where = f"{src.relative_to(root)}:{text.count(chr(10), 0, m.start()) + 1}"
                found[f"doc link: {src.relative_to(root)} names {m.group()}"] = where
    return found


def _room_files(root: Path) -> list[Path]:
    """Every file of the rooms, Python or not (messages, comments, the sample .nix)."""
    return [src for room in ROOMS for src in sorted((root / room).rglob("*"))
            if src.is_file() and "__pycache__" not in src.parts]


# Issue 24's vocabulary in the rooms: the concept is "retarget"; "relocation" is the
# user's word, defined in the docs only, and survives in the code as the deprecated
# key of `inspect --json` (the string "relocation", kept for one release).
OLD_WORDS = re.compile(r"relocat|plain retarget", re.I)
DEPRECATED_KEY = re.compile(r"""(["'])relocation\1""")


def _old_words(root: Path = REPO) -> dict[str, str]:
    """offender -> the lines, for each room's file that still says relocat... (in a
    message, a docstring or a comment) or "plain retarget"."""
    found = {}
    for src in _room_files(root):
        lines = [str(number) for number, line in
                 enumerate(src.read_text(errors="replace").splitlines(), 1)
                 if OLD_WORDS.search(DEPRECATED_KEY.sub("", line))]
        if lines:
            found[f"word: {src.relative_to(root)} says relocat..."] = "lines " + ", ".join(lines)
    return found


def _offenders(root: Path = REPO) -> dict[str, str]:
    return {**_cycle_offenders(root), **_long_functions(root), **_dead_code(root),
            **_glossary_offenders(root), **_doc_links(root), **_old_words(root)}


def _new(found: dict[str, str]) -> list[str]:
    return [f"{key} ({why})" for key, why in sorted(found.items())]


def test_no_import_cycle_inside_a_room() -> None:
    """A cycle, even one only mypy follows (``if MYPY:``) or one a function-level
    import closes, is code in the wrong place: move it, don't hide the import."""
    assert _new(_cycle_offenders()) == []


def _tree_walkers(root: Path = REPO) -> dict[str, str]:
    """builder modules other than sources.py that walk a store path's tree themselves
    (``dump_path`` or ``hash_path`` of payload/nar.py), by ``file:line``."""
    found = {}
    for src in _sources(root / "builder"):
        if src.name == "sources.py":
            continue
        for node in ast.walk(ast.parse(src.read_text())):
            if isinstance(node, (ast.Attribute, ast.Name)) and \
                    (node.attr if isinstance(node, ast.Attribute) else node.id) in WALKS:
                found[f"{src.relative_to(root)}:{node.lineno}"] = "walks a store tree"
    return found


WALKS = ("dump_path", "hash_path")


def test_the_builder_reads_store_trees_only_through_a_source() -> None:
    """One way to a source (issue 24): build, cache, retarget and serve read a store
    path's tree through builder/sources.py (TreeSource.replay), which checks it against
    its registration; no command keeps a walk (and a check) of its own."""
    assert _new(_tree_walkers()) == []


def test_the_walk_rule_sees_both_spellings_outside_sources(tmp_path: Path) -> None:
    (tmp_path / "builder").mkdir()
    (tmp_path / "builder" / "sources.py").write_text("nar.dump_path(b'x', sink)\n")
    (tmp_path / "builder" / "a.py").write_text("from ..payload.nar import dump_path\n"
                                               "dump_path(b'x', sink)\n"
                                               "nar.hash_path(b'x')\n")
    assert sorted(_tree_walkers(tmp_path)) == ["builder/a.py:2", "builder/a.py:3"]


def test_no_function_over_60_lines() -> None:
    """Outside tests and bench; _function_lines says how a function is counted."""
    assert _new(_long_functions()) == []


def test_no_dead_code_in_payload_and_installer() -> None:
    """Every installer ships payload/ and installer/: nothing there is only for tests."""
    assert _new(_dead_code()) == []


def test_the_docs_the_code_names_exist() -> None:
    """A message that says "see docs/X.md" sends the user to a page that is there."""
    assert _new(_doc_links()) == []


def test_the_doc_link_rule_sees_messages_and_comments(tmp_path: Path) -> None:
    """Not vacuous: a missing page offends, in Python and in other files of a room."""
    root = _room(tmp_path, {"docs/retargeting.md": "",
                            "installer/p.py": "E = 'see docs/retargeting.md'\n'docs/gone.md'\n"
                                              "# ../shared/docs/nix-formats.md\n",
                            "builder/nix/n.nix": "# see\n# docs/old-name.md\n"})
    assert _doc_links(root) == {"doc link: installer/p.py names docs/gone.md": "installer/p.py:2",
                                "doc link: builder/nix/n.nix names docs/old-name.md":
                                    "builder/nix/n.nix:2"}


def test_the_code_says_retarget() -> None:
    """The rooms' messages, docstrings and comments say retarget, not relocation."""
    assert _new(_old_words()) == []


def test_the_word_rule_allows_only_the_deprecated_key(tmp_path: Path) -> None:
    """Not vacuous: the word in a message, a comment or a .nix file offends; the
    deprecated JSON key does not."""
    root = _room(tmp_path, {
        "builder/inspect.py": 'doc = {"retarget": 1, "relocation": 1}\n',
        "payload/m.py": "# fine\nE = 'cannot relocate'\n# Plain retarget\n",
        "builder/nix/n.nix": "# after relocation\n",
    })
    assert _old_words(root) == {"word: payload/m.py says relocat...": "lines 2, 3",
                                "word: builder/nix/n.nix says relocat...": "lines 1"}


def _room(root: Path, files: dict[str, str]) -> Path:
    for name, text in {"pyproject.toml": "", "builder/preamble.sh": "",
                       "builder/__init__.py": "", "payload/__init__.py": "",
                       "installer/__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_cycle_rule_sees_guarded_and_function_level_imports(tmp_path: Path) -> None:
    """Not vacuous: a cycle closed under ``if MYPY:``, one closed inside a function,
    one through a package's module; imports between rooms and of names are no cycle."""
    root = _room(tmp_path, {
        "payload/a.py": "from . import b\n",
        "payload/b.py": "MYPY = False\nif MYPY:\n    from .a import X\n",
        "installer/c.py": "from .steps import place\nfrom ..payload import a\n",
        "installer/steps/__init__.py": "",
        "installer/steps/place.py": "def f():\n    from ..c import g\n",
        "installer/d.py": "import nix_prefix.installer.e\n",
        "installer/e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                          "    from nix_prefix.installer import d\n",
        "builder/x.py": "from ..payload import a\n",
    })
    assert _cycle_offenders(root) == {
        "import cycle: installer.c installer.steps.place":
            "installer.c:1 -> installer.steps.place, installer.steps.place:2 -> installer.c",
        "import cycle: installer.d installer.e":
            "installer.d:1 -> installer.e, installer.e:3 -> installer.d",
        "import cycle: payload.a payload.b": "payload.a:1 -> payload.b, payload.b:3 -> payload.a",
    }


def _function(name: str, lines: int, indent: str = "") -> str:
    """A function ``lines`` lines long, its ``def`` line included."""
    return (f"{indent}def {name}():\n" + f"{indent}    x = 1\n" * (lines - 2)
            + f"{indent}    return x\n")


def test_the_length_rule_counts_typer_commands_from_their_body(tmp_path: Path) -> None:
    """Not vacuous: 61 lines offend and 60 do not; a typer command's signature is
    not counted; a method and a nested function are named by their path, and a
    nested function counts within its parent."""
    root = _room(tmp_path, {
        "payload/m.py": _function("short", 60) + _function("long", 61)
                        + "class C:\n" + _function("long", 61, "    "),
        "builder/cli.py": "import typer\napp = typer.Typer()\n@app.command()\ndef build(\n"
                          + "    a: int = typer.Option(1),\n" * 30 + ") -> None:\n"
                          + _function("body", 60, "    ")[len("    def body():\n"):],
        "installer/n.py": "def outer():\n" + _function("inner", 61, "    ") + "    return inner\n",
    })
    assert _long_functions(root) == {
        "long: payload/m.py:long": "61 lines from line 61",
        "long: payload/m.py:C.long": "61 lines from line 123",
        "long: installer/n.py:outer": "63 lines from line 1",
        "long: installer/n.py:outer.inner": "61 lines from line 2",
    }


def test_the_dead_code_rule_sees_what_only_tests_use(tmp_path: Path) -> None:
    """Not vacuous: a function, class or method named only in its own definition or in
    tests offends; a use by another room, a string, a type comment or an entry point
    does not; the builder's own functions are not checked."""
    root = _room(tmp_path, {
        "payload/p.py": "def used_by_builder():\n    pass\n"
                        "def recursive(n):\n    return recursive(n - 1)\n"
                        "class Unused:\n    def method(self):\n        return Unused\n"
                        "class Typed:\n    def only_in_tests(self):\n        pass\n"
                        "def _private():\n    pass\n",
        "installer/i.py": "def f(x):\n    # type: (Typed) -> None\n    return 'entry'\n"
                          "def entry():\n    pass\ndef main():\n    pass\n",
        "builder/b.py": "from ..payload.p import used_by_builder\ndef builder_only():\n    pass\n",
        "pyproject.toml": 'x = "nix_prefix.installer.i:main"\n',
        "tests/test_p.py": "from nix_prefix.payload.p import Typed, recursive\n"
                           "Typed().only_in_tests()\nrecursive(1)\nf(1)\n",
    })
    assert sorted(_dead_code(root)) == [
        "dead: installer/i.py:f", "dead: payload/p.py:Typed.only_in_tests",
        "dead: payload/p.py:Unused", "dead: payload/p.py:Unused.method",
        "dead: payload/p.py:recursive"]


# ---------------------------------------------------------------------------
# docs/design.md's tables: one line per module, packages included.


def _listed_modules(section: str) -> list[str]:
    """The modules a room's table names in its first column: ``plan.py``, and for a
    package ``steps/`` (its __init__.py) and ``steps/place.py``."""
    return re.findall(r"^\| `([\w/]+\.py|\w+/)` \|", section, re.M)


def _modules_on_disk(folder: Path) -> list[str]:
    on_disk = []
    for src in _sources(folder):
        rel = src.relative_to(folder).as_posix()
        if rel != "__init__.py":
            on_disk.append(rel[:-len("__init__.py")] if src.name == "__init__.py" else rel)
    return sorted(on_disk)


def test_design_md_has_one_line_per_module() -> None:
    """docs/design.md matches the tree: each room's table lists exactly its modules,
    those of its packages (installer/steps/) too."""
    text = (REPO / "docs" / "design.md").read_text()
    for room in ROOMS:
        section = text.split(f"## `{room}/`", 1)[1].split("\n## ", 1)[0]
        assert sorted(_listed_modules(section)) == _modules_on_disk(REPO / room), room


def test_the_table_rule_sees_packages(tmp_path: Path) -> None:
    """Not vacuous: a package's modules and the package itself need their lines."""
    _room(tmp_path, {"installer/plan.py": "", "installer/steps/__init__.py": "",
                     "installer/steps/place.py": "", "installer/steps/__pycache__/x.py": ""})
    assert _modules_on_disk(tmp_path / "installer") == ["plan.py", "steps/", "steps/place.py"]
    assert _listed_modules("| `plan.py` | x |\n| `steps/` | y |\n| `steps/place.py` | z |\n"
                           "| module | what |\n") == ["plan.py", "steps/", "steps/place.py"]


def _glossary(text: str) -> list[tuple[str, list[str]]]:
    """(word, the names in backticks of its last column) of each row of design.md's
    glossary table."""
    assert "\n## Glossary\n" in text, "docs/design.md has no section ## Glossary"
    section = text.split("\n## Glossary\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith(("| word ", "| --- ")):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 3, f"a glossary row of three cells, no | inside: {line}"
        rows.append((cells[0], re.findall(r"`([^`]+)`", cells[2])))
    return rows


def _code_names(root: Path = REPO) -> set[str]:
    """Every name the rooms define, as ``Name``, ``Class.member`` and prefixed with its
    module (``retarget.Exact``, ``steps.place.PlacePaths``): functions, classes,
    assignments, class members and ``self.x`` attributes; and every string constant
    that is an identifier or an option (a JSON key such as ``embeddedStoreDir``,
    ``--trusted-key``)."""
    names: set[str] = set()
    for room in ROOMS:
        for src in _sources(root / room):
            module = _module_name(src, root)[0].split(".", 1)[-1]
            tree = ast.parse(src.read_text())
            found = []
            for node in tree.body:
                found += [(target, "") for target in _defined(node)]
                if isinstance(node, ast.ClassDef):
                    for member in ast.walk(node):
                        found += [(f"{node.name}.{target}", "") for target in _defined(member)
                                  if member is not node]
                        if (isinstance(member, ast.Attribute) and isinstance(member.ctx, ast.Store)
                                and isinstance(member.value, ast.Name)
                                and member.value.id == "self"):
                            found.append((f"{node.name}.{member.attr}", ""))
            for name, _ in found:
                names.update({name, f"{module}.{name}"})
            names.update(node.value for node in ast.walk(tree)
                         if isinstance(node, ast.Constant) and isinstance(node.value, str)
                         and re.fullmatch(r"(--)?[A-Za-z_][\w-]*", node.value))
    return names


def _defined(node: ast.AST) -> list[str]:
    """The names a statement defines at its own level."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return [n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)]
    return []


def _glossary_offenders(root: Path = REPO) -> dict[str, str]:
    """offender -> why, for each glossary word given twice and each name in its code
    column that names nothing: a path (with a /) that is not in the repository, an
    option or a code name the rooms do not define."""
    rows = _glossary((root / "docs" / "design.md").read_text())
    words = [word for word, _ in rows]
    found = {f"glossary: {word} twice": "one row per word"
             for word in sorted({w for w in words if words.count(w) > 1})}
    names = _code_names(root)
    for word, code in rows:
        for name in code:
            exists = (root / name).exists() if "/" in name else name in names
            if not exists:
                found[f"glossary: `{name}`"] = f"the code of {word!r}, found nowhere"
    return found


def test_the_glossary_names_code_that_exists() -> None:
    """docs/design.md's glossary: one row per word, and the code it names is there."""
    assert _new(_glossary_offenders()) == []


def test_the_glossary_rule_sees_each_kind_of_name(tmp_path: Path) -> None:
    """Not vacuous: paths, options, names and module.Class.member names are looked up;
    a word given twice offends."""
    root = _room(tmp_path, {
        "payload/retarget.py": "class Exact(object):\n    KIND = 1\n"
                               "    def __init__(self):\n        self.store_dir = ''\n"
                               "def key():\n    return {'embeddedStoreDir': 1}\n",
        "installer/main.py": "OPTIONS = ['--trusted-key']\n",
        "docs/design.md": "# D\n\n## Glossary\n\n| word | what | in the code |\n"
                          "| --- | --- | --- |\n"
                          "| a | x | `payload/retarget.py`, `payload/nothere.py` |\n"
                          "| b | x | `Exact`, `retarget.Exact.KIND`, `Exact.store_dir`, `key` |\n"
                          "| c | x | `embeddedStoreDir`, `--trusted-key`, `--cache-key` |\n"
                          "| a | x | `Inexact`, `exact.Exact` |\n\n## Next\n\n| `x` | y | `z` |\n",
    })
    assert _glossary_offenders(root) == {
        "glossary: a twice": "one row per word",
        "glossary: `payload/nothere.py`": "the code of 'a', found nowhere",
        "glossary: `--cache-key`": "the code of 'c', found nowhere",
        "glossary: `Inexact`": "the code of 'a', found nowhere",
        "glossary: `exact.Exact`": "the code of 'a', found nowhere",
    }
