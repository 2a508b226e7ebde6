"""The installer's JSON documents (manifest.json, signatures.json): one way to write
them (deterministic bytes) and one way to open them (format name and version checked)."""

import json

MYPY = False  # mypy reads the imports below; the installer never pays for importing typing
if MYPY:
    from typing import Callable, Tuple, Union  # noqa: F401


def dumps(doc):
    # type: (dict) -> bytes
    """Deterministic JSON: sorted keys, fixed separators, ASCII, a trailing newline."""
    return (json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=True) + "\n").encode()


def loads(data, format_name, version, what, error):
    # type: (bytes, str, Union[int, Tuple[int, ...]], str, Callable[[str], Exception]) -> dict
    """Parse ``data`` as a document of ``format_name`` at ``version`` (or at one of the
    versions of a tuple); raise ``error(message)`` naming the problem (``what`` names
    the document in it)."""
    versions = version if isinstance(version, tuple) else (version,)
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise error("%s is not valid JSON (%s)" % (what, e))
    except RecursionError:
        # Python's parser recurses once per level; no document of ours nests past a few.
        raise error("%s is nested too deeply to be one" % what)
    if not isinstance(doc, dict) or doc.get("format") != format_name:
        raise error("not a nix-prefix %s" % what)
    found = doc.get("version")
    # `true` and `1.0` compare equal to 1 but are not a version number.
    if type(found) is not int or found not in versions:
        raise error("%s version %r is not supported by this installer (it reads version %s)"
                    % (what, found, " and ".join(str(v) for v in versions)))
    return doc
