#!/bin/sh
# Installs everything nix-prefix needs on a fresh Debian/Ubuntu machine:
# Debian's nix-bin (the real Nix the tests and the demo drive), patchelf (to
# make the self-contained Nix sample closure), gcc and binutils (the C sample
# for retargeting), xz-utils and zstd (bench/), nginx-light (the cache tier
# tested in front of nix-prefix serve), python3-venv, then a virtual
# environment in .venv with nix-prefix and its test tools.  Newer Nix
# (trixie's 2.26, sid's 2.34) is fetched from Debian's archive into a cache
# outside the repository, never installed (.ci/debian-fetch.sh): the tests
# ship each of them inside an installer.
set -eu
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

missing=""
command -v nix-store >/dev/null 2>&1 || missing="$missing nix-bin"
command -v patchelf >/dev/null 2>&1 || missing="$missing patchelf"
command -v setpriv >/dev/null 2>&1 || missing="$missing util-linux"
command -v gcc >/dev/null 2>&1 || missing="$missing gcc"
command -v readelf >/dev/null 2>&1 || missing="$missing binutils"
command -v xz >/dev/null 2>&1 || missing="$missing xz-utils"
command -v zstd >/dev/null 2>&1 || missing="$missing zstd"
command -v fish >/dev/null 2>&1 || missing="$missing fish"  # nix.fish is tested with it
# A real browser for serve's page (tests/e2e/test_serve_page.py, driven by selenium).
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v chromedriver >/dev/null 2>&1 || missing="$missing chromium-driver"
# The cache tier in front of nix-prefix serve (docs/serving.md, tests/e2e/test_serve_nginx.py);
# Debian starts no service for it here: the test runs it from a temporary dir.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx-light"
[ -x /usr/bin/python3 ] || missing="$missing python3"
/usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$missing python3-venv"
if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:$missing"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# The Nix versions the end-to-end tests ship (tests/nix_versions.py reads the
# same cache); skip with NIX_PREFIX_NO_DEBIAN_NIX=1 on a machine without network.
if [ -z "${NIX_PREFIX_NO_DEBIAN_NIX:-}" ]; then
    command -v dpkg-deb >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 || {
        echo "setup: apt-get and dpkg-deb are needed to fetch Debian's newer Nix" >&2; exit 1; }
    cache=${XDG_CACHE_HOME:-$HOME/.cache}/nix-prefix-ci/debian
    for suite in trixie sid; do
        sh .ci/debian-fetch.sh "$suite" "$cache/$suite" nix-bin
    done
    echo "setup: Debian's nix-bin of trixie and sid are in $cache"
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[test]'
# Python 3.14 for the interpreter matrix (tests/pythons.py): Debian sid's
# package, unpacked into a cache outside the repo, never installed (3.6-3.13
# are pyenv builds).  Without network the 3.14 test says it is skipped.
cache=${XDG_CACHE_HOME:-$HOME/.cache}/nix-prefix-ci
sh .ci/debian-fetch.sh sid "$cache/python3.14" python3.14 ||
    echo "setup: could not fetch Debian sid python3.14 into $cache (tests/e2e/test_pythons.py skips 3.14)"
# aarch64 and riscv64 under qemu-user emulation (tests/e2e/test_machines.py): as root,
# qemu-user-static registered with binfmt_misc, and those machines' nix-bin and
# Python from Debian's archive, into the same cache.  Where it cannot (not root, no
# binfmt_misc) it says why, and those tests skip saying so.
sh .ci/emulation.sh ||
    echo "setup: the emulation set-up failed (tests/e2e/test_machines.py skips aarch64 and riscv64)"
echo "setup: done (.venv/bin/nix-prefix is ready)"
