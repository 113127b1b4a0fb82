#!/usr/bin/env bash
# Runs examples/cluster.rs as documented: three nodes on one nats-server (JetStream, a
# loopback port, a temporary store directory). Node b is killed with SIGKILL halfway; a and c
# must go on (they take over b's accounts) and leave cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v nats-server >/dev/null || { echo "nats-server is not installed (apt-get install nats-server)"; exit 1; }
cargo build --release --example cluster
bin=target/release/examples/cluster

dir="$(mktemp -d)"
port=$((20000 + RANDOM % 20000))
nats-server -a 127.0.0.1 -p "$port" -js -sd "$dir" >/dev/null 2>&1 &
nats=$!
trap 'kill $nats 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done

url="nats://127.0.0.1:$port"
cluster="example$RANDOM"
"$bin" --nats "$url" --cluster "$cluster" --node a --seconds 10 > "$dir/a.log" &
a=$!
"$bin" --nats "$url" --cluster "$cluster" --node b > "$dir/b.log" &
b=$!
"$bin" --nats "$url" --cluster "$cluster" --node c --seconds 10 > "$dir/c.log" &
c=$!
sleep 4
kill -9 "$b"
wait "$a"; wait "$c"
cat "$dir/a.log" "$dir/c.log"
grep -q "left the cluster" "$dir/a.log"
grep -q "left the cluster" "$dir/c.log"
echo "cluster example: nodes a and c went on after b was killed, and left cleanly"
