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

from ..payload import hashes, nar, registration, relocate
from ..payload.container import CountingVisitor
from ..payload.machine import human_size
from . import (
    crashpoints,
    envfiles,
    exact_relocation,
    nixstore,
    preflight,
    receipt,
    staging,
    timings,
)
from .errors import InstallError, UpdateNeeded
from .prefix import Prefix, user_name


def plan_lines(manifest, prefix, also=()):
    # type: (Manifest, Prefix, Sequence[str]) -> List[str]
    """What the install will do, shown before it asks to proceed; ``also`` lists
    what it will do outside the prefix (e.g. --modify-profile)."""
    lines = [
        "Install %d store paths (%s) into %s" % (len(manifest.paths),
                                                 human_size(manifest.total_nar_size),
                                                 prefix.store_dir),
        "  verify every path against its Nix NAR hash before moving it into place",
    ]
    exact = exact_relocation.prepared(manifest, prefix)
    if exact is not None:
        lines.append(exact.plan_line())
    elif preflight.relocation(manifest, prefix):
        lines.append("  relocate them from %s (rewrite the store dir in place, same length)"
                     % manifest.store_dir)
    lines += [
        "  register them in %s with nix-store --load-db" % prefix.state_dir,
        "  write %s (if absent)" % prefix.nix_conf,
        "  make the profile %s with %s" % (
            prefix.profile, ", ".join((exact.manifest if exact else manifest).roots)),
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
    preflight.relocation(manifest, prefix)
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
    # type: (InstallerFile, Prefix, UI, int) -> Tuple[Manifest, object]
    """The manifest as installed at ``prefix``, and how the payload gets there:
    None (built for it), the (old, new) store dirs of a plain relocation, or an
    ExactRelocation when the payload holds the derivations."""
    exact = exact_relocation.prepare(source, prefix, ui, jobs)
    if exact is not None:
        return exact.manifest, exact
    relocation = preflight.relocation(source.manifest, prefix)
    if relocation is None:
        return source.manifest, None
    # Paths, and after unpacking their NAR hashes, as they will be at this prefix.
    return source.manifest.moved_to(prefix.store_dir, relocation[1]), relocation


def install(source, prefix_root, ui, update=False, jobs=1):
    # type: (InstallerFile, str, UI, bool, int) -> bool
    """Install ``source`` into ``prefix_root``; returns True if anything changed.

    A first install's profile holds exactly the roots; with ``update`` (-u) the
    new generation also keeps the other packages the profile had (same-named
    ones are replaced, as ``nix-env -i`` does).  ``jobs`` payload chunks are
    unpacked at once.
    """
    prefix = Prefix(prefix_root)
    manifest, relocation = at_prefix(source, prefix, ui, jobs)
    started = time.time()
    created = _make_dirs(prefix)
    try:
        return _install_locked(source, manifest, prefix, ui, started, relocation, update, jobs)
    except BaseException:
        _remove_created(prefix, created)
        raise


def _install_locked(source, manifest, prefix, ui, started, relocation, update, jobs):
    # type: (InstallerFile, Manifest, Prefix, UI, float, Optional[Tuple[str, str]], bool, int) -> bool
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
                # relocated path's hash is known only by unpacking it again.
                if relocation is None and _on_disk_matches(manifest, entry):
                    staging.seal_top(path)
                    continue
                ui.say("replacing %s, which does not match its NAR hash" % path)
                staging.remove_tree(path)
            to_place.append(entry)
        if to_place:
            if relocation is not None:
                ui.say("relocating %d store paths from %s to %s"
                       % (len(to_place), source.manifest.store_dir, prefix.store_dir))
                _warn_hidden_refs(manifest, ui)
            _unpack_and_place(source, manifest, prefix, to_place, ui, relocation, jobs)
            changed = True
        envfiles.make_profile_link(prefix)
        written = {}
        for path, content in envfiles.planned_files(prefix):
            with timings.phase("env files"):
                state = envfiles.write_file(path, content)
            crashpoints.reached("env-file")
            if state == "written":
                written[path] = hashlib.sha256(content.encode()).hexdigest()
                changed = True
            elif state == "kept" and path == prefix.nix_conf:
                ui.say("keeping your %s as it is" % path)
        nix_store = nix_tool(manifest, prefix, "nix-store")
        unregistered = [p for p in manifest.paths if manifest.store_path(p.name) not in valid]
        if unregistered or written:
            # Recorded before registering: a crash after load-db must not leave paths
            # that no receipt claims (--uninstall only removes what is recorded).
            receipt.record(prefix, manifest, [manifest.store_path(p.name) for p in unregistered],
                           None, None, written)
        if unregistered:
            ui.say("registering %d paths with nix-store --load-db" % len(unregistered))
            # Only new paths: valid ones keep their rows (and, relocated, their hashes).
            crashpoints.reached("before-load-db")
            with timings.phase("load-db"):
                nixstore.load_db(prefix, nix_store, _registration(manifest, unregistered))
            crashpoints.reached("after-load-db")
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


def _registration(manifest, entries):
    # type: (Manifest, List[PathEntry]) -> str
    infos = [
        registration.ValidPathInfo(
            manifest.store_path(p.name), p.nar_hash, p.nar_size,
            manifest.store_path(p.deriver) if p.deriver else "",
            tuple(manifest.store_path(r) for r in p.references))
        for p in entries
    ]
    return registration.format(infos)


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


def _unpack_and_place(source, manifest, prefix, to_place, ui, relocation, jobs):
    # type: (InstallerFile, Manifest, Prefix, List[PathEntry], UI, Optional[Tuple[str, str]], int) -> None
    wanted = dict((p.name, p) for p in to_place)
    chunks = sorted(set(p.chunk for p in to_place))
    total = sum(c.nar_size for i, c in enumerate(manifest.chunks) if i in chunks)
    progress = ui.progress("unpacking and verifying", total)
    stage = staging.make_staging_dir(prefix.store_dir)
    writers = []

    def open_path(name):
        count = CountingVisitor(progress.update)
        if isinstance(relocation, exact_relocation.ExactRelocation):
            return relocation.open_path(name, wanted, stage, writers, count)
        if name not in wanted:
            return count
        writer = staging.DiskWriter(stage, name)
        writers.append(writer)
        if relocation is None:
            return staging.StagedPath(nar.Tee(writer, count), writer)
        # The payload's bytes were verified against the original NAR hash on the
        # way in; what reaches the disk is rewritten, and hashed again for Nix.
        hasher = nar.NarHasher()
        rewritten = relocate.Relocator(nar.Tee(writer, hasher), relocation[0].encode(),
                                       relocation[1].encode())
        return staging.StagedPath(nar.Tee(rewritten, count), writer, hasher, wanted[name])

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
                dst = manifest.store_path(entry.name)
                os.rename(src, dst)
                crashpoints.reached("renamed")
                staging.seal_top(dst)
                crashpoints.reached("placed")
    finally:
        staging.remove_tree(stage)
