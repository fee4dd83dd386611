#!/usr/bin/env bash
# Cross check, run by CI: builds the arm64 and armhf packages with Debian's
# cross compilers (no Docker) and smoke-tests each under qemu user emulation
# (packaging/cross-smoke.sh: --version, check-config, one reading delivered
# to a loopback mosquitto). Installs what it needs with apt and rustup.
#   packaging/cross-check.sh            # both
#   packaging/cross-check.sh arm64      # one
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -qq gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf \
  libc6-dev-arm64-cross libc6-dev-armhf-cross qemu-user-static \
  mosquitto mosquitto-clients >/dev/null
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version 3.8.0

arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(arm64 armhf)
for arch in "${arches[@]}"; do
  start=$(date +%s)
  deb=$(packaging/build-deb.sh "$arch")
  [ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || { echo "$deb is not $arch" >&2; exit 1; }
  packaging/cross-smoke.sh "$arch" "$deb"
  echo "$arch: built and smoke-tested in $(( $(date +%s) - start ))s ($deb)"
done
