"""The tests' layout (tests/README.md): a module's unit test is found by its name, and a
unit test needs no Nix, so ``pytest tests/unit`` runs on a machine without one."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import REPO

UNIT = REPO / "tests" / "unit"
ROOMS = ("payload", "installer", "builder")
# Unit files named for a feature that spans the room's modules, not for one module.
FEATURES = {
    "payload/test_fuzz.py": "property tests of the registration parser and manifest reader",
    "installer/test_substituters.py": "--substituter: envfiles' nix.conf, main's options, "
                                      "the summary",
}
# What runs a Nix, another user or a built installer: the end-to-end tests' tools.
NIX_MODULES = ("nix_prefix.builder.localnix", "tests.e2e", "tests.nix_versions",
               "tests.pythons", "tests.hostile_files")
NIX_NAMES = {"LocalNix", "local_nix", "build_small", "build_and_install", "run_installer",
             "as_user", "nix_store", "installed_nix"}


def unit_files() -> list[Path]:
    return sorted(p for room in ROOMS for p in (UNIT / room).glob("test_*.py"))


def test_each_unit_file_is_named_for_a_module_of_its_room() -> None:
    assert [p.name for p in UNIT.iterdir() if p.suffix == ".py"] == ["__init__.py"]
    assert sorted(p.name for p in UNIT.iterdir() if p.is_dir() and p.name != "__pycache__") \
        == sorted(ROOMS)
    strays = []
    for path in unit_files():
        rel = f"{path.parent.name}/{path.name}"
        module = REPO / path.parent.name / (path.name[len("test_"):])
        if not module.is_file() and rel not in FEATURES:
            strays.append(rel)
    assert strays == [], "name each for its module (<room>/<module>.py) or list it in FEATURES"
    assert all((UNIT / rel).is_file() for rel in FEATURES)


def _imported(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_no_unit_test_runs_a_nix() -> None:
    """No import of the e2e tools or their builders, no Nix fixture, no slow mark."""
    offenders = []
    for path in unit_files():
        tree = ast.parse(path.read_text())
        rel = path.relative_to(REPO)
        offenders += [f"{rel}: imports {m}" for m in _imported(tree)
                      if m.startswith(NIX_MODULES)]
        used = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                for a in n.names} | \
            {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments) for a in n.args}
        offenders += [f"{rel}: uses {n}" for n in sorted(used & NIX_NAMES)]
        offenders += [f"{rel}:{n.lineno}: marked slow" for n in ast.walk(tree)
                      if isinstance(n, ast.Attribute) and n.attr == "slow"]
    assert offenders == [], "these belong in tests/e2e/"
