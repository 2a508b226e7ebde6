"""builder/page.py without a server: the install lines and the page for other keys, no
keys and no installers.  The page as ``nix-prefix serve`` gives it, fetched and run, is
in tests/e2e/test_serve_page.py."""

from __future__ import annotations

from pathlib import Path

from nix_prefix.payload import signing


def _offered(name: str, signed_by: list, max_prefix: int = 200):
    from nix_prefix.builder.offer import Offered

    return Offered(name, Path(name + ".sh"), 1, "0" * 64, "2.26.3", signed_by, max_prefix,
                   -1, (0, 0, 0, 0))


def test_the_lines_for_other_keys_no_keys_and_no_installers() -> None:
    """install_lines and render without a server: an installer signed by another key is
    pinned to that key and gets no --substituter; a server without keys gets no nix.conf
    lines; a server without installers still gives the nix.conf lines."""
    from nix_prefix.builder.page import Site, install_lines, render

    url, prefix = "http://c.example:8080", "/home/alice/.nix"
    server_key = signing.PublicKey("server-1", b"\1" * 32)
    other = signing.PublicKey("other-1", b"\2" * 32)
    lines = install_lines(url, _offered("o", [other]), [server_key], prefix)
    assert lines.plain == (f"curl -fsSL {url}/installers/o.sh | sh -s -- --trusted-key "
                           f"{other} -y -p {prefix}")
    assert lines.verify == (f"curl -fsSL {url}/installers/o.sh | python3 nix-prefix-verify "
                            f"--trusted-key {other} --run -- -y -p {prefix}")
    assert lines.nix_conf == [f"substituters = {url}{prefix}/store",
                              f"trusted-public-keys = {server_key}"]
    assert "add the nix.conf lines below" in lines.note
    unsigned = install_lines(url, _offered("u", []), [], prefix)
    assert (unsigned.verify, unsigned.nix_conf) == ("", [])
    assert unsigned.plain.endswith(f"| sh -s -- -y -p {prefix}")
    assert "signs nothing" in unsigned.note
    # Too long for one installer but not for the server: said for that installer.
    status, page = render(Site([server_key], 57, "zstd", [_offered("short", [server_key], 8),
                                                           _offered("long", [server_key])]),
                          url, prefix)
    assert status == 200 and page.count('id="plain-') == 1
    assert "This installer retargets to prefixes of at most 8 bytes" in page
    status, page = render(Site([server_key], 57, "zstd", []), url, prefix)
    assert status == 200 and "offers no installer" in page and 'id="nix-conf"' in page
    status, page = render(Site([], 57, "zstd", []), url, prefix)
    assert 'id="nix-conf"' not in page and "signs nothing" in page
