"""What the installer says: messages, a progress line on terminals, one question."""

import sys
import threading
import time


class UI(object):
    """Messages go to stderr (stdout is kept for --list / --info); quiet hides chatter."""

    def __init__(self, quiet=False):
        # type: (bool) -> None
        self.quiet = quiet
        self.interactive = sys.stdin.isatty() and sys.stderr.isatty()

    def say(self, message):
        # type: (str) -> None
        if not self.quiet:
            sys.stderr.write(message + "\n")
            sys.stderr.flush()

    def warn(self, message):
        # type: (str) -> None
        sys.stderr.write("nix-prefix: warning: %s\n" % message)
        sys.stderr.flush()

    def confirm(self, question):
        # type: (str) -> bool
        sys.stderr.write("%s [y/N] " % question)
        sys.stderr.flush()
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
