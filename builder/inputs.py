"""What ``nix-prefix build`` packs: a closureInfo dir, store paths, a Nix file, or
the closure of store paths in a binary cache; and ``build``, the command's one call.

``Request`` is what the command line asked for; ``build`` checks it, and
``open_input`` chooses the source before pack.py packs it.  Each input ends as
the same ``Closure`` (closure_info.py checks it); roots given by the user also
become the profile's default roots.  Store paths and Nix files go through the
machine's Nix (localnix.py): ``nix-build`` for a file, then ``nix-store -qR``
and ``--dump-db`` into a closureInfo-style dir; ``--from-cache`` fetches and
verifies (fromcache.py).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..payload import codecs
from ..payload.container import not_a_file
from .closure_info import Closure, read_closure
from .errors import BuildError, UsageError
from .fromcache import FetchLimits
from .leftovers import remove_stale
from .localnix import Nix, NixCommandError, store_nix, store_path_of
from .pack import BuildOptions, BuildResult, build_installer, check_output
from .signer import load_secret_keys

FETCH_PREFIX = ".nix-prefix-fetch-"  # + pid: build --from-cache's store beside -o
# A progress bar: ``bar(description, total)`` gives a context whose value is called
# with the bytes done since the last call (cli.py draws it with tqdm).
Bar = Callable[[str, "int | None"], AbstractContextManager[Callable[[int], object]]]

NOT_IN_STORE_HINT = ("build it first, or point at its store with --store-dir or "
                     "NIX_STORE_DIR")


@dataclass
class Input:
    """A checked closure and the roots the user named (None: from a closureInfo)."""

    closure: Closure
    roots: list[str] | None
    # Where the closure's store dir physically is (None: the store dir itself, or
    # --store-root): the fetched store of --from-cache.
    store_root: Path | None = None


@dataclass
class Request:
    """What ``nix-prefix build`` was asked to pack, as the command line gave it."""

    sources: list[str] = field(default_factory=list)  # a closureInfo, or with roots: ROOTs
    roots: bool = False  # --roots: the sources are store paths
    file: Path | None = None  # -f FILE.nix
    attrs: list[str] = field(default_factory=list)  # -A
    argstrs: list[str] = field(default_factory=list)  # --argstr NAME=VALUE
    store_dir: Path | None = None  # --store-dir
    from_cache: str | None = None  # --from-cache URL
    cache_keys: list[str] = field(default_factory=list)  # --cache-key NAME:BASE64
    limits: FetchLimits = field(default_factory=FetchLimits)
    with_derivations: bool = False

    def check(self) -> None:
        """Refuse options that do not go together, before any work (exit 2)."""
        if self.file is not None and (self.sources or self.roots):
            raise UsageError("-f builds its own roots: give no CLOSURE_INFO or --roots")
        if (self.attrs or self.argstrs) and self.file is None:
            raise UsageError("-A and --argstr go with -f FILE.nix")
        if self.from_cache is not None and (self.file is not None or self.roots
                                            or self.with_derivations):
            raise UsageError("--from-cache takes root store paths: no -f, --roots or "
                             "--with-derivations")
        if self.cache_keys and self.from_cache is None:
            raise UsageError("--cache-key checks the narinfos of --from-cache URL",
                             "add --from-cache, or drop --cache-key")

    def given_files(self) -> list[Path]:
        """The files and dirs read as input (an output must not replace one)."""
        return ([Path(p) for p in self.sources if not self.roots]
                + ([self.file] if self.file is not None else []))


def build(request: Request, out: Path, options: BuildOptions, sign_key_files: Sequence[Path],
          say: Callable[[str], object], bar: Bar) -> BuildResult:
    """``nix-prefix build``: check the request, open its input, pack it into ``out``.

    Everything the command line got wrong is refused before any work; a --from-cache
    fetch goes to a directory beside ``out``, removed when the build ends.
    """
    check_codec(options.compression)
    request.check()
    check_output(out)  # before any work: -o /dev/null is refused at once
    refuse_output_over_input(out, request.given_files() + list(sign_key_files))
    remove_stale(out.resolve().parent, FETCH_PREFIX)  # of runs that were killed
    # Read first too: a bad key file stops the build before any work.
    options = replace(options, sign_keys=load_secret_keys(list(sign_key_files)))
    with ExitStack() as stack:
        def fetch_dir() -> Path:
            return Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix=f"{FETCH_PREFIX}{os.getpid()}-", dir=out.resolve().parent)))

        given = open_input(request, fetch_dir, say, bar)
        if request.with_derivations:
            given = with_derivations(given, request, options.store_root)
        options = replace(options, store_root=given.store_root or options.store_root,
                          roots=options.roots or given.roots,
                          derivations=request.with_derivations)
        with bar("hashing, packing and compressing", given.closure.total_nar_size) as progress:
            return build_installer(given.closure, out, options, progress=progress)


def check_codec(name: str) -> None:
    """Refuse a payload codec the installer cannot read (exit 2)."""
    try:
        codecs.check_name(name)
    except codecs.CodecError as e:
        raise UsageError(str(e)) from None


def refuse_output_over_input(output: Path, given: Sequence[Path]) -> None:
    """Refuse an -o that is one of the inputs, or inside an input dir: the output
    replaces it once the build is done (``build ./ci -o ci/registration``)."""
    out = output.resolve()
    for path in given:
        read = path.resolve()
        if out == read or read in out.parents:
            raise UsageError(f"-o {output} would overwrite the input {path}",
                             "write the output elsewhere")


def open_input(request: Request, fetch_dir: Callable[[], Path], say: Callable[[str], object],
               bar: Bar) -> Input:
    """The closure ``request`` names, checked; ``fetch_dir()`` makes the directory a
    --from-cache fetch goes to (the caller removes it after the build)."""
    if request.from_cache is not None:
        return _from_cache(request, fetch_dir(), say, bar)
    if request.file is not None:
        return from_nix_file(store_nix(request.store_dir, create=True), request.file,
                             request.attrs, request.argstrs, say)
    if request.roots:
        if not request.sources:
            raise UsageError("--roots needs at least one store path")
        say(f"querying the closure of {len(request.sources)} root(s) with nix-store -qR")
        return from_roots(store_nix(request.store_dir), request.sources)
    if len(request.sources) == 1:
        return from_closure_info_arg(Path(request.sources[0]))
    raise UsageError("give one CLOSURE_INFO dir, --roots ROOT..., or -f FILE.nix",
                     "see nix-prefix build --help")


def _from_cache(request: Request, dest: Path, say: Callable[[str], object],
                bar: Bar) -> Input:
    from .fromcache import fetch_closure, parse_cache_keys

    assert request.from_cache is not None
    keys = parse_cache_keys(request.cache_keys)
    if not request.sources:
        raise UsageError("--from-cache needs at least one store path",
                         "nix-prefix build --from-cache URL /prefix/store/HASH-NAME")
    with bar("fetching and verifying", None) as progress:
        closure, roots = fetch_closure(request.from_cache, request.sources, dest, keys, say,
                                       progress, request.limits)
    return Input(closure, roots, store_root=dest)


def write_closure_dir(request: Request, out_dir: Path, say: Callable[[str], object],
                      bar: Bar) -> Closure:
    """``nix-prefix closure``: a closureInfo dir for the roots ``request.sources``, from
    the local Nix or, with --from-cache, fetched into ``out_dir/store``."""
    request.check()
    if request.from_cache is None:
        write_closure_info(store_nix(request.store_dir), request.sources, out_dir)
        return from_closure_info(out_dir).closure
    from .fromcache import parse_cache_keys
    from .fromcache import write_closure_dir as fetch_closure_dir

    keys = parse_cache_keys(request.cache_keys)
    with bar("fetching and verifying", None) as progress:
        return fetch_closure_dir(request.from_cache, request.sources, out_dir, keys, say,
                                 progress, request.limits)


def from_closure_info_arg(given: Path) -> Input:
    """The CLOSURE_INFO argument: a dir or a dump file, not another kind of source."""
    from .sources import CACHE, INSTALLER, kind_of

    if not given.exists():  # read_closure says so
        return from_closure_info(given)
    check_given(given, "a closureInfo dir or a nix-store --dump-db file", directory_too=True)
    kind = kind_of(given)
    if kind == INSTALLER:
        raise UsageError(f"{given} is an installer, not a closureInfo dir",
                         f"nix-prefix retarget {given} -p PREFIX -o NEW.sh makes one "
                         "for another prefix; nix-prefix inspect shows what it holds")
    if kind == CACHE:
        raise UsageError(f"{given} is a binary cache, not a closureInfo dir",
                         f"nix-prefix build --from-cache file://{given.resolve()} "
                         "STORE_PATH... packs store paths from it")
    return from_closure_info(given)


def with_derivations(given: Input, request: Request, store_root: Path | None) -> Input:
    """``build --with-derivations``: ``given`` plus the .drv closure of its derivers,
    checked to be one exact retarget can plan."""
    from .derivations import check_exact
    from .derivations import with_derivations as add_derivations

    closure, drv_roots = add_derivations(
        given.closure, store_nix(request.store_dir) if request.store_dir is not None else None)
    check_exact(closure, store_root)
    return Input(closure, given.roots or drv_roots, given.store_root)


def check_given(path: Path, what: str, directory_too: bool = False) -> None:
    """Refuse a file argument that is not there (exit 2, not "damaged"), or that is not
    a regular file (a FIFO would block the read forever), before it is opened."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file", f"give the path of {what}") from None
    except OSError as e:
        raise BuildError(f"cannot read {path}: {e.strerror}") from None
    if not (stat.S_ISREG(mode) or directory_too and stat.S_ISDIR(mode)):
        raise UsageError(f"{path} is not a regular file"
                         + (" or directory" if directory_too else "")
                         + f" (it is {not_a_file(os.fspath(path))})", f"give the path of {what}")


def from_closure_info(path: Path) -> Input:
    """A closureInfo dir or a ``nix-store --dump-db`` file."""
    return Input(read_closure(path), None)


def from_roots(nix: Nix, roots: Sequence[str]) -> Input:
    """The closure of ``roots`` (store paths, or links to them such as ./result)."""
    with tempfile.TemporaryDirectory(prefix="nix-prefix-closure-") as tmp:
        info = write_closure_info(nix, roots, Path(tmp))
        closure = read_closure(info)
    try:
        resolved = [store_path_of(root, closure.store_dir) for root in roots]
    except NixCommandError as e:
        raise BuildError(str(e), NOT_IN_STORE_HINT) from None
    return Input(closure, sorted(set(resolved)))


def from_nix_file(nix: Nix, file: Path, attrs: Sequence[str], argstrs: Sequence[str],
                  say: Callable[[str], object] = print) -> Input:
    """``nix-build FILE [-A ATTR]... [--argstr NAME VALUE]...``, then its outputs' closure."""
    if not file.exists() and not str(file).startswith("<"):  # <nixpkgs> is Nix's to find
        raise BuildError(f"{file} does not exist", "pass a Nix file to build with -f")
    args = parse_argstrs(argstrs)
    shown = " ".join([str(file), *(f"-A {a}" for a in attrs)])
    say(f"building {shown} with nix-build")
    try:
        outputs = nix.build_file(file, attrs=attrs, argstrs=args, show_log=True)
    except NixCommandError as e:
        raise BuildError(str(e), "see Nix's messages above") from None
    if not outputs:
        raise BuildError(f"nix-build {shown} built nothing", "pick an attribute with -A")
    return from_roots(nix, outputs)


def write_closure_info(nix: Nix, roots: Sequence[str], out_dir: Path) -> Path:
    """``nix-prefix closure``: a closureInfo-style dir for ``roots`` from the local Nix."""
    if not roots:
        raise BuildError("no store paths given", "name at least one root")
    try:
        return nix.write_closure_info(roots, out_dir)
    except NixCommandError as e:
        raise BuildError(str(e), NOT_IN_STORE_HINT) from None
    except OSError as e:
        raise BuildError(f"cannot write {out_dir}: {e.strerror}") from None


def parse_argstrs(items: Sequence[str]) -> dict[str, str]:
    """``NAME=VALUE`` strings as nix-build's ``--argstr NAME VALUE`` pairs."""
    argstrs = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise UsageError(f"--argstr {item!r} is not NAME=VALUE",
                             "write e.g. --argstr prefix=/tmp/nix")
        argstrs[name] = value
    return argstrs
