"""The ``nix-prefix`` command (build side)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from ..payload import __version__, codecs
from .closure_info import read_closure
from .errors import BuildError
from .pack import BuildOptions, build_installer

app = typer.Typer(
    help="Turn a Nix store closure into one self-extracting installer that needs no root.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)


def _fail(e: Exception, code: int = 1) -> None:
    typer.echo(f"nix-prefix: error: {e}", err=True)
    raise typer.Exit(code)


@app.command()
def build(
    closure_info: Annotated[Path, typer.Argument(
        help="closureInfo output dir (store-paths, registration, total-nar-size), "
             "or a `nix-store --dump-db` file")],
    output: Annotated[Path, typer.Option("-o", "--output", help="installer file to write")],
    compression: Annotated[str, typer.Option(
        help="payload codec: xz (any Python can install it) or zstd (faster)")] = "xz",
    level: Annotated[int | None, typer.Option(
        help="compression level (xz: 0-9, default 6; zstd: 1-22, default 19)")] = None,
    store_root: Annotated[Path | None, typer.Option(
        help="where the store dir physically lives (a chroot store); default: the store "
             "dir itself")] = None,
    root: Annotated[list[str] | None, typer.Option(
        "--root", help="store path for the profile (repeatable); default: the paths "
                       "nothing else references")] = None,
    system: Annotated[str | None, typer.Option(
        help="Nix system of the closure (default: this machine's)")] = None,
    no_verify: Annotated[bool, typer.Option(
        "--no-verify", help="do not recompute NAR hashes against the registration")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="no progress bar or summary")]
    = False,
) -> None:
    """Build a single-file installer from a closure."""
    try:
        codecs.check_name(compression)
    except codecs.CodecError as e:
        _fail(e, 2)
    started = time.time()
    try:
        closure = read_closure(closure_info)
        options = BuildOptions(compression=compression, level=level, store_root=store_root,
                               verify=not no_verify, roots=root or None, system=system)
        with tqdm(total=closure.total_nar_size, unit="B", unit_scale=True,
                  desc="hashing and packing", disable=quiet or None, file=sys.stderr) as bar:
            result = build_installer(closure, output, options, progress=bar.update)
    except BuildError as e:
        _fail(e)
    if not quiet:
        m = result.manifest
        ratio = result.size / max(m.total_nar_size, 1)
        typer.echo(
            f"wrote {output}: {len(m.paths)} store paths, {m.total_nar_size / 2**20:.1f} MiB "
            f"NAR -> {result.size / 2**20:.1f} MiB installer ({ratio:.1%}, {compression}) "
            f"in {time.time() - started:.1f} s", err=True)
        typer.echo(f"install with: sh {output}   (or: sh {output} --help)", err=True)


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
    level: Annotated[int | None, typer.Option(help="compression level")] = None,
    store_root: Annotated[Path | None, typer.Option(
        help="with a closureInfo source: where its store dir physically lives")] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="no progress bar or summary")]
    = False,
) -> None:
    """Make an installer for another prefix from an installer or closure, without Nix."""
    from .retarget import retarget as run_retarget

    started = time.time()
    try:
        with tqdm(unit="B", unit_scale=True, desc="verifying and relocating",
                  disable=quiet or None, file=sys.stderr) as bar:
            result = run_retarget(source, prefix, output, compression=compression, level=level,
                                  store_root=store_root, progress=bar.update)
    except (BuildError, codecs.CodecError) as e:
        _fail(e)
    if not quiet:
        m = result.manifest
        typer.echo(f"wrote {output}: {len(m.paths)} store paths for {m.store_dir} "
                   f"(embedded as {m.embedded_store_dir}) in {time.time() - started:.1f} s",
                   err=True)
        for line in m.hidden_refs:
            typer.echo(f"warning: the old store dir stays hidden in {line}", err=True)


@app.command()
def demo(
    workdir: Annotated[Path | None, typer.Option(
        help="where to build and install (default: a new dir under /tmp)")] = None,
    compression: Annotated[str, typer.Option(help="payload codec: xz or zstd")] = "xz",
) -> None:
    """Build a sample closure with this machine's Nix, make an installer, install it, run it."""
    from .demo import run_demo

    try:
        run_demo(workdir, compression)
    except BuildError as e:
        _fail(e)


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
    app()
