#!/usr/bin/env bash
# The package under a real systemd: installs the .deb into a Debian root
# that has systemd, boots that root with systemd-nspawn (private network,
# so no port of the host is touched), and checks with systemd's own tools
# inside:
#   1. the unit is enabled and reaches active (running) only after READY=1,
#      as user outpost, with the hardening in force (the online security
#      score is printed), and the first start says which file to edit;
#   2. a reading published inside reaches a mosquitto started inside on
#      another port;
#   3. `systemctl reload` applies a changed config without a new PID, and a
#      broken file or a missing ca_file is refused while the service keeps
#      running (same PID, no restart); a member of group outpost can run
#      `outpost status`; with port 1883 taken the service runs on, names
#      the other listener, and listens once the port is free;
#   4. the journal carries the structured fields (SINK, DEVICE, ERROR);
#   5. a wedged outbox stops the watchdog pings, systemd restarts the
#      service, and the readings queued before are delivered after;
#   6. `systemctl stop` is clean and quick; `apt-get purge` removes state
#      and user.
#
#   packaging/boot-check.sh ROOT DEB
# ROOT: made by debootstrap with systemd, systemd-sysv, dbus, mosquitto,
# mosquitto-clients and sqlite3 (packaging/check.sh makes it). Needs root and
# systemd-nspawn (Debian's systemd-container) on the host.
set -euo pipefail

root=$1
deb=$2
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
command -v systemd-nspawn >/dev/null || { echo "boot check: systemd-nspawn is missing: apt-get install -y systemd-container" >&2; exit 1; }

nspawn_pid=""
init=""
log=$(mktemp)
inside() { $SUDO nsenter -t "$init" -a "$@"; }
# grep -q for the end of a pipe: it reads to the end, so the writer never
# dies of SIGPIPE (which pipefail would count as a failure).
grepq() { grep "$@" >/dev/null; }
stop_container() {
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    $SUDO kill -TERM "$nspawn_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
    $SUDO kill -KILL "$nspawn_pid" 2>/dev/null || true
  fi
  nspawn_pid=""
}
fail() {
  echo "boot check FAILED: $*" >&2
  if [ -n "$init" ]; then
    inside systemctl status outpost --no-pager -l >&2 || true
    inside journalctl -u outpost --no-pager -n 60 >&2 || true
  fi
  stop_container
  exit 1
}
trap stop_container EXIT
# Waits up to $1 seconds for the command after it to succeed.
within() {
  local secs=$1; shift
  for _ in $(seq $((secs * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  return 1
}
show() { inside systemctl show -p "$1" --value outpost; }

# The root: Debian's mosquitto would take 1883 at boot, so its unit is
# masked; the upstream broker of the check is started by hand on 18830.
$SUDO ln -sf /dev/null "$root/etc/systemd/system/mosquitto.service"
$SUDO mkdir -p "$root/etc/outpost-check" "$root/var/lib/outpost-check"
$SUDO tee "$root/etc/outpost-check/upstream.conf" >/dev/null <<'EOF'
listener 18830 127.0.0.1
allow_anonymous true
# Started as root by the check: stay root, so the persistence file (the
# collector's session across the upstream's restart) can be written.
user root
persistence true
persistence_location /var/lib/outpost-check/
EOF
$SUDO cp "$deb" "$root/tmp/outpost.deb"
# Installed before boot: the postinst enables the unit, boot starts it.
$SUDO mountpoint -q "$root/proc" || $SUDO mount -t proc proc "$root/proc"
$SUDO chroot "$root" dpkg -i /tmp/outpost.deb >/dev/null
$SUDO umount "$root/proc"
[ -L "$root/etc/systemd/system/multi-user.target.wants/outpost.service" ] || fail "the package did not enable outpost.service"

# Boot (see ../README's packaging notes: nspawn needs a tmpfs on
# /run/systemd/nspawn and no machined on this host).
$SUDO mountpoint -q /run/systemd/nspawn || { $SUDO mkdir -p /run/systemd/nspawn && $SUDO mount -t tmpfs tmpfs /run/systemd/nspawn; }
$SUDO systemd-nspawn -D "$root" --boot --register=no --keep-unit --private-network --console=pipe >"$log" 2>&1 &
nspawn_pid=$!
find_init() {
  local child
  child=$(pgrep -P "$nspawn_pid" | head -n1) || return 1
  init=$(pgrep -P "$child" -x systemd || { [ "$(cat /proc/"$child"/comm)" = systemd ] && echo "$child"; }) || return 1
  [ -n "$init" ]
}
within 30 find_init || { cat "$log" >&2; fail "the container's systemd did not start"; }
booted() { state=$(inside systemctl is-system-running 2>/dev/null || true); [ "$state" = running ] || [ "$state" = degraded ]; }
within 60 booted || fail "the container did not finish booting ($(inside systemctl is-system-running 2>&1 || true))"
echo "booted: systemd $(inside systemctl --version | head -n1 | cut -d' ' -f2), $(inside systemctl is-system-running || true)"

# 1. Enabled, started, ready, hardened, and says what to do first.
[ "$(inside systemctl is-enabled outpost)" = enabled ] || fail "outpost.service is not enabled"
running() { [ "$(show SubState)" = running ]; }
within 30 running || fail "outpost did not reach running: $(show ActiveState)/$(show SubState)"
state="$(show ActiveState)/$(show SubState) ExecMainStatus=$(show ExecMainStatus) NRestarts=$(show NRestarts)"
[ "$state" = "active/running ExecMainStatus=0 NRestarts=0" ] || fail "unexpected state: $state"
pid=$(show MainPID)
uid=$(inside awk '/^Uid:/ {print $2}' "/proc/$pid/status")
[ "$(inside getent passwd "$uid" | cut -d: -f1)" = outpost ] || fail "outpost runs as uid $uid, not as user outpost"
# Type=notify: systemd says "Started" only after READY=1, which outpost
# sends after its "outpost running" line.
journal=$(inside journalctl -b --no-pager -o cat)
ready_at=$(echo "$journal" | grep -n "outpost running" | head -n1 | cut -d: -f1)
started_at=$(echo "$journal" | grep -n "Started outpost.service" | head -n1 | cut -d: -f1)
[ -n "$ready_at" ] && [ -n "$started_at" ] && [ "$ready_at" -lt "$started_at" ] || fail "systemd did not wait for READY=1 (outpost running at line ${ready_at:-none}, Started at ${started_at:-none})"
security=$(inside systemd-analyze security outpost.service --no-pager | tail -n1)
echo "security: $security"
score=$(echo "$security" | grep -oE '[0-9]+\.[0-9]+' | head -n1)
awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.0) }' || fail "exposure $score is above 2.0: $security"
inside journalctl -u outpost --no-pager -o cat | grepq "examples in /usr/share/doc/outpost/examples/" || fail "the first start does not say where the examples are"
inside outpost status --config /etc/outpost/outpost.toml | grepq "edit /etc/outpost/outpost.toml" || fail "outpost status does not say which file to edit: $(inside outpost status --config /etc/outpost/outpost.toml)"
echo "1. enabled, active (running) after READY=1 as user outpost, first-start line shown: ok"

# 2. A reading reaches a mosquitto inside the container.
inside systemd-run --quiet --unit=upstream mosquitto -c /etc/outpost-check/upstream.conf
within 15 inside mosquitto_sub -h 127.0.0.1 -p 18830 -c -i collector -q 1 -t 'site/#' -E || fail "the upstream mosquitto did not start"
write_config() {
  inside sh -c "cat > /etc/outpost/outpost.toml" <<EOF
state_dir = "/var/lib/outpost"

[broker]
listen = "127.0.0.1:1883"

[[route]]
topic = "sensors/+/telemetry"
sink = "up"
$1

[sink.up]
type = "mqtt"
url = "mqtt://127.0.0.1:18830"
client_id = "outpost-boot-check"
topic = "site/{device}/{kind}"
max_packet_size = "1 KiB"
reconnect_min = "200ms"
reconnect_max = "1s"
EOF
}
write_config ""
inside outpost check-config --config /etc/outpost/outpost.toml >/dev/null || fail "the check's config does not pass check-config"
inside systemctl reload outpost || fail "systemctl reload outpost failed"
connected() { inside outpost status --json --config /etc/outpost/outpost.toml | grepq -E '"connected": ?true'; }
within 20 connected || fail "the reloaded config did not connect upstream: $(inside outpost status --config /etc/outpost/outpost.toml)"
[ "$(show MainPID)" = "$pid" ] || fail "reload started a new process ($pid -> $(show MainPID))"
inside mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -t sensors/t1/telemetry -m '{"temp":21.5}'
got=$(inside mosquitto_sub -h 127.0.0.1 -p 18830 -c -i collector -q 1 -t 'site/#' -C 1 -W 20 -v) || fail "the reading did not arrive upstream"
echo "$got" | grepq '^site/t1/telemetry .*"device":"t1".*"temp":21.5' || fail "unexpected upstream message: $got"
echo "2. reading published inside reached the upstream mosquitto: ok ($got)"
remembered() { inside test -e /var/lib/outpost/reached-cloud; }
within 5 remembered || fail "the first connection was not remembered in /var/lib/outpost: $(inside ls -la /var/lib/outpost)"

# 3. Reload: a changed route applies in place; a broken file is refused.
write_config 'device = "renamed"'
inside systemctl reload outpost || fail "systemctl reload outpost failed"
within 20 connected || fail "no connection after the second reload"
inside mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -t sensors/t2/telemetry -m '{"temp":22}'
got=$(inside mosquitto_sub -h 127.0.0.1 -p 18830 -c -i collector -q 1 -t 'site/#' -C 1 -W 20 -v) || fail "no reading after the changed route"
echo "$got" | grepq '^site/renamed/telemetry ' || fail "the changed route was not applied: $got"
[ "$(show MainPID)" = "$pid" ] || fail "reload started a new process"
inside sh -c 'echo "[broker" > /etc/outpost/outpost.toml'
inside systemctl reload outpost || fail "systemctl reload outpost failed"
refused() { inside journalctl -u outpost --no-pager -o cat | grepq "config rejected, keeping the running one"; }
within 10 refused || fail "the broken file was not reported"
[ "$(show ActiveState)" = active ] && [ "$(show MainPID)" = "$pid" ] || fail "a broken file stopped or restarted the service"
write_config ""
inside systemctl reload outpost || fail "systemctl reload outpost failed"
within 20 connected || fail "no connection after restoring the file"
# A file that parses but names a CA file that is not there: refused by
# check-config and by the reload; the service keeps running, same PID.
write_config ""
inside sed -i 's|^url = "mqtt://127.0.0.1:18830"|url = "mqtts://127.0.0.1:18830"\nca_file = "/etc/outpost/missing-ca.pem"|' /etc/outpost/outpost.toml
! inside outpost check-config --config /etc/outpost/outpost.toml >/dev/null 2>&1 || fail "check-config passed a missing ca_file"
said=$(inside outpost check-config --config /etc/outpost/outpost.toml 2>&1 || true)
echo "$said" | grepq "sink.up.ca_file" || fail "check-config does not name sink.up.ca_file: $said"
restarts_before=$(show NRestarts)
inside systemctl reload outpost || fail "systemctl reload outpost failed"
refused_ca() { local s; s=$(inside outpost status --config /etc/outpost/outpost.toml); echo "$s" | grepq "RELOAD REFUSED" && echo "$s" | grepq "sink.up.ca_file"; }
within 10 refused_ca || fail "status does not say the reload was refused: $(inside outpost status --config /etc/outpost/outpost.toml)"
[ "$(show ActiveState)/$(show SubState)" = active/running ] && [ "$(show MainPID)" = "$pid" ] && [ "$(show NRestarts)" = "$restarts_before" ] \
  || fail "a reload with a missing ca_file stopped or restarted the service: $(show ActiveState)/$(show SubState) PID $(show MainPID) NRestarts $(show NRestarts)"
inside mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -t sensors/t3/telemetry -m '{"temp":23}'
got=$(inside mosquitto_sub -h 127.0.0.1 -p 18830 -c -i collector -q 1 -t 'site/#' -C 1 -W 20 -v) || fail "no reading after the refused reload"
write_config ""
inside systemctl reload outpost || fail "systemctl reload outpost failed"
within 20 connected || fail "no connection after restoring the file"
echo "3. reload applied a changed route with the same PID ($pid); a broken file and a missing ca_file were refused, the service kept running: ok"

# 3b. The people who run the box: a user in group outpost reads the
# status; one who is not is told to join it.
inside useradd -m -G outpost tech
inside useradd -m guest
inside runuser -u tech -- outpost status | grepq "^outpost " || fail "outpost status as a member of group outpost: $(inside runuser -u tech -- outpost status 2>&1)"
# (It fails, so its output is read first: pipefail would see the failure.)
said=$(inside runuser -u guest -- outpost status 2>&1 || true)
echo "$said" | grepq -F 'adduser $USER outpost' || fail "a user outside group outpost is not told to join it: $said"
echo "3b. outpost status works for group outpost, and says to join it otherwise: ok"

# 3c. Port 1883 taken by another program at start: outpost runs on (the
# outbox, the sink, the status), names the port and the other listener,
# and listens once the port is free, without a restart.
inside systemctl stop outpost
inside systemd-run --quiet --unit=squatter mosquitto -p 1883
within 10 inside sh -c 'grep -q ":075B 00000000:0000 0A" /proc/net/tcp' || fail "the squatter did not listen on 1883"
inside systemctl start outpost || fail "outpost did not start with 1883 taken"
within 30 running || fail "outpost did not reach running with 1883 taken: $(show ActiveState)/$(show SubState)"
pid=$(show MainPID)
named() { inside journalctl -u outpost --no-pager -o cat | grepq "127.0.0.1:1883.*another program listens on 127.0.0.1:1883"; }
within 10 named || fail "the journal does not name the port and the other listener"
inside systemctl status outpost --no-pager | grepq "NOT listening (broker.listen)" || fail "systemctl status does not say the listener is down: $(inside systemctl status outpost --no-pager)"
inside systemctl stop squatter
listening() { ! inside outpost status --json --config /etc/outpost/outpost.toml | grepq "broker.listen"; }
within 40 listening || fail "outpost did not listen once the port was free"
[ "$(show MainPID)" = "$pid" ] && [ "$(show NRestarts)" = "$restarts_before" ] || fail "outpost restarted to get the port"
inside mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -t sensors/t4/telemetry -m '{"temp":24}' || fail "no PUBACK once the port was free"
got=$(inside mosquitto_sub -h 127.0.0.1 -p 18830 -c -i collector -q 1 -t 'site/#' -C 1 -W 20 -v) || fail "the reading taken once the port was free did not arrive"
echo "$got" | grepq '^site/t4/telemetry ' || fail "unexpected upstream message: $got"
echo "3c. port 1883 taken: ran on, named the other listener, listened once it was free, same PID: ok"

# 4. Structured fields in the journal.
big=$(head -c 2000 /dev/zero | tr '\0' x)
inside mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -V mqttv5 -t sensors/big/telemetry -m "{\"v\":\"$big\"}" >/dev/null 2>&1 || true
inside systemctl stop upstream
has_fields() {
  local j
  j=$(inside journalctl -u outpost --no-pager -o json)
  echo "$j" | grepq '"DEVICE":"big"' && echo "$j" | grepq '"SINK":"up"' && echo "$j" | grepq '"ERROR":"'
}
within 15 has_fields || fail "journalctl -o json lacks SINK, DEVICE or ERROR"
echo "4. journal fields SINK, DEVICE, ERROR: ok"

# 5. A wedged outbox: no watchdog ping, systemd restarts outpost, the
# readings queued before are delivered afterwards.
inside mkdir -p /etc/systemd/system/outpost.service.d
inside sh -c 'printf "[Service]\nWatchdogSec=3s\n" > /etc/systemd/system/outpost.service.d/watchdog.conf'
inside systemctl daemon-reload
inside systemctl restart outpost || fail "systemctl restart outpost failed"
within 30 running || fail "outpost did not come back with the short watchdog"
restarts0=$(show NRestarts)
for seq in 1 2 3; do
  inside mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -t sensors/q/telemetry -m "{\"seq\":$seq}"
done
queued() { inside outpost status --json --config /etc/outpost/outpost.toml | grepq -E '"queued": ?3'; }
within 10 queued || fail "the readings were not queued: $(inside outpost status --config /etc/outpost/outpost.toml)"
inside systemd-run --quiet --unit=wedge sh -c '(echo ".timeout 10000"; echo "BEGIN IMMEDIATE;"; sleep 60) | sqlite3 /var/lib/outpost/outbox.db'
sleep 1
# The next commit waits on the lock; so does the health check.
inside timeout 5 mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -t sensors/q/telemetry -m '{"seq":99}' >/dev/null 2>&1 || true
restarted() { [ "$(show NRestarts)" -gt "$restarts0" ]; }
within 40 restarted || fail "systemd did not restart the wedged service (NRestarts $(show NRestarts))"
inside journalctl -u outpost --no-pager -o cat | grepq -i "watchdog timeout" || fail "the restart was not the watchdog's"
inside systemctl stop wedge
within 30 running || fail "outpost did not run again after the lock was released"
# A transient unit is gone once stopped: the upstream comes back as another.
inside systemd-run --quiet --unit=upstream-again mosquitto -c /etc/outpost-check/upstream.conf
within 15 inside mosquitto_pub -h 127.0.0.1 -p 18830 -t boot-check/probe -m up || fail "the upstream mosquitto did not come back"
got=$(inside mosquitto_sub -h 127.0.0.1 -p 18830 -c -i collector -q 1 -t 'site/#' -C 3 -W 30) || fail "the queued readings did not arrive after the restart: $got"
for seq in 1 2 3; do
  echo "$got" | grepq "\"seq\":$seq" || fail "reading $seq queued before the wedge was not delivered: $got"
done
inside journalctl -u outpost --no-pager -o cat | tail -n 20 | grepq "no cloud platform has been reached yet" && fail "the first-start line came back after the first connection"
echo "5. wedged outbox: watchdog restart (NRestarts $restarts0 -> $(show NRestarts)), queued readings delivered: ok"

# 6. Stop and purge.
t0=$(date +%s%N)
inside systemctl stop outpost
t1=$(date +%s%N)
stop_ms=$(( (t1 - t0) / 1000000 ))
[ "$(show Result)" = success ] && [ "$(show ExecMainStatus)" = 0 ] || fail "stop was not clean: Result=$(show Result) ExecMainStatus=$(show ExecMainStatus)"
[ "$stop_ms" -lt 30000 ] || fail "stop took $stop_ms ms (TimeoutStopSec=30)"
inside env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq outpost >/dev/null 2>&1 || fail "apt-get purge failed"
inside test ! -e /var/lib/outpost || fail "purge left /var/lib/outpost"
! inside getent passwd outpost >/dev/null || fail "purge left the user outpost"
echo "6. stopped cleanly in $stop_ms ms; purge removed state and user: ok"
echo "boot check: ok"
