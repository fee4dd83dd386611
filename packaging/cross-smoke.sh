#!/usr/bin/env bash
# Smoke test of a cross-built package under qemu user emulation:
#   packaging/cross-smoke.sh arm64|armhf [path/to/outpost_*.deb]
# Runs `outpost --version`, `check-config` on the shipped config, and a short
# run that accepts one reading on its local broker and delivers it to a
# private upstream mosquitto on loopback. Needs qemu-user-static, mosquitto,
# mosquitto-clients.
set -euo pipefail
cd "$(dirname "$0")/.."

arch=${1:?arm64 or armhf}
case "$arch" in
  arm64) qemu=qemu-aarch64-static; sysroot=/usr/aarch64-linux-gnu ;;
  armhf) qemu=qemu-arm-static; sysroot=/usr/arm-linux-gnueabihf ;;
  *) echo "unknown architecture '$arch'" >&2; exit 2 ;;
esac
deb=${2:-$(ls -t target/debian/outpost_*_"$arch".deb target/*/debian/outpost_*_"$arch".deb 2>/dev/null | head -n1)}
[ -f "$deb" ] || { echo "no $arch package: run packaging/build-deb.sh $arch" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
dpkg-deb -x "$deb" "$work/root"
bin="$work/root/usr/bin/outpost"
run() { "$qemu" -L "$sysroot" "$bin" "$@"; }

run --version
run check-config --config "$work/root/etc/outpost/outpost.toml"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(port); local_port=$(port)
chmod 0777 "$work"
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$up" > "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" >/dev/null 2>&1 & pids+=($!)
cat > "$work/outpost.toml" <<TOML
state_dir = "$work/state"
[broker]
listen = "127.0.0.1:$local_port"
[store]
synchronous = "normal"
[[route]]
topic = "sensors/+/telemetry"
sink = "up"
[sink.up]
type = "mqtt"
url = "mqtt://127.0.0.1:$up"
topic = "smoke/{device}"
reconnect_min = "200ms"
reconnect_max = "1s"
TOML
"$qemu" -L "$sysroot" "$bin" run --config "$work/outpost.toml" 2>"$work/outpost.log" & pids+=($!)
for _ in $(seq 100); do grep -q "outpost running" "$work/outpost.log" 2>/dev/null && break; sleep 0.2; done
grep -q "outpost running" "$work/outpost.log" || { cat "$work/outpost.log"; echo "outpost did not start under $qemu" >&2; exit 1; }
mosquitto_sub -p "$up" -t 'smoke/#' -C 1 -W 30 > "$work/got" & sub=$!
sleep 0.5
mosquitto_pub -p "$local_port" -q 1 -t sensors/pi/telemetry -m '{"temp":21.5}'
wait "$sub" || { cat "$work/outpost.log"; echo "no reading arrived upstream" >&2; exit 1; }
grep -q '"temp":21.5' "$work/got" || { echo "unexpected upstream payload: $(cat "$work/got")" >&2; exit 1; }
echo "$arch under $qemu: version, check-config and one reading delivered: ok"
