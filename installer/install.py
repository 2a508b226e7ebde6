"""The install, step by step: preflight, unpack and verify, place, configure, register.

Every step is safe to repeat.  Nothing is moved into the store before the
whole payload needed has been unpacked into a staging dir and verified, and
``nix-store --load-db`` runs only once every path is in place, so a crash or
a corrupt installer never leaves a registered path missing or partial.
"""

import errno
import hashlib
import os
import time

from ..payload import exact, hashes, nar, registration, retarget
from ..payload.machine import human_size
from ..payload.tree import Count, Tee
from . import crashpoints, envfiles, nixstore, preflight, receipt, staging, timings
from .errors import InstallError, UpdateNeeded
from .prefix import Prefix, user_name

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Dict, List, Optional, Sequence, Tuple  # noqa: F401

    from ..payload.container import InstallerFile  # noqa: F401
    from ..payload.manifest import Manifest, PathEntry  # noqa: F401
    from ..payload.tree import Sink  # noqa: F401
    from .ui import UI  # noqa: F401


def plan_lines(target, prefix, also=()):
    # type: (retarget.Retarget, Prefix, Sequence[str]) -> List[str]
    """What the install of ``target`` (see ``at_prefix``) will do, shown before it asks
    to proceed; ``also`` lists what it will do outside the prefix (e.g. --modify-profile)."""
    manifest = target.source
    lines = [
        "Install %d store paths (%s) into %s" % (len(manifest.paths),
                                                 human_size(manifest.total_nar_size),
                                                 prefix.store_dir),
        "  verify every path against its Nix NAR hash before moving it into place",
    ]
    line = target.describe()
    if line is not None:
        lines.append(line)
    lines += [
        "  register them in %s with nix-store --load-db" % prefix.state_dir,
        "  write %s (if absent)" % prefix.nix_conf,
        "  make the profile %s with %s" % (
            prefix.profile, ", ".join(target.manifest.roots)),
        "  write %s/nix.sh and nix.fish" % prefix.profile_d,
    ]
    lines += also
    lines.append("Nothing %soutside %s is changed." % ("else " if also else "", prefix.root))
    return lines


def preflight_checks(manifest, prefix):
    # type: (Manifest, Prefix) -> None
    """Every check that needs no writing; raises InstallError on the first failure."""
    preflight.check_system(manifest)
    user_name()
    preflight.check_retarget(manifest, prefix)
    preflight.check_no_symlinks(prefix)
    preflight.check_writable(prefix)
    preflight.check_store_is_nix(prefix, staging.STAGING_PREFIX)
    preflight.check_path_length(manifest, prefix)
    missing = [p for p in manifest.paths
               if not os.path.lexists(os.path.join(prefix.store_dir, p.name))]
    preflight.check_space(prefix, sum(p.nar_size for p in missing))


def check_update(manifest, prefix, update):
    # type: (Manifest, Prefix, bool) -> None
    """Refuse to replace another install's profile unless ``update`` (-u) is given.

    The prefix holds another install when its default profile exists and lacks
    some of this installer's roots (the same installer run again, with or
    without packages the user added since, or a first install that stopped
    before the profile, is not another install).
    """
    if update:
        return
    roots = set(os.path.join(prefix.store_dir, r) for r in manifest.roots)
    current = nixstore.profile_paths(prefix)
    if current and not roots <= current:
        names = ", ".join(sorted(os.path.basename(p).partition("-")[2] for p in current))
        raise UpdateNeeded(
            "%s already has a nix-prefix install (profile generation %s with %s)" % (
                prefix.root, nixstore.profile_generation(prefix) or "?", names),
            "pass -u (--update) to add this installer's paths and make a new profile "
            "generation; the old one stays for a rollback")


def _make_dirs(prefix):
    # type: (Prefix) -> List[str]
    """Create the prefix's directories; return the ones that did not exist."""
    created = []
    for path in prefix.directories():
        try:
            os.mkdir(path, 0o755)
            created.append(path)
        except OSError as e:
            if e.errno == errno.EEXIST and os.path.isdir(path):
                continue
            _remove_created(prefix, created)
            raise staging.write_error(e, path)
    return created


def _remove_created(prefix, created):
    # type: (Prefix, List[str]) -> None
    """Undo ``_make_dirs`` after a failed first install: remove what is still empty."""
    if prefix.data_dir in created and os.path.exists(prefix.lock_file):
        os.unlink(prefix.lock_file)
    for path in reversed(created):
        try:
            os.rmdir(path)
        except OSError:
            pass


def _on_disk_matches(manifest, entry):
    # type: (Manifest, PathEntry) -> bool
    try:
        digest, size = nar.hash_path(manifest.store_path(entry.name))
    except (OSError, nar.NarError):
        return False
    return size == entry.nar_size and hashes.format_sha256(digest) == entry.nar_hash


def nix_tool(manifest, prefix, tool):
    # type: (Manifest, Prefix, str) -> str
    """The closure's own Nix tool, else one on PATH, else a clear error."""
    if manifest.nix_store:
        path = os.path.join(prefix.store_dir, manifest.nix_store.rpartition("/bin/")[0],
                            "bin", tool)
        if os.path.exists(path):
            return path
    for d in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(d, tool)
        if d and os.access(candidate, os.X_OK):
            return candidate
    raise InstallError("the closure has no Nix and there is no %s on PATH" % tool,
                       "build the installer from a closure that includes Nix")


def at_prefix(source, prefix, ui, jobs=1):
    # type: (InstallerFile, Prefix, UI, int) -> retarget.Retarget
    """How the payload of ``source`` gets to ``prefix`` (payload/retarget.py), and so
    the manifest as installed there (``.manifest``): as it is at the store dir it was
    built for, recomputed exactly when the payload holds the derivations, else the
    store dir rewritten in place.  An exact retarget reads part of the payload first
    (``jobs`` chunks at once)."""
    found = exact_retarget(source, prefix, ui, jobs)
    if found is not None:
        return found
    if prefix.store_dir == source.manifest.store_dir:
        return retarget.Identity(source.manifest)
    preflight.check_retarget(source.manifest, prefix)
    return retarget.SameLength(source.manifest, prefix.store_dir)


def exact_retarget(source, prefix, ui, jobs=1):
    # type: (InstallerFile, Prefix, UI, int) -> Optional[retarget.Exact]
    """The exact retarget of ``source`` into ``prefix``, or None if it does not apply
    (the payload holds no derivations, or ``prefix`` is the one it was built for).

    A same-length retarget is no option for such a payload: Nix's ``--load-db``
    checks that each ``.drv`` it registers names the output paths it computes
    for it at the store dir, and a ``.drv`` that kept its hash parts fails.
    The chunks holding ``.drv`` files and other one-file paths are read
    through the verifying path (every NAR hash checked, nothing written) for
    the planner.  Raises InstallError (one line) if the prefix is too long or
    the closure cannot be planned, CorruptInstaller if the payload is damaged.
    """
    manifest = source.manifest
    if not manifest.derivations or prefix.store_dir == manifest.store_dir:
        return None
    # The checks that need only the manifest come before reading the payload.
    preflight.check_system(manifest)
    preflight.check_retarget(manifest, prefix)
    chunks = retarget.contents_chunks(manifest)
    progress = ui.progress("reading the derivations",
                           sum(manifest.chunks[i].tar_size for i in chunks))
    ui.say("reading the derivations: the %d store paths get the paths Nix computes for %s"
           % (len(manifest.paths), prefix.store_dir))
    try:
        contents = retarget.read_contents(source, progress.update, jobs)
    finally:
        progress.close()
    try:
        return retarget.Exact(manifest, prefix.store_dir, contents)
    except exact.ExactError as e:
        raise InstallError("cannot recompute the store paths for %s: %s" % (prefix.store_dir, e),
                           "install into %s, the prefix this installer was built for"
                           % manifest.prefix)


def install(source, prefix_root, ui, update=False, jobs=1, target=None, caches=None,
            signature_names=()):
    # type: (InstallerFile, str, UI, bool, int, Optional[retarget.Retarget], Optional[envfiles.Caches], Sequence[str]) -> bool
    """Install ``source`` into ``prefix_root``; returns True if anything changed.

    A first install's profile holds exactly the roots; with ``update`` (-u) the
    new generation also keeps the other packages the profile had (same-named
    ones are replaced, as ``nix-env -i`` does).  ``jobs`` payload chunks are
    unpacked at once.  ``target`` is what ``at_prefix`` gave for this prefix
    (computed here if not given).  ``caches`` go into a new nix.conf (--substituter).
    ``signature_names`` names the keys whose signature of the installer holds:
    their signatures of its paths go into the prefix's Nix database when the
    paths are installed where they were signed for.
    """
    prefix = Prefix(prefix_root)
    if target is None:
        target = at_prefix(source, prefix, ui, jobs)
    started = time.time()
    created = _make_dirs(prefix)
    try:
        # A rewritten path is another path: no signature of the publisher covers it
        # (and the retargeted manifest carries none).
        return _install_locked(source, target, prefix, ui, started, update, jobs, caches,
                               () if target.rewrites else signature_names)
    except BaseException:
        _remove_created(prefix, created)
        raise


def _install_locked(source, target, prefix, ui, started, update, jobs, caches,
                    signature_names):
    # type: (InstallerFile, retarget.Retarget, Prefix, UI, float, bool, int, Optional[envfiles.Caches], Sequence[str]) -> bool
    manifest = target.manifest
    changed = False
    with nixstore.PrefixLock(prefix.lock_file,
                             on_wait=lambda: ui.say("waiting for another installer on %s..."
                                                    % prefix.root)):
        for stale in staging.remove_stale_staging(prefix.store_dir):
            ui.say("removed %s, left by an interrupted install" % stale)
        full = [manifest.store_path(p.name) for p in manifest.paths]
        with timings.phase("valid paths"):
            valid = nixstore.valid_paths(prefix, full)
        to_place = []
        for entry in manifest.paths:
            path = manifest.store_path(entry.name)
            if path in valid and os.path.lexists(path):
                continue
            if os.path.lexists(path):
                # Placed by an install that stopped before registering: keep it if
                # its bytes are right, else replace it (it is not valid to Nix).  A
                # rewritten path's hash is known only by unpacking it again.
                if not target.rewrites and _on_disk_matches(manifest, entry):
                    staging.seal_top(path)
                    continue
                ui.say("replacing %s, which does not match its NAR hash" % path)
                staging.remove_tree(path)
            to_place.append(entry)
        if to_place:
            if target.rewrites:
                ui.say("relocating %d store paths from %s to %s"
                       % (len(to_place), source.manifest.store_dir, prefix.store_dir))
                _warn_hidden_refs(manifest, ui)
            # What --load-db registers: the NAR hashes of the bytes written.
            manifest = manifest.with_nar_info(
                _unpack_and_place(source, target, prefix, to_place, ui, jobs))
            changed = True
        envfiles.make_profile_link(prefix)
        written = {}
        for path, content in envfiles.planned_files(prefix, caches):
            with timings.phase("env files"):
                state = envfiles.write_file(path, content)
            crashpoints.reached("env-file")
            if state == "written":
                written[path] = hashlib.sha256(content.encode()).hexdigest()
                changed = True
            elif state == "kept" and path == prefix.nix_conf:
                ui.say("keeping your %s as it is" % path)
                if caches is not None and caches.substituters:
                    ui.say("  for the binary caches, add these lines to it yourself:\n    "
                           + "\n    ".join(caches.conf_lines()))
        nix_store = nix_tool(manifest, prefix, "nix-store")
        unregistered = [p for p in manifest.paths if manifest.store_path(p.name) not in valid]
        if unregistered or written:
            # Recorded before registering: a crash after load-db must not leave paths
            # that no receipt claims (--uninstall only removes what is recorded).
            receipt.record(prefix, manifest, [manifest.store_path(p.name) for p in unregistered],
                           None, None, written)
        if unregistered:
            ui.say("registering %d paths with nix-store --load-db" % len(unregistered))
            # Only new paths: valid ones keep their rows (and, retargeted, their hashes).
            crashpoints.reached("before-load-db")
            with timings.phase("load-db"):
                nixstore.load_db(prefix, nix_store, _registration(manifest, unregistered))
            crashpoints.reached("after-load-db")
            changed = True
        # Every run, not only the one that registered: a crash may have come between.
        if signature_names and _register_signatures(manifest, prefix, signature_names, ui):
            changed = True
        nix_env = nix_tool(manifest, prefix, "nix-env")
        roots = [manifest.store_path(r) for r in manifest.roots]
        with timings.phase("profile"):
            current = nixstore.profile_paths(prefix)
        if not set(roots) <= current:
            ui.say("making the profile %s" % prefix.profile)
            crashpoints.reached("before-profile")
            before = nixstore.max_path_id(prefix)
            with timings.phase("profile"):
                nixstore.set_profile(prefix, nix_env, roots, keep_others=update)
            crashpoints.reached("after-profile")
            environment = os.path.realpath(prefix.profile)
            receipt.record(prefix, manifest, _made_by_nix_env(prefix, nix_store, environment,
                                                              before),
                           nixstore.profile_generation(prefix), environment, {})
            changed = True
    elapsed = time.time() - started
    if changed:
        ui.say("installed %d store paths (%d new) into %s in %.1f s"
               % (len(manifest.paths), len(to_place), prefix.store_dir, elapsed))
    else:
        ui.say("nothing to do: all %d store paths are already installed and registered in %s"
               % (len(manifest.paths), prefix.root))
    return changed


def _made_by_nix_env(prefix, nix_store, environment, before):
    # type: (Prefix, str, str, int) -> List[str]
    """The paths ``nix-env`` registered for ``environment`` (the environment, its
    manifest and .drv): those in its closure or its deriver's registered after
    id ``before``.  A user environment that was valid before is not ours."""
    new = nixstore.registered_since(prefix, before)
    if not new:
        return []
    related = set(nixstore.run_nix(prefix, [nix_store, "-qR", environment]).split())
    deriver = nixstore.run_nix(prefix, [nix_store, "-q", "--deriver", environment]).strip()
    if deriver in new:
        related.update(nixstore.run_nix(prefix, [nix_store, "-qR", deriver]).split())
    return sorted(new & related)


def _register_signatures(manifest, prefix, signature_names, ui):
    # type: (Manifest, Prefix, Sequence[str], UI) -> int
    """Put the publisher's path signatures by the keys ``signature_names`` into the
    prefix's Nix database, so that ``nix path-info --sigs`` shows them and
    ``nix store verify`` checks them."""
    names = set(signature_names)
    signed = []
    for p in manifest.paths:
        sigs = [s for s in p.sigs if s.partition(":")[0] in names]
        if sigs:
            signed.append((manifest.store_path(p.name), p.nar_hash, p.nar_size,
                           [manifest.store_path(r) for r in p.references], sigs))
    if not signed:
        return 0
    try:
        added = nixstore.add_signatures(prefix, signed)
    except ImportError:
        ui.say("warning: this Python has no sqlite3 module, so the publisher's signatures "
               "of the store paths are not recorded in the Nix database")
        return 0
    if added:
        ui.say("recorded the publisher's signatures of %d store paths (%s) in the Nix "
               "database" % (added, ", ".join(sorted(names))))
    return added


def _registration(manifest, entries):
    # type: (Manifest, List[PathEntry]) -> str
    return registration.format(p.registration(manifest.store_dir) for p in entries)


def _warn_hidden_refs(manifest, ui):
    # type: (Manifest, UI) -> None
    """Name the files a same-length rewrite cannot fix (found when the installer was built)."""
    if not manifest.hidden_refs:
        return
    ui.say("warning: %d file(s) keep the old store dir hidden in compressed or checksummed "
           "content; they are installed unchanged:" % len(manifest.hidden_refs))
    for line in manifest.hidden_refs[:20]:
        ui.say("  %s" % line)
    if len(manifest.hidden_refs) > 20:
        ui.say("  ... and %d more (nix-prefix inspect lists them all)"
               % (len(manifest.hidden_refs) - 20))


def _unpack_and_place(source, target, prefix, to_place, ui, jobs):
    # type: (InstallerFile, retarget.Retarget, Prefix, List[PathEntry], UI, int) -> Dict[str, Tuple[str, int]]
    """Unpack the paths ``to_place`` through ``target`` into a staging dir, verified,
    then rename them into the store; return the (narHash, narSize) of each path
    the retarget rewrote, by its new name."""
    wanted = set(p.name for p in to_place)
    spans = target.manifest.chunk_spans()  # by position: right for renamed paths too
    chunks = sorted(set(i for p in to_place for i in spans[p.name]))
    total = sum(target.manifest.chunks[i].tar_size for i in chunks)
    progress = ui.progress("unpacking and verifying", total)
    stage = staging.make_staging_dir(prefix.store_dir)
    writers = []  # type: List[staging.DiskWriter]
    placed = []  # type: List[retarget.Retargeted]

    def open_path(name):
        # type: (str) -> Sink
        # The payload's bytes are verified against the original NAR hash on the
        # way in (InstallerFile.unpack); what reaches the disk may be rewritten.
        count = Count(progress.update)
        new = target.name(name)
        if new not in wanted:
            return count
        writer = staging.DiskWriter(stage, new)
        writers.append(writer)
        # Files held back by a rewrite wait in the staging dir, inside the prefix.
        path = retarget.Retargeted(target, name, writer, stage)
        placed.append(path)
        return Tee(path, count)

    try:
        try:
            with timings.phase("unpack"):
                source.unpack(open_path, chunks, jobs)
        except OSError as e:
            raise staging.write_error(e, prefix.store_dir)
        finally:
            for w in writers:
                w.abort()
            progress.close()
        # Everything needed is unpacked and verified: only now touch the store.
        with timings.phase("place"):
            for entry in to_place:
                src = os.path.join(stage, entry.name)
                dst = target.manifest.store_path(entry.name)
                os.rename(src, dst)
                crashpoints.reached("renamed")
                staging.seal_top(dst)
                crashpoints.reached("placed")
    finally:
        staging.remove_tree(stage)
    infos = {}  # type: Dict[str, Tuple[str, int]]
    for path in placed:
        info = path.nar_info()
        if info is not None:
            infos[path.name] = info
    return infos
