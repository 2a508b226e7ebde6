"""The ``nix-prefix`` command (build side).

Each command is a thin typer function: it parses options and calls the one
function of the module that does the work (inputs, pack, inspect, retarget,
cache, serve, demo), then prints its summary.  Every command runs inside
``reporting``: a failure ends as one line with a hint and the exit code of
errors.outcome (the builder's one table), the traceback only with ``--debug``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from ..payload import __version__, seal
from ..payload.machine import human_size
from ..payload.manifest import Manifest
from .errors import EXIT_FAILED, Terminated, internal_error, outcome
from .fromcache import FetchLimits
from .inputs import Bar
from .limits import Limits
from .localnix import store_nix
from .pack import BuildOptions, BuildResult
from .signer import load_secret_keys

EXIT_CODES = """\
Exit codes: 0 done; 1 failed (bad input, Nix failed, nothing written); 2 bad usage;
3 the installer file is damaged, or not signed by a --trusted-key (verify, inspect);
130 interrupted (Ctrl-C); 143 stopped by SIGTERM, 129 by SIGHUP.
"""
OLD_CACHE_KEY = ("warning: --trusted-key with --from-cache is now --cache-key (--trusted-key "
                 "pins an installer's publisher); the old spelling goes in a later release")

app = typer.Typer(
    help="Turn a Nix store closure into one self-extracting installer that needs no root.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    # rich's help is coloured; NO_COLOR (https://no-color.org) gets click's plain text.
    rich_markup_mode=None if os.environ.get("NO_COLOR") else "rich",
)

Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="no progress bars or summary")]
Debug = Annotated[bool, typer.Option(
    "--debug", envvar="NIX_PREFIX_DEBUG", help="show the traceback of an error")]
Level = Annotated[int | None, typer.Option(
    envvar="NIX_PREFIX_LEVEL",
    help="compression level (xz: 0-9, default 6; zstd: 1-22, default 19); 0 or 1 build "
         "several times faster for a larger file")]
SignKey = Annotated[list[Path] | None, typer.Option(
    "--sign-key", metavar="FILE",
    help="sign the installer and every store path with this Nix secret key, as written by "
         "nix-store --generate-binary-cache-key NAME SECRET PUBLIC (repeatable)")]
PinnedKey = Annotated[list[str] | None, typer.Option(
    "--trusted-key", metavar="NAME:BASE64",
    help="pin the publisher: require a signature by this Nix public key (repeatable; also "
         "NIX_PREFIX_TRUSTED_KEYS, space-separated)")]
StoreDir = Annotated[Path | None, typer.Option(
    "--store-dir", metavar="DIR",
    help="use the store DIR laid out as a prefix (DIR/../var/nix, DIR/../etc/nix) instead "
         "of the one the machine's Nix is set up for (NIX_STORE_DIR and friends count)")]
CacheKeys = Annotated[list[str] | None, typer.Option(
    "--cache-key", metavar="NAME:BASE64",
    help="with --from-cache: take only paths whose narinfo is signed by this Nix public key "
         "(repeatable; the .pub file nix-store --generate-binary-cache-key writes)")]
# --cache-key's old spelling, accepted for a release (it now only pins a publisher).
OldCacheKeys = Annotated[list[str] | None, typer.Option(
    "--trusted-key", metavar="NAME:BASE64", hidden=True)]
FromCache = Annotated[str | None, typer.Option(
    "--from-cache", metavar="URL",
    help="take the ROOTs' closure from the Nix binary cache at URL (file://, http://, "
         "https://), every NAR verified, instead of a local store")]

MaxPaths = Annotated[int, typer.Option(
    "--max-paths", min=1, metavar="N",
    help="with --from-cache: stop if the closure has more than N store paths")]
MaxBytes = Annotated[int, typer.Option(
    "--max-bytes", min=1, metavar="BYTES",
    help="with --from-cache: stop if the closure's NARs add up to more than BYTES "
         "(default 256 GiB)")]
Deadline = Annotated[float, typer.Option(
    "--deadline", min=1, metavar="SECONDS",
    help="with --from-cache: stop if fetching takes longer than SECONDS in all "
         "(default 6 hours; each request also has its own, see docs/caches.md)")]


@contextmanager
def reporting(debug: bool) -> Iterator[None]:
    """Every command runs in this: any failure ends it with one line on stderr and the
    exit code of errors.outcome; --debug adds the traceback."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except (KeyboardInterrupt, Exception) as e:  # Terminated is a KeyboardInterrupt
        said = outcome(e)
        if said is None and debug:
            raise  # a bug: Python's own traceback
        if debug:
            traceback.print_exc()
        line, code = said or (internal_error(e), EXIT_FAILED)
        typer.echo(f"nix-prefix: error: {line}", err=True)
        raise typer.Exit(code) from None


def _say(quiet: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if not quiet:
            typer.echo(message, err=True)
    return say


def _bars(quiet: bool) -> Bar:
    """Byte progress bars on stderr (hidden when quiet or not on a terminal):
    ``bar(description, total)`` gives a context whose value counts bytes done."""
    @contextmanager
    def bar(desc: str, total: int | None) -> Iterator[Callable[[int], object]]:
        with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=quiet or None,
                  file=sys.stderr) as drawn:
            yield drawn.update
    return bar


def _cache_keys(cache_key: list[str] | None, old_spelling: list[str] | None) -> list[str]:
    """``--cache-key`` and its old spelling, ``--trusted-key`` (build and closure)."""
    return [*(cache_key or []), *(old_spelling or [])]


def _fetch_limits(max_paths: int, max_bytes: int, deadline: float) -> FetchLimits:
    return FetchLimits(max_paths=max_paths, max_bytes=max_bytes, deadline=deadline)


@app.command()
def closure(
    roots: Annotated[list[str], typer.Argument(
        metavar="ROOT...", help="store paths, or links to them such as ./result")],
    output: Annotated[Path, typer.Option("-o", "--output", help="directory to write")],
    store_dir: StoreDir = None,
    from_cache: FromCache = None,
    cache_key: CacheKeys = None,
    trusted_key: OldCacheKeys = None,
    max_paths: MaxPaths = FetchLimits.max_paths,
    max_bytes: MaxBytes = FetchLimits.max_bytes,
    deadline: Deadline = FetchLimits.deadline,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Write a closureInfo dir (store-paths, registration, total-nar-size) for ROOTs.

    The same files as nixpkgs' closureInfo, from the local Nix (nix-store -qR,
    --dump-db); `nix-prefix build DIR` and `nix-store --load-db` read them.  With
    --from-cache URL the paths come from a binary cache instead, verified, into
    DIR/store: `nix-prefix build DIR --store-root DIR/store` packs them.
    """
    from .inputs import Request, write_closure_dir

    request = Request(sources=roots, store_dir=store_dir, from_cache=from_cache,
                      cache_keys=_cache_keys(cache_key, trusted_key),
                      limits=_fetch_limits(max_paths, max_bytes, deadline))
    say = _say(quiet)
    with reporting(debug):
        written = write_closure_dir(request, output, say, _bars(quiet))
    say(f"wrote {output}: {len(written.infos)} store paths, "
        f"{human_size(written.total_nar_size)} NAR, store dir {written.store_dir}")
    if from_cache is not None:
        say(f"pack it with: nix-prefix build {output} --store-root {output / 'store'}")
    if trusted_key:
        typer.echo(OLD_CACHE_KEY, err=True)


@app.command()
def build(
    sources: Annotated[list[str] | None, typer.Argument(
        metavar="CLOSURE_INFO | ROOT...",
        help="a closureInfo dir (or `nix-store --dump-db` file); with --roots, store "
             "paths or links to them")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="installer file to write")]
    = Path("nix-installer.sh"),
    roots: Annotated[bool, typer.Option(
        "--roots", help="the arguments are store paths: pack their closure")] = False,
    file: Annotated[Path | None, typer.Option(
        "-f", "--file", help="build this Nix file with nix-build first and pack its "
                             "outputs' closure")] = None,
    attr: Annotated[list[str] | None, typer.Option(
        "-A", "--attr", help="with -f: attribute to build (repeatable)")] = None,
    argstr: Annotated[list[str] | None, typer.Option(
        "--argstr", metavar="NAME=VALUE", help="with -f: passed to nix-build as --argstr "
                                               "NAME VALUE (repeatable)")] = None,
    store_dir: StoreDir = None,
    from_cache: FromCache = None,
    cache_key: CacheKeys = None,
    trusted_key: OldCacheKeys = None,
    compression: Annotated[str, typer.Option(
        help="payload codec: xz (any Python can install it) or zstd (faster)")] = "xz",
    level: Level = None,
    store_root: Annotated[Path | None, typer.Option(
        help="where the store dir physically lives (a chroot store); default: the store "
             "dir itself")] = None,
    profile_root: Annotated[list[str] | None, typer.Option(
        "--profile-root", "--root",
        help="store path for the installed profile (repeatable); default: the roots given, "
             "or the paths nothing else references")] = None,
    system: Annotated[str | None, typer.Option(
        help="Nix system of the closure (default: that of the ELF of its Nix, else this "
             "machine's)")] = None,
    allow_mixed_systems: Annotated[bool, typer.Option(
        "--allow-mixed-systems",
        help="pack ELF programs and libraries of other machines than the closure's system "
             "(refused by default: a closure for one machine holds only its programs)")]
    = False,
    no_verify: Annotated[bool, typer.Option(
        "--no-verify", help="do not recompute NAR hashes against the registration")] = False,
    with_derivations: Annotated[bool, typer.Option(
        "--with-derivations", help="also pack the .drv closure of every path's deriver (from "
                                   "the local Nix), for exact retarget: `retarget --exact`, "
                                   "and installing at another --prefix")] = False,
    jobs: Annotated[int | None, typer.Option(
        "-j", "--jobs", min=1, envvar="NIX_PREFIX_JOBS",
        help="chunks to compress at once (default: one per CPU, as memory allows; "
             "the output is the same whatever the number)")] = None,
    nix_store: Annotated[str | None, typer.Option(
        "--nix-store", metavar="STORE_PATH",
        help="when the closure holds several Nixes: the one that registers the paths and "
             "goes into the profile (default: the newest, by the version in its name)")]
    = None,
    chunk_mb: Annotated[int | None, typer.Option(
        "--chunk-mb", min=1, help="MiB of the payload's tar stream per chunk, cut anywhere, "
                                  "inside store paths and files too (default: a 16th of the "
                                  "closure, 8 to 64 MiB); smaller chunks spread over more "
                                  "threads, larger ones compress a little better")] = None,
    sign_key: SignKey = None,
    max_paths: MaxPaths = FetchLimits.max_paths,
    max_bytes: MaxBytes = FetchLimits.max_bytes,
    deadline: Deadline = FetchLimits.deadline,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Build a single-file installer from a closureInfo dir, store paths or a Nix file.

    \b
      nix-prefix build ./closure-info -o nix-installer.sh
      nix-prefix build --roots ./result /nix/store/...-hello -o hello.sh
      nix-prefix build -f default.nix -A nix --argstr prefix=/tmp/nix -o nix.sh
    """
    from .inputs import Request
    from .inputs import build as run_build

    request = Request(sources=sources or [], roots=roots, file=file, attrs=attr or [],
                      argstrs=argstr or [], store_dir=store_dir, from_cache=from_cache,
                      cache_keys=_cache_keys(cache_key, trusted_key),
                      limits=_fetch_limits(max_paths, max_bytes, deadline),
                      with_derivations=with_derivations)
    options = BuildOptions(compression=compression, level=level, store_root=store_root,
                           verify=not no_verify, roots=profile_root, system=system, jobs=jobs,
                           chunk_size=chunk_mb << 20 if chunk_mb else None,
                           nix_store=nix_store, mixed_systems=allow_mixed_systems)
    say = _say(quiet)
    started = time.time()
    with reporting(debug):
        result = run_build(request, output, options, sign_key or [], say, _bars(quiet))
    for line in result.notes + build_summary(result, output, time.time() - started):
        say(line)
    if trusted_key:
        typer.echo(OLD_CACHE_KEY, err=True)


def build_summary(result: BuildResult, output: Path, seconds: float) -> list[str]:
    """What ``build`` prints at the end: sizes, ratio, time, what to do next."""
    m = result.manifest
    ratio = result.size / max(m.total_nar_size, 1)
    max_prefix = m.max_store_dir_length - len("/store")
    return [
        f"wrote {output}: {len(m.paths)} store paths, {human_size(m.total_nar_size)} NAR "
        f"-> {human_size(result.size)} installer ({ratio:.1%}, {m.compression}) "
        f"in {seconds:.1f} s",
        f"  installs into {m.prefix} by default, or any --prefix of at most {max_prefix} "
        "bytes",
        *signature_lines(m),
        f"install with: sh {output}   (or: sh {output} --help)",
    ]


def signature_lines(manifest: Manifest) -> list[str]:
    """How the summary of ``build`` and ``retarget`` says who signed the installer."""
    names = sorted({s.partition(":")[0] for p in manifest.paths for s in p.sigs})
    if not names:
        return []
    return [f"  signed by {', '.join(names)}, and so are its {len(manifest.paths)} store "
            f"paths; users pin the key with --trusted-key NAME:BASE64 (the public key file)"]


@app.command()
def inspect(
    installer: Annotated[Path, typer.Argument(help="an installer made by nix-prefix")],
    json_output: Annotated[bool, typer.Option(
        "--json", help="print one JSON document: the manifest, sizes, retarget limits")]
    = False,
    trusted_key: PinnedKey = None,
    debug: Debug = False,
) -> None:
    """Show what an installer holds: store dir, paths and sizes, compression, retarget limits.

    Checks the file's seal and reads its manifest; `nix-prefix verify` also checks
    every chunk and NAR hash.
    """
    from .inspect import inspect as describe_installer

    with reporting(debug):
        text = describe_installer(installer, trusted_key or [], json_output)
    typer.echo(text, nl=False)


@app.command()
def verify(
    installer: Annotated[Path, typer.Argument(help="an installer made by nix-prefix")],
    trusted_key: PinnedKey = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Check an installer as its own --check does: every checksum and NAR hash, the
    publisher's signatures (and every store path's); writes nothing.

    With --trusted-key it fails (exit 3) unless one of those keys signed it.
    """
    from .inspect import verify as verify_installer

    with reporting(debug):
        verified = verify_installer(installer, trusted_key or [], _bars(quiet))
    for line in verified.lines(installer):
        _say(quiet)(line)


@app.command()
def retarget(
    source: Annotated[Path, typer.Argument(
        help="an installer made by nix-prefix, or a closureInfo dir")],
    prefix: Annotated[str, typer.Option(
        "-p", "--prefix", help="the prefix the new installer installs into by default; its "
                               "store dir may not be longer than the source's")],
    output: Annotated[Path, typer.Option("-o", "--output", help="installer file to write")],
    compression: Annotated[str | None, typer.Option(
        help="payload codec (default: the source installer's, or xz)")] = None,
    level: Level = None,
    store_root: Annotated[Path | None, typer.Option(
        help="with a closureInfo source: where its store dir physically lives")] = None,
    exact: Annotated[bool, typer.Option(
        "--exact", help="recompute every store path for the new store dir as Nix would "
                        "(needs an installer built with --with-derivations)")] = False,
    sign_key: SignKey = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Make an installer for another prefix from an installer or closure, without Nix.

    The source's signatures cannot carry over (every path and the manifest change):
    give --sign-key to sign the new installer.
    """
    started = time.time()
    with reporting(debug):
        sign_keys = load_secret_keys(sign_key or [])
        with _bars(quiet)("verifying and retargeting", None) as progress:
            result = _retarget(source, prefix, output, exact, compression, level, store_root,
                               progress, sign_keys)
    if result.source_signed_by and not sign_keys:
        # Said even with --quiet: the publisher may not expect it.
        typer.echo(f"warning: {source} is signed by "
                   f"{', '.join(k.name for k in result.source_signed_by)}, but {output} is "
                   "unsigned: its paths and manifest changed, so no old signature holds "
                   "(pass --sign-key FILE to sign it)", err=True)
    for line in retarget_summary(result, output, time.time() - started):
        _say(quiet)(line)


def _retarget(source: Path, prefix: str, output: Path, exact: bool, compression: str | None,
              level: int | None, store_root: Path | None, progress: Callable[[int], object],
              sign_keys: list) -> BuildResult:
    """The retarget --exact asks for (retarget.py)."""
    from .retarget import retarget, retarget_exact

    if exact:
        return retarget_exact(source, prefix, output, compression=compression, level=level,
                              progress=progress, sign_keys=sign_keys)
    return retarget(source, prefix, output, compression=compression, level=level,
                    store_root=store_root, progress=progress, sign_keys=sign_keys)


def retarget_summary(result: BuildResult, output: Path, seconds: float) -> list[str]:
    """What ``retarget`` prints at the end: what it wrote, who signed it, what stays."""
    m = result.manifest
    return [f"wrote {output}: {len(m.paths)} store paths for {m.store_dir} "
            f"(embedded as {m.embedded_store_dir}) in {seconds:.1f} s",
            *signature_lines(m),
            *(f"warning: the old store dir stays hidden in {line}" for line in m.hidden_refs)]


@app.command()
def cache(
    sources: Annotated[list[Path], typer.Argument(
        metavar="SOURCE...", help="installers made by nix-prefix, closureInfo dirs, or "
                                  "binary cache dirs; several are merged into one cache")],
    prefix: Annotated[str, typer.Option(
        "-p", "--prefix", help="the prefix whose Nix will use the cache (its store dir, "
                               "PREFIX/store, may not be longer than the sources')")],
    output: Annotated[Path, typer.Option(
        "-o", "--output", metavar="DIR", help="cache directory to write or complete")],
    compression: Annotated[str, typer.Option(
        help="NAR compression: xz (what nix copy writes), zstd or none")] = "xz",
    level: Annotated[int | None, typer.Option(
        envvar="NIX_PREFIX_LEVEL",
        help="compression level (default: nix copy's, xz 6 and zstd 3)")] = None,
    sign_key: Annotated[list[Path] | None, typer.Option(
        "--sign-key", metavar="FILE",
        help="sign every narinfo with this Nix secret key file (repeatable), as nix copy "
             "with ?secret-key= does; users trust its public key")] = None,
    store_root: Annotated[Path | None, typer.Option(
        help="with a closureInfo source: where its store dir physically lives")] = None,
    jobs: Annotated[int | None, typer.Option(
        "-j", "--jobs", min=1, envvar="NIX_PREFIX_JOBS",
        help="store paths to compress at once (default: one per CPU, as memory allows)")]
    = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Write a Nix binary cache for another prefix's store, from installers or closures.

    Every store path is recomputed for PREFIX/store exactly as a Nix there computes it
    when the sources hold their derivations (build --with-derivations), and given a
    same-length retarget otherwise.  The layout is nix copy --to file://DIR's: serve DIR over HTTP
    or use it as file://DIR.  A re-run adds what is missing.

    \b
      nix-prefix cache nix-installer.sh --prefix /home/alice/.nix -o cache
    """
    from .cache import CacheOptions, write_cache

    started = time.time()
    with reporting(debug):
        keys = load_secret_keys(sign_key or [])
        options = CacheOptions(compression=compression, level=level, sign_keys=keys, jobs=jobs)
        with _bars(quiet)("verifying, retargeting and compressing", None) as progress:
            result = write_cache(sources, prefix, output, options, store_root=store_root,
                                 progress=progress)
    for line in cache_summary(result, output, time.time() - started, keys):
        _say(quiet)(line)


def cache_summary(result, output: Path, seconds: float, keys: list) -> list[str]:
    """What ``cache`` prints at the end: what was added, how, and how to use it."""
    how = ("every store path recomputed exactly" if result.exact
           else "a same-length retarget, hash parts kept")
    ratio = result.file_size / max(result.nar_size, 1)
    lines = [
        f"wrote {output}: {len(result.written)} store paths added "
        f"({human_size(result.nar_size)} NAR -> {human_size(result.file_size)}, "
        f"{ratio:.1%}), {len(result.present)} already there, in {seconds:.1f} s",
        *([f"  {len(result.signed)} store paths that were there without a signature by "
           "every --sign-key were written again, signed"] if result.signed else []),
        f"  a binary cache for {result.store_dir} ({how})",
        f"use it with: substituters = file://{output.resolve()} (or the URL you serve "
        "it at), in the prefix's nix.conf",
        "  signed by " + ", ".join(k.name for k in keys) + "; users trust it with "
        "trusted-public-keys = " + " ".join(str(k.public_key) for k in keys) if keys
        else "  unsigned: a Nix with require-sigs (the default) will not use it; "
             "sign with --sign-key FILE",
        *(f"warning: the old store dir stays hidden in {line}" for line in result.hidden_refs),
    ]
    return lines


@app.command()
def serve(
    sources: Annotated[list[Path], typer.Argument(
        metavar="SOURCE...", help="installers made by nix-prefix, closureInfo dirs, or "
                                  "binary cache dirs built at a long store dir: the "
                                  "master, merged")],
    listen: Annotated[str, typer.Option(
        metavar="HOST:PORT", help="where to listen (port 0: any free port)")]
    = "127.0.0.1:8080",
    sign_key: Annotated[list[Path] | None, typer.Option(
        "--sign-key", metavar="FILE",
        help="sign every narinfo with this Nix secret key file (repeatable)")] = None,
    compression: Annotated[str, typer.Option(
        help="NAR compression on the fly: zstd (default), xz or none")] = "zstd",
    level: Annotated[int | None, typer.Option(
        help="compression level (default: zstd 3, xz 1, fast enough to stream)")] = None,
    store_root: Annotated[Path | None, typer.Option(
        help="with a closureInfo source: where its store dir physically lives")] = None,
    installer: Annotated[list[Path] | None, typer.Option(
        "--installer", metavar="FILE",
        help="offer this installer at /installers/NAME.sh and on the page at / "
             "(repeatable; checked at start)")] = None,
    max_memory: Annotated[str, typer.Option(
        metavar="SIZE", help="the whole server's memory (e.g. 1536M, 2G): what clients are "
                             "buffered and NARs produced within")] = "1536M",
    producers: Annotated[int, typer.Option(
        min=1, help="NARs produced at once (a stalled client's producer parks)")]
    = Limits.producers,
    streams_per_client: Annotated[int, typer.Option(
        min=1, help="NAR responses under way for one client address; more get a 503")]
    = Limits.streams_per_client,
    stream_buffer: Annotated[str, typer.Option(
        metavar="SIZE", help="bytes buffered ahead for one NAR response")] = "1M",
    send_timeout: Annotated[float, typer.Option(
        min=1, metavar="SECONDS", help="a client whose response makes no progress for "
                                       "this long is dropped")] = Limits.send_timeout,
    min_rate: Annotated[str, typer.Option(
        metavar="SIZE", help="bytes a second a NAR response must average after its first "
                             "--send-timeout seconds, or its client is dropped")] = "4K",
    cold: Annotated[int, typer.Option(
        min=1, help="cold jobs at once: plans of new store dirs, first narinfos")]
    = Limits.cold,
    cold_per_client: Annotated[int, typer.Option(
        min=1, help="cold jobs at once for one client address")] = Limits.cold_per_client,
    cold_queue: Annotated[int, typer.Option(
        min=0, help="cold jobs waiting, in all, before a 503 (Retry-After)")]
    = Limits.cold_queue,
    cold_queue_per_client: Annotated[int, typer.Option(
        min=0, help="cold jobs waiting for one client address before a 503")]
    = Limits.cold_queue_per_client,
    client_header: Annotated[str | None, typer.Option(
        metavar="HEADER", help="behind a proxy: the request header naming the client "
                               "address (e.g. X-Real-IP), for the per-client limits")] = None,
    access_log: Annotated[bool, typer.Option(
        help="one line per request on stderr")] = True,
    workers: Annotated[int | None, typer.Option(
        min=1, help="processes answering on the socket, sharing --max-memory (default: "
                    "one a usable CPU, fewer if --max-memory is short)")] = None,
    debug: Debug = False,
) -> None:
    """Serve a Nix binary cache for every store dir no longer than the sources'.

    A Nix whose store dir is Q uses http://HOST:PORT followed by Q as its
    substituter; narinfos and NARs are retargeted to Q on the fly, signed with
    --sign-key (docs/serving.md).  A page for people at / shows the key, the
    installers offered with --installer and, for a prefix, the line that installs.
    /healthz and /metrics (Prometheus) tell how it fares; SIGHUP reads the
    sources again without dropping requests.

    \b
      nix-prefix serve nix-installer.sh --listen 0.0.0.0:8080 --sign-key cache.sec \\
          --installer nix-installer.sh
      # a user at ~/.nix: substituters = http://HOST:8080/home/alice/.nix/store
    """
    from .limits import parse_size
    from .serve import Setup
    from .serve import serve as run_server

    with reporting(debug):
        limits = Limits(max_memory=parse_size(max_memory), producers=producers,
                        streams_per_client=streams_per_client,
                        stream_buffer=parse_size(stream_buffer), send_timeout=send_timeout,
                        min_rate=max(1, parse_size(min_rate)), cold=cold,
                        cold_per_client=cold_per_client, cold_queue=cold_queue,
                        cold_queue_per_client=cold_queue_per_client)
        run_server(Setup(sources, listen, sign_key or [], compression, level, store_root,
                         installer or [], limits, access_log, client_header, workers),
                   _say(False))


@app.command()
def verifier(
    output: Annotated[Path, typer.Option(
        "-o", "--output", metavar="FILE",
        help="where to write it (written atomically), e.g. ./nix-prefix-verify")],
    debug: Debug = False,
) -> None:
    """Write the standalone verifier: one file, Python 3.6+, standard library only.

    `python3 FILE --trusted-key NAME:BASE64 INSTALLER` checks an installer wholly
    (seal, the publisher's signature, preamble, code, every chunk) before any of it
    runs; `curl -fsSL URL | python3 FILE --trusted-key K --run -- -y` checks a
    private copy and only then runs it.  The same as the `nix-prefix-verify` that
    pip installs.  Keep it where nobody else can change it.
    """
    from .pack import write_verifier

    with reporting(debug):
        write_verifier(output)
    typer.echo(f"wrote {output}: run python3 {output} --trusted-key NAME:BASE64 INSTALLER",
               err=True)


@app.command()
def sample(
    store_dir: StoreDir = None,
    nix_to_ship: Annotated[Path | None, typer.Option(
        "--nix", metavar="PATH",
        help="the Nix to package: a nix binary, or a tree with Debian's nix-bin unpacked "
             "into it (usr/bin/nix and its libraries, e.g. from .ci/debian-fetch.sh); "
             "default: the machine's Nix")] = None,
    debug: Debug = False,
) -> None:
    """Build a sample closure with the machine's Nix and print its roots (no nixpkgs needed).

    A self-contained Nix made from a Nix binary (the machine's own, or --nix;
    patchelf'd, every library in the store) and a small program,
    hello-nix-prefix: enough to try nix-prefix end to end.  A missing
    --store-dir is created.
    """
    from . import samples

    with reporting(debug):
        nix = store_nix(store_dir, create=True)
        roots = [samples.build_nix_closure(nix, nix_to_ship),
                 *samples.build_small_closure(nix)]
    for root in roots:
        typer.echo(root)


@app.command()
def demo(
    workdir: Annotated[Path | None, typer.Option(
        help="where to build and install (default: a new dir under /tmp)")] = None,
    compression: Annotated[str, typer.Option(help="payload codec: xz or zstd")] = "xz",
    level: Level = None,
    debug: Debug = False,
) -> None:
    """Build a sample closure with this machine's Nix, make an installer, install it, run it."""
    from .demo import run_demo

    with reporting(debug):
        run_demo(workdir, compression, level)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nix-prefix {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version")] = False,
) -> None:
    """nix-prefix: one self-extracting installer for a Nix closure."""


def main() -> None:
    # A closed stdout or stderr (nix-prefix build ... 2>&-) gets /dev/null: tqdm and
    # click write to sys.stderr, which Python leaves None then.
    seal.open_standard_streams()
    # SIGTERM (timeout, systemd, kill) and SIGHUP end a run as Ctrl-C does: every
    # temporary removed on the way out, one line, exit 128 + the signal.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    app()


def _stop(signum: int, frame: object) -> None:
    for ignored in (signal.SIGTERM, signal.SIGHUP):  # a second one must not cut the cleanup
        signal.signal(ignored, signal.SIG_IGN)
    raise Terminated(signum)
