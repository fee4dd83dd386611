#!/usr/bin/env bash
# Packaging check: builds the amd64 .deb and checks it the way a user's
# machine would see it. Run by CI. Needs (the script installs them with apt):
# lintian, debootstrap, systemd (for systemd-analyze), systemd-container
# (systemd-nspawn); and cargo-deb.
#   1. dpkg-deb: the expected files, modes, conffiles and maintainer scripts;
#   2. lintian: no errors;
#   3. systemd-analyze verify: silent (it exits 0 even on a broken unit, so
#      any output fails the check);
#   4. the package installs into a clean Debian root made by debootstrap (the
#      build machine itself is not touched): the user exists, files have the
#      right owners and modes, and `outpost check-config` passes on the
#      shipped config;
#   5. the same root, booted under a real systemd with systemd-nspawn
#      (packaging/boot-check.sh): start, READY, watchdog, reload, journal,
#      stop and purge, seen with systemd's own tools.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "packaging check FAILED: $*" >&2; exit 1; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

export DEBIAN_FRONTEND=noninteractive
need=()
for tool in lintian debootstrap systemd-analyze systemd-nspawn; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
  pkgs=("${need[@]/systemd-analyze/systemd}")
  pkgs=("${pkgs[@]/systemd-nspawn/systemd-container}")
  $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version 3.8.0

deb=$(packaging/build-deb.sh amd64)
echo "built $deb"

# 1. Contents.
contents=$(dpkg-deb -c "$deb")
for want in "-rwxr-xr-x root/root .* ./usr/bin/outpost" \
            "-rw-r--r-- root/root .* ./etc/outpost/outpost.toml" \
            "-rw-r--r-- root/root .* ./usr/lib/systemd/system/outpost.service" \
            "-rw-r--r-- root/root .* ./usr/share/man/man1/outpost.1.gz" \
            "-rw-r--r-- root/root .* ./usr/share/bash-completion/completions/outpost"; do
  echo "$contents" | sed 's#0/0#root/root#' | grep -qE -- "$want" || fail "no '$want' in the package"
done
dpkg-deb -f "$deb" Depends | grep -q adduser || fail "Depends lacks adduser"
# ExecReload= runs /bin/kill.
dpkg-deb -f "$deb" Depends | grep -q procps || fail "Depends lacks procps"
# Read whole before grep -q looks: grep leaving early would kill the
# writer with SIGPIPE, and pipefail would call that a failure.
conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)
grep -qx /etc/outpost/outpost.toml <<<"$conffiles" || fail "/etc/outpost/outpost.toml is not a conffile"
control=$(dpkg-deb --ctrl-tarfile "$deb" | tar -t)
for script in postinst postrm prerm; do
  grep -qx "./$script" <<<"$control" || fail "no $script"
done
echo "contents: ok"

# 2. lintian.
lintian --fail-on error "$deb" || fail "lintian reports errors"
echo "lintian: ok"

# 3. The unit.
unit=$(mktemp -d)/outpost.service
sed "s#/usr/bin/outpost#$(pwd)/target/release/outpost#" systemd/outpost.service > "$unit"
out=$(systemd-analyze verify "$unit" 2>&1 || true)
[ -z "$out" ] || fail "systemd-analyze verify: $out"
systemd-analyze security --offline=true "$unit" 2>/dev/null | tail -n1 || true
echo "unit: ok"

# 4. Install into a clean Debian root.
root=$(mktemp -d /tmp/outpost-root.XXXXXX)
# mktemp makes it 0700: booted, it is the container's `/`, which user
# outpost must be able to enter.
chmod 0755 "$root"
cleanup() { $SUDO umount "$root/proc" 2>/dev/null || true; $SUDO rm -rf "$root"; }
trap cleanup EXIT
. /etc/os-release
# One root for this step and the boot check: systemd to boot it, mosquitto
# (its unit masked there) as the upstream, sqlite3 to wedge the outbox.
$SUDO debootstrap --variant=minbase \
  --include=adduser,procps,systemd,systemd-sysv,dbus,mosquitto,mosquitto-clients,sqlite3 \
  "${VERSION_CODENAME:-bookworm}" "$root" http://deb.debian.org/debian >/dev/null
$SUDO cp "$deb" "$root/tmp/outpost.deb"
$SUDO mount -t proc proc "$root/proc"
$SUDO chroot "$root" dpkg -i /tmp/outpost.deb
$SUDO chroot "$root" getent passwd outpost >/dev/null || fail "user outpost was not created"
$SUDO chroot "$root" id -nG outpost | grep -qw dialout || fail "user outpost is not in dialout"
# Owners as the installed system names them (stat inside the root).
owner() { $SUDO chroot "$root" stat -c '%U:%G %a' "$1"; }
[ "$(owner /var/lib/outpost)" = "outpost:outpost 750" ] || fail "/var/lib/outpost is $(owner /var/lib/outpost)"
[ "$(owner /etc/outpost/outpost.toml)" = "root:outpost 640" ] || fail "/etc/outpost/outpost.toml is $(owner /etc/outpost/outpost.toml)"
[ "$(owner /usr/bin/outpost)" = "root:root 755" ] || fail "/usr/bin/outpost is $(owner /usr/bin/outpost)"
$SUDO chroot "$root" /usr/bin/outpost check-config --config /etc/outpost/outpost.toml || fail "check-config on the shipped config"
# Installing again is harmless (postinst is idempotent); purge removes state and user.
$SUDO chroot "$root" dpkg -i /tmp/outpost.deb >/dev/null
$SUDO chroot "$root" dpkg --purge outpost >/dev/null
[ ! -e "$root/var/lib/outpost" ] || fail "purge left /var/lib/outpost"
! $SUDO chroot "$root" getent passwd outpost >/dev/null || fail "purge left the user"
echo "install into a clean root: ok"
$SUDO umount "$root/proc"

# 5. Booted under systemd.
packaging/boot-check.sh "$root" "$deb"
echo "packaging check: ok"
