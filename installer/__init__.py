"""The target side: the installer stub embedded in every installer file.

Python 3.6+ and the standard library only.  ``main.main`` is the entry point.
"""

import os
import signal
import sys

if sys.argv[:1] == ["-c"]:  # run by the sh preamble, not imported by a test or tool
    def _interrupted_early(signum, frame):
        """Ctrl-C while the installer's modules load: nothing is written yet, and
        a traceback would be all the user sees (main.main takes over from here)."""
        sys.stderr.write("nix-prefix: interrupted before anything was written; nothing was "
                         "changed\n")
        os._exit(130)

    signal.signal(signal.SIGINT, _interrupted_early)
