"""Compression codecs of the payload chunks: xz (default) and zstd.

xz is in every Python's standard library (lzma).  zstd is decoded by the
first of: ``compression.zstd`` (Python 3.14+), an importable ``zstandard``
or ``backports.zstd``, a ``zstd`` executable; failing all of them the
installer says to use the xz build.  The encoders live with the builder
(nix_prefix.builder.compress), which may use non-stdlib modules.
"""

import lzma
import shutil
import subprocess
import sys
import threading

CODECS = ("xz", "zstd")
EXTENSIONS = {"xz": ".tar.xz", "zstd": ".tar.zst"}
# zstd frames written with a long window need the decoder to allow it.
ZSTD_WINDOW_LOG_MAX = 31


class CodecError(Exception):
    """A codec is unknown or not available on this machine."""


class CorruptData(Exception):
    """The compressed stream is damaged or truncated."""


def check_name(name):
    # type: (str) -> str
    if name not in CODECS:
        raise CodecError("unknown compression %r (known: %s)" % (name, ", ".join(CODECS)))
    return name


def open_reader(name, fileobj):
    """A binary file object that yields the decompressed bytes of ``fileobj``.

    Its ``read`` raises CorruptData, whatever the decoder, when the stream is
    damaged or ends early.
    """
    check_name(name)
    if name == "xz":
        return _Checked(lzma.LZMAFile(fileobj, "rb"), (lzma.LZMAError,))
    reader = _zstd_reader(fileobj)
    return _Checked(reader, _zstd_errors())


class _Checked(object):
    """Turns every decoder's own exceptions into CorruptData."""

    def __init__(self, reader, errors):
        self._reader = reader
        self._errors = tuple(errors) + (EOFError,)

    def read(self, n=-1):
        try:
            return self._reader.read(n)
        except self._errors as e:
            raise CorruptData(str(e) or type(e).__name__)

    def readable(self):
        return True

    def close(self):
        self._reader.close()


def _zstd_errors():
    errors = [CodecError]
    for module in ("compression.zstd", "zstandard", "backports.zstd"):
        mod = sys.modules.get(module)
        for attr in ("ZstdError",):
            if mod is not None and hasattr(mod, attr):
                errors.append(getattr(mod, attr))
    return errors


def _zstd_reader(fileobj):
    try:
        from compression import zstd  # novermin (Python 3.14+, guarded by ImportError)
        return zstd.ZstdFile(fileobj, "rb",
                             options={zstd.DecompressionParameter.window_log_max:
                                      ZSTD_WINDOW_LOG_MAX})
    except ImportError:
        pass
    for module in ("zstandard", "backports.zstd"):
        try:
            zstandard = __import__(module, fromlist=["ZstdDecompressor"])
        except ImportError:
            continue
        if hasattr(zstandard, "ZstdDecompressor"):
            dctx = zstandard.ZstdDecompressor(max_window_size=1 << ZSTD_WINDOW_LOG_MAX)
            return dctx.stream_reader(fileobj, read_across_frames=True)
    exe = shutil.which("zstd")
    if exe:
        return _PipeReader([exe, "-d", "-c", "-q", "--long=%d" % ZSTD_WINDOW_LOG_MAX], fileobj)
    raise CodecError(
        "this installer's payload is zstd-compressed, but this machine has no zstd decoder "
        "(Python 3.14's compression.zstd, the zstandard module, or a zstd program); "
        "install one of them or use the xz build of the installer")


class _PipeReader(object):
    """Decompress through an external program, feeding it from a thread."""

    def __init__(self, argv, fileobj):
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL)
        stdin, stdout = self._proc.stdin, self._proc.stdout
        if stdin is None or stdout is None:  # never with PIPE; said for the type checker
            raise CodecError("cannot talk to %s" % argv[0])
        self._stdin, self._stdout = stdin, stdout
        self._feeder = threading.Thread(target=self._feed, args=(fileobj,))
        self._feeder.daemon = True
        self._feeder.start()

    def _feed(self, fileobj):
        try:
            while True:
                data = fileobj.read(1 << 20)
                if not data:
                    break
                self._stdin.write(data)
        except (BrokenPipeError, ValueError, OSError):
            pass
        finally:
            try:
                self._stdin.close()
            except OSError:
                pass

    def read(self, n=-1):
        data = self._stdout.read(n)
        if not data or (n is not None and n < 0):
            self._finish()
        return data

    def _finish(self):
        self._feeder.join()
        if self._proc.wait() != 0:
            raise CorruptData("the zstd program could not decode the payload")

    def close(self):
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._stdout.close()
