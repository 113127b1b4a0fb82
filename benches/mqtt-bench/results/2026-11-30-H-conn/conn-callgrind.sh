#!/usr/bin/env bash
# Broker instructions per connection (connect, idle, close), user space: callgrind totals
# with 500 and 2,500 connections, the difference over 2,000. From the repository root:
#   bash benches/mqtt-bench/results/2026-11-30-H-conn/conn-callgrind.sh BIN PORT
set -euo pipefail
BIN=$(realpath "$1") PORT=$2
BENCH=$PWD/benches/mqtt-bench/target/release/mqtt-bench
OUT=$(mktemp -d /tmp/conn-cg.XXXX)
for n in 500 2500; do
    valgrind --tool=callgrind --callgrind-out-file="$OUT/cg-$n.out" "$BIN" --memory \
        --listen "127.0.0.1:$PORT" --log-level warn >"$OUT/broker-$n.log" 2>&1 &
    pid=$!
    sleep 4
    "$BENCH" --addr "127.0.0.1:$PORT" --connect-timeout 60 conns --conns "$n" --settle 2 \
        2>/dev/null | grep '^{' | head -n 1 >"$OUT/bench-$n.json" || true
    sleep 2
    kill -INT "$pid"; wait "$pid" || true
    echo "$n $(awk '/^totals:/ {print $2}' "$OUT/cg-$n.out") $(grep -o '"ok":[a-z]*' "$OUT/bench-$n.json")"
done
