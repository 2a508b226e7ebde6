"""The ``nix-prefix`` command (build side).

Each command is a thin typer function: it parses options, calls one module
that does the work (inputs, pack, inspect, retarget, demo) and reports.
Errors go through ``reporting``: one line with a hint, a documented exit
code, and the traceback only with ``--debug``.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from ..payload import __version__, codecs, publisher, seal, signing
from ..payload.container import CorruptInstaller, not_a_file
from ..payload.machine import human_size
from ..payload.manifest import Manifest
from .errors import BuildError, Terminated, UsageError
from .fromcache import FetchLimits
from .leftovers import remove_stale
from .limits import Limits
from .localnix import NixCommandError, store_nix
from .pack import BuildOptions, BuildResult, build_installer, check_output
from .retarget import looks_like_installer
from .signer import load_secret_keys

EXIT_CODES = """\
Exit codes: 0 done; 1 failed (bad input, Nix failed, nothing written); 2 bad usage;
3 the installer file is damaged, or not signed by a --trusted-key (verify, inspect);
130 interrupted (Ctrl-C); 143 stopped by SIGTERM, 129 by SIGHUP.
"""
FETCH_PREFIX = ".nix-prefix-fetch-"  # + pid: build --from-cache's store beside -o

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
    help="require a signature by this Nix public key (repeatable; also "
         "NIX_PREFIX_TRUSTED_KEYS, space-separated)")]
StoreDir = Annotated[Path | None, typer.Option(
    "--store-dir", metavar="DIR",
    help="use the store DIR laid out as a prefix (DIR/../var/nix, DIR/../etc/nix) instead "
         "of the one the machine's Nix is set up for (NIX_STORE_DIR and friends count)")]
TrustedKeys = Annotated[list[str] | None, typer.Option(
    "--trusted-key", metavar="NAME:BASE64",
    help="with --from-cache: take only paths whose narinfo is signed by this Nix public key "
         "(repeatable; the .pub file nix-store --generate-binary-cache-key writes)")]
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


def _limits(max_paths: int, max_bytes: int, deadline: float) -> FetchLimits:
    return FetchLimits(max_paths=max_paths, max_bytes=max_bytes, deadline=deadline)


@contextmanager
def reporting(debug: bool) -> Iterator[None]:
    """Turn every failure into one line on stderr and its exit code."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except Terminated as e:
        _error(f"stopped by {e}; nothing half-written is left", 128 + e.signum, debug)
    except KeyboardInterrupt:
        _error("interrupted; nothing half-written is left", 130, debug)
    except (BuildError, CorruptInstaller) as e:
        _error(str(e), e.exit_code, debug)
    except (NixCommandError, codecs.CodecError) as e:
        _error(str(e), 1, debug)
    except Exception as e:  # a bug: still one line, with the way to see more
        if debug:
            raise
        _error(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the "
               "traceback, and report it)", 1, debug)


def _error(message: str, code: int, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    typer.echo(f"nix-prefix: error: {message}", err=True)
    raise typer.Exit(code)


def _pinned_keys(given: list[str] | None) -> list[signing.PublicKey]:
    """``verify`` and ``inspect``: --trusted-key and NIX_PREFIX_TRUSTED_KEYS, as the
    installer reads them."""
    try:
        return publisher.trusted_keys(given or [], os.environ)
    except signing.SigningError as e:
        raise UsageError(str(e), "give the public key as NAME:BASE64, the line "
                                 "nix-store --generate-binary-cache-key writes to its "
                                 "public key file") from None


def _input(path: Path, what: str, directory_too: bool = False) -> None:
    """Refuse a file argument that is not there (exit 2, not "damaged"), or that is not
    a regular file (a FIFO would block the read forever), before it is opened."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file", f"give the path of {what}") from None
    except OSError as e:
        raise BuildError(f"cannot read {path}: {e.strerror}") from None
    if not (stat.S_ISREG(mode) or directory_too and stat.S_ISDIR(mode)):
        raise UsageError(f"{path} is not a regular file" + (" or directory" if directory_too
                                                             else "")
                         + f" (it is {not_a_file(str(path))})", f"give the path of {what}")


def _not_an_input(output: Path, inputs: list[Path]) -> None:
    """Refuse an -o that is one of the inputs, or inside an input dir: the output
    replaces it once the build is done (``build ./ci -o ci/registration``)."""
    out = output.resolve()
    for given in inputs:
        source = given.resolve()
        if out == source or source in out.parents:
            raise UsageError(f"-o {output} would overwrite the input {given}",
                             "write the output elsewhere")


def _say(quiet: bool):
    def say(message: str) -> None:
        if not quiet:
            typer.echo(message, err=True)
    return say


def _bar(desc: str, total: int | None, quiet: bool) -> tqdm:
    """A byte progress bar on stderr (hidden when quiet or not on a terminal)."""
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=quiet or None,
                file=sys.stderr)


@app.command()
def closure(
    roots: Annotated[list[str], typer.Argument(
        metavar="ROOT...", help="store paths, or links to them such as ./result")],
    output: Annotated[Path, typer.Option("-o", "--output", help="directory to write")],
    store_dir: StoreDir = None,
    from_cache: FromCache = None,
    trusted_key: TrustedKeys = None,
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
    from .inputs import from_closure_info, write_closure_info

    say = _say(quiet)
    with reporting(debug):
        keys = _trusted_keys(trusted_key, from_cache)
        if from_cache is not None:
            from .fromcache import write_closure_dir

            with _bar("fetching and verifying", None, quiet) as bar:
                closure = write_closure_dir(from_cache, roots, output, keys, say, bar.update,
                                            _limits(max_paths, max_bytes, deadline))
        else:
            nix = store_nix(store_dir)
            write_closure_info(nix, roots, output)
            closure = from_closure_info(output).closure
    say(f"wrote {output}: {len(closure.infos)} store paths, "
        f"{human_size(closure.total_nar_size)} NAR, store dir {closure.store_dir}")
    if from_cache is not None:
        say(f"pack it with: nix-prefix build {output} --store-root {output / 'store'}")


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
    trusted_key: TrustedKeys = None,
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
    from . import inputs

    say = _say(quiet)
    started = time.time()
    with reporting(debug), ExitStack() as stack:
        try:
            codecs.check_name(compression)
        except codecs.CodecError as e:
            raise UsageError(str(e)) from None
        if file is not None and (sources or roots):
            raise UsageError("-f builds its own roots: give no CLOSURE_INFO or --roots")
        if (attr or argstr) and file is None:
            raise UsageError("-A and --argstr go with -f FILE.nix")
        check_output(output)  # before any work: -o /dev/null is refused at once
        _not_an_input(output, [Path(p) for p in (sources or []) if not roots]
                      + ([file] if file is not None else []) + list(sign_key or []))
        remove_stale(output.resolve().parent, FETCH_PREFIX)  # of runs that were killed
        store_root_used = store_root
        # Read first too: a bad key file stops the build before any work.
        sign_keys = load_secret_keys(sign_key or [])
        keys = _trusted_keys(trusted_key, from_cache)
        if from_cache is not None and (file is not None or roots or with_derivations):
            raise UsageError("--from-cache takes root store paths: no -f, --roots or "
                             "--with-derivations")
        if from_cache is not None:
            from .fromcache import fetch_closure

            if not sources:
                raise UsageError("--from-cache needs at least one store path",
                                 "nix-prefix build --from-cache URL /prefix/store/HASH-NAME")
            fetched = stack.enter_context(tempfile.TemporaryDirectory(
                prefix=f"{FETCH_PREFIX}{os.getpid()}-", dir=output.resolve().parent))
            with _bar("fetching and verifying", None, quiet) as bar:
                fetched_closure, fetched_roots = fetch_closure(
                    from_cache, sources, Path(fetched), keys, say, bar.update,
                    _limits(max_paths, max_bytes, deadline))
            source = inputs.Input(fetched_closure, fetched_roots)
            store_root_used = Path(fetched)
        elif file is not None:
            source = inputs.from_nix_file(store_nix(store_dir, create=True), file, attr or [],
                                          argstr or [], say)
        elif roots:
            if not sources:
                raise UsageError("--roots needs at least one store path")
            say(f"querying the closure of {len(sources)} root(s) with nix-store -qR")
            source = inputs.from_roots(store_nix(store_dir), sources)
        elif sources and len(sources) == 1:
            given = Path(sources[0])
            if given.exists():  # a missing one: read_closure says so
                _input(given, "a closureInfo dir or a nix-store --dump-db file",
                       directory_too=True)
            if given.is_file() and looks_like_installer(given):
                raise UsageError(f"{given} is an installer, not a closureInfo dir",
                                 f"nix-prefix retarget {given} -p PREFIX -o NEW.sh makes one "
                                 "for another prefix; nix-prefix inspect shows what it holds")
            source = inputs.from_closure_info(given)
        else:
            raise UsageError("give one CLOSURE_INFO dir, --roots ROOT..., or -f FILE.nix",
                             "see nix-prefix build --help")
        closure, default_roots = source.closure, source.roots
        if with_derivations:
            from .derivations import check_exact
            from .derivations import with_derivations as add_derivations

            closure, drv_roots = add_derivations(
                closure, store_nix(store_dir) if store_dir is not None else None)
            default_roots = default_roots or drv_roots
            check_exact(closure, store_root)
        options = BuildOptions(compression=compression, level=level, store_root=store_root_used,
                               verify=not no_verify, roots=profile_root or default_roots,
                               system=system, jobs=jobs,
                               chunk_size=chunk_mb << 20 if chunk_mb else None,
                               derivations=with_derivations, nix_store=nix_store,
                               sign_keys=sign_keys, mixed_systems=allow_mixed_systems)
        with _bar("hashing, packing and compressing", closure.total_nar_size,
                  quiet) as bar:
            result = build_installer(closure, output, options, progress=bar.update)
    for line in result.notes + build_summary(result, output, time.time() - started):
        say(line)


def _trusted_keys(texts: list[str] | None, from_cache: str | None) -> list:
    """The ``--trusted-key`` values, parsed; they only make sense with --from-cache."""
    from ..payload import signing

    if texts and from_cache is None:
        raise UsageError("--trusted-key checks the narinfos of --from-cache URL",
                         "add --from-cache, or drop --trusted-key")
    try:
        return [signing.parse_public_key(t) for t in texts or []]
    except signing.SigningError as e:
        raise UsageError(f"--trusted-key: {e}",
                         "give the NAME:BASE64 line of the cache's public key file") from None


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
        "--json", help="print one JSON document: the manifest, sizes, relocation limits")]
    = False,
    trusted_key: PinnedKey = None,
    debug: Debug = False,
) -> None:
    """Show what an installer holds: store dir, paths and sizes, compression, relocation limits.

    Checks the file's seal and reads its manifest; `nix-prefix verify` also checks
    every chunk and NAR hash.
    """
    import json

    from .inspect import describe, open_installer, render

    with reporting(debug):
        trusted = _pinned_keys(trusted_key)
        if not installer.exists():
            _input(installer, "an installer")  # missing: exit 2, not "damaged"
        source = open_installer(installer)
        try:
            verdict = source.verdict(trusted)
            if json_output:
                typer.echo(json.dumps(describe(installer, source.manifest, verdict), indent=1,
                                      sort_keys=True))
            else:
                typer.echo(render(installer, source.manifest, verdict), nl=False)
        finally:
            source.close()


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
    from .inspect import check_signatures, open_installer

    with reporting(debug):
        trusted = _pinned_keys(trusted_key)
        _input(installer, "an installer")
        source = open_installer(installer)
        try:
            manifest = source.manifest
            verdict = check_signatures(source, trusted)
            with _bar("verifying", manifest.total_nar_size, quiet) as bar:
                source.check(bar.update)
        finally:
            source.close()
    say = _say(quiet)
    say(f"OK: {installer} is intact: {len(manifest.paths)} store paths, "
        f"{human_size(manifest.total_nar_size)} of NAR verified")
    for line in verdict.lines():
        say(f"  {line}")
    if verdict.signed_by:
        say(f"  every store path's Nix signature holds for {manifest.store_dir}")


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
    from .retarget import retarget as run_retarget

    started = time.time()
    with reporting(debug):
        sign_keys = load_secret_keys(sign_key or [])
        with _bar("verifying and relocating", None, quiet) as bar:
            if exact:
                from .retarget import retarget_exact

                result = retarget_exact(source, prefix, output, compression=compression,
                                        level=level, progress=bar.update, sign_keys=sign_keys)
            else:
                result = run_retarget(source, prefix, output, compression=compression,
                                      level=level, store_root=store_root, progress=bar.update,
                                      sign_keys=sign_keys)
    m = result.manifest
    if result.source_signed_by and not sign_keys:
        # Said even with --quiet: the publisher may not expect it.
        typer.echo(f"warning: {source} is signed by "
                   f"{', '.join(k.name for k in result.source_signed_by)}, but {output} is "
                   "unsigned: its paths and manifest changed, so no old signature holds "
                   "(pass --sign-key FILE to sign it)", err=True)
    if not quiet:
        typer.echo(f"wrote {output}: {len(m.paths)} store paths for {m.store_dir} "
                   f"(embedded as {m.embedded_store_dir}) in {time.time() - started:.1f} s",
                   err=True)
        for line in signature_lines(m):
            typer.echo(line, err=True)
        for line in m.hidden_refs:
            typer.echo(f"warning: the old store dir stays hidden in {line}", err=True)


@app.command()
def cache(
    sources: Annotated[list[Path], typer.Argument(
        metavar="SOURCE...", help="installers made by nix-prefix, or closureInfo dirs; "
                                  "several are merged into one cache")],
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
    when the sources hold their derivations (build --with-derivations), and relocated
    in place otherwise.  The layout is nix copy --to file://DIR's: serve DIR over HTTP
    or use it as file://DIR.  A re-run adds what is missing.

    \b
      nix-prefix cache nix-installer.sh --prefix /home/alice/.nix -o cache
    """
    from .cache import CacheOptions, write_cache

    started = time.time()
    with reporting(debug):
        from .signer import load_secret_keys

        keys = load_secret_keys(sign_key or [])
        options = CacheOptions(compression=compression, level=level, sign_keys=keys, jobs=jobs)
        with _bar("verifying, retargeting and compressing", None, quiet) as bar:
            result = write_cache(sources, prefix, output, options, store_root=store_root,
                                 progress=bar.update)
    say = _say(quiet)
    for line in cache_summary(result, output, time.time() - started):
        say(line)
    if keys:
        say("  signed by " + ", ".join(k.name for k in keys) + "; users trust it with "
            "trusted-public-keys = " + " ".join(str(k.public_key) for k in keys))
    else:
        say("  unsigned: a Nix with require-sigs (the default) will not use it; "
            "sign with --sign-key FILE")
    for line in result.hidden_refs:
        say(f"warning: the old store dir stays hidden in {line}")


def cache_summary(result, output: Path, seconds: float) -> list[str]:
    """What ``cache`` prints at the end: what was added, how, and how to use it."""
    how = ("every store path recomputed exactly" if result.exact
           else "relocated in place, hash parts kept")
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
    with reporting(debug):
        from .limits import parse_size
        from .master import Master, ServeOptions
        from .offer import load_all
        from .serve import run
        from .signer import load_secret_keys

        host, colon, port = listen.rpartition(":")
        if not colon or not host or not port.isdigit() or int(port) > 65535:
            raise BuildError(f"--listen {listen!r} is not HOST:PORT",
                             "e.g. --listen 127.0.0.1:8080")
        limits = Limits(max_memory=parse_size(max_memory), producers=producers,
                        streams_per_client=streams_per_client,
                        stream_buffer=parse_size(stream_buffer), send_timeout=send_timeout,
                        min_rate=max(1, parse_size(min_rate)), cold=cold,
                        cold_per_client=cold_per_client, cold_queue=cold_queue,
                        cold_queue_per_client=cold_queue_per_client)
        keys = load_secret_keys(sign_key or [])
        options = ServeOptions(compression=compression, level=level, sign_keys=keys)
        master = Master(sources, options, store_root=store_root)
        offered = load_all(installer or [])

        def ready(url: str) -> None:
            signed = "signed by " + ", ".join(k.name for k in keys) if keys else "unsigned"
            typer.echo(f"serving a binary cache for every store dir of at most "
                       f"{master.max_store_dir} bytes at {url}/STORE/DIR ({signed})", err=True)
            typer.echo(f"  e.g. substituters = {url}/home/alice/.nix/store", err=True)
            typer.echo(f"  a page for people at {url}/ offering "
                       + (", ".join(f"/installers/{o.file_name}" for o in offered.values())
                          or "no installer (--installer FILE)"), err=True)

        try:
            run(master, host.strip("[]"), int(port), ready, installers=list(offered.values()),
                limits=limits, reload=lambda: Master(sources, options, store_root=store_root),
                access_log=access_log, client_header=client_header)
        except OSError as e:
            raise BuildError(f"cannot listen on {listen}: {e.strerror}",
                             "choose another --listen address or port") from None


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
    from .bundles import write_verifier
    from .pack import check_output

    with reporting(debug):
        check_output(output)
        try:
            write_verifier(output)
        except OSError as e:
            raise BuildError(f"cannot write {output} ({e.strerror})",
                             "choose another -o") from None
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
