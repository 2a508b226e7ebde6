"""Property tests: the registration parser and the manifest reader; the strategies
of the NAR serialiser's property test (tests/e2e/test_fuzz_nar.py, against Nix).

* NAR: random trees (nested dirs, files of random bytes, executables, symlinks,
  odd names) serialised by payload.nar are byte-identical to what
  ``nix-store --dump`` gives for the same tree added to a real store, and
  hash to the narHash the store recorded.
* Registration and manifest: random damage to valid input either parses or
  raises the module's own error, never anything else (which would reach the
  user as a traceback).

Each test counts its cases; the figures go to docs/reliability.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nix_prefix.payload import registration
from nix_prefix.payload.manifest import Manifest, ManifestError

from .test_manifest import sample

PARSER_CASES = 600
COUNTS: dict[str, int] = {}

names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x24ff,
                              blacklist_characters="/"), min_size=1, max_size=12).filter(
    lambda n: n not in (".", ".."))
leaf = st.one_of(
    st.tuples(st.just("file"), st.binary(max_size=3000), st.booleans()),
    st.tuples(st.just("link"), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                                       min_size=1, max_size=40)),
)
trees = st.recursive(leaf, lambda kids: st.tuples(
    st.just("dir"), st.dictionaries(names, kids, max_size=5)), max_leaves=12)


def materialise(node: tuple, path: Path) -> None:
    kind = node[0]
    if kind == "file":
        path.write_bytes(node[1])
        path.chmod(0o755 if node[2] else 0o644)
    elif kind == "link":
        os.symlink(node[1], path)
    else:
        path.mkdir()
        for name, child in node[1].items():
            materialise(child, path / name)


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Iterator[None]:
    """Print how many cases each property saw (run with -s to see it)."""
    yield
    print(f"\nfuzz cases: {COUNTS}")


VALID_REGISTRATION = (
    "/tmp/x/store/0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-a\n"
    "sha256:" + "0" * 52 + "\n"
    "120\n"
    "\n"
    "1\n"
    "/tmp/x/store/0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-a\n"
)

edits = st.lists(st.tuples(st.integers(min_value=0, max_value=400),
                           st.sampled_from(["flip", "drop", "insert", "cut"]),
                           st.characters()), max_size=4)


def damage(text: str, changes: list[tuple[int, str, str]]) -> str:
    for pos, how, ch in changes:
        pos %= max(len(text), 1)
        if how == "flip":
            text = text[:pos] + ch + text[pos + 1:]
        elif how == "drop":
            text = text[:pos] + text[pos + 1:]
        elif how == "insert":
            text = text[:pos] + ch + text[pos:]
        else:
            text = text[:pos]
    return text


@settings(max_examples=PARSER_CASES, deadline=None)
@given(changes=edits, copies=st.integers(min_value=1, max_value=3))
def test_registration_parser_fails_only_with_its_own_error(changes: list, copies: int) -> None:
    text = damage(VALID_REGISTRATION * copies, changes)
    try:
        infos = registration.parse(text)
    except registration.RegistrationError as e:
        assert e.line >= 1
    else:
        assert registration.parse(registration.format(infos)) == infos
    COUNTS["registration"] = COUNTS.get("registration", 0) + 1


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=20)),
    lambda kids: st.one_of(st.lists(kids, max_size=3),
                           st.dictionaries(st.text(max_size=8), kids, max_size=3)),
    max_leaves=6)


def _keys(doc: object, prefix: tuple = ()) -> list[tuple]:
    found = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            found += _keys(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found += _keys(v, prefix + (i,))
    return found


@settings(max_examples=PARSER_CASES, deadline=None)
@given(data=st.data())
def test_manifest_reader_fails_only_with_its_own_error(data: st.DataObject) -> None:
    doc = json.loads(sample().to_json())
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        where = data.draw(st.sampled_from(_keys(doc)))
        target = doc
        for k in where[:-1]:
            target = target[k]
        if data.draw(st.booleans()):
            target[where[-1]] = data.draw(json_values)
        elif isinstance(target, dict):
            del target[where[-1]]
    raw = json.dumps(doc).encode()
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
        raw = raw[:cut]
    try:
        Manifest.from_json(raw)
    except ManifestError:
        pass
    COUNTS["manifest"] = COUNTS.get("manifest", 0) + 1

