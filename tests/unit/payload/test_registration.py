"""payload.registration on hand-made input; against real Nix registrations (closureInfo,
``nix-store --dump-db`` and ``--load-db``): tests/e2e/test_registration_against_nix.py."""

from __future__ import annotations

import pytest

from nix_prefix.payload import registration
from nix_prefix.payload.registration import RegistrationError


def test_empty_registration() -> None:
    assert registration.parse("") == []
    assert registration.format([]) == ""


def test_missing_newline_on_first_line() -> None:
    with pytest.raises(RegistrationError) as caught:
        registration.parse("/nix/store/" + "0" * 32 + "-x")
    assert caught.value.line == 1
