"""Binary caches for any prefix, with stock Nix (the machine's 2.8) as the client.

A closure built with its derivations at a long store dir S1 becomes, through
``nix-prefix cache``, a signed binary cache for a shorter prefix Q.  A fresh
Nix at Q whose nix.conf the installer wrote (``--substituter``,
``--trusted-key``) substitutes every output of the expression from it and
builds nothing, over file:// and over http:// (``python -m http.server`` on
127.0.0.1); under another key it refuses; a corrupted NAR is refused by Nix
and by ``--from-cache``.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nix_prefix.builder.cache import CacheOptions, write_cache
from nix_prefix.builder.closure_info import read_closure
from nix_prefix.builder.derivations import with_derivations
from nix_prefix.builder.errors import BuildError
from nix_prefix.builder.fromcache import fetch_closure
from nix_prefix.builder.pack import BuildOptions, build_installer
from nix_prefix.builder.signer import load_secret_key
from nix_prefix.payload import hashes, narinfo, nix32, signing

from .test_exact_retarget import ATTRS, build_at_s1, nix_at
from tests.nix_versions import VERSIONS, nix_source
from tests.support import run_installer, tmpfs

pytestmark = pytest.mark.slow


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from nix_prefix.builder.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          check=False, env={**os.environ, "NO_COLOR": "1"})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("cache")
    expr, s1, nix, outs, info, closure, roots = build_at_s1(
        base, "s1-a-build-prefix-longer-than-any-target")
    installer = base / "with-drvs.sh"
    build_installer(closure, installer, BuildOptions(compression="xz", level=1, roots=roots))
    keys = {}
    for name in ("publisher", "stranger"):
        nix.run("nix-store", ["--generate-binary-cache-key", name, str(base / f"{name}.sec"),
                              str(base / f"{name}.pub")])
        keys[name] = (base / f"{name}.pub").read_text().strip()
    # A one-path closure without derivations: the installer that sets a prefix up.
    seed = base / "seed.txt"
    seed.write_text("a prefix set up by nix-prefix\n")
    seed_path = nix.run("nix-store", ["--add", str(seed)]).stdout.decode().strip()
    seed_info = nix.write_closure_info([seed_path], base / "seed-closure")
    seed_installer = base / "seed.sh"
    # Signed by both keys: the installer's --trusted-key pins the installer's publisher
    # as well as the cache's, and the tests pin either.
    build_installer(read_closure(seed_info), seed_installer,
                    BuildOptions(level=1, sign_keys=[load_secret_key(base / f"{name}.sec")
                                                     for name in ("publisher", "stranger")]))
    return {"base": base, "expr": expr, "s1": s1, "nix": nix, "outs": outs, "info": info,
            "installer": installer, "keys": keys, "seed_installer": seed_installer,
            "seed_info": seed_info}


def make_cache(world: dict, prefix: Path, out: Path, **options) -> None:
    key = load_secret_key(world["base"] / "publisher.sec")
    write_cache([world["installer"]], str(prefix), out,
                CacheOptions(level=1, sign_keys=[key], **options))


def set_up_prefix(world: dict, prefix: Path, url: str, key: str) -> subprocess.CompletedProcess:
    """Install the seed installer into PREFIX with the cache as substituter."""
    done = run_installer(world["seed_installer"], "-y", "-p", str(prefix),
                         "--substituter", url, "--trusted-key", key)
    assert done.returncode == 0, done.stderr
    conf = (prefix / "etc/nix/nix.conf").read_text()
    assert f"substituters = {url}\n" in conf
    assert f"trusted-public-keys = {key}\n" in conf
    assert "require-sigs = true\n" in conf
    return done


def outputs_at(prefix: Path, expr: Path) -> list[str]:
    inst = nix_at(prefix, "nix-instantiate", str(expr), *ATTRS)
    assert inst.returncode == 0, inst.stderr
    outs = nix_at(prefix, "nix-store", "-q", "--outputs", *inst.stdout.split())
    every = nix_at(prefix, "nix-store", "-qR", "--include-outputs", *inst.stdout.split())
    return sorted(set(outs.stdout.split()) |
                  {p for p in every.stdout.split() if not p.endswith(".drv")})


def client(version: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``nix_at`` for stock Nix VERSION: the machine's 2.8, or Debian's 2.26 and 2.34
    run from their unpacked trees through their own loader (never installed)."""
    tree = nix_source(version)
    if tree is None:
        return nix_at
    libs = tree / "usr/lib/x86_64-linux-gnu"

    def run(prefix: Path, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return nix_at(prefix, str(libs / "ld-linux-x86-64.so.2"), "--library-path",
                      f"{libs}:{libs}/nix", str(tree / "usr/bin" / tool), *args,
                      # The build hook re-executes /proc/self/exe, here the loader.
                      *(["--option", "build-hook", ""] if tool.startswith("nix-") else []))
    return run


def assert_substitutes_everything(world: dict, prefix: Path, url: str,
                                  version: str = "2.8") -> None:
    """nix-build at PREFIX (stock Nix VERSION), which may not build (--max-jobs 0),
    fetches every output of the expression from URL; the store verifies and the
    program runs."""
    nix = client(version)
    wanted = [p for p in outputs_at(prefix, world["expr"]) if "/store/" in p]
    assert wanted
    built = nix(prefix, "nix-build", "--no-out-link", "--max-jobs", "0", str(world["expr"]),
                *ATTRS)
    assert built.returncode == 0, built.stderr
    assert "will be built" not in built.stderr and "building '" not in built.stderr
    fetched = set(re.findall(r"copying path '([^']+)' from '([^']+)'", built.stderr))
    outputs = [p for p in wanted if not p.endswith((".txt", ".sh"))]  # toFile texts are local
    assert {p for p, _ in fetched} >= set(outputs) - {p for p in outputs if "fixed" in p}
    assert {u for _, u in fetched} == {url}
    verify = nix(prefix, "nix-store", "--verify", "--check-contents")
    assert verify.returncode == 0 and "error" not in verify.stderr, verify.stderr
    program = [p for p in built.stdout.split() if p.endswith("-b")][0]
    run = subprocess.run([f"{program}/bin/b"], capture_output=True, text=True, check=False)
    assert run.returncode == 0 and "configured by" in run.stdout
    # What Nix registered is signed by the publisher.
    sigs = nix(prefix, "nix", "--extra-experimental-features", "nix-command", "path-info",
               "--sigs", program)
    assert "publisher:" in sigs.stdout, sigs.stderr


@contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """``python -m http.server`` on 127.0.0.1 for DIRECTORY; stopped on exit."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind",
                             "127.0.0.1", "--directory", str(directory)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 20
        while "port" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (...)"
        port = re.search(r"port (\d+)", line)
        assert port, f"http.server did not start: {line!r}"
        yield f"http://127.0.0.1:{port.group(1)}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_fresh_nix_substitutes_everything_over_file(world: dict) -> None:
    base = world["base"]
    q, cache = base / "qf", base / "cache-f"
    make_cache(world, q, cache)
    url = f"file://{cache}"
    done = set_up_prefix(world, q, url, world["keys"]["publisher"])
    assert "fetch from " + url in done.stderr and "signed by publisher" in done.stderr
    assert_substitutes_everything(world, q, url)
    # closure --from-cache, then build from that dir: the same closure, no store needed.
    program = [p for p in outputs_at(q, world["expr"]) if p.endswith("-b")][0]
    fetched = base / "from-file"
    made = cli("closure", "--from-cache", url, program, "-o", str(fetched), "--trusted-key",
               world["keys"]["publisher"])
    assert made.returncode == 0, made.stderr
    assert f"--store-root {fetched / 'store'}" in made.stderr
    listed = (fetched / "store-paths").read_text().split()
    valid = nix_at(q, "nix-store", "-qR", program).stdout.split()
    assert sorted(listed) == sorted(valid)
    out = base / "from-file.sh"
    packed = cli("build", str(fetched), "--store-root", str(fetched / "store"), "-o", str(out),
                 "--level", "1")
    assert packed.returncode == 0, packed.stderr
    assert run_installer(out, "--check").returncode == 0


@pytest.mark.parametrize("version", [v for v in VERSIONS if v != "2.8"])
def test_newer_nix_substitutes_everything_and_refuses_another_key(world: dict,
                                                                  version: str) -> None:
    base = world["base"]
    q, cache = base / f"qv{version.replace('.', '')}", base / f"cache-v{version}"
    make_cache(world, q, cache)
    url = f"file://{cache}"
    set_up_prefix(world, q, url, world["keys"]["stranger"])
    refused = client(version)(q, "nix-build", "--no-out-link", "--max-jobs", "0",
                              str(world["expr"]), *ATTRS)
    assert refused.returncode != 0 and "not signed by any of the keys" in refused.stderr, \
        refused.stderr
    conf = q / "etc/nix/nix.conf"
    conf.write_text(conf.read_text().replace(world["keys"]["stranger"],
                                             world["keys"]["publisher"]))
    assert_substitutes_everything(world, q, url, version)


def test_a_fresh_nix_substitutes_everything_over_http(world: dict) -> None:
    base = world["base"]
    q, cache = base / "qh", base / "cache-h"
    make_cache(world, q, cache, compression="zstd")
    with http_server(cache) as url:
        set_up_prefix(world, q, url, world["keys"]["publisher"])
        assert_substitutes_everything(world, q, url)
        # --from-cache over HTTP, signatures checked: an installer for Q, no local store.
        program = [p for p in outputs_at(q, world["expr"]) if p.endswith("-b")][0]
        out = base / "from-http.sh"
        made = cli("build", "--from-cache", url, program, "-o", str(out), "--trusted-key",
                   world["keys"]["publisher"], "--level", "1")
        assert made.returncode == 0, made.stderr
        check = run_installer(out, "--check")
        assert check.returncode == 0, check.stderr
        listed = run_installer(out, "--list").stdout.split()
        assert program in listed and all(p.startswith(f"{q}/store/") for p in listed)


def test_under_another_key_nix_refuses(world: dict) -> None:
    base = world["base"]
    q, cache = base / "qk", base / "cache-k"
    make_cache(world, q, cache)
    set_up_prefix(world, q, f"file://{cache}", world["keys"]["stranger"])
    built = nix_at(q, "nix-build", "--no-out-link", "--max-jobs", "0", str(world["expr"]),
                   *ATTRS)
    assert built.returncode != 0
    assert "is not signed by any of the keys in 'trusted-public-keys'" in built.stderr
    for path in outputs_at(q, world["expr"]):
        if path.endswith(("-a", "-b", "-multi", "-multi-dev")):
            valid = nix_at(q, "nix-store", "--check-validity", path)
            assert valid.returncode != 0, f"{path} was substituted without a trusted signature"
    # --from-cache refuses it the same way, and writes nothing.
    program = [p for p in outputs_at(q, world["expr"]) if p.endswith("-b")][0]
    out = base / "never.sh"
    made = cli("build", "--from-cache", f"file://{cache}", program, "-o", str(out),
               "--trusted-key", world["keys"]["stranger"])
    assert made.returncode == 1
    assert "not signed by any trusted key (stranger)" in made.stderr
    assert "Traceback" not in made.stderr and not out.exists()


def _corrupt(cache: Path, base_name: str) -> None:
    """Change one byte of BASE_NAME's NAR in CACHE, recompressed, with a FileHash and
    FileSize to match: only the NarHash (which the signature covers) tells."""
    file = cache / narinfo.narinfo_file(base_name)
    info = narinfo.parse(file.read_text(), str(file))
    data = bytearray(lzma.decompress((cache / info.url).read_bytes()))
    i = data.index(b"configured" if b"configured" in data else b"lib")
    data[i] ^= 0x20
    packed = lzma.compress(bytes(data))
    digest = hashlib.sha256(packed).digest()
    info.url = narinfo.nar_url(digest, "xz")
    info.file_hash = hashes.format_sha256(digest)
    info.file_size = len(packed)
    (cache / info.url).write_bytes(packed)
    file.write_text(info.to_text())


def test_a_corrupted_nar_is_refused_by_nix_and_by_from_cache(world: dict) -> None:
    base = world["base"]
    q, cache = base / "qc", base / "cache-c"
    make_cache(world, q, cache)
    victim = next(n for n in (narinfo.parse(p.read_text(), str(p)).name
                              for p in cache.glob("*.narinfo")) if n.endswith("-b"))
    _corrupt(cache, victim)
    set_up_prefix(world, q, f"file://{cache}", world["keys"]["publisher"])
    built = nix_at(q, "nix-build", "--no-out-link", "--max-jobs", "0", str(world["expr"]),
                   *ATTRS)
    assert built.returncode != 0
    assert "hash mismatch" in built.stderr, built.stderr
    assert nix_at(q, "nix-store", "--check-validity", f"{q}/store/{victim}").returncode != 0

    out = base / "corrupt-dir"
    made = cli("closure", "--from-cache", f"file://{cache}", f"{q}/store/{victim}", "-o",
               str(out), "--trusted-key", world["keys"]["publisher"])
    assert made.returncode == 1
    assert "NAR hash mismatch" in made.stderr and "Traceback" not in made.stderr
    assert not (out / "store").exists() and not list(out.glob(".store.tmp-*"))
    with pytest.raises(BuildError, match="NAR hash mismatch"):
        fetch_closure(f"file://{cache}", [victim], base / "corrupt-fetch-empty", say=str)


def test_narinfos_are_what_nix_wrote_and_derivers_are_in_the_cache(world: dict) -> None:
    base = world["base"]
    q, cache = base / "qn", base / "cache-n"
    make_cache(world, q, cache)
    infos = {i.name: i for i in (narinfo.parse(p.read_text(), str(p), f"{q}/store")
                                 for p in cache.glob("*.narinfo"))}
    public = signing.parse_public_key(world["keys"]["publisher"])
    for name, info in infos.items():
        assert info.to_text() == (cache / narinfo.narinfo_file(name)).read_text()
        assert info.signed_by([public]) == [public]
        assert (cache / info.url).stat().st_size == info.file_size
        assert info.url == f"nar/{info.file_hash.partition(':')[2]}.nar.xz"
        assert all(r in infos for r in info.references)
        assert not info.deriver or info.deriver in infos
        if name.endswith((".drv", ".txt", ".sh")):
            assert info.ca.startswith(("text:sha256:", "fixed:"))
    outputs = [n for n in infos if n.endswith(("-a", "-b", "-multi", "-multi-dev"))]
    assert outputs and all(infos[n].deriver.endswith(".drv") for n in outputs)
    # Nix at Q registers the cache's paths with what the narinfo says.
    set_up_prefix(world, q, f"file://{cache}", world["keys"]["publisher"])
    b = next(n for n in outputs if n.endswith("-b"))
    real = nix_at(q, "nix-store", "-r", f"{q}/store/{b}")
    assert real.returncode == 0, real.stderr
    hash_ = nix_at(q, "nix-store", "-q", "--hash", f"{q}/store/{b}").stdout.strip()
    assert hashes.normalise_sha256(hash_) == infos[b].nar_hash
    refs = nix_at(q, "nix-store", "-q", "--references", f"{q}/store/{b}").stdout.split()
    assert sorted(r.rpartition("/")[2] for r in refs) == infos[b].references
    assert nix32.decode(infos[b].nar_hash.partition(":")[2], 32)


def test_incremental_and_merged(world: dict) -> None:
    base = world["base"]
    q, cache = base / "qi", base / "cache-i"
    make_cache(world, q, cache)
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.rglob("*")
              if p.is_file()}
    again = write_cache([world["installer"]], str(q), cache, CacheOptions(level=1))
    assert again.written == [] and len(again.present) == len(
        [p for p in before if p.suffix == ".narinfo"])
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.rglob("*")
            if p.is_file()} == before
    # A lost narinfo and a lost NAR are written again, and nothing else.
    lost = sorted(cache.glob("*.narinfo"))[:2]
    gone_nar = cache / narinfo.parse(lost[1].read_text(), str(lost[1])).url
    lost[0].unlink()
    lost[1].unlink()
    gone_nar.unlink()
    key = load_secret_key(base / "publisher.sec")
    # A second source (a closureInfo dir, same-length relocation) is merged in.
    third = write_cache([world["installer"], world["seed_info"]], str(q), cache,
                        CacheOptions(level=1, sign_keys=[key]))
    assert len(third.written) == 3, third.written
    assert gone_nar.exists() and all(p.exists() for p in lost)
    seed = [n for n in third.written if n.endswith("seed.txt")]
    assert seed, third.written
    seed_info = narinfo.parse((cache / narinfo.narinfo_file(seed[0])).read_text(), "seed")
    assert not seed_info.deriver and not seed_info.ca  # same-length: hash parts kept
    assert not list(cache.glob(".tmp-*")) and not list((cache / "nar").glob(".tmp-*"))
    # Another prefix's cache is refused, naming both store dirs.
    with pytest.raises(BuildError, match="is a binary cache for"):
        write_cache([world["installer"]], str(base / "qother"), cache, CacheOptions(level=1))


def test_sign_key_over_an_unsigned_cache_signs_what_is_there(world: dict) -> None:
    """A cache written unsigned, then again with --sign-key: every narinfo gets its
    Sig (written again, atomically), and stock Nix with require-sigs takes them."""
    base = world["base"]
    q, cache = base / "qs", base / "cache-s"
    first = write_cache([world["installer"]], str(q), cache, CacheOptions(level=1))
    narinfos = sorted(cache.glob("*.narinfo"))
    assert narinfos and not any("\nSig: " in f.read_text() for f in narinfos)
    signed = cli("cache", str(world["installer"]), "-p", str(q), "-o", str(cache),
                 "--level", "1", "--sign-key", str(base / "publisher.sec"))
    assert signed.returncode == 0, signed.stderr
    assert "0 store paths added" in signed.stderr and "0 already there" in signed.stderr
    assert f"{len(first.written)} store paths that were there without a signature by every " \
           "--sign-key were written again, signed" in signed.stderr
    assert all("\nSig: publisher:" in f.read_text() for f in narinfos)
    assert not list(cache.glob(".tmp-*")) and not list((cache / "nar").glob(".tmp-*"))
    url = f"file://{cache}"
    set_up_prefix(world, q, url, world["keys"]["publisher"])
    assert_substitutes_everything(world, q, url)


def test_a_longer_prefix_is_refused(world: dict) -> None:
    base = world["base"]
    long_prefix = base / ("x" * 80)
    out = base / "never-cache"
    made = cli("cache", str(world["installer"]), "-p", str(long_prefix), "-o", str(out))
    assert made.returncode == 1 and "longer than" in made.stderr
    assert "Traceback" not in made.stderr
    assert not any(out.glob("*.narinfo"))


def test_the_installer_refuses_a_substituter_without_a_key(world: dict) -> None:
    done = run_installer(world["seed_installer"], "-y", "-p", str(world["base"] / "qz"),
                         "--substituter", "file:///nowhere")
    assert done.returncode == 2 and "--substituter needs --trusted-key" in done.stderr
    bad = run_installer(world["seed_installer"], "-y", "-p", str(world["base"] / "qz"),
                        "--substituter", "file:///x", "--trusted-key", "nokey")
    assert bad.returncode == 2 and "NAME:BASE64" in bad.stderr
    assert not (world["base"] / "qz").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_a_full_disk_is_one_line_and_leaves_a_consistent_cache(world: dict) -> None:
    base = world["base"]
    out = base / "cache-full"
    out.mkdir()
    with tmpfs(out, "size=40k"):
        made = cli("cache", str(world["installer"]), "-p", str(base / "qfull"), "-o", str(out),
                   "--level", "1")
        assert made.returncode == 1, made.stderr
        assert made.stderr.count("\n") == 1 and "No space left" in made.stderr, made.stderr
        assert not list(out.rglob(".tmp-*"))
        for file in out.glob("*.narinfo"):  # what is there is whole, NAR included
            info = narinfo.parse(file.read_text(), str(file))
            assert (out / info.url).stat().st_size == info.file_size


def test_paths_cut_across_chunks_are_cached_whole(world: dict) -> None:
    """Format 3 cuts store paths across chunks: a tiny chunk size gives the same cache."""
    base = world["base"]
    closure, roots = with_derivations(read_closure(world["info"]), world["nix"])
    cut = base / "cut.sh"
    build_installer(closure, cut, BuildOptions(level=1, roots=roots, chunk_size=512))
    q = base / "qcut"
    write_cache([cut], str(q), base / "cache-cut", CacheOptions(level=1))
    write_cache([world["installer"]], str(q), base / "cache-whole", CacheOptions(level=1))
    for file in (base / "cache-whole").glob("*.narinfo"):
        ours = narinfo.parse((base / "cache-cut" / file.name).read_text(), file.name)
        whole = narinfo.parse(file.read_text(), file.name)
        assert (ours.nar_hash, ours.nar_size, ours.references, ours.deriver, ours.ca) == (
            whole.nar_hash, whole.nar_size, whole.references, whole.deriver, whole.ca)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_nar_in_xz_blocks_is_substituted_by_stock_nix(world: dict, version: str) -> None:
    """A NAR bigger than two xz blocks (builder/compress.py ``XzBlocks``: one stream,
    independent blocks compressed in threads, a container nix-prefix writes itself)
    is read by every stock Nix: substituted, and the store verifies."""
    base = world["base"]
    big = base / "big-data"
    if not big.exists():
        big.write_bytes(os.urandom(1 << 20) * 3)  # 3 MiB, compressible across blocks
    nix = world["nix"]
    path = nix.run("nix-store", ["--add", str(big)]).stdout.decode().strip()
    info = nix.write_closure_info([path], base / f"big-info-{version}")
    q, cache = base / f"qx{version.replace('.', '')}", base / f"cache-x{version}"
    key = load_secret_key(base / "publisher.sec")
    write_cache([info], str(q), cache, CacheOptions(level=0, sign_keys=[key]))
    url = f"file://{cache}"
    name = path.rpartition("/")[2]
    text = (cache / narinfo.narinfo_file(name)).read_text()
    xz_file = cache / narinfo.parse(text, name).url
    listed = subprocess.run(["xz", "--robot", "-l", str(xz_file)], capture_output=True,
                            text=True, check=True).stdout
    blocks = int(next(line.split()[2] for line in listed.splitlines()
                      if line.startswith("file")))
    assert blocks >= 2, listed
    set_up_prefix(world, q, url, world["keys"]["publisher"])
    at_q = f"{q}/store/{name}"
    done = client(version)(q, "nix-store", "-r", at_q)
    assert done.returncode == 0, done.stderr
    assert f"copying path '{at_q}' from '{url}'" in done.stderr
    assert Path(at_q).read_bytes() == big.read_bytes()
    verify = client(version)(q, "nix-store", "--verify", "--check-contents")
    assert verify.returncode == 0 and "error" not in verify.stderr, verify.stderr
