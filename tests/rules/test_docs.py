"""The docs cannot rot: their tested shell blocks run (tests/e2e/test_docs_run.py, with
the machine's Nix), their links resolve, the nix-prefix commands and options they name
exist.

A block fenced as ```` ```sh test ```` is run; plain ```` ```sh ```` blocks are
examples that need what CI lacks (nixpkgs, hours of building, a feature still
to come).  The pages run in the order docs/README.md lists them, each as one
``sh -e`` script, in one fresh home directory shared by all pages (so a page
may use what an earlier one made, as a reader following them would), with
nix-prefix and the machine's Nix on PATH and nothing else of the host's Nix
set-up.  ``NIX_PREFIX_LEVEL=0`` keeps the builds quick, as the docs say.
"""

from __future__ import annotations

import re
from pathlib import Path

from nix_prefix.builder.cli import app

from tests.support import REPO

DOCS = REPO / "docs"
FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"\]\((?P<target>[^)#\s]+)(#[^)]*)?\)")
# Pages linked before they are written (none now); the link check skips them.
PENDING: set[str] = set()


def pages_in_order() -> list[str]:
    """The pages docs/README.md links to, in its order."""
    seen: list[str] = []
    for m in LINK.finditer((DOCS / "README.md").read_text()):
        name = m.group("target")
        if name.endswith(".md") and "/" not in name and name not in seen:
            seen.append(name)
    return seen


def blocks(page: Path) -> list[tuple[int, str, str]]:
    """(line, info string, code) of every fenced block of ``page``."""
    text = page.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group("info").strip(), m.group("code"))
            for m in FENCE.finditer(text)]


def runnable_blocks(page: Path) -> list[tuple[int, str]]:
    return [(line, code) for line, info, code in blocks(page) if info == "sh test"]


CODE_SPAN = re.compile(r"(`+).+?\1", re.S)


def prose(text: str) -> str:
    """A page less its code blocks and code spans: what it says in its own words (a
    message quoted, a JSON key or a file named is the code's word, not the page's)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def test_relocation_is_the_users_word_defined_once() -> None:
    """Issue 24's vocabulary: the docs say retarget (kinds identity, same-length,
    exact); "relocation" is the user's word, defined once; "plain relocation", "plain
    retarget" and "relocated in place" are gone, from code blocks too."""
    said = []
    for page in sorted([*DOCS.glob("*.md"), REPO / "README.md"]):
        text = page.read_text()
        said += [f"{page.name}: {text[m.start():m.start() + 50]}"
                 for m in re.finditer(r"plain (relocat|retarget)|relocated in place", text, re.I)]
        words = prose(text)
        said += [f"{page.name}: {words[m.start():m.start() + 50]}"
                 for m in re.finditer(r"relocat", words, re.I)]
    assert said == ["retargeting.md: Relocation, which nix-prefix calls **retargeting**"]


def test_every_page_is_in_the_index_and_every_link_resolves() -> None:
    listed = pages_in_order()
    on_disk = {p.name for p in DOCS.glob("*.md")} - {"README.md"}
    assert on_disk - set(listed) == set(), "pages missing from docs/README.md"
    broken = []
    for page in [*DOCS.glob("*.md"), REPO / "README.md"]:
        for m in LINK.finditer(page.read_text()):
            target = m.group("target")
            if "://" in target or target.startswith("mailto:"):
                continue
            if Path(target).name in PENDING:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert broken == []


TEST_FILE = re.compile(r"\btests/[\w/]+\.(?:py|nix)\b")


def test_the_test_files_the_docs_name_exist() -> None:
    """Docs, README, CI scripts and pyproject cite tests by path; the tests move (into
    tests/unit/<room>/ and tests/e2e/), so every path cited must still be a file."""
    texts = [*DOCS.glob("*.md"), REPO / "README.md", REPO / "tests" / "README.md",
             *(REPO / ".ci").iterdir(), REPO / "pyproject.toml"]
    missing = [f"{path.relative_to(REPO)}: {m.group(0)}"
               for path in texts if path.is_file()
               for m in TEST_FILE.finditer(path.read_text())
               if not (REPO / m.group(0)).is_file()]
    assert missing == []


def test_the_walkthrough_pages_have_runnable_blocks() -> None:
    """Guards the fence marker: if it changed, the slow test would run nothing."""
    for name in ("getting-started.md", "building.md", "installing.md"):
        assert len(runnable_blocks(DOCS / name)) >= 2, name


def _commands() -> dict[str, set[str]]:
    import typer

    group = typer.main.get_command(app)
    return {name: {opt for p in cmd.params for opt in p.opts + p.secondary_opts}
            for name, cmd in group.commands.items()}


def test_the_nix_prefix_commands_in_the_docs_exist() -> None:
    """Every block, tested or not: `nix-prefix CMD --option` must be real."""
    commands = _commands()
    wrong = []
    for page in [*DOCS.glob("*.md"), REPO / "README.md"]:
        for line, _info, code in blocks(page):
            joined = code.replace("\\\n", " ")
            for m in re.finditer(r"nix-prefix (?P<cmd>[a-z][a-z-]*)(?P<rest>[^\n|;&)]*)", joined):
                cmd = m.group("cmd")
                if cmd not in commands:
                    wrong.append(f"{page.name}:{line}: nix-prefix {cmd}")
                    continue
                for opt in re.findall(r"(?<!\S)(--?[a-zA-Z][\w-]*)", m.group("rest")):
                    if opt not in commands[cmd] | {"--help"}:
                        wrong.append(f"{page.name}:{line}: nix-prefix {cmd} {opt}")
    assert wrong == []

