#!/bin/sh
# Other machines under emulation, for tests/e2e/test_machines.py: from Debian's
# archive into a cache outside the repository (never installed), trixie's
# qemu-user-static (qemu 10: bookworm's 7.2 cannot run Nix 2.34's builds, whose
# glibc asks for the terminal with an ioctl 7.2 lacks), registered with
# binfmt_misc for aarch64 and riscv64 so their programs run as if native (the
# shipped Nix and its builds included); arm64's nix-bin of bookworm (2.8) and
# sid (2.34), riscv64's of trixie (2.26); and a Python of each machine to run
# the installer with.
#
# Registering a binfmt handler needs root; without it (or without the
# network), this says why and the emulated tests skip, saying so.
set -eu
cd "$(dirname "$0")/.."
cache=${XDG_CACHE_HOME:-$HOME/.cache}/nix-prefix-ci/emulation

say() { echo "setup: emulation: $*"; }

if [ "$(id -u)" != 0 ]; then
    say "not root, so no binfmt_misc handler can be registered; the aarch64 and riscv64 tests will skip"
    exit 0
fi
sh .ci/debian-fetch.sh trixie "$cache/qemu" qemu-user-static
qemu=$cache/qemu/root
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || {
        say "cannot mount binfmt_misc here; the aarch64 and riscv64 tests will skip"; exit 0; }
fi
for machine in aarch64 riscv64; do
    # The package's own rule (magic, mask, flags: F opens the interpreter now, so any
    # user's programs run through it), with the cached static qemu as the interpreter.
    rule=$(sed "s|:/usr/libexec/qemu-binfmt/$machine-binfmt-P:|:$qemu/usr/bin/qemu-$machine-static:|" \
        "$qemu/usr/lib/binfmt.d/qemu-$machine.conf")
    handler=/proc/sys/fs/binfmt_misc/qemu-$machine
    if grep -qs "^interpreter $qemu/" "$handler"; then continue; fi
    [ -e "$handler" ] && echo -1 > "$handler"
    printf '%s\n' "$rule" > /proc/sys/fs/binfmt_misc/register || {
        say "cannot register qemu-$machine with binfmt_misc; its tests will skip"; }
done

ARCH=arm64 sh .ci/debian-fetch.sh bookworm "$cache/aarch64/nix-2.8" nix-bin
ARCH=arm64 sh .ci/debian-fetch.sh sid "$cache/aarch64/nix-2.34" nix-bin
ARCH=arm64 sh .ci/debian-fetch.sh bookworm "$cache/aarch64/python" \
    python3.11-minimal libpython3.11-stdlib
ARCH=riscv64 sh .ci/debian-fetch.sh trixie "$cache/riscv64/nix-2.26" nix-bin
ARCH=riscv64 sh .ci/debian-fetch.sh trixie "$cache/riscv64/python" \
    python3.13-minimal libpython3.13-stdlib
# trixie's packages are merged-/usr (the loader is /usr/lib/ld-linux-*.so.1, asked for as
# /lib/...): link /lib as base-files would on such a system.
for tree in "$cache/riscv64/python/root" "$cache/aarch64/nix-2.34/root" "$cache/riscv64/nix-2.26/root"; do
    [ -e "$tree/lib" ] || ln -s usr/lib "$tree/lib"
done
say "qemu-user for aarch64 and riscv64 registered; their nix-bin and Python are in $cache"
