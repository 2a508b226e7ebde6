"""The installer file format, shared by the builder and the installer.

Everything here runs on Python 3.6+ with the standard library only, because
the installer embeds this package and runs on machines where nothing can be
installed.
"""

__version__ = "0.1.0"
