"""Command line of the installer file: ``sh nix-prefix-installer.sh [options]``."""

import argparse
import os
import re
import sys

from ..payload import __version__, publisher, seal, signing
from ..payload.codecs import CodecError
from ..payload.container import InstallerFile
from ..payload.display import info_text, verdict_lines
from ..payload.errors import OneLineError
from ..payload.machine import human_size
from . import (
    envfiles,
    nixconf,
    preflight,
    receipt,
    shellrc,
    signals,
    summary,
    timings,
    uninstall,
)
from . import install as install_mod
from .errors import (
    EXIT_ENVIRONMENT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    BadUsage,
    InstallError,
    UsageProblem,
)
from .prefix import Prefix
from .ui import UI

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import List, Optional, Sequence  # noqa: F401

    from ..payload.publisher import Verdict  # noqa: F401
    from ..payload.signing import PublicKey  # noqa: F401

DESCRIPTION = """\
Install a Nix store closure into a prefix you own, without root: the store
goes to PREFIX/store, Nix's state to PREFIX/var/nix, its config to
PREFIX/etc/nix.  Every file is verified against Nix's own NAR hashes before
anything is moved into place; running it again only adds what is missing.
"""

EPILOG = """\
exit codes: 0 done, 1 install failed (the prefix is as it was), 2 bad usage
(also: the prefix holds another install and -u was not given, or no -y and no
terminal to ask on), 3 the installer file is damaged, or trusted keys were
given and none of them signed it, 4 this machine or prefix cannot take it
(nothing was changed), 130 interrupted (what it did was undone).

environment: NIX_PREFIX_PYTHON=/path/to/python3 picks the Python that runs the
installer; NIX_PREFIX_DEBUG=1 shows the traceback of an internal error;
NIX_PREFIX_JOBS=N is the default of --jobs; NIX_PREFIX_TRUSTED_KEYS="NAME:BASE64
..." adds to --trusted-key.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, "nix-prefix: error: %s (see --help)\n" % message)


def _parser(prog):
    # type: (str) -> argparse.ArgumentParser
    p = _Parser(prog=prog, description=DESCRIPTION, epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-p", "--prefix", metavar="P",
                   help="install into P (default: the prefix the closure was built for)")
    p.add_argument("-y", "--yes", "-b", "--batch", dest="yes", action="store_true",
                   help="do not ask before installing")
    p.add_argument("-u", "--update", action="store_true",
                   help="update a prefix that has another nix-prefix install: add this "
                        "installer's paths and make a new profile generation with its roots "
                        "(the old generation stays)")
    p.add_argument("--uninstall", action="store_true",
                   help="remove what this installer added to the prefix (its store paths, "
                        "profile generations and files), keeping anything still needed")
    p.add_argument("--rollback", action="store_true",
                   help="switch the prefix's profile back to its previous generation")
    p.add_argument("--check", action="store_true",
                   help="verify the whole installer file (manifest, payload, every NAR hash) "
                        "and write nothing")
    p.add_argument("--list", action="store_true", help="print the store paths and exit")
    p.add_argument("--info", action="store_true", help="print a summary of the installer")
    _add_options(p)
    return p


def _add_options(p):
    # type: (argparse.ArgumentParser) -> None
    """The options of what an install writes, and how it runs."""
    rc = p.add_mutually_exclusive_group()
    rc.add_argument("--modify-profile", action="store_true",
                    help="also add a marked line that sources PREFIX/etc/profile.d/nix.sh to "
                         "~/.profile (and ~/.bash_profile, ~/.bashrc, ~/.zshrc if present)")
    rc.add_argument("--unmodify-profile", action="store_true",
                    help="remove that line from those files, install nothing, and exit")
    rc.add_argument("--no-modify-profile", action="store_true",
                    help="do not edit shell start-up files: the default, accepted for "
                         "compatibility with Nix's own installer")
    p.add_argument("--substituter", metavar="URL", action="append", default=[],
                   type=_substituter,
                   help="a binary cache for this prefix's store (repeatable), written to "
                        "PREFIX/etc/nix/nix.conf as `substituters`: the installed Nix fetches "
                        "from it instead of building; needs --trusted-key")
    p.add_argument("--trusted-key", metavar="NAME:BASE64", action="append", default=[],
                   dest="trusted_keys", type=_public_key,
                   help="the publisher's Nix public key, as nix-store "
                        "--generate-binary-cache-key writes it (repeatable; also "
                        "NIX_PREFIX_TRUSTED_KEYS, space-separated like Nix's "
                        "trusted-public-keys): the installer is refused, before anything is "
                        "written, unless one of these keys signed it; with --substituter "
                        "they are also written to nix.conf as `trusted-public-keys`, with "
                        "require-sigs kept on")
    p.add_argument("--extra-conf", metavar="LINE", action="append", default=[],
                   dest="extra_conf",
                   help="a line for PREFIX/etc/nix/nix.conf, such as 'max-jobs = 8' "
                        "(repeatable; a setting given replaces the installer's own of that "
                        "name); settings a prefix without root cannot take (store, "
                        "build-users-group, sandbox without user namespaces) are refused")
    p.add_argument("--nix-conf", metavar="FILE",
                   help="the lines of FILE for nix.conf, before those of --extra-conf "
                        "(checked the same way)")
    p.add_argument("-j", "--jobs", metavar="N", type=_positive,
                   default=None,
                   help="unpack and verify N payload chunks at once (default: the CPUs this "
                        "process may use, no more than the payload has chunks nor the free "
                        "memory holds; or NIX_PREFIX_JOBS)")
    p.add_argument("--as-owner", action="store_true",
                   help="run as root on a prefix that belongs to another user: do everything "
                        "as that user (their uid and gid), so that every file stays theirs")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    p.add_argument("--version", action="version", version="nix-prefix installer " + __version__)


def _positive(value):
    # type: (str) -> int
    jobs = preflight.positive_number(value)
    if jobs is None:
        raise argparse.ArgumentTypeError("%r is not a positive number" % value)
    return jobs


_URL = re.compile(r"^[a-z][a-z0-9+.-]*://[^\s]+\Z")


def _substituter(value):
    # type: (str) -> str
    if not _URL.match(value):
        raise argparse.ArgumentTypeError(
            "%r is not a binary cache URL (such as https://cache.example.org or "
            "file:///srv/cache)" % value)
    return value.rstrip("/")


def _public_key(value):
    # type: (str) -> str
    """``NAME:BASE64`` of a 32-byte ed25519 public key (payload/signing.py)."""
    try:
        signing.parse_public_key(value)
    except signing.SigningError as e:
        raise argparse.ArgumentTypeError(
            "%s; give the publisher's public key as NAME:BASE64, the line "
            "nix-store --generate-binary-cache-key writes to its public key file" % e)
    return value


def main(path, argv, name=None, sealed=False):
    # type: (str, List[str], Optional[str], bool) -> None
    """Entry point from the sh preamble or ``python3 FILE``; never returns.

    ``path`` is the file to read, ``name`` how to call it in messages (the
    preamble reads the file through an open descriptor); ``sealed``: the
    preamble already checked the seal over ``path`` (payload/seal.py).
    """
    seal.open_standard_streams()  # again for python3 FILE, which has no bootstrap
    timings.start()
    # From here a Ctrl-C, SIGTERM or SIGHUP stops it and the plan undoes what this
    # run did (signals.py); only SIGKILL leaves work for the next run.
    signals.handle_stops()
    ui = UI()
    debug = bool(os.environ.get("NIX_PREFIX_DEBUG"))
    try:
        name = name or path
        prog = os.path.basename(name) if name else "installer"
        parser = _parser(prog)
        args = parser.parse_args(argv)
        if args.substituter and not (
                args.trusted_keys or os.environ.get("NIX_PREFIX_TRUSTED_KEYS", "").strip()):
            parser.error("--substituter needs --trusted-key NAME:BASE64, the cache's public "
                         "key: the installed Nix keeps require-sigs on and takes only signed "
                         "paths")
        _one_mode(parser, args)
        args.conf_lines = _conf_lines(args)
        ui.quiet = args.quiet
        code = run(path, args, ui, name, sealed)
    except OneLineError as e:  # InstallError, CorruptInstaller
        undone = " (undone: the prefix is as it was)" if getattr(e, "reverted", False) else ""
        ui.error("nix-prefix: error: %s%s" % (e, undone))
        code = e.exit_code
    except CodecError as e:  # e.g. a zstd payload and no zstd decoder here
        ui.error("nix-prefix: error: %s" % e)
        code = EXIT_ENVIRONMENT
    except KeyboardInterrupt:
        ui.error("nix-prefix: interrupted; what this run did is undone, the prefix is as it "
                 "was (run it again to install)")
        code = EXIT_INTERRUPTED
    except Exception as e:
        code = EXIT_FAILED
        if seal.is_out_of_memory(e):  # MemoryError; a thread or library under ulimit -v
            # Raised out of the plan only once its steps were undone (plan.py).
            ui.error("nix-prefix: error: out of memory; what this run did is undone, the "
                     "prefix is as it was; %s" % seal.memory_advice())
        elif debug:
            raise
        else:  # a bug: still one line, with the way to see more
            ui.error("nix-prefix: internal error: %s: %s (rerun with NIX_PREFIX_DEBUG=1 "
                     "for details, and report it)" % (type(e).__name__, e))
    # The outcome is decided and said: a Ctrl-C now must not turn it into another.
    signals.outcome_decided()
    timings.write()
    ui.close()
    sys.exit(code)


# What a run does, one per run: two given would leave one of them silently undone.
MODES = (("--check", "check"), ("--list", "list"), ("--info", "info"),
         ("--uninstall", "uninstall"), ("--rollback", "rollback"),
         ("--unmodify-profile", "unmodify_profile"), ("-u", "update"))


def _one_mode(parser, args):
    # type: (argparse.ArgumentParser, argparse.Namespace) -> None
    given = [flag for flag, name in MODES if getattr(args, name)]
    if len(given) > 1:
        parser.error("%s and %s do not go together: give one of them" % tuple(given[:2]))


def _caches(args, trusted):
    # type: (argparse.Namespace, Sequence[PublicKey]) -> Optional[envfiles.Caches]
    """The binary caches of --substituter, with the keys to trust, or None."""
    if not args.substituter:
        return None
    return envfiles.Caches(args.substituter, [str(k) for k in trusted])


def _conf_lines(args):
    # type: (argparse.Namespace) -> List[str]
    """The nix.conf lines of --nix-conf and --extra-conf, checked before anything is
    read or written: BadUsage naming the first a prefix cannot take."""
    lines = []  # type: List[str]
    try:
        if args.nix_conf is not None:
            lines += nixconf.read_lines(args.nix_conf)
    except nixconf.ConfError as e:
        raise BadUsage("--nix-conf: %s" % e, "give a readable nix.conf file")
    for given in args.extra_conf:
        lines += given.splitlines() or [""]
    lines = [line.rstrip() for line in lines if line.split("#", 1)[0].strip()]
    why = nixconf.first_problem(lines)
    if why is not None:
        raise BadUsage("nix.conf setting refused: %s" % why,
                       "leave it out of --extra-conf/--nix-conf (docs/installing.md, "
                       "\"Settings for nix.conf\")")
    return lines


def _check_python():
    # type: () -> None
    if sys.version_info < (3, 6):
        raise InstallError("this installer needs Python 3.6 or newer, not %d.%d"
                           % sys.version_info[:2], "install python3")


def _trusted_keys(given):
    # type: (Sequence[str]) -> List[PublicKey]
    """The keys of --trusted-key and NIX_PREFIX_TRUSTED_KEYS; BadUsage if one is malformed."""
    try:
        return publisher.trusted_keys(given, os.environ)
    except signing.SigningError as e:
        raise BadUsage(str(e), "give the publisher's public key as NAME:BASE64, the line "
                               "nix-store --generate-binary-cache-key writes to its public "
                               "key file")


def run(path, args, ui, name=None, sealed=False):
    # type: (str, argparse.Namespace, UI, Optional[str], bool) -> int
    """Do what ``args`` ask of the installer file at ``path``; return the exit code."""
    _check_python()
    trusted = _trusted_keys(args.trusted_keys)
    with timings.phase("manifest"):  # the zip, the manifest; the seal if not checked yet
        installer = InstallerFile(path, name, sealed)
    try:
        manifest = installer.manifest
        if args.jobs is None:  # NIX_PREFIX_JOBS is only read (and checked) when it counts
            args.jobs = preflight.default_jobs(os.environ.get("NIX_PREFIX_JOBS"), manifest)
        verdict = installer.verdict(trusted)  # a signature that does not hold: exit 3
        if args.list or args.info:
            _show(installer, args, verdict, _caches(args, trusted))
            return 0
        # Before anything is read further or written: a publisher the user does not trust.
        installer.check_publisher(trusted)
        if args.check:
            _check(installer, args.jobs, verdict, ui)
            return 0
        root = (preflight.resolve_prefix(args.prefix) if args.prefix is not None
                else manifest.prefix)
        prefix = Prefix(root)
        if args.as_owner:
            preflight.become_owner(prefix)
        if args.uninstall or args.rollback:
            return _undo(installer, prefix, args, ui)
        if args.unmodify_profile:
            changed = shellrc.remove_block(root)
            ui.say("removed the nix-prefix line for %s from %s"
                   % (root, ", ".join(changed)) if changed else
                   "no shell start-up file sources %s; nothing to remove" % root)
            return 0
        return _install(installer, prefix, args, ui, verdict, _caches(args, trusted))
    finally:
        installer.close()


def _show(installer, args, verdict, caches):
    # type: (InstallerFile, argparse.Namespace, Verdict, Optional[envfiles.Caches]) -> None
    """--list (the store paths) and --info (a summary and the nix.conf it writes)."""
    manifest = installer.manifest
    if args.list:
        for p in manifest.paths:
            sys.stdout.write(manifest.store_path(p.name) + "\n")
        return
    sys.stdout.write(info_text(manifest, verdict))
    sys.stdout.write(summary.conf_text(envfiles.nix_conf(
        Prefix(manifest.prefix), caches, args.conf_lines)))


def _check(installer, jobs, verdict, ui):
    # type: (InstallerFile, int, Verdict, UI) -> None
    """--check: verify the whole file and write nothing."""
    with timings.phase("check"):
        installer.check(jobs=jobs)
    ui.say("OK: %s is intact: %d store paths, %s of NAR verified"
           % (installer.name, len(installer.manifest.paths),
              human_size(installer.manifest.total_nar_size)))
    for line in verdict_lines(verdict):
        ui.say("  " + line)


def _install(installer, prefix, args, ui, verdict, caches):
    # type: (InstallerFile, Prefix, argparse.Namespace, UI, Verdict, Optional[envfiles.Caches]) -> int
    """Show the plan, ask, install, and say what to do next."""
    # How the paths get to this prefix, once (with the derivations in the payload,
    # another store dir reads part of it): the checks and the summary use the
    # manifest as installed, new names and all.
    with timings.phase("preflight"):
        target = install_mod.at_prefix(installer, prefix, ui, args.jobs)
        installed = target.manifest
        install_mod.preflight_checks(installed, prefix)
        install_mod.check_update(installed, prefix, args.update)
    # Found before installing, so that a missing HOME stops nothing half-way.
    home = None
    if args.modify_profile:
        home = shellrc.home_dir()
        shellrc.check_writable(home)
    if verdict.signed_by:
        for line in verdict_lines(verdict):
            ui.say(line)
    the_run = install_mod.new_run(installer, prefix, ui, target, args.update, args.jobs,
                                  caches, verdict.key_names, args.conf_lines)
    the_plan = install_mod.receipt_plan(the_run, install_mod.install_steps(the_run, home))
    if not args.yes and not _ask(ui, "\n".join(install_mod.plan_lines(the_run, the_plan))):
        ui.say("nothing was changed")
        return EXIT_FAILED
    # Once every step is done, the install is: a Ctrl-C while the summary is
    # written must not say "undone".
    the_plan.on_done = signals.outcome_decided
    install_mod.execute(the_run, the_plan)
    rc_files = shellrc.candidates(home) if home is not None else []
    ui.say("\n".join(summary.summary_lines(installed, prefix, _rerun_name(installer), rc_files,
                                            caches, args.conf_lines)))
    return 0


def _check_there(prefix, rollback):
    # type: (Prefix, bool) -> None
    """--uninstall or --rollback of a prefix that is not there: say that, not what a
    missing receipt or the Nix run there would say.  (An uninstall still runs when an
    install killed before its first directory left one beside where the prefix would
    be: uninstall.py removes it.)"""
    if os.path.isdir(prefix.root):
        if rollback and not os.path.lexists(prefix.profile):
            raise UsageProblem("%s has no profile to roll back (no %s)"
                               % (prefix.root, prefix.profile),
                               "give -p the prefix you installed into")
        return
    parent = preflight.existing_ancestor(prefix.root)
    try:
        left = [n for n in os.listdir(parent) if n.startswith(receipt.NEW_DIRS_PREFIX)]
    except OSError:
        left = []
    if rollback or not left:
        raise UsageProblem("there is no prefix at %s (no such directory)" % prefix.root,
                           "give -p the prefix you installed into")


def _rerun_name(installer):
    # type: (InstallerFile) -> str
    """How the summary names the installer to run again: its file, or INSTALLER
    when it came through a pipe (curl URL | sh) and is gone."""
    return installer.name if os.path.isfile(installer.name) else "INSTALLER"


def _ask(ui, plan_text):
    # type: (UI, str) -> bool
    """Show the plan and ask to proceed; without a terminal to ask on, refuse (exit 2)."""
    if not ui.interactive:
        raise UsageProblem("no -y, and no terminal to ask on (stdin or stderr is not one)",
                           "pass -y to go ahead without asking")
    ui.say(plan_text)
    return ui.confirm("Proceed?")


def _undo(installer, prefix, args, ui):
    # type: (InstallerFile, Prefix, argparse.Namespace, UI) -> int
    """--uninstall and --rollback, with the prefix's own Nix."""
    _check_there(prefix, args.rollback)
    target = install_mod.at_prefix(installer, prefix, ui, args.jobs)
    manifest = target.manifest
    preflight.check_owner(prefix)
    preflight.check_parents(prefix)
    nix_env = install_mod.nix_tool(manifest, prefix, "nix-env")
    if args.rollback:
        uninstall.rollback(prefix, nix_env, ui)
        return 0
    run = install_mod.new_run(installer, prefix, ui, target)
    if not args.yes and not _ask(ui, uninstall.question(run, installer.name) or (
            "Remove what %s installed in %s." % (installer.name, prefix.root))):
        ui.say("nothing was changed")
        return EXIT_FAILED
    uninstall.uninstall(run, ui)
    if not receipt.others(prefix, ""):
        # The last install is gone: so goes any line that sources the prefix.
        try:
            changed = shellrc.remove_block(prefix.root)
        except InstallError:
            changed = []  # no HOME: no start-up files of ours to look at
        for path in changed:
            ui.say("removed the nix-prefix line from %s" % path)
    return 0
