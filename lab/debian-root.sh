#!/bin/sh
# A minimal Debian bookworm root for the lab's Debian hosts (systemd-nspawn containers, each on an
# overlay of it with its own dpkg database), made once with debootstrap from Debian's archive and
# kept: later runs reuse it. A half-made root is never used: it is built beside the final name
# and renamed into place.
#
#   debian-root.sh DIR [MIRROR]       (MIRROR default http://deb.debian.org/debian)
#
# Holds systemd (PID 1 for the service tests), dbus, and dpkg-repack (the node rebuilds the
# packages it replaces with it when apt's cache lacks them).
set -eu
dir=${1:?usage: debian-root.sh DIR [MIRROR]}
mirror=${2:-http://deb.debian.org/debian}
if [ -f "$dir/.lanpatch-root-complete" ]; then
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debian-root.sh: debootstrap is missing (apt-get install debootstrap)" >&2; exit 2; }
tmp="$dir.partial.$$"
rm -rf "$tmp"
mkdir -p "$(dirname "$dir")"
trap 'rm -rf "$tmp"' EXIT
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,dpkg-repack bookworm "$tmp" "$mirror" >"$tmp.log" 2>&1 || {
  echo "debian-root.sh: debootstrap failed; its log:" >&2
  tail -n 30 "$tmp.log" >&2
  rm -f "$tmp.log"
  exit 1
}
rm -f "$tmp.log"
# Nothing in the containers fetches from Debian; apt's lists stay empty.
touch "$tmp/.lanpatch-root-complete"
rm -rf "$dir"
mv "$tmp" "$dir"
trap - EXIT
