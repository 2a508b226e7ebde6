#!/bin/sh
# Fetch Debian packages of another release into a private tree, never into
# the system: a private apt configuration (its own sources.list, lists and
# archive cache under DEST) downloads PKG and everything it depends on, and
# dpkg-deb -x unpacks each into DEST/root.  Used for the newer Nix and Python
# that the tests run (see ../shared/docs/confirmed-here.md).
#
#   sh .ci/debian-fetch.sh SUITE DEST PKG...      e.g. trixie ~/.cache/x nix-bin
#   ARCH=arm64 sh .ci/debian-fetch.sh ...         another machine's packages (default amd64)
#
# Idempotent: a DEST/root/.done-[ARCH-]PKG... stamp skips the work next time.
set -eu
[ $# -ge 3 ] || { echo "usage: $0 SUITE DEST PKG..." >&2; exit 2; }
suite=$1 dest=$2
shift 2
stamp="$dest/root/.done-${ARCH:+$ARCH-}$(echo "$*" | tr ' ' '+')"
[ -e "$stamp" ] && exit 0
mkdir -p "$dest/lists/partial" "$dest/archives/partial" "$dest/root"
echo "deb http://deb.debian.org/debian $suite main" > "$dest/sources.list"
apt_opts="-o Dir::Etc::SourceList=$dest/sources.list -o Dir::Etc::SourceParts=/dev/null
 -o Dir::State::Lists=$dest/lists -o Dir::Cache::Archives=$dest/archives
 -o Dir::State::status=/dev/null -o APT::Sandbox::User=root -o APT::Architecture=${ARCH:-amd64} -o Debug::NoLocking=1"
# shellcheck disable=SC2086
apt-get $apt_opts update -qq
# Every package PKG needs, recursively (virtual names, in <>, are left out:
# a real package that provides them is in the list too).
# shellcheck disable=SC2086
pkgs=$(apt-cache $apt_opts depends --recurse --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances "$@" | grep -E '^[a-z0-9]' | sort -u)
# shellcheck disable=SC2086
(cd "$dest/archives" && apt-get $apt_opts download $pkgs >/dev/null)
for deb in "$dest"/archives/*.deb; do
    dpkg-deb -x "$deb" "$dest/root"
done
touch "$stamp"
