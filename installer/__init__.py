"""The target side: the installer stub embedded in every installer file.

Python 3.6+ and the standard library only.  ``main.main`` is the entry point.
A Ctrl-C before main takes over is caught by the sh preamble's Python
(builder/preamble.sh): one line, exit 130.
"""
