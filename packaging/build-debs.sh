#!/usr/bin/env bash
# Builds the Debian packages lanpatch-node and lanpatch-signer with cargo-deb: release binaries,
# then shell completions and man pages generated from those binaries' own CLI definitions, then
# `cargo deb --no-build`. Prints the paths of the two .deb files.
#
#   packaging/build-debs.sh [--version V] [--out DIR]
#
# --version V  the packages' version, and the version lanpatch-node reports (LANPATCH_BUILD_VERSION);
#              default: the workspace version. (The self-update test builds two versions.)
# --out DIR    where the .deb files go (default: target/debian).
set -euo pipefail
cd "$(dirname "$0")/.."
version=""
out="target/debian"
while [ $# -gt 0 ]; do
  case "$1" in
    --version) version="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--version V] [--out DIR]" >&2; exit 2 ;;
  esac
done
command -v cargo-deb >/dev/null 2>&1 || { echo "cargo-deb is missing: cargo install cargo-deb --locked" >&2; exit 2; }

if [ -n "$version" ]; then
  export LANPATCH_BUILD_VERSION="$version"
fi
cargo build --release --locked -p lanpatch-node -p lanpatch-signer >&2
bin="${CARGO_TARGET_DIR:-target}/release"

for tool in node signer; do
  assets="packaging/generated/$tool"
  rm -rf "$assets"
  mkdir -p "$assets/man"
  exe="$bin/lanpatch-$tool"
  "$exe" completions bash > "$assets/lanpatch-$tool.bash"
  "$exe" completions zsh > "$assets/_lanpatch-$tool"
  "$exe" completions fish > "$assets/lanpatch-$tool.fish"
  "$exe" man --out "$assets/man"
  gzip -9n "$assets"/man/*.1
done

mkdir -p "$out"
args=(--no-build --locked --output "$out")
if [ -n "$version" ]; then
  args+=(--deb-version "$version")
fi
cargo deb -p lanpatch-node "${args[@]}"
cargo deb -p lanpatch-signer "${args[@]}"
