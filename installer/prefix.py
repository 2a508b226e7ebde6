"""The layout of an installed prefix and the environment Nix runs with there."""

import getpass
import os

from .errors import EnvironmentProblem

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Dict, List  # noqa: F401

# Our own invocations of Nix must work whatever the user put in nix.conf:
# single-user builds (no nixbld group), no sandbox, no binary caches, and the
# profile's user environment built here (a `max-jobs = 0` or `builders` of the
# user's, for their own builds, must not stop the install).
INSTALL_NIX_CONFIG = ("build-users-group =\nsandbox = false\nsubstituters =\n"
                      "max-jobs = 1\nbuilders =\n")
# ... and act on this prefix whatever a nix.conf says: NIX_CONFIG is applied after
# every nix.conf (loadConfFile, src/libstore/globals.cc), so its store (a local
# store with this prefix's dirs, src/libstore/local-fs-store.hh) wins over a
# `store = ...` there, and no plugin a nix.conf names is loaded into our Nix.
# The prefix's characters need no URL quoting (preflight.resolve_prefix).
PINNED_NIX_CONFIG = "store = local?store={store}&state={state}&log={log}\nplugin-files =\n"


class Prefix(object):
    """Where everything goes under a prefix P (P/store, P/var/nix, P/etc/nix...)."""

    def __init__(self, root):
        # type: (str) -> None
        self.root = root
        self.store_dir = os.path.join(root, "store")
        self.state_dir = os.path.join(root, "var", "nix")
        self.log_dir = os.path.join(root, "var", "log", "nix")
        self.conf_dir = os.path.join(root, "etc", "nix")
        self.nix_conf = os.path.join(self.conf_dir, "nix.conf")
        self.profile_d = os.path.join(root, "etc", "profile.d")
        self.data_dir = os.path.join(root, "var", "nix-prefix")
        self.home = os.path.join(self.data_dir, "home")
        self.profiles_dir = os.path.join(self.state_dir, "profiles")
        self.profile = os.path.join(self.profiles_dir, "default")
        self.db = os.path.join(self.state_dir, "db", "db.sqlite")
        self.lock_file = os.path.join(self.data_dir, "lock")
        self.receipts_dir = os.path.join(self.data_dir, "receipts")

    def directories(self):
        # type: () -> List[str]
        """Directories an install creates, parents first."""
        return [self.root, self.store_dir, os.path.join(self.root, "var"), self.state_dir,
                os.path.join(self.root, "var", "log"), self.log_dir,
                os.path.join(self.root, "etc"), self.conf_dir, self.profile_d, self.data_dir,
                self.home, self.receipts_dir]

    def missing_parents(self):
        # type: () -> List[str]
        """The prefix's parent directories that do not exist, outermost first."""
        parents = []  # type: List[str]
        parent = os.path.dirname(self.root)
        while not os.path.lexists(parent):
            parents.insert(0, parent)
            parent = os.path.dirname(parent)
        return parents

    def nix_env(self):
        # type: () -> Dict[str, str]
        """Environment for running Nix on this prefix, isolated from the user's set-up.

        HOME and the XDG dirs point inside the prefix so that nothing Nix
        writes (caches, ~/.nix-defexpr...) lands outside it.
        """
        env = dict((k, v) for k, v in os.environ.items()
                   if not k.startswith("NIX_") and not k.startswith("XDG_"))
        tmp = env.get("TMPDIR")
        if tmp is not None and not (os.path.isdir(tmp) and os.access(tmp, os.W_OK | os.X_OK)):
            # Nix builds the profile's user environment in TMPDIR: a missing or
            # unwritable one would fail the install's last step.  /tmp it is.
            del env["TMPDIR"]
        env.update(
            NIX_STORE_DIR=self.store_dir,
            NIX_STATE_DIR=self.state_dir,
            NIX_LOG_DIR=self.log_dir,
            NIX_CONF_DIR=self.conf_dir,
            NIX_CONFIG=INSTALL_NIX_CONFIG + PINNED_NIX_CONFIG.format(
                store=self.store_dir, state=self.state_dir, log=self.log_dir),
            HOME=self.home,
            XDG_CONFIG_HOME=os.path.join(self.home, ".config"),
            XDG_CONFIG_DIRS=os.path.join(self.home, ".config"),
            XDG_CACHE_HOME=os.path.join(self.home, ".cache"),
            XDG_DATA_HOME=os.path.join(self.home, ".local", "share"),
            USER=user_name(),
        )
        return env


def user_name():
    # type: () -> str
    """The user's name, which Nix needs (``getUserName`` in src/libutil/util.cc)."""
    try:
        return getpass.getuser()
    except (KeyError, ImportError, OSError):
        raise EnvironmentProblem("cannot tell who you are: uid %d has no user name"
                                 % os.getuid(), "set USER to your user name")
