#!/usr/bin/env bash
# Interoperability with the real Mosquitto clients (mosquitto_pub, mosquitto_sub): starts the
# release broker on a free port with a temporary data directory and checks retained messages,
# a QoS 2 round trip, wildcards, a persistent session across a disconnect, and one across a
# SIGKILL of the broker. Every client runs under a timeout, so this never hangs.
# Usage: examples/mqtt/interop.sh (from anywhere; builds the broker if needed).
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v mosquitto_sub >/dev/null || (apt-get update && apt-get install -y mosquitto-clients)
cargo build --release -p hermes-mqtt
BIN=target/release/hermes-mqtt

DIR=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PID=
LOG="$DIR/broker.log"

start_broker() {
  "$BIN" --listen "127.0.0.1:$PORT" --data-dir "$DIR/data" --log-level info >>"$LOG" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do
    if grep -q "listening on" "$LOG" 2>/dev/null && (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "the broker did not start:"; cat "$LOG"; exit 1
}
stop_broker() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  PID=
}
cleanup() { stop_broker; rm -rf "$DIR"; }
trap cleanup EXIT

T="timeout 10"
passed=0
failed=0
check() { # name, expected, actual
  if [ "$2" = "$3" ]; then
    echo "ok: $1"; passed=$((passed + 1))
  else
    echo "FAILED: $1: expected [$2], got [$3]"; failed=$((failed + 1))
  fi
}

start_broker
H="-h 127.0.0.1 -p $PORT"

# Retained: published with -r, a later subscriber gets it.
$T mosquitto_pub $H -t interop/retained -m kept -r -q 1
check "retained" "interop/retained kept" "$($T mosquitto_sub $H -t interop/retained -C 1 -v || true)"

# QoS 2 round trip.
$T mosquitto_sub $H -t interop/qos2 -q 2 -C 1 -v > "$DIR/qos2" &
SUB=$!
sleep 0.5
$T mosquitto_pub $H -t interop/qos2 -m exactly -q 2
wait $SUB || true
check "QoS 2 round trip" "interop/qos2 exactly" "$(cat "$DIR/qos2")"

# Wildcards: '+' and '#'.
$T mosquitto_sub $H -t 'interop/+/temp' -t 'interop/wild/#' -q 1 -C 2 -v > "$DIR/wild" &
SUB=$!
sleep 0.5
$T mosquitto_pub $H -t interop/room1/temp -m 21 -q 1
$T mosquitto_pub $H -t interop/wild/a/b -m deep -q 1
wait $SUB || true
check "wildcards" "interop/room1/temp 21|interop/wild/a/b deep" "$(paste -sd'|' "$DIR/wild")"

# Persistent session: subscribe with a client ID and no clean session, leave, publish QoS 1,
# come back and get it.
$T mosquitto_sub $H -t interop/persist -q 1 -c -i interop-persist -C 1 -W 1 >/dev/null 2>&1 || true
$T mosquitto_pub $H -t interop/persist -m "while away" -q 1
check "persistent session" "interop/persist while away" \
  "$($T mosquitto_sub $H -t interop/persist -q 1 -c -i interop-persist -C 1 -v || true)"

# Persistent session and retained message across a SIGKILL of the broker.
$T mosquitto_sub $H -t interop/crash -q 1 -c -i interop-crash -C 1 -W 1 >/dev/null 2>&1 || true
$T mosquitto_pub $H -t interop/crash -m "before the crash" -q 1
$T mosquitto_pub $H -t interop/crash-retained -m "still here" -r -q 1
sleep 0.2 # the commit interval is a few milliseconds
kill -9 "$PID"; wait "$PID" 2>/dev/null || true; PID=
start_broker
check "session across SIGKILL" "interop/crash before the crash" \
  "$($T mosquitto_sub $H -t interop/crash -q 1 -c -i interop-crash -C 1 -v || true)"
check "retained across SIGKILL" "interop/crash-retained still here" \
  "$($T mosquitto_sub $H -t interop/crash-retained -C 1 -v || true)"

stop_broker
if grep -q "hermes-mqtt stopped" "$LOG"; then
  check "graceful stop on SIGTERM" yes yes
else
  check "graceful stop on SIGTERM" yes no
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] || { echo "broker log:"; cat "$LOG"; exit 1; }
