"""The files an install writes besides the store: nix.conf, nix.sh and nix.fish, one step each."""

import hashlib
import os

from .. import crashpoints, envfiles, staging, timings
from ..plan import Reverted, Step
from ..receipt import load, others

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Optional, Set  # noqa: F401

    from ..plan import Record  # noqa: F401
    from ..run import Run  # noqa: F401


class WriteFile(Step):
    """Write one of nix.conf, nix.sh, nix.fish unless it exists (a user's file is
    kept).  Reverted: removed if unchanged since, else kept and named."""

    kind = "write-file"

    def __init__(self, path):
        # type: (str) -> None
        Step.__init__(self, path=path)
        self.path = path  # the file, its parameter (``params`` is what the receipt keeps)

    def key(self):
        return "%s %s" % (self.kind, self.path)

    def _content(self, run):
        # type: (Run) -> str
        return dict(envfiles.planned_files(run.prefix, run.caches,
                                           run.extra_conf))[self.path]

    def describe(self, run):
        path = self.path
        return "write %s (a file of yours there is kept as it is)" % path

    def describe_revert(self, run):
        if not self.owned.get("sha256"):
            return None
        return "remove %s if it is as the install wrote it (else it is yours now)" \
            % self.path

    def _recorded(self, run):
        # type: (Run) -> Set[str]
        """The sha256s this file had when an install wrote it: this step's and those
        in the prefix's receipts (another installer's, before a -u)."""
        path = self.path
        digests = set([self.owned["sha256"]]) if self.owned.get("sha256") else set()
        for other in others(run.prefix, ""):
            for step in (load(other) or {}).get("steps", []):
                if isinstance(step, dict) and step.get("kind") == self.kind and \
                        (step.get("params") or {}).get("path") == path:
                    digest = (step.get("owned") or {}).get("sha256")
                    if isinstance(digest, str):
                        digests.add(digest)
        return digests

    def _asked(self, run):
        # type: (Run) -> bool
        """Whether this run asks something of the file: always of the env scripts
        (the installer's own), of nix.conf only with settings given (a plain -u
        must not drop the --substituter or --extra-conf of the first install)."""
        caches = run.caches
        return (self.path != run.prefix.nix_conf or bool(run.extra_conf) or
                (caches is not None and bool(caches.substituters)))

    def is_done(self, run):
        # Done: the file is there and is what this run would write, or it is the
        # user's.  One an install wrote and nobody changed since is rewritten when
        # this run asks for other content (a re-run with other --extra-conf, or -u
        # with newer env scripts).
        current = _read_bytes(self.path)
        if current is None:
            return os.path.lexists(self.path)
        if current == self._content(run).encode():
            return True
        return hashlib.sha256(current).hexdigest() not in self._recorded(run) or \
            not self._asked(run)

    def already(self, run):
        path = self.path
        if self.owned.get("sha256") and not run.extra_conf:
            return  # ours, from an earlier run
        current_bytes = _read_bytes(path)
        if current_bytes is not None and \
                hashlib.sha256(current_bytes).hexdigest() in self._recorded(run):
            return  # an install's, unchanged, and nothing asked of it: kept as it is
        try:
            current = (current_bytes or b"").decode()
        except UnicodeDecodeError:
            current = ""
        if current == self._content(run):
            return
        # Not as an install wrote it (is_done rewrites those): the user's.
        run.ui.say("keeping your %s as it is" % path)
        if path != run.prefix.nix_conf:
            return
        caches = run.caches
        if caches is not None and caches.substituters:
            run.ui.say("  for the binary caches, add these lines to it yourself:\n    "
                       + "\n    ".join(caches.conf_lines()))
        missing = [line for line in run.extra_conf if line not in current.splitlines()]
        if missing:
            run.ui.say("  for the settings you gave, add these lines to it yourself:\n    "
                       + "\n    ".join(missing))

    def execute(self, run, receipt):
        path = self.path
        content = self._content(run)
        previous = _read_bytes(path)  # set: an install's, unchanged since (is_done)
        if previous is not None:
            self.owned["previous"] = previous.decode()  # what an undo puts back
            if path == run.prefix.nix_conf:
                run.ui.say("rewriting %s (an install wrote it, unchanged since) with the "
                           "settings given now" % path)
        self.owned["sha256"] = hashlib.sha256(content.encode()).hexdigest()
        if path == run.prefix.nix_conf and run.extra_conf:
            self.owned["settings"] = list(run.extra_conf)  # what the user asked for, recorded
        receipt.save()
        with timings.phase("env files"):
            if previous is None:
                state = envfiles.write_file(path, content)
            else:
                _replace(path, content)
                state = "written"
        crashpoints.reached("env-file")
        if state != "written":
            self.owned.pop("sha256")
            self.owned.pop("settings", None)
        return None

    def revert(self, run, receipt):
        path = self.path
        digest = self.owned.get("sha256")
        if not digest or not os.path.lexists(path):
            return None
        current = _read_bytes(path)
        if current is None or hashlib.sha256(current).hexdigest() != digest:
            return Reverted(files_kept=[path])
        previous = self.owned.get("previous")
        if previous is not None and \
                hashlib.sha256(previous.encode()).hexdigest() in self._recorded(run):
            _replace(path, previous)  # the other install's file, which it still needs
            return None
        os.unlink(path)
        return Reverted(files_removed=[path])


def _read_bytes(path):
    # type: (str) -> Optional[bytes]
    """The bytes of the regular file ``path``, or None (absent, a link, unreadable)."""
    if os.path.islink(path):
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _replace(path, content):
    # type: (str, str) -> None
    try:
        staging.write_atomically(path, content, mode=0o644)
    except OSError as e:
        raise staging.write_error(e, path)
