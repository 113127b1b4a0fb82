#!/usr/bin/env bash
# The machine's latency floor for mqtt-bench's `latency` scenario: a C echo server (epoll,
# nothing else) pinned as mqtt-compare.sh pins a broker, and a paced client pinned as it pins
# the generator, over loopback TCP: CONNS connections, RATE messages a second in all, each an
# 8-byte send time echoed back. Prints one JSON line: the round trip's p50, p99, p99.9, max.
# Whatever tail this shows, every broker has at least: it is the machine's (scheduling, the
# CPUs' sleeps and wake-ups), not any broker's.
#
#   bash benches/mqtt-bench/floor/floor.sh            # CONNS=10 RATE=10000 SECS=8 WARM=1
#   BROKER_CPU=1 GEN_CPU=0 NICE=-10 PORT=22995        # (the defaults, as mqtt-compare.sh's)
#
# Builds echo.c with cc into target/floor/ (no Rust: no runtime of any kind between the two).
# Stops the server it started when it exits.
set -euo pipefail
cd "$(dirname "$0")"
OUT=../target/floor
mkdir -p "$OUT"
cc -O2 -o "$OUT/echo" echo.c
NICE=${NICE:--10}
if [ "$NICE" -lt 0 ] && [ "$(id -u)" != 0 ]; then NICE=0; fi
PORT=${PORT:-22995}
nice -n "$NICE" taskset -c "${BROKER_CPU:-1}" "$OUT/echo" server "$PORT" &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.02; done
nice -n "$NICE" taskset -c "${GEN_CPU:-0}" "$OUT/echo" client "$PORT" "${CONNS:-10}" \
    "${RATE:-10000}" "${SECS:-8}" "${WARM:-1}"
