"""installer/errors.py: bad usage (exit 2) is one idea, ``UsageProblem``; the other
names are kinds of it, so that one ``except`` and one line of docs cover them."""

from __future__ import annotations

from nix_prefix.installer import errors


def test_every_exit_2_error_is_a_usage_problem() -> None:
    kinds = [c for c in vars(errors).values()
             if isinstance(c, type) and issubclass(c, errors.InstallError)
             and c.exit_code == errors.EXIT_USAGE]
    assert errors.UsageProblem in kinds and errors.UpdateNeeded in kinds
    assert all(issubclass(c, errors.UsageProblem) for c in kinds), kinds
    assert errors.BadUsage is errors.UsageProblem
    assert str(errors.BadUsage("--nix-conf: x", "give a readable nix.conf file")) == (
        "--nix-conf: x; give a readable nix.conf file")
