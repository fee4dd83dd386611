#!/usr/bin/env bash
# Builds outpost's .deb for one architecture:
#   packaging/build-deb.sh            # amd64 (the build machine)
#   packaging/build-deb.sh arm64      # Raspberry Pi OS 64-bit (aarch64)
#   packaging/build-deb.sh armhf      # Raspberry Pi OS 32-bit (armv7)
# Needs cargo-deb (cargo install cargo-deb --locked); cross targets also need
# Debian's cross compilers (see .cargo/config.toml). Prints the .deb's path.
set -euo pipefail
cd "$(dirname "$0")/.."

arch=${1:-amd64}
case "$arch" in
  amd64) target="" ;;
  arm64) target=aarch64-unknown-linux-gnu ;;
  armhf) target=armv7-unknown-linux-gnueabihf ;;
  *) echo "unknown architecture '$arch' (amd64, arm64 or armhf)" >&2; exit 2 ;;
esac

command -v cargo-deb >/dev/null || { echo "cargo-deb is missing: cargo install cargo-deb --locked" >&2; exit 1; }

# The manual page and bash completions, made by the build machine's own
# binary (the command line is the same on every architecture).
cargo build --release --locked --bin outpost >&2
mkdir -p target/man
target/release/outpost man | gzip -9n > target/man/outpost.1.gz
target/release/outpost completions bash > target/man/outpost.bash

if [ -z "$target" ]; then
  cargo build --release --locked --bin outpost >&2
  cargo deb --no-build >&2
  ls -t target/debian/outpost_*_amd64.deb | head -n1
else
  rustup target add "$target" >&2
  cargo build --release --locked --target "$target" --bin outpost >&2
  cargo deb --no-build --target "$target" >&2
  ls -t target/debian/outpost_*_"$arch".deb target/"$target"/debian/outpost_*_"$arch".deb 2>/dev/null | head -n1
fi
