"""The page ``nix-prefix serve`` answers at ``/``: for people, not for Nix.

Rendered from what the server knows: its signing keys, the longest prefix it
serves, the installers it offers (builder/offer.py), and, for a prefix given
in the query (``/?prefix=/home/alice/.nix``, the page's own GET form), the
one-liner that installs there and the nix.conf lines that make that Nix use
this server.  Plain HTML with its CSS inline: no script, nothing fetched from
elsewhere.  Every value written into it goes through ``html.escape``, and the
commands through ``shlex.quote``.

The prefix is checked by the installer's rules (installer/preflight.py
``resolve_prefix`` and ``check_retarget``): an absolute path of the
characters ``payload/storepath.py`` allows in a store dir, whose ``/store``
is no longer than the store dir the NARs were built at.  The query is read
by hand, bounded: one parameter, ``prefix``, percent-decoded to UTF-8 or
refused.
"""

from __future__ import annotations

import base64
import hashlib
import html
import posixpath
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from ..payload import __version__
from ..payload.machine import human_size
from ..payload.signing import PublicKey
from ..payload.storepath import StorePathError, check_store_dir
from .offer import Offered

MAX_QUERY = 2048  # bytes of a raw query string: far more than any prefix needs
MAX_PARAMS = 4
VERIFY_COMMAND = "python3 nix-prefix-verify"  # the standalone verifier, one file
EXAMPLE_PREFIX = "/home/alice/.nix"
_SHOWN = 80  # characters of a refused prefix shown back
# What a Host header may be: a DNS name or an IPv4 address, or [IPv6], and a port.
_HOST = re.compile(r"^([A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])"
                   r"(?::[0-9]{1,5})?\Z")


class QueryError(Exception):
    """A query this page does not take: ``status`` (4xx) and one line."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


def prefix_from_query(raw: str) -> str | None:
    """The prefix asked for in the raw (still %-encoded) query string, or None.

    Raises QueryError for a query that is too long, has other or repeated
    parameters, or a prefix that is not %-encoded UTF-8."""
    if not raw:
        return None
    if len(raw) > MAX_QUERY:
        raise QueryError(414, f"the query string is longer than {MAX_QUERY} bytes")
    parts = [p for p in raw.split("&") if p]
    if len(parts) > MAX_PARAMS:
        raise QueryError(400, "too many query parameters: give only prefix=/your/prefix")
    prefix = None
    for part in parts:
        key, _, value = part.partition("=")
        if key != "prefix":
            raise QueryError(400, "this page takes one query parameter: prefix=/your/prefix")
        if prefix is not None:
            raise QueryError(400, "prefix is given twice in the query")
        try:  # a form sends a space as +
            prefix = unquote_to_bytes(value.replace("+", " ")).decode("utf-8")
        except UnicodeDecodeError:
            raise QueryError(400, "the prefix in the query is not %-encoded UTF-8") from None
    return prefix


def check_prefix(text: str, max_prefix: int) -> str:
    """The canonical prefix for ``text`` as the installer's ``-p`` reads it, or raise
    ValueError with why not (one line, for the page)."""
    shown = repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")
    if not text.strip():
        raise ValueError("give the directory to install into, e.g. " + EXAMPLE_PREFIX)
    if text.startswith("~"):
        raise ValueError(f"{shown} starts with ~, which only your shell can expand: give "
                         "the whole path (echo ~/.nix prints it)")
    if not text.startswith("/"):
        raise ValueError(f"{shown} is not an absolute path: give it from /, "
                         "e.g. " + EXAMPLE_PREFIX)
    prefix = posixpath.normpath(text)  # what os.path.abspath makes of it in the installer
    if prefix == "/":
        raise ValueError("the prefix cannot be /: choose a directory such as " + EXAMPLE_PREFIX)
    try:
        check_store_dir(prefix)
    except StorePathError:
        raise ValueError(f"prefix {shown} has characters Nix-based tools cannot take "
                         "(spaces, quotes, non-ASCII...): choose a prefix of letters, "
                         "digits and + - . _ = @ , ~") from None
    size = len(prefix.encode())
    if size > max_prefix:
        raise ValueError(f"the prefix {shown} is too long: this server serves prefixes of "
                         f"at most {max_prefix} bytes (their store dir, PREFIX/store, at "
                         f"most {max_prefix + len('/store')}), and it is {size}")
    return prefix


def base_url(host: str, scheme: str) -> str | None:
    """``scheme://host`` as the client named this server (its Host header), or None if
    that is not a plain host name or address with a port."""
    if scheme not in ("http", "https") or not _HOST.match(host):
        return None
    return f"{scheme}://{host}"


def fingerprint(key: PublicKey) -> str:
    """``SHA256:`` and the unpadded base64 of the sha256 of the key's 32 bytes (as
    ``ssh-keygen -l`` prints one): short enough to compare by eye over the phone."""
    digest = hashlib.sha256(key.key).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def nix_conf_lines(url: str, cache_keys: Sequence[PublicKey], prefix: str) -> list[str]:
    """The nix.conf lines that make a Nix at ``prefix`` substitute from this server
    (none when it signs nothing: a Nix keeping require-sigs on would take nothing)."""
    if not cache_keys:
        return []
    return [f"substituters = {url}{prefix}/store",
            "trusted-public-keys = " + " ".join(str(k) for k in cache_keys)]


@dataclass
class Lines:
    """What a user at one prefix runs and writes, for one installer."""

    verify: str  # verify, then install: "" when the installer is unsigned
    plain: str  # curl | sh
    nix_conf: list[str]
    note: str  # why the one-liner lacks --substituter, or ""


def install_lines(url: str, offered: Offered, cache_keys: Sequence[PublicKey],
                  prefix: str) -> Lines:
    """The one-liners that install ``offered`` (at ``url``/installers/) into ``prefix``
    with this server as its substituter: through the verifier, and plain
    ``curl | sh`` (the installer checks its signature itself); and the nix.conf lines.

    The installer's ``--trusted-key`` pins the installer as well as going to
    nix.conf (installer/main.py), so ``--substituter`` is given only when one of
    the server's keys signed the installer; the note says what to do otherwise."""
    nix_conf = nix_conf_lines(url, cache_keys, prefix)
    install = ["-y", "-p", prefix]
    if set(offered.signed_by) & set(cache_keys):
        pins = [str(k) for k in cache_keys]
        install += ["--substituter", f"{url}{prefix}/store"]
        note = ""
    else:
        pins = [str(k) for k in offered.signed_by]
        if not cache_keys:
            note = ("This server signs nothing (no --sign-key), so a Nix keeping "
                    "require-sigs on takes nothing from it.")
        else:
            # --substituter needs --trusted-key, which would refuse this installer.
            note = ("After installing, add the nix.conf lines below to "
                    f"{prefix}/etc/nix/nix.conf: the installer takes --substituter only "
                    "with --trusted-key, and the server's key did not sign this installer.")
    trust = [a for k in pins for a in ("--trusted-key", k)]
    fetch = f"curl -fsSL {shlex.quote(f'{url}/installers/{offered.file_name}')} | "
    verify = ""
    if pins:
        # The installer needs --trusted-key beside --substituter (for nix.conf).
        run = install + (trust if "--substituter" in install else [])
        verify = f"{fetch}{VERIFY_COMMAND} {shlex.join(trust)} --run -- {shlex.join(run)}"
    plain = f"{fetch}sh -s -- {shlex.join(trust + install)}"
    return Lines(verify, plain, nix_conf, note)


@dataclass
class Site:
    """What the page shows that does not depend on the request."""

    keys: Sequence[PublicKey]
    max_prefix: int  # bytes: the longest prefix the cache serves
    compression: str
    installers: Sequence[Offered]


def render(site: Site, url: str, asked: str | None) -> tuple[int, str]:
    """(HTTP status, the page) for a request from ``url`` asking about ``asked``
    (the prefix in the query, or None): 400 with the problem said on the page for
    a prefix the installer would refuse."""
    status, result, problem = 200, "", ""
    if asked is not None:
        try:
            prefix = check_prefix(asked, site.max_prefix)
            result = _result(site, url, prefix)
        except ValueError as e:
            status = 400
            problem = f'<p class="problem" role="alert">{_e(str(e))}</p>'
    body = "\n".join([
        f"<header><h1>nix-prefix</h1><p>A Nix binary cache for every prefix, at "
        f"<code>{_e(url)}</code>: install Nix into a directory you own, without root, "
        "and fetch from here what it would otherwise build.</p></header>",
        "<main>",
        _form(site, asked, problem),
        result,
        _installers(site),
        _key(site),
        _server(site, url),
        "</main>",
        f'<footer>nix-prefix {_e(__version__)} &middot; <code>nix-prefix serve</code>'
        '</footer>',
    ])
    return status, (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>nix-prefix: Nix for your prefix</title><style>{CSS}</style></head>"
        f"<body>\n{body}\n</body></html>\n")


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _form(site: Site, asked: str | None, problem: str) -> str:
    # Typed back into the form for correcting: control and direction characters shown
    # as U+FFFD (a NUL is not even valid HTML), and no longer than the query allows.
    value = _e("".join(c if c.isprintable() else "\ufffd" for c in (asked or "")))
    return (
        '<section id="install"><h2>Install Nix into your prefix</h2>'
        '<form method="get" action="/">'
        '<label for="prefix">Your prefix</label>'
        f'<div class="row"><input id="prefix" name="prefix" value="{value}" '
        f'placeholder="{EXAMPLE_PREFIX}" maxlength="{site.max_prefix}" '
        'autocomplete="off" spellcheck="false" required>'
        '<button type="submit">Show my commands</button></div></form>'
        f'<p class="hint">A directory you own (or will), given whole from <code>/</code>, '
        f"of at most {site.max_prefix} bytes of letters, digits and "
        "<code>+ - . _ = @ , ~</code>; the store goes to <code>PREFIX/store</code>.</p>"
        f"{problem}</section>")


def _result(site: Site, url: str, prefix: str) -> str:
    parts = [f'<section id="commands"><h2>For <code>{_e(prefix)}</code></h2>']
    nix_conf: list[str] = []
    if not site.installers:
        parts.append("<p>This server offers no installer (<code>--installer</code>): "
                     "install Nix in the prefix another way, then use the nix.conf lines "
                     "below.</p>")
        nix_conf = nix_conf_lines(url, site.keys, prefix)
    for offered in site.installers:
        parts.append(f"<h3>{_e(offered.file_name)}</h3>")
        if len(prefix.encode()) > offered.max_prefix:
            parts.append(f'<p class="problem">This installer retargets to prefixes of at '
                         f"most {offered.max_prefix} bytes, and "
                         f"<code>{_e(prefix)}</code> is {len(prefix.encode())}.</p>")
            continue
        lines = install_lines(url, offered, site.keys, prefix)
        nix_conf = lines.nix_conf
        if lines.verify:
            parts.append("<p>Check it, then install: <code>nix-prefix-verify</code> runs "
                         "the installer only if the publisher's key signed it (get the "
                         "verifier once, through a channel you trust: pip, a distribution "
                         "package, or its one file copied from a machine you trust; not "
                         "from this server).</p>")
            parts.append(_pre(lines.verify, "verify-" + offered.name))
            parts.append("<p>Or without the verifier (the installer checks the signature "
                         "itself before it writes anything):</p>")
        else:
            parts.append("<p>This installer is <strong>unsigned</strong>: nothing can "
                         "check who made it.</p>")
        parts.append(_pre(lines.plain, "plain-" + offered.name))
        if lines.note:
            parts.append(f'<p class="note">{_e(lines.note)}</p>')
    if nix_conf:
        parts.append(f"<h3>nix.conf</h3><p>What the installer writes to "
                     f"<code>{_e(prefix)}/etc/nix/nix.conf</code> (with "
                     "<code>require-sigs</code> kept on), for a Nix there that you set up "
                     "yourself:</p>")
        parts.append(_pre("\n".join(nix_conf), "nix-conf"))
    elif not site.keys:
        parts.append('<p class="note">This server signs nothing, so no Nix that checks '
                     "signatures will take paths from it.</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _pre(text: str, css_id: str) -> str:
    return f'<pre id="{css_id}"><code>{_e(text)}</code></pre>'


def _installers(site: Site) -> str:
    if not site.installers:
        return ('<section id="installers"><h2>Installers</h2><p>None offered here.</p>'
                "</section>")
    rows = []
    for o in site.installers:
        signed = ("signed by " + ", ".join(_e(k.name) for k in o.signed_by)
                  if o.signed_by else '<span class="problem">unsigned</span>')
        rows.append(
            f'<tr><td class="nowrap"><a href="/installers/{_e(o.file_name)}" download>'
            f"{_e(o.file_name)}</a></td><td class=\"nowrap\">{_e(o.nix_version) or '&mdash;'}"
            f'</td><td class="nowrap" title="{o.size} bytes">{_e(human_size(o.size))}</td>'
            f'<td class="hash"><code>{_e(o.sha256)}</code></td><td>{signed}</td></tr>')
    return ('<section id="installers"><h2>Installers</h2><div class="scroll"><table>'
            "<thead><tr><th>file</th><th>Nix</th><th>size</th><th>sha256</th>"
            "<th>signature</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table></div></section>")


def _key(site: Site) -> str:
    if not site.keys:
        return ('<section id="key"><h2>Publisher key</h2><p class="problem">None: this '
                "server runs without <code>--sign-key</code>.</p></section>")
    items = []
    for key in site.keys:
        items.append(f"<dt>name</dt><dd><code>{_e(key.name)}</code></dd>"
                     f"<dt>public key</dt><dd><code>{_e(str(key))}</code></dd>"
                     f"<dt>fingerprint</dt><dd><code>{_e(fingerprint(key))}</code></dd>")
    return ('<section id="key"><h2>Publisher key</h2><p>Compare it with the one your '
            "site publishes elsewhere before you trust it.</p><dl>" + "".join(items)
            + "</dl></section>")


def _server(site: Site, url: str) -> str:
    return (
        '<section id="server"><h2>This server</h2><dl>'
        f"<dt>substituter</dt><dd><code>{_e(url)}</code> followed by your store dir, e.g. "
        f"<code>{_e(url)}{EXAMPLE_PREFIX}/store</code></dd>"
        f"<dt>longest prefix</dt><dd>{site.max_prefix} bytes (store dir "
        f"{site.max_prefix + len('/store')})</dd>"
        f"<dt>NARs</dt><dd>retargeted to your store dir as they are sent, "
        f"{_e(site.compression)}</dd></dl></section>")


CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--bg:#f6f7f9;--card:#fff;--line:#dde1e8;
--accent:#3b6fb6;--bad:#a3261b;--code:#0f1623;--codefg:#e6edf7}
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
header,main,footer{max-width:60rem;margin:0 auto;padding:0 1.25rem}
header{padding-top:2rem}
h1{margin:0;font-size:1.9rem;letter-spacing:-.02em;color:var(--accent)}
header p{margin:.3rem 0 1rem;color:var(--muted)}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;
padding:1rem 1.25rem;margin:1rem 0}
h2{margin:0 0 .6rem;font-size:1.2rem}
h3{margin:1rem 0 .3rem;font-size:1rem}
label{display:block;font-weight:600;margin-bottom:.3rem}
.row{display:flex;gap:.5rem;flex-wrap:wrap}
input{flex:1;min-width:14rem;font:inherit;font-family:ui-monospace,monospace;
padding:.5rem .6rem;border:1px solid var(--line);border-radius:6px}
input:focus{outline:2px solid var(--accent);border-color:var(--accent)}
button{font:inherit;font-weight:600;padding:.5rem 1rem;border:0;border-radius:6px;
background:var(--accent);color:#fff;cursor:pointer}
.hint,.note{color:var(--muted);font-size:.9rem}
.problem{color:var(--bad);font-weight:600}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em;
overflow-wrap:anywhere}
pre{background:var(--code);color:var(--codefg);padding:.75rem 1rem;border-radius:6px;
white-space:pre-wrap;overflow-wrap:anywhere;margin:.3rem 0 .8rem}
pre code{font-size:.85rem}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.92rem}
th,td{text-align:left;padding:.35rem .6rem .35rem 0;border-bottom:1px solid var(--line);
vertical-align:top}
td.hash code{font-size:.75rem;word-break:break-all}
td.nowrap{white-space:nowrap}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:0}
dt{color:var(--muted)}
dd{margin:0}
a{color:var(--accent)}
footer{color:var(--muted);font-size:.85rem;padding-bottom:2rem}
"""
