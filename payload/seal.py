"""The seal: a sha256 of the whole installer file, kept on its second line.

The zip CRCs cover member data, and the manifest covers the sh preamble, but
some bytes of a zip (local header times and versions, the central directory
attributes, padding) are checked by nothing.  So the file starts::

    #!/bin/sh
    { seal=(quote)sha256:<64 hex digits>:<20-digit file size>(quote)

and the digits are the sha256 of every byte of the file, taken with those 64
digits written as zeros (the size is covered too).  Any flipped bit anywhere,
and any truncation, breaks it.  The seal sits at a fixed offset near the start,
not in the zip comment, because the zipimport of Python 3.6 and 3.7 refuses a
zip that has a comment; at the start it also reaches Python through sh when
the file is piped (sh has read that line before Python starts).

This module is also among the first Python that runs: the sh preamble passes
it to ``python3 -I``, bundled (bundle.py) with what trust.py needs (see
head()), and boot.py ``bootstrap`` checks the seal over the bytes it is about
to run (``verified``), then the publisher's signature and the code's sha256
(trust.check_code), before importing anything from the zip.  So it imports
only the standard library, and runs on Python 3.6.
"""

import atexit
import hashlib
import os
import shutil
import signal
import stat
import sys
import tempfile

MYPY = False  # mypy reads the imports below; Python never runs them
if MYPY:
    from typing import BinaryIO, Iterable, Iterator, List, Optional, Tuple  # noqa: F401

SHEBANG = b"#!/bin/sh\n"
OPEN = b"{ seal=" + b"\x27"
ALGORITHM = b"sha256:"
DIGITS = 64
SIZE_DIGITS = 20
# Where the digest and the size are in the file: fixed, so that a reader finds
# them without parsing (and sh has read them before it runs anything).
DIGEST_AT = len(SHEBANG) + len(OPEN) + len(ALGORITHM)
SIZE_AT = DIGEST_AT + DIGITS + 1
SEAL_END = SIZE_AT + SIZE_DIGITS
# The sh preamble and its padding fill the first HEAD_SIZE bytes; the zip
# starts there.  The padding (newlines) is what sh may read ahead of the
# command it runs when the file comes through a pipe (dash reads 8 KiB
# blocks), so Python can put those bytes back: they are known.  128 KiB: the
# Python the preamble carries (the seal and signature checks, bundled) is
# about 60 KiB.
HEAD_SIZE = 1 << 17
_READ_SIZE = 1 << 20
_QUOTE = "\x27"
EXIT_DAMAGED = 3


class SealError(ValueError):
    """The file seal is missing or does not match its bytes."""


def value(digest=b"0" * DIGITS, size=0):
    # type: (bytes, int) -> bytes
    """The text of the sh variable ``seal`` (the placeholder by default)."""
    return ALGORITHM + digest + b":" + b"%0*d" % (SIZE_DIGITS, size)


def head(shell, boot, seal_value=None):
    # type: (bytes, bytes, Optional[bytes]) -> bytes
    """The first HEAD_SIZE bytes of an installer: the sh preamble and its padding.

    ``shell`` is the sh code the preamble evaluates, ``boot`` the Python it
    hands the file to (this module and what it needs, bundled: bundle.py),
    each in single quotes, a quote in them written as sh reads it back.
    """
    q = _QUOTE.encode()

    def quoted(text):
        # type: (bytes) -> bytes
        return q + text.replace(q, q + b"\\" + q + q) + q

    text = (SHEBANG + OPEN + (seal_value or value()) + q + b"\n"
            + b"h=" + quoted(shell) + b"\n"
            + b"b=" + quoted(boot) + b"\n"
            + b"eval \"$h\"; exit 3; } #\n")
    if len(text) >= HEAD_SIZE - (16 << 10):
        raise ValueError("the sh preamble is too long (%d bytes)" % len(text))
    return text + b"\n" * (HEAD_SIZE - len(text))


def masked(data):
    # type: (bytes) -> bytes
    """``data`` (the start of a file) with its digest and size as in the placeholder."""
    return data[:DIGEST_AT] + value()[len(ALGORITHM):] + data[SEAL_END:]


def _parse(first):
    # type: (bytes) -> Tuple[bytes, int]
    """Digest and size from the first SEAL_END bytes of a file."""
    digest, size = first[DIGEST_AT:SIZE_AT - 1], first[SIZE_AT:SEAL_END]
    if len(first) < SEAL_END or not first.startswith(SHEBANG + OPEN + ALGORITHM):
        raise SealError("it does not start with a nix-prefix seal (installers of format 1 "
                        "kept it at their end: rebuild those)")
    if (first[SIZE_AT - 1:SIZE_AT] != b":" or not size.isdigit()
            or len(digest.strip(b"0123456789abcdef")) != 0):
        raise SealError("its seal (line 2) is not sha256:DIGEST:SIZE")
    return digest, int(size)


class _Hasher(object):
    """sha256 of a file written or read in order, with the digest digits as zeros."""

    def __init__(self):
        self._sha = hashlib.sha256()
        self.size = 0

    def update(self, data):
        # type: (bytes) -> None
        start = self.size
        self.size += len(data)
        if start < SIZE_AT and self.size > DIGEST_AT:
            buf = bytearray(data)
            lo, hi = max(DIGEST_AT - start, 0), min(SIZE_AT - 1 - start, len(buf))
            buf[lo:hi] = b"0" * (hi - lo)
            data = bytes(buf)
        self._sha.update(data)

    def hexdigest(self):
        # type: () -> bytes
        return self._sha.hexdigest().encode()


def _hash_from(f, hasher):
    # type: (BinaryIO, _Hasher) -> _Hasher
    while True:
        data = f.read(_READ_SIZE)
        if not data:
            return hasher
        hasher.update(data)


def seal(path):
    # type: (str) -> None
    """Write the size and the digest over the placeholder at the start of ``path``."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        if not f.read(SEAL_END).startswith(SHEBANG + OPEN + value()):
            raise SealError("%s does not start with the seal placeholder" % path)
        f.seek(SIZE_AT)
        f.write(b"%0*d" % (SIZE_DIGITS, size))
        f.seek(0)
        digest = _hash_from(f, _Hasher()).hexdigest()
        f.seek(DIGEST_AT)
        f.write(digest)


def check_file(f):
    # type: (BinaryIO) -> None
    """Raise SealError unless the open file ``f`` matches its seal (read from the start)."""
    f.seek(0)
    first = f.read(SEAL_END)
    digest, size = _parse(first)
    st = os.fstat(f.fileno())
    if stat.S_ISREG(st.st_mode) and st.st_size != size:
        # Told before a byte is hashed: a file of any size (a sparse one) says so at once.
        hasher = _Hasher()
        hasher.size = st.st_size
        _compare(hasher, digest, size)
    hasher = _Hasher()
    hasher.update(first)
    _hash_from(f, hasher)
    _compare(hasher, digest, size)


def _compare(hasher, digest, size):
    # type: (_Hasher, bytes, int) -> None
    if hasher.size < size:
        raise SealError("it is truncated (%d of %d bytes)" % (hasher.size, size))
    if hasher.size > size:
        raise SealError("it is %d bytes longer than its seal says" % (hasher.size - size))
    if hasher.hexdigest() != digest:
        raise SealError("its bytes do not match its sha256 seal")


def check(path):
    # type: (str) -> None
    """Raise SealError unless ``path`` matches its seal."""
    with open(path, "rb") as f:
        check_file(f)


# Measured (docs/reliability.md): under ``ulimit -v`` of about 100 MiB the install
# fails (Python, its unpacking threads or the shipped Nix cannot start); 110 MiB
# was enough.  The sh preamble (builder/preamble.sh) says the same number.
MEMORY_NEEDED_MIB = 128
EXIT_MACHINE = 4  # this machine cannot take it (installer/errors.py EXIT_ENVIRONMENT)


def is_out_of_memory(e):
    # type: (BaseException) -> bool
    """Whether ``e`` is how a memory limit shows: MemoryError, a thread that cannot
    start, a shared library that cannot be mapped, ENOMEM (or EAGAIN under a limit)."""
    if isinstance(e, MemoryError):
        return True
    if isinstance(e, OSError) and (e.errno == 12 or e.errno == 11 and _address_limit()):
        return True  # ENOMEM; EAGAIN
    return is_memory_text(str(e))


def is_memory_text(text):
    # type: (str) -> bool
    """Whether an error text (Python, or a Nix tool) is a memory limit speaking.  A
    thread that cannot start is EAGAIN to Nix; that is memory only under ulimit -v."""
    if any(s in text for s in ("failed to map segment", "Cannot allocate memory",
                               "std::bad_alloc", "can" + "\x27t start new thread")):
        return True
    return "Resource temporarily unavailable" in text and _address_limit() is not None


def _address_limit():
    # type: () -> Optional[int]
    """The address space limit (ulimit -v) in KiB, or None."""
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    except Exception:  # even this import may fail for want of memory
        return None
    return None if soft == resource.RLIM_INFINITY else soft // 1024


def memory_advice():
    # type: () -> str
    """What to do about it: the limit in force, and what the installer needs."""
    limit = _address_limit()
    return ("the installer needs about %d MiB of memory%s: raise the limit with "
            "ulimit -v %d (or unlimited), or free some memory"
            % (MEMORY_NEEDED_MIB, "" if limit is None else " (ulimit -v is %d here)" % limit,
               MEMORY_NEEDED_MIB << 10))


def fail(message, code=EXIT_DAMAGED):
    # type: (str, int) -> None
    """Say ``message`` as the one error line and exit with ``code``."""
    sys.stderr.write("nix-prefix: error: %s\n" % message)
    sys.exit(code)


def open_standard_streams():
    # type: () -> None
    """Put /dev/null on each of stdin, stdout and stderr that was closed (``sh FILE >&-``).

    A closed descriptor 0, 1 or 2 is taken by the next file opened (the
    installer itself, a receipt), where a message would then be written or
    fail, and Python leaves ``sys.stdout`` None.  On /dev/null, output to a
    closed stream is dropped, input reads as empty (so there is nobody to ask:
    -y is needed), and the Nix tools run later inherit the same.
    """
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))


def verified(argv):
    # type: (List[str]) -> Tuple[BinaryIO, str, str, List[str]]
    """The verified file, the path to run from, its name for messages, and the
    installer arguments."""
    source, args = argv[1], argv[5:]
    name = "the installer read from standard input" if source == "-" else source
    try:
        fd = os.dup(0) if source == "-" else os.open(source, os.O_RDONLY)
    except OSError as e:
        fail("cannot read the installer %s (%s)" % (name, e.strerror), 1)
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        # A pipe (curl URL | sh, bash <(curl URL)): sh has read the start.
        stream = _from_stream(f, *[os.fsencode(a) for a in argv[2:5]])
        return f, private_copy(stream, name), name, args
    try:
        check_file(f)
    except SealError as e:
        fail("%s is damaged: %s; download it again" % (name, e))
    except OSError as e:
        fail("cannot read the installer %s (%s)" % (name, e.strerror), 1)
    # Python reopens the zip by name: through /proc it is this same open file.
    path = "/proc/self/fd/%d" % fd
    if not _same_file(path, fd):
        f.seek(0)
        path = private_copy(iter(lambda: f.read(_READ_SIZE), b""), name)
    return f, path, name, args


def _from_stream(f, seal_value, shell, boot):
    # type: (BinaryIO, bytes, bytes, bytes) -> Iterator[bytes]
    """The whole installer, from the rest of a pipe whose start sh has read.

    sh read the preamble and maybe some of the padding after it (in blocks);
    those bytes are known: head() rebuilds them from the sh variables it
    handed over, and the padding newlines still in the pipe are dropped.  The
    seal, checked over the result, says whether that was right.
    """
    start = head(shell, boot, seal_value)
    yield start
    padding = len(start) - len(start.rstrip(b"\n")) - 1
    skipped = 0
    while True:
        data = f.read(_READ_SIZE)
        kept = data.lstrip(b"\n")
        skipped += len(data) - len(kept)
        if kept or not data:
            break
    if kept and (skipped == 0 or skipped > padding):
        raise SealError("sh read %s of it than its preamble before handing it over; save it to "
                        "a file and run sh FILE" % ("more" if skipped == 0 else "less"))
    while kept:
        yield kept
        kept = f.read(_READ_SIZE)


def _same_file(path, fd):
    # type: (str, int) -> bool
    try:
        a, b = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


_HELD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _made_and_registered():
    # type: () -> str
    """A new temporary dir, registered for removal at exit in the same breath: the
    signals wait (blocked) until both are done, so a Ctrl-C cannot come between
    the mkdir and the registration and leave the dir behind."""
    old = None
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
        directory = tempfile.mkdtemp(prefix="nix-prefix-")
        atexit.register(shutil.rmtree, directory, True)
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        else:  # interrupted just as it blocked them
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
    return directory


def private_copy(chunks, name):
    # type: (Iterable[bytes], str) -> str
    """Write ``chunks`` into a new file only this user can read, and check its seal
    over exactly those bytes; return its path."""
    try:
        # mkdtemp: mode 0700, owned by this user; removed when the installer exits.
        # Python only reads the copy, so a noexec TMPDIR is fine.
        directory = _made_and_registered()
        path = os.path.join(directory, "installer.sh")
        out = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
        with out:
            for data in chunks:
                out.write(data)
        check(path)
    except SealError as e:
        fail("%s is damaged: %s; download it again" % (name, e))
    except OSError as e:
        fail("cannot copy the installer into %s (%s); set TMPDIR to a directory with "
              "space" % (tempfile.gettempdir(), e.strerror), 4)
    return path
