"""``--modify-profile``: the one line that sources a prefix's nix.sh, in shell start-up files.

The line goes in a marked block, one block per prefix, so adding it again
changes nothing and removing it (``--unmodify-profile``, or an uninstall via
``remove_block``) takes out exactly what was added and nothing else::

    # >>> nix-prefix /home/me/.nix >>>
    if [ -e '/home/me/.nix/etc/profile.d/nix.sh' ]; then . '/home/me/.nix/etc/profile.d/nix.sh'; fi
    # <<< nix-prefix /home/me/.nix <<<

Files: ``~/.profile`` (created if missing: sh, dash, ksh and login bash read
it), and ``~/.bash_profile``, ``~/.bashrc``, ``~/.zshrc`` when they exist.
Sourcing nix.sh twice is harmless (it adds to PATH only once).  Each file is
rewritten atomically, through a symlink to its target, keeping its mode.
Files are read and written as bytes: CRLF line ends, a lone ``\\r`` and
bytes that are not UTF-8 stay as they were, and removing the block gives back
the file byte for byte (a file that did not end with a newline gets the block
after one, and ends without one again).
"""

import os

from .errors import EnvironmentProblem, InstallError

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import List, Optional  # noqa: F401

ALWAYS = ".profile"
IF_PRESENT = (".bash_profile", ".bashrc", ".zshrc")


def begin_marker(root):
    # type: (str) -> str
    return "# >>> nix-prefix %s >>>" % root


def end_marker(root):
    # type: (str) -> str
    return "# <<< nix-prefix %s <<<" % root


def block(root):
    # type: (str) -> str
    script = "%s/etc/profile.d/nix.sh" % root
    return "%s\nif [ -e '%s' ]; then . '%s'; fi\n%s\n" % (
        begin_marker(root), script, script, end_marker(root))


def home_dir():
    # type: () -> str
    home = os.environ.get("HOME") or os.path.expanduser("~")
    if not home or home == "~" or not os.path.isdir(home):
        raise InstallError("cannot find your home directory to edit its shell start-up files",
                           "set HOME, or leave out --modify-profile and source "
                           "PREFIX/etc/profile.d/nix.sh yourself")
    return home


def check_writable(home):
    # type: (str) -> None
    """Refuse --modify-profile before installing when a start-up file cannot be
    rewritten (each is replaced through a temporary file beside it)."""
    for path in candidates(home):
        target = os.path.realpath(path)
        where = os.path.dirname(target)
        if not os.access(where, os.W_OK | os.X_OK) or (
                os.path.exists(target) and not os.access(target, os.R_OK)):
            raise EnvironmentProblem(
                "--modify-profile cannot rewrite %s: %s is not writable by you" % (path, where),
                "fix the permissions, or leave out --modify-profile and source "
                "PREFIX/etc/profile.d/nix.sh yourself")


def candidates(home):
    # type: (str) -> List[str]
    """The start-up files a block goes into (or is removed from)."""
    files = [os.path.join(home, ALWAYS)]
    files += [os.path.join(home, name) for name in IF_PRESENT
              if os.path.lexists(os.path.join(home, name))]
    return files


def add_block(root, home=None):
    # type: (str, Optional[str]) -> List[str]
    """Add the block for ``root`` where it is missing (an outdated one is replaced);
    return every file that has it now."""
    files = candidates(home or home_dir())
    for path in files:
        data = _read(path)
        if _holds(data, root):
            continue
        new = _without(data, root)
        added = _block_bytes(root)
        if new and not new.endswith(b"\n"):
            # The file ends without a newline: the block goes on a line of its own
            # and leaves the file ending as it did, without one, so that removing
            # it (_without) gives back the very bytes that were there.
            added = b"\n" + added[:-1]
        _write(path, new + added)
    return files


def holds_block(path, root):
    # type: (str, str) -> bool
    """Whether the start-up file ``path`` has the block for ``root`` as added."""
    try:
        return _holds(_read(path), root)
    except InstallError:
        return False


def remove_block(root, home=None):
    # type: (str, Optional[str]) -> List[str]
    """Remove the block for ``root`` wherever it is; return the files that changed.

    This is what an uninstall calls; it never touches anything outside the markers.
    """
    changed = []
    for path in candidates(home or home_dir()):
        if not os.path.lexists(path):
            continue
        data = _read(path)
        new = _without(data, root)
        if new != data:
            _write(path, new)
            changed.append(path)
    return changed


def _block_bytes(root):
    # type: (str) -> bytes
    return os.fsencode(block(root))


def _holds(data, root):
    # type: (bytes, str) -> bool
    added = _block_bytes(root)
    return added in data or data.endswith(b"\n" + added[:-1])


def _lines(data):
    # type: (bytes) -> List[bytes]
    """``data`` cut after each ``\\n``, and only there: a ``\\r`` (CRLF files, or
    one inside a quoted PS1) stays inside its line, byte for byte."""
    lines = []
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end + 1
        lines.append(data[start:end])
        start = end
    return lines


def _without(data, root):
    # type: (bytes, str) -> bytes
    """``data`` without the marked block(s) for ``root`` (begin to end marker lines);
    every other byte as it was."""
    begin, end = os.fsencode(begin_marker(root)), os.fsencode(end_marker(root))
    out = []  # type: List[bytes]
    inside = False
    last = b""
    for line in _lines(data):
        stripped = line.rstrip(b"\r\n")
        if not inside and stripped == begin:
            inside = True
        elif inside and stripped == end:
            inside = False
            last = line
        elif not inside:
            out.append(line)
            last = line
    if inside:  # a begin marker without its end: leave the file as it was
        return data
    kept = b"".join(out)
    if last == end and kept.endswith(b"\n"):
        # The block ended the file without a newline: it was added to a file that had
        # none at its end (add_block), and the newline before it goes with it.
        kept = kept[:-1]
    return kept


def _read(path):
    # type: (str) -> bytes
    """The file's bytes as they are: no decoding, no newline translation."""
    if not os.path.lexists(path):
        return b""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise InstallError("cannot read %s (%s)" % (path, e.strerror),
                           "fix the file, or leave out --modify-profile")


def _write(path, data):
    # type: (str, bytes) -> None
    """Replace the file's content atomically; a symlinked rc file keeps its link."""
    target = os.path.realpath(path)
    tmp = "%s.nix-prefix-%d" % (target, os.getpid())
    try:
        mode = os.stat(target).st_mode & 0o7777 if os.path.exists(target) else 0o644
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, target)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise InstallError("cannot write %s (%s)" % (path, e.strerror),
                           "fix its permissions, or leave out --modify-profile")
