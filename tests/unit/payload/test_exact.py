"""payload.exact without Nix: what it refuses and the order it renames in.  The exact
retarget of real builds, against native builds, is in tests/e2e/test_exact_retarget.py."""

from __future__ import annotations

import pytest

from nix_prefix.payload import exact, storepaths_ca
from nix_prefix.payload.manifest import PathEntry


def test_unknown_path_is_refused_with_a_hint() -> None:
    name = "0" * 32 + "-mystery"
    with pytest.raises(exact.ExactError, match="cannot tell how") as e:
        exact.renaming([PathEntry(name, "sha256:" + "1" * 52, 0, [])], "/a/store", "/b/store",
                       {name: b"x"})
    assert "--with-derivations" in e.value.hint


def test_a_path_named_without_a_reference_is_planned_before_the_text_naming_it() -> None:
    # builtins.readFile or import of a built output gives strings whose context
    # need not carry every store path in them: a text can name a path it does
    # not reference.  Whatever the order of the names, its new contents hold
    # the new hash part.
    old_dir, new_dir = "/old-long/store", "/new/store"
    a_path = storepaths_ca.make_text_path(old_dir, "a.txt", b"a\n", [])
    a = PathEntry(a_path.rpartition("/")[2], "sha256:" + "1" * 52, 0, [])
    orders = set()
    for i in range(12):
        text = f"see {a_path} ({i})\n".encode()
        b_path = storepaths_ca.make_text_path(old_dir, "b.txt", text, [])
        b = PathEntry(b_path.rpartition("/")[2], "sha256:" + "1" * 52, 0, [])
        p = exact.renaming([a, b], old_dir, new_dir, {a.name: b"a\n", b.name: text})
        new_a = new_dir + "/" + p.names[a.name]
        assert p.texts[b.name] == f"see {new_a} ({i})\n".encode()
        orders.add(b.name < a.name)
    assert orders == {True, False}
