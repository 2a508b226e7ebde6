"""``nix-prefix serve``'s request paths, without a server; the server itself, on
127.0.0.1, is in tests/e2e/test_serve.py."""

from __future__ import annotations

import pytest

from nix_prefix.builder.serve import split_request


def test_split_request() -> None:
    assert split_request("/a/store/nix-cache-info", 20) == ("/a/store", "nix-cache-info")
    assert split_request("/a/store/nar/x.nar.zst", 20) == ("/a/store", "nar/x.nar.zst")
    for bad in ("/a/store/../x", "/a//x", "/a/%2e/x", "relative/x"):
        with pytest.raises(Exception) as e:
            split_request(bad, 20)
        assert 400 <= e.value.status < 500
