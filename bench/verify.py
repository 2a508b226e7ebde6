"""What checking one ed25519 signature costs the installer, on each Python it may run on.

    .venv/bin/python bench/verify.py [--python PATH ...] [--rounds 20] [--json out.json]

The stub verifies the publisher's signatures with payload/ed25519.py (pure
Python ints, no libsodium on the target), once per signature per install.
This loads that module alone, as the stub's Python would (``-I``, the file
by path), in each ``--python`` (default: this one and every pyenv CPython
found), checks one signature made by libsodium (PyNaCl) ``--rounds`` times
and prints the mean and the slowest check in milliseconds.  The budget is a
few milliseconds; the machine may be shared, so the load average is printed
with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import nacl.signing

REPO = Path(__file__).resolve().parent.parent
MODULE = REPO / "payload" / "ed25519.py"

CHILD = """
import sys, time, importlib.util as u
spec = u.spec_from_file_location("ed25519", sys.argv[1])
m = u.module_from_spec(spec); spec.loader.exec_module(m)
key, msg, sig = (bytes.fromhex(a) for a in sys.argv[2:5])
times = []
for _ in range(int(sys.argv[5])):
    t = time.perf_counter()
    ok = m.verify(key, msg, sig)
    times.append(time.perf_counter() - t)
    assert ok
assert not m.verify(key, msg + b"x", sig)
print(sum(times) / len(times), max(times))
"""


def pythons() -> list[str]:
    """This Python and every pyenv CPython (3.6, the stub's oldest, first)."""
    found = [sys.executable]
    try:
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return found
    versions = sorted(Path(root, "versions").glob("3.*/bin/python3"),
                      key=lambda p: tuple(int(x) for x in p.parts[-3].split(".")[:2]))
    return [str(p) for p in versions] + found


def measure(python: str, rounds: int) -> dict:
    key = nacl.signing.SigningKey(bytes(range(32)))
    message = b"the manifest of an installer" * 20
    signature = key.sign(message).signature
    out = subprocess.run([python, "-I", "-c", CHILD, str(MODULE), key.verify_key.encode().hex(),
                          message.hex(), signature.hex(), str(rounds)],
                         capture_output=True, text=True, check=True).stdout.split()
    version = subprocess.run([python, "-I", "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    return {"python": python, "version": version, "mean_ms": float(out[0]) * 1000,
            "max_ms": float(out[1]) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", help="a Python to measure (repeatable)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = [measure(p, args.rounds) for p in (args.python or pythons())]
    print(f"ed25519 verification, {args.rounds} rounds each (load average {load:.1f}):")
    for r in rows:
        print(f"  Python {r['version']:<8} mean {r['mean_ms']:6.2f} ms   "
              f"slowest {r['max_ms']:6.2f} ms")
    if args.json:
        args.json.write_text(json.dumps({"load": load, "rounds": args.rounds, "pythons": rows},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
