#!/usr/bin/env bash
# Instructions per delivery of a hermes-mqtt binary (user space, callgrind): the broker runs
# under valgrind while mqtt-bench runs a scenario with a fixed number of messages, twice (N1
# and N2 messages per publisher); the difference of the two totals over the difference of
# the deliveries leaves out start-up, connecting and subscribing. Less noisy than timings on
# a shared machine; under valgrind the broker is slow, so its batches are not those of a
# timed run. Stops only the broker it started.
#
#   benches/mqtt-callgrind.sh BIN N1 N2 SCENARIO [OPTIONS...]
#   benches/mqtt-callgrind.sh target/release/hermes-mqtt 50 550 fanout --subscribers 1000
#   benches/mqtt-callgrind.sh target/release/hermes-mqtt 200 2200 pairs --pairs 10 --qos 1
#
# The script sets --messages, --duration (120: a cap) and --warmup 0 itself.
# PORT (31900), OUT (a temporary directory: callgrind files, the generator's JSON lines).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$1 N1=$2 N2=$3
shift 3
PORT=${PORT:-31900}
OUT=${OUT:-$(mktemp -d)}
BENCH=benches/mqtt-bench/target/release/mqtt-bench
[ -x "$BENCH" ] || cargo build --release -q --manifest-path benches/mqtt-bench/Cargo.toml
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; true' EXIT

# run N SCENARIO...: sets IR (instructions) and DELIVERED
run() {
    local n=$1
    shift
    valgrind --tool=callgrind --callgrind-out-file="$OUT/cg-$n.out" "$BIN" --memory \
        --listen "127.0.0.1:$PORT" --log-level warn >"$OUT/broker-$n.log" 2>&1 &
    PID=$!
    sleep 3
    "$BENCH" --addr "127.0.0.1:$PORT" --connect-timeout 60 --drain 10 "$@" --messages "$n" --duration 120 \
        --warmup 0 2>/dev/null | head -n 1 >"$OUT/bench-$n.json"
    kill -INT "$PID"
    wait "$PID" || true
    PID=
    grep -q '"ok":true' "$OUT/bench-$n.json" || { echo "run with $n messages failed: $OUT" >&2; exit 1; }
    IR=$(awk '/^totals:/ {print $2}' "$OUT/cg-$n.out")
    DELIVERED=$(grep -o '"delivered":[0-9]*' "$OUT/bench-$n.json" | cut -d: -f2)
}

run "$N1" "$@"
ir1=$IR d1=$DELIVERED
run "$N2" "$@"
ir2=$IR d2=$DELIVERED
echo "$(basename "$BIN"): $(( (ir2 - ir1) / (d2 - d1) )) instructions per delivery ($ir1 for $d1, $ir2 for $d2; $OUT)"
