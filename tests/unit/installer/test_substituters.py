"""The installer's --substituter and --trusted-key: the nix.conf they write and the summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from nix_prefix.installer import envfiles, main, summary
from nix_prefix.installer.prefix import Prefix
from nix_prefix.payload.manifest import Manifest

KEY = "publisher-1:lHOu/hBJjE+Q5ikSPPK9sM+Bxwm/wR2455Z8l05cexI="


def test_without_caches_nix_conf_stays_as_it_was(tmp_path: Path) -> None:
    prefix = Prefix(str(tmp_path))
    assert envfiles.nix_conf(prefix) == envfiles.NIX_CONF.format(marker=envfiles.MARKER)
    assert "substituters =\n" in envfiles.nix_conf(prefix, envfiles.Caches())


def test_caches_go_into_nix_conf_with_require_sigs(tmp_path: Path) -> None:
    caches = envfiles.Caches(["https://a.example/c", "file:///srv/c"], [KEY])
    conf = envfiles.nix_conf(Prefix(str(tmp_path)), caches)
    lines = conf.splitlines()
    assert "substituters = https://a.example/c file:///srv/c" in lines
    assert f"trusted-public-keys = {KEY}" in lines
    assert "require-sigs = true" in lines
    assert "build-users-group =" in lines and "sandbox = false" in lines
    assert all(line in lines for line in caches.conf_lines())


def _parse(*argv: str):
    return main._parser("installer").parse_args(list(argv))


def test_options_are_repeatable_and_checked(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse("--substituter", "https://a/", "--substituter", "file:///b",
                  "--trusted-key", KEY)
    assert args.substituter == ["https://a", "file:///b"] and args.trusted_keys == [KEY]
    for bad in (["--substituter", "not a url"], ["--trusted-key", "nocolon"],
                ["--trusted-key", "k:" + "A" * 10], ["--trusted-key", "two words:AAAA"]):
        with pytest.raises(SystemExit) as e:
            _parse(*bad)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "nix-prefix: error:" in err


def test_the_summary_says_where_more_software_comes_from(tmp_path: Path) -> None:
    prefix = Prefix(str(tmp_path))
    caches = envfiles.Caches(["https://a.example/c"], [KEY])
    Path(prefix.conf_dir).mkdir(parents=True)
    manifest = Manifest("/x/store", "x86_64-linux", "xz", [], [], [])
    Path(prefix.nix_conf).write_text(envfiles.nix_conf(prefix, caches))
    lines = summary.summary_lines(manifest, prefix, "inst.sh", [], caches)
    line = next(x for x in lines if "https://a.example/c" in x)
    assert "signed by publisher-1" in line and "require-sigs on" in line
    # A nix.conf of the user's own, kept as it was: the summary says what to add.
    Path(prefix.nix_conf).write_text("sandbox = true\n")
    lines = summary.summary_lines(manifest, prefix, "inst.sh", [], caches)
    line = next(x for x in lines if "https://a.example/c" in x)
    assert "not set" in line and "require-sigs = true" in line
    assert not any("https://" in x for x in summary.summary_lines(manifest, prefix, "i", []))
