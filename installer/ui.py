"""What the installer says: messages, a progress line on terminals, one question."""

import os
import sys
import threading
import time


class UI(object):
    """Messages go to stderr (stdout is kept for --list / --info); quiet hides chatter.

    A reader that goes away (``sh installer -y 2>&1 | head -1``) must not stop
    the install half-way: once stderr is a broken pipe, messages are dropped
    and the install goes on to its end.
    """

    def __init__(self, quiet=False):
        # type: (bool) -> None
        self.quiet = quiet
        self.interactive = sys.stdin.isatty() and sys.stderr.isatty()
        self._broken = False

    def _write(self, text):
        # type: (str) -> None
        if self._broken:
            return
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except (OSError, ValueError):
            self._broken = True
            # Python flushes stderr again at exit: give it somewhere to write.
            sys.stderr = open(os.devnull, "w")

    def say(self, message):
        # type: (str) -> None
        if not self.quiet:
            self._write(message + "\n")

    def error(self, line):
        # type: (str) -> None
        """The one line a failure ends with (shown even with -q)."""
        self._write(line + "\n")

    def close(self):
        # type: () -> None
        """Flush what is left; a closed stdout (``--list | head -1``) is not an error."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                setattr(sys, "stdout" if stream is sys.stdout else "stderr",
                        open(os.devnull, "w"))

    def confirm(self, question):
        # type: (str) -> bool
        self._write("%s [y/N] " % question)
        answer = sys.stdin.readline().strip().lower()
        return answer in ("y", "yes")

    def progress(self, label, total):
        # type: (str, int) -> Progress
        return Progress(label, total, enabled=not self.quiet and sys.stderr.isatty())


class Progress(object):
    """A one-line byte counter, redrawn at most five times a second."""

    def __init__(self, label, total, enabled):
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.enabled = enabled
        self._last = 0.0
        self._lock = threading.Lock()

    def update(self, n):
        # type: (int) -> None
        with self._lock:  # chunks are unpacked in several threads
            self.done += n
        if self.enabled:
            now = time.time()
            if now - self._last >= 0.2:
                self._last = now
                self._draw()

    def _draw(self):
        pct = min(100, self.done * 100 // self.total)
        sys.stderr.write("\r%s %3d%% (%d MiB)" % (self.label, pct, self.done >> 20))
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            self.done = self.total
            self._draw()
            sys.stderr.write("\n")
            sys.stderr.flush()
