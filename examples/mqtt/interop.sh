#!/usr/bin/env bash
# Interoperability with real clients: the Mosquitto clients (mosquitto_pub, mosquitto_sub) and
# MQTT.js under node (the browser client: Debian's Mosquitto clients are built without
# WebSocket support). Starts the release broker on free ports (TCP, TLS, WebSocket, WebSocket
# over TLS) with a temporary data directory and test certificates made with openssl, and
# checks retained messages, a QoS 2 round trip, wildcards, a persistent session across a
# disconnect and across a SIGKILL of the broker, mosquitto_sub over TLS (--cafile), MQTT.js
# over ws:// and wss://, $SYS; then, on a second broker with a password file (made with
# `hermes-mqtt passwd`) and an ACL file: a user and password accepted, a wrong password and an
# anonymous client refused, a subscription the ACL denies answered 0x80. Every client runs
# under a timeout, so this never hangs.
# Usage: examples/mqtt/interop.sh (from anywhere; builds the broker if needed).
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v mosquitto_sub >/dev/null || (apt-get update && apt-get install -y mosquitto-clients)
command -v openssl >/dev/null || (apt-get update && apt-get install -y openssl)
command -v npm >/dev/null || (apt-get update && apt-get install -y nodejs npm)
cargo build --release -p hermes-mqtt
BIN=$PWD/target/release/hermes-mqtt

DIR=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
TLS_PORT=$(free_port)
WS_PORT=$(free_port)
WSS_PORT=$(free_port)
AUTH_PORT=$(free_port)
PID=
AUTH_PID=
LOG="$DIR/broker.log"

# Test certificates: a CA, and a server certificate it signed for localhost and 127.0.0.1.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=hermes-mqtt interop CA" \
  -keyout "$DIR/ca.key" -out "$DIR/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
  -keyout "$DIR/key.pem" -out "$DIR/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$DIR/ext"
openssl x509 -req -in "$DIR/server.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" \
  -CAcreateserial -days 2 -extfile "$DIR/ext" -out "$DIR/cert.pem" 2>/dev/null

cat > "$DIR/broker.toml" <<TOML
data_dir = "$DIR/data"
sys_interval = "1s"

[[listeners]]
address = "127.0.0.1:$PORT"

[[listeners]]
address = "127.0.0.1:$TLS_PORT"
kind = "tls"
cert = "$DIR/cert.pem"
key = "$DIR/key.pem"

[[listeners]]
address = "127.0.0.1:$WS_PORT"
kind = "ws"

[[listeners]]
address = "127.0.0.1:$WSS_PORT"
kind = "wss"
cert = "$DIR/cert.pem"
key = "$DIR/key.pem"
TOML

wait_for() { # log, port
  for _ in $(seq 1 100); do
    if grep -q "listening on" "$1" 2>/dev/null && (echo > "/dev/tcp/127.0.0.1/$2") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "the broker did not start:"; cat "$1"; exit 1
}
start_broker() {
  "$BIN" --config "$DIR/broker.toml" --log-level info >>"$LOG" 2>&1 &
  PID=$!
  wait_for "$LOG" "$PORT"
}
stop_broker() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  PID=
}
cleanup() {
  stop_broker
  if [ -n "$AUTH_PID" ]; then kill "$AUTH_PID" 2>/dev/null || true; fi
  rm -rf "$DIR"
}
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

# TLS: mosquitto_sub and mosquitto_pub check the broker's certificate with --cafile.
TLS="-h localhost -p $TLS_PORT --cafile $DIR/ca.pem"
$T mosquitto_sub $TLS -t interop/tls -q 1 -C 1 -v > "$DIR/tls" &
SUB=$!
sleep 0.5
$T mosquitto_pub $TLS -t interop/tls -m "over tls" -q 1
wait $SUB || true
check "mosquitto_sub over TLS (--cafile)" "interop/tls over tls" "$(cat "$DIR/tls")"
$T mosquitto_sub $TLS -t interop/mixed -C 1 -v > "$DIR/mixed" &
SUB=$!
sleep 0.5
$T mosquitto_pub $H -t interop/mixed -m "tcp to tls"
wait $SUB || true
check "TCP publisher, TLS subscriber" "interop/mixed tcp to tls" "$(cat "$DIR/mixed")"
if $T mosquitto_pub -h localhost -p "$TLS_PORT" --cafile "$DIR/cert.pem" -t interop/x -m x 2>/dev/null; then
  check "a client that does not trust the CA refuses the broker" refused accepted
else
  check "a client that does not trust the CA refuses the broker" refused refused
fi

# WebSocket: MQTT.js under node (the browser client) over ws:// and wss://, fed by
# mosquitto_pub over TCP.
if command -v node >/dev/null && command -v npm >/dev/null; then
  JS="$DIR/mqttjs"
  mkdir -p "$JS"
  if (cd "$JS" && timeout 180 npm install --no-audit --no-fund --loglevel=error mqtt@5 >/dev/null 2>&1); then
    cat > "$JS/sub.js" <<'JS'
// node sub.js URL TOPIC [CAFILE]: subscribes, prints the first message as "topic payload".
const mqtt = require("mqtt");
const fs = require("fs");
const [url, topic, ca] = process.argv.slice(2);
const client = mqtt.connect(url, {
  protocolVersion: 4,
  clientId: "mqttjs-" + process.pid,
  ca: ca ? fs.readFileSync(ca) : undefined,
  reconnectPeriod: 0,
  connectTimeout: 5000,
});
client.on("connect", () => client.subscribe(topic, { qos: 1 }, (err, granted) => {
  if (err || granted[0].qos === 128) { console.error("subscribe failed", err); process.exit(1); }
  console.error("subscribed");
}));
client.on("message", (t, payload) => {
  console.log(`${t} ${payload}`);
  client.end(false, () => process.exit(0));
});
client.on("error", (e) => { console.error(String(e)); process.exit(1); });
setTimeout(() => { console.error("timed out"); process.exit(1); }, 9000);
JS
    for scheme in ws wss; do
      if [ "$scheme" = ws ]; then
        URL="ws://127.0.0.1:$WS_PORT/mqtt"; CA=""
      else
        URL="wss://localhost:$WSS_PORT/mqtt"; CA="$DIR/ca.pem"
      fi
      (cd "$JS" && $T node sub.js "$URL" "interop/$scheme" $CA > "$DIR/$scheme" 2> "$DIR/$scheme.err") &
      SUB=$!
      for _ in $(seq 1 50); do grep -q subscribed "$DIR/$scheme.err" 2>/dev/null && break; sleep 0.1; done
      $T mosquitto_pub $H -t "interop/$scheme" -m "to the browser" -q 1
      wait $SUB || true
      got="$(cat "$DIR/$scheme")"
      errors="$(grep -v subscribed "$DIR/$scheme.err" || true)"
      if [ -n "$errors" ]; then got="$got (errors: $errors)"; fi
      check "MQTT.js over $scheme://" "interop/$scheme to the browser" "$got"
    done
  else
    echo "FAILED: npm install mqtt"; failed=$((failed + 1))
  fi
else
  echo "FAILED: node and npm are needed for the WebSocket checks"; failed=$((failed + 1))
fi

# $SYS topics, as Mosquitto names them.
check "\$SYS/broker/version" "hermes-mqtt version" \
  "$($T mosquitto_sub $H -t '$SYS/broker/version' -C 1 | cut -d' ' -f1-2 || true)"

stop_broker
if grep -q "hermes-mqtt stopped" "$LOG"; then
  check "graceful stop on SIGTERM" yes yes
else
  check "graceful stop on SIGTERM" yes no
fi

# A second broker: users in a password file, an ACL, anonymous clients refused.
AUTH_LOG="$DIR/auth.log"
printf 'user-pass\n' | "$BIN" passwd "$DIR/passwd" alice 2>/dev/null
cat > "$DIR/acl" <<ACL
user alice
topic readwrite alice/#
pattern read users/%u/#
ACL
cat > "$DIR/auth.toml" <<TOML
memory = true
listeners = ["127.0.0.1:$AUTH_PORT"]
allow_anonymous = false
password_file = "$DIR/passwd"
acl_file = "$DIR/acl"
TOML
"$BIN" --config "$DIR/auth.toml" >>"$AUTH_LOG" 2>&1 &
AUTH_PID=$!
wait_for "$AUTH_LOG" "$AUTH_PORT"
A="-h 127.0.0.1 -p $AUTH_PORT"
$T mosquitto_sub $A -u alice -P user-pass -t alice/inbox -C 1 -v > "$DIR/alice" &
SUB=$!
sleep 0.5
$T mosquitto_pub $A -u alice -P user-pass -t alice/inbox -m "for alice" -q 1
wait $SUB || true
check "user and password accepted" "alice/inbox for alice" "$(cat "$DIR/alice")"
wrong=$($T mosquitto_pub $A -u alice -P wrong -t alice/x -m x 2>&1 || true)
check "wrong password refused (CONNACK 4)" yes \
  "$(echo "$wrong" | grep -qiE 'bad user ?name or password' && echo yes || echo "no: $wrong")"
anonymous=$($T mosquitto_pub $A -t alice/x -m x 2>&1 || true)
check "anonymous client refused (CONNACK 5)" yes \
  "$(echo "$anonymous" | grep -qiE 'not authori[sz]ed' && echo yes || echo "no: $anonymous")"
denied=$($T mosquitto_sub $A -u alice -P user-pass -t 'secret/#' -d -W 2 2>&1 || true)
check "ACL-denied subscription answered 0x80" yes \
  "$(echo "$denied" | grep -qE 'Subscribed \(mid: [0-9]+\): 128' && echo yes || echo "no: $denied")"
kill "$AUTH_PID" 2>/dev/null && wait "$AUTH_PID" 2>/dev/null || true
AUTH_PID=

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] || { echo "broker log:"; cat "$LOG"; echo "auth broker log:"; cat "$AUTH_LOG"; exit 1; }
