"""installer/run.py: a step passes what it learnt on in a new Run."""

from __future__ import annotations

from nix_prefix.installer.prefix import Prefix
from nix_prefix.installer.run import Run
from nix_prefix.installer.ui import UI


def test_with_manifest_is_a_new_run_and_the_old_one_is_unchanged() -> None:
    def tool(name: str) -> str:
        return "/bin/" + name

    first = Run(Prefix("/p"), UI(quiet=True), "before", tool, extra_conf=["a = 1"],
                signature_names=["k1"])
    second = first.with_manifest("after")
    assert (first.manifest, second.manifest) == ("before", "after")
    assert (second.prefix, second.extra_conf, second.signature_names, second.nix_tool) == (
        first.prefix, ["a = 1"], ("k1",), tool)
