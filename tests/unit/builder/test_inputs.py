"""builder/inputs.py: what ``build`` and ``closure`` are asked for, checked before any
work (no Nix needed: every case is refused first)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nix_prefix.builder.errors import UsageError
from nix_prefix.builder.inputs import Request


@pytest.mark.parametrize("request_, needle", [
    (Request(sources=["ci"], file=Path("x.nix")), "-f builds its own roots"),
    (Request(roots=True, file=Path("x.nix")), "-f builds its own roots"),
    (Request(sources=["ci"], attrs=["hello"]), "-A and --argstr go with -f"),
    (Request(argstrs=["a=b"]), "-A and --argstr go with -f"),
    (Request(sources=["/s/x"], roots=True, from_cache="file:///c"), "--from-cache takes"),
    (Request(sources=["/s/x"], from_cache="file:///c", with_derivations=True),
     "--from-cache takes"),
    (Request(sources=["ci"], cache_keys=["k:AAAA"]), "--cache-key checks the narinfos"),
])
def test_options_that_do_not_go_together_are_bad_usage(request_: Request,
                                                        needle: str) -> None:
    with pytest.raises(UsageError, match=needle) as e:
        request_.check()
    assert e.value.exit_code == 2


def test_a_consistent_request_passes() -> None:
    Request(sources=["ci"]).check()
    Request(file=Path("x.nix"), attrs=["a"], argstrs=["p=/x"]).check()
    Request(sources=["/s/x"], from_cache="file:///c", cache_keys=["k:AAAA"]).check()


def test_the_given_files_are_what_an_output_must_not_replace() -> None:
    assert Request(sources=["ci"]).given_files() == [Path("ci")]
    assert Request(sources=["/s/x"], roots=True).given_files() == []  # store paths
    assert Request(file=Path("x.nix")).given_files() == [Path("x.nix")]
