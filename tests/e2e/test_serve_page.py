"""``nix-prefix serve``'s page at ``/`` and its installers at ``/installers/NAME.sh``.

Fast tests run the server (tests/e2e/test_serve.py's ``Running``, on 127.0.0.1)
over the small sample closure, offering a signed and an unsigned installer,
and fetch the page and the installers over HTTP: the page says the key, the
limit and the installers; the lines filled in for two prefixes are the
exact commands; the installers come whole, with their ETag, and 304, HEAD;
hostile queries and names get a 4xx and one line.  The slow tests run the
shown one-liner for real as an unprivileged user (it installs, then
substitutes from the same server), and open the page in headless Chromium.
"""

from __future__ import annotations

import hashlib
import html
import http.client
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.master import Master, ServeOptions
from nix_prefix.builder.offer import load_all
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.builder.page import fingerprint
from nix_prefix.builder.signer import load_secret_key
from nix_prefix.payload import signing

from .test_serve import Running, _rss_mb, big_path, get, raw, running
from tests.support import build_small

MASTER = "a-long-master-prefix-for-the-page"


@pytest.fixture(scope="module")
def site(module_dir: Path) -> dict:
    built = build_small(module_dir, name=MASTER)
    built.nix.run("nix-store", ["--generate-binary-cache-key", "page-key-1",
                                str(module_dir / "k.sec"), str(module_dir / "k.pub")])
    key = load_secret_key(module_dir / "k.sec")
    signed = module_dir / "signed.sh"
    build_installer(read_closure(built.closure_info), signed,
                    BuildOptions(compression="xz", level=1, sign_keys=[key]))
    unsigned = module_dir / "plain-one.sh"
    shutil.copy(built.installer, unsigned)
    master = Master([built.installer], ServeOptions(sign_keys=[key]))
    offered = load_all([signed, unsigned])
    return {"built": built, "master": master, "key": key, "dir": module_dir,
            "public": (module_dir / "k.pub").read_text().strip(),
            "signed": signed, "unsigned": unsigned, "offered": offered}


@pytest.fixture(scope="module")
def server(site: dict):
    with running(site["master"], installers=list(site["offered"].values())) as r:
        yield r


def text_of(body: bytes, css_id: str) -> str:
    """The text of the ``<pre id=CSS_ID>`` block of the page, unescaped."""
    m = re.search(rf'<pre id="{css_id}"><code>(.*?)</code></pre>', body.decode(), re.S)
    assert m, f"no {css_id} block in the page"
    return html.unescape(m.group(1))


def request(port: int, method: str, path: str,
            headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_the_page_says_key_limit_and_installers(site: dict, server: Running) -> None:
    status, headers, body = get(server.port, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    # No script may run, nothing may load (the browser test sees the inline CSS apply).
    assert headers["Content-Security-Policy"].startswith("default-src 'none'; ")
    page = html.unescape(body.decode())
    public = signing.parse_public_key(site["public"])
    assert "page-key-1" in page and site["public"] in page and fingerprint(public) in page
    # The fingerprint is the sha256 of the key's 32 bytes, as ssh-keygen -l prints one.
    assert fingerprint(public) == "SHA256:" + __import__("base64").b64encode(
        hashlib.sha256(public.key).digest()).decode().rstrip("=")
    longest = len(str(site["built"].prefix))
    assert f"{longest} bytes (store dir {longest + 6})" in page
    for name in ("signed.sh", "plain-one.sh"):
        data = (site["dir"] / name).read_bytes()
        assert f'href="/installers/{name}"' in page and hashlib.sha256(data).hexdigest() in page
        assert f'title="{len(data)} bytes"' in page
    assert "signed by page-key-1" in page and "unsigned" in page
    assert "<script" not in body.decode() and "http" not in re.sub(
        r"http://127\.0\.0\.1:\d+", "", body.decode())  # nothing fetched from elsewhere
    # No prefix asked: no commands yet.
    assert 'id="plain-' not in page


@pytest.mark.parametrize("prefix", ["/home/alice/.nix", "/scratch/bob/nix-2026"])
def test_the_lines_for_a_prefix(site: dict, server: Running, prefix: str) -> None:
    url = f"http://127.0.0.1:{server.port}"
    status, _, body = get(server.port, "/?prefix=" + prefix.replace("/", "%2F"))
    assert status == 200, body
    key = site["public"]
    plain = text_of(body, "plain-signed")
    assert plain == (f"curl -fsSL {url}/installers/signed.sh | sh -s -- --trusted-key {key} "
                     f"-y -p {prefix} --substituter {url}{prefix}/store")
    assert text_of(body, "verify-signed") == (
        f"curl -fsSL {url}/installers/signed.sh | python3 nix-prefix-verify --trusted-key "
        f"{key} --run -- -y -p {prefix} --substituter {url}{prefix}/store --trusted-key {key}")
    assert text_of(body, "nix-conf") == (f"substituters = {url}{prefix}/store\n"
                                         f"trusted-public-keys = {key}")
    # The unsigned installer: installed plainly, the nix.conf lines added by hand after.
    page = html.unescape(body.decode())
    assert f"curl -fsSL {url}/installers/plain-one.sh | sh -s -- -y -p {prefix}" in page
    assert f"add the nix.conf lines below to {prefix}/etc/nix/nix.conf" in page
    # The form keeps what was typed.
    assert f'value="{prefix}"' in page


def test_a_prefix_is_read_as_the_installer_reads_it(site: dict, server: Running) -> None:
    url = f"http://127.0.0.1:{server.port}"
    # A form sends spaces as + and may send a trailing slash; .. is resolved as
    # os.path.abspath does in the installer.
    status, _, body = get(server.port, "/?prefix=%2Fhome%2Falice%2Fx%2F..%2F.nix%2F")
    assert status == 200 and f"-p /home/alice/.nix --substituter {url}/home/alice/.nix/store" \
        in text_of(body, "plain-signed")


def test_the_lines_name_the_url_the_client_used(server: Running) -> None:
    """Behind a TLS proxy that passes Host and X-Forwarded-Proto on, the lines name
    https://HOST, not the address the server listens on."""
    status, _, body = get(server.port, "/?prefix=/home/alice/.nix",
                          {"Host": "cache.example", "X-Forwarded-Proto": "https"})
    assert status == 200
    assert text_of(body, "plain-signed").startswith(
        "curl -fsSL https://cache.example/installers/signed.sh | sh -s -- ")
    assert text_of(body, "nix-conf").startswith(
        "substituters = https://cache.example/home/alice/.nix/store\n")


def test_the_installers_download_whole_with_etag_head_and_304(site: dict,
                                                              server: Running) -> None:
    for name in ("signed.sh", "plain-one.sh"):
        data = (site["dir"] / name).read_bytes()
        status, headers, body = get(server.port, f"/installers/{name}")
        assert status == 200 and body == data
        assert headers["Content-Length"] == str(len(data))
        assert headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
        assert "max-age" in headers["Cache-Control"]
        status, head, body = request(server.port, "HEAD", f"/installers/{name}")
        assert status == 200 and body == b"" and head["Content-Length"] == str(len(data))
        assert head["ETag"] == headers["ETag"]
        status, _, body = get(server.port, f"/installers/{name}",
                              {"If-None-Match": headers["ETag"]})
        assert status == 304 and body == b""
        status, _, body = get(server.port, f"/installers/{name}",
                              {"If-None-Match": '"another"'})
        assert status == 200 and body == data


def test_the_installer_through_curl_and_sh_checks(site: dict, server: Running) -> None:
    """What the page's line pipes: curl | sh -s -- --check --trusted-key K."""
    url = f"http://127.0.0.1:{server.port}/installers/signed.sh"
    done = subprocess.run(["sh", "-c", f"curl -fsSL {url} | sh -s -- --check --trusted-key "
                           f"'{site['public']}'"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "(trusted)" in done.stderr


HOSTILE_QUERIES = [
    ("prefix=%3Cscript%3Ealert(1)%3C%2Fscript%3E", 400, "<script>alert(1)</script>"),
    ("prefix=%2Fhome%2F%22%27%3E%3Cimg+src%3Dx+onerror%3Dalert(1)%3E", 400, "\"'><img"),
    ("prefix=%2Fhome%2Fa%00b", 400, "\x00"),
    ("prefix=%2F" + "a" * 1500, 400, ""),  # too long: said in a line of bounded length
    ("prefix=%2Fhome%2F%E2%80%AEnix", 400, "\u202e"),  # right-to-left override
    ("prefix=~%2F.nix", 400, ""),
    ("prefix=home%2Falice", 400, ""),
    ("prefix=%2F", 400, ""),
    ("prefix=%2Fa%2F%2E%2E", 400, ""),  # /a/.. is /
    ("prefix=", 400, ""),
    ("prefix=%", 400, ""),
    ("prefix", 400, ""),  # no value: as prefix= is
    ("prefix=%2F%2F", 400, ""),
    ("&&prefix=%2Fhome%2F%3Cb%3E&&", 400, "<b>"),
]


@pytest.mark.parametrize(("query", "status", "raw_value"), HOSTILE_QUERIES)
def test_a_bad_prefix_is_said_on_the_page_escaped(server: Running, query: str, status: int,
                                                  raw_value: str) -> None:
    got, headers, body = get(server.port, "/?" + query)
    assert got == status and headers["Content-Type"].startswith("text/html")
    text = body.decode()
    problems = re.findall(r'<p class="problem" role="alert">(.*?)</p>', text)
    assert len(problems) == 1 and "\n" not in problems[0] and len(problems[0]) < 400
    assert 'id="plain-' not in text  # no commands for a prefix the installer refuses
    if raw_value:
        assert raw_value not in text  # escaped (or cut), never as sent
    assert "<script" not in text and "<img" not in text


@pytest.mark.parametrize("path", [
    "/?prefix=%ff%fe",  # not UTF-8
    "/?prefix=%2Fa&prefix=%2Fb",
    "/?x=1",
    "/?prefix=%2Fa&" + "&".join(f"p{i}=1" for i in range(200)),
    "/?prefix=%2F" + "a" * 3000,  # longer than any query the page takes: 414
    "/installers/nope.sh",
    "/installers/k.sec",
    "/installers/signed.sh?x=1",
    "/installers/..%2Fk.sec",
    "/installers/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/installers/signed.sh%00",
    "/installers/",
    "/installers/signed.sh/x",
    "/installers/%ff.sh",
    "/?%ff=1",
    "/?pre%66ix=%2Fa",
])
def test_hostile_requests_get_a_4xx_and_one_line(server: Running, path: str) -> None:
    status, headers, body = get(server.port, path)
    assert 400 <= status < 500, (status, body[:200])
    assert headers["Content-Type"].startswith("text/plain")
    assert body.count(b"\n") == 1 and b"Traceback" not in body and len(body) < 300


def test_a_hostile_host_header_gets_a_4xx(server: Running) -> None:
    for host in ("<script>", "a b", "x" * 300, "evil.example/path"):
        answer = raw(server.port, f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close"
                                  "\r\n\r\n".encode())
        m = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
        assert m and 400 <= int(m.group(1)) < 500, answer[:200]
        assert b"<script>" not in answer


def test_an_installer_to_a_client_that_does_not_read_holds_a_piece_only(
        site: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Bounded memory: a 64 MiB installer sent to a client that reads nothing; clients
    that leave mid-download are no error."""
    nix = site["built"].nix
    path = big_path(nix, tmp_path)
    info = nix.write_closure_info([path], tmp_path / "info")
    installer = tmp_path / "big.sh"
    build_installer(read_closure(info), installer, BuildOptions(compression="zstd", level=1))
    size = installer.stat().st_size
    assert size > 64 << 20
    offered = load_all([installer])
    with running(site["master"], installers=list(offered.values())) as r:
        before = _rss_mb()
        with socket.create_connection(("127.0.0.1", r.port), timeout=10) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            s.sendall(b"GET /installers/big.sh HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = s.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200")
            time.sleep(3)  # for the server to fill the socket buffers and wait
            grown = _rss_mb() - before
            assert grown < 24, f"the server holds {grown:.0f} MiB for one stalled client"
            # The rest still comes, whole, once the client reads.
            head, _, body = answer.partition(b"\r\n\r\n")
            digest, got = hashlib.sha256(body), len(body)
            while data := s.recv(1 << 20):
                digest.update(data)
                got += len(data)
        assert got == size and digest.hexdigest() == offered["big"].sha256
        # Clients that leave mid-download: no error logged, no task left, still serving.
        caplog.clear()
        before_tasks = r.tasks()
        for _ in range(4):
            with socket.create_connection(("127.0.0.1", r.port), timeout=10) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
                s.sendall(b"GET /installers/big.sh HTTP/1.1\r\nHost: x\r\n\r\n")
                assert s.recv(4096).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 60
        while r.tasks() > before_tasks and time.monotonic() < deadline:
            time.sleep(0.2)
        assert r.tasks() <= before_tasks
        assert not [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR]
        assert get(r.port, "/installers/big.sh", {"If-None-Match": offered["big"].etag})[0] \
            == 304
    for one in offered.values():
        one.close()


def test_an_installer_replaced_or_changed_on_disk(site: dict, tmp_path: Path) -> None:
    """A file renamed over the offered one changes nothing the URL serves (the file
    opened at start is sent, under its sha256); one changed in place is a 500 and one
    line, never other bytes under the old ETag."""
    offered_file = tmp_path / "offered.sh"
    shutil.copy(site["signed"], offered_file)
    data = offered_file.read_bytes()
    first = load_all([offered_file])["offered"]
    try:
        with running(site["master"], installers=[first]) as r:
            newer = tmp_path / "newer.sh"
            shutil.copy(site["unsigned"], newer)
            os.rename(newer, offered_file)
            status, headers, body = get(r.port, "/installers/offered.sh")
            assert status == 200 and body == data
            assert headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    finally:
        first.close()
    second = load_all([offered_file])["offered"]
    try:
        with running(site["master"], installers=[second]) as r:
            with open(offered_file, "ab") as f:  # changed in place (here: longer)
                f.write(b"#")
            status, _, body = get(r.port, "/installers/offered.sh")
            assert status == 500 and body.count(b"\n") == 1 and b"Traceback" not in body
    finally:
        second.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from nix_prefix.builder.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "NO_COLOR": "1"})


def test_serve_refuses_what_is_not_an_installer_with_one_line(site: dict,
                                                              tmp_path: Path) -> None:
    master = str(site["built"].installer)
    text = tmp_path / "notes.sh"
    text.write_text("#!/bin/sh\necho hello\n")
    cut = tmp_path / "cut.sh"
    cut.write_bytes(site["signed"].read_bytes()[:-100])
    flipped = tmp_path / "flipped.sh"
    data = bytearray(site["signed"].read_bytes())
    data[len(data) // 2] ^= 1
    flipped.write_bytes(bytes(data))
    odd = tmp_path / "a b.sh"
    shutil.copy(site["signed"], odd)
    for args, needle in (([str(text)], "notes.sh is damaged: it does not start with a nix-"),
                         ([str(cut)], "damaged"),
                         ([str(flipped)], "damaged"),
                         ([str(tmp_path / "missing.sh")], "No such file"),
                         ([str(tmp_path)], "not a regular file"),
                         ([str(odd)], "letters, digits and . _ + - only"),
                         ([str(site["signed"]), str(site["signed"])], "would both be")):
        done = cli("serve", master, "--listen", "127.0.0.1:0",
                   *(a for f in args for a in ("--installer", f)))
        assert done.returncode != 0 and needle in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert len([line for line in done.stderr.splitlines() if line.strip()]) <= 2


# -- a real browser ------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def headless_chromium(profile: Path):
    """Debian's chromium, headless, driven through Debian's chromedriver by selenium (the
    standard WebDriver client); nothing fetched from elsewhere (no Selenium Manager)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("Debian's chromium and chromium-driver are not installed: run .ci/setup.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", "--window-size=1000,1400"):
        options.add_argument(arg)
    service = Service(executable_path=CHROMEDRIVER)
    return webdriver.Chrome(options=options, service=service)


@pytest.mark.slow
def test_the_page_in_a_headless_browser(site: dict, server: Running, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    url = f"http://127.0.0.1:{server.port}"
    driver = headless_chromium(tmp_path / "profile")
    try:
        driver.set_page_load_timeout(60)
        driver.get(url + "/")
        assert driver.title.startswith("nix-prefix")
        assert driver.find_element(By.TAG_NAME, "h1").text == "nix-prefix"
        rows = driver.find_elements(By.CSS_SELECTOR, "#installers tbody tr")
        assert [r.find_element(By.TAG_NAME, "a").text for r in rows] == ["signed.sh",
                                                                         "plain-one.sh"]
        assert site["public"] in driver.find_element(By.ID, "key").text
        # Styled (the inline CSS applied), laid out (the form is visible and usable).
        h1 = driver.find_element(By.TAG_NAME, "h1")
        assert h1.value_of_css_property("color") != "rgba(0, 0, 0, 1)"
        box = driver.find_element(By.ID, "prefix")
        assert box.is_displayed() and box.size["width"] > 200
        for prefix in ("/home/alice/.nix", "/scratch/bob/nix"):
            box = driver.find_element(By.ID, "prefix")
            box.clear()
            box.send_keys(prefix)
            # The page of the previous prefix also has #plain-signed: wait until the
            # old document is gone before looking for the new one (else it races).
            before = driver.find_element(By.TAG_NAME, "html")
            driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
            WebDriverWait(driver, 60).until(expected_conditions.staleness_of(before))
            WebDriverWait(driver, 60).until(
                expected_conditions.presence_of_element_located((By.ID, "plain-signed")))
            assert driver.current_url == f"{url}/?prefix={prefix.replace('/', '%2F')}"
            plain = driver.find_element(By.ID, "plain-signed").text
            assert plain == (f"curl -fsSL {url}/installers/signed.sh | sh -s -- --trusted-key "
                             f"{site['public']} -y -p {prefix} --substituter "
                             f"{url}{prefix}/store")
            assert driver.find_element(By.ID, "nix-conf").text.splitlines() == [
                f"substituters = {url}{prefix}/store",
                f"trusted-public-keys = {site['public']}"]
            assert driver.find_element(By.ID, "prefix").get_attribute("value") == prefix
        # A bad prefix: said on the page, as text (the markup is not run or rendered).
        box = driver.find_element(By.ID, "prefix")
        box.clear()
        box.send_keys("/home/<img src=x onerror=alert(1)>")
        before = driver.find_element(By.TAG_NAME, "html")
        driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        WebDriverWait(driver, 60).until(expected_conditions.staleness_of(before))
        problem = WebDriverWait(driver, 60).until(
            expected_conditions.presence_of_element_located(
                (By.CSS_SELECTOR, ".problem[role=alert]")))
        assert "characters Nix-based tools cannot take" in problem.text
        assert "<img src=x onerror=alert(1)>" in problem.text
        assert not driver.find_elements(By.CSS_SELECTOR, "main img")
        assert not driver.find_elements(By.ID, "plain-signed")
        # The screenshot of the filled-in page (docs/serving-page.png is one).
        driver.get(f"{url}/?prefix=%2Fhome%2Falice%2F.nix")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 1000, "height": min(int(height), 4000), "deviceScaleFactor": 1,
            "mobile": False})
        shot = tmp_path / "serving-page.png"
        assert driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        if os.environ.get("NIX_PREFIX_PAGE_SCREENSHOT"):
            shutil.copy(shot, os.environ["NIX_PREFIX_PAGE_SCREENSHOT"])
    finally:
        driver.quit()


# -- the shown line, for real ----------------------------------------------------------------


def _bin_dir(directory: Path) -> Path:
    """A PATH with what the one-liner needs (curl, sh, python3) and no Nix of the
    machine's: the Nix that substitutes is the one installed."""
    directory.mkdir()
    for tool in ("curl", "sh", "python3"):  # the system's, which any uid may run
        os.symlink(f"/usr/bin/{tool}" if tool != "sh" else "/bin/sh", directory / tool)
    directory.chmod(0o755)
    return directory


def _verifier(directory: Path) -> Path | None:
    """The one-file standalone verifier (``nix-prefix verifier -o FILE``) written into
    DIRECTORY as the page's line names it, or None where this nix-prefix has none yet."""
    try:
        from nix_prefix.builder.bundles import write_verifier
    except ImportError:
        return None
    out = directory / "nix-prefix-verify"
    write_verifier(out)
    out.chmod(0o644)
    return out


@pytest.fixture(scope="module")
def nix_world() -> Iterator[dict]:
    """A self-contained Nix in a signed installer, built at a long prefix, and a program
    it does not hold (both served), in a dir uid 65534 can reach."""
    from nix_prefix.builder.localnix import LocalNix
    from nix_prefix.builder.samples import build_nix_closure, build_small_closure

    from tests.conftest import reachable_dir
    from tests.support import script_package

    with reachable_dir("np-page-") as base:
        nix = LocalNix(base / "a-long-build-prefix-for-the-page-end-to-end")
        roots = [build_nix_closure(nix), *build_small_closure(nix)]
        info = nix.write_closure_info(roots, base / "closure-info")
        sec, pub = base / "publisher.sec", base / "publisher.pub"
        nix.run("nix-store", ["--generate-binary-cache-key", "publisher-1", str(sec),
                              str(pub)])
        installer = base / "nix-installer.sh"
        build_installer(read_closure(info), installer,
                        BuildOptions(level=0, sign_keys=[load_secret_key(sec)]))
        # What the installer does not hold and the server does: a program built here.
        expr = base / "extra.nix"
        expr.write_text(script_package("served-hello", "served-hello",
                                       "fetched from the server"))
        extra = nix.run("nix-build", ["--no-out-link", str(expr)]).stdout.decode().strip()
        yield {"base": base, "installer": installer, "sec": sec,
               "key": pub.read_text().strip(), "extra": extra,
               "extra_info": nix.write_closure_info([extra], base / "extra-info")}


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as an unprivileged user")
@pytest.mark.parametrize("kind", ["plain", "verify"])
def test_the_shown_line_installs_and_then_substitutes_from_the_server(
        nix_world: dict, kind: str) -> None:
    """As uid 65534: the one-liner the page shows for a prefix (plain curl | sh, or
    through the standalone verifier) installs the offered installer (a self-contained
    Nix) there, and that Nix, which may not build (--max-jobs 0), fetches from the
    same server a path the installer did not hold."""
    from .test_serve import serving
    from tests.conftest import NOBODY
    from tests.support import as_user

    base, key = nix_world["base"], nix_world["key"]
    home = base / f"home-{kind}"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    if kind == "verify" and _verifier(home) is None:
        pytest.skip("this nix-prefix has no standalone verifier (nix-prefix verifier) yet")
    env = {"PATH": str(_bin_dir(base / f"bin-{kind}")), "HOME": str(home), "USER": "nobody"}
    installer, extra = nix_world["installer"], nix_world["extra"]
    with serving(str(installer), str(nix_world["extra_info"]), "--sign-key",
                 str(nix_world["sec"]), "--installer", str(installer)) as url:
        prefix = home / ".nix"
        port = int(url.rpartition(":")[2])
        status, _, body = get(port, f"/?prefix={prefix}")
        assert status == 200, body
        page = html.unescape(body.decode())
        version = subprocess.run(["nix-store", "--version"], capture_output=True, text=True,
                                 check=True).stdout.split()[-1]
        assert f">{version}</td>" in page  # the Nix the installer sets up, in its row
        fetch = f"curl -fsSL {url}/installers/nix-installer.sh | "
        install = f"-y -p {prefix} --substituter {url}{prefix}/store"
        line = text_of(body, f"{kind}-nix-installer")
        assert line == (f"{fetch}sh -s -- --trusted-key {key} {install}" if kind == "plain"
                        else f"{fetch}python3 nix-prefix-verify --trusted-key {key} --run -- "
                             f"{install} --trusted-key {key}")
        done = subprocess.run([*as_user(NOBODY), "/bin/sh", "-c", line], env=env, cwd=home,
                              capture_output=True, text=True, timeout=900, check=False)
        assert done.returncode == 0, done.stderr
        conf = (prefix / "etc/nix/nix.conf").read_text()
        for wanted in text_of(body, "nix-conf").splitlines():
            assert wanted + "\n" in conf
        assert (prefix / "store").stat().st_uid == NOBODY

        use = f". {prefix}/etc/profile.d/nix.sh && "
        target = f"{prefix}/store/{extra.rpartition('/')[2]}"
        fetched = subprocess.run(
            [*as_user(NOBODY), "/bin/sh", "-c",
             use + f"nix-store -r {target} --max-jobs 0 && {target}/bin/served-hello"],
            env=env, capture_output=True, text=True, timeout=600, check=False)
        assert fetched.returncode == 0, fetched.stderr
        assert f"copying path '{target}' from '{url}{prefix}/store'" in fetched.stderr
        assert fetched.stdout.strip().endswith("fetched from the server")
        assert "building" not in fetched.stderr

