"""The build side: the ``nix-prefix`` command, which makes installers, caches and serves.

It reads a source (a closureInfo dir with its store, an installer file, a
binary cache) and writes an installer file (pack.py, through payload/'s
format library), a binary cache for another prefix (cache.py), or serves one
for every prefix (serve.py, master.py); ``cli.py`` is the front end.  Python
3.10+, with third-party packages (typer, zstandard, PyNaCl, aiohttp); data
flows one way: the builder imports payload/, never installer/.
"""
