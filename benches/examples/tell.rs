//! The cost of a message sent from outside, per executor, for profilers: a thread outside
//! Hermes sends `N` messages to one receiver (`tell`, the executors bench's `tell_outside`;
//! `batch`, with `send_all` in batches of 1000, its `tell_batched`) or `N` rounds to 10,000
//! receivers (`fan`, its `fan_out`), after starting Hermes and activating the receivers, then
//! shuts down. Run it with `N` and with `0` under the same profiler: the difference divided by
//! the messages sent is the per-message cost, free of start-up and shutdown.
//!
//! ```sh
//! cargo build --profile bench --manifest-path benches/Cargo.toml --example tell
//! benches/target/release/examples/tell pool 1 tell 2000000     # prints ns per message (wall clock)
//! perf stat -e task-clock,context-switches benches/target/release/examples/tell pool 1 tell 2000000
//! strace -c -f benches/target/release/examples/tell tokio 1 tell 2000000
//! valgrind --tool=callgrind --separate-threads=yes benches/target/release/examples/tell pool 1 tell 200000
//! ```

use std::time::Instant;

use hermes_core::Config;

#[allow(dead_code)]
#[path = "../benches/executors/subjects.rs"]
mod subjects;

use subjects::{Exec, Msg, Wiring, wait};

/// Receivers of `fan`.
const FAN_RECEIVERS: u64 = 10_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [exec, shards, workload, n] = args.as_slice() else {
        eprintln!("usage: tell pool|tokio|smol SHARDS tell|batch|fan N");
        std::process::exit(2);
    };
    let exec = match exec.as_str() {
        "pool" => Exec::Pool,
        "tokio" => Exec::Tokio,
        "smol" => Exec::Smol,
        other => panic!("unknown executor {other}"),
    };
    let shards: usize = shards.parse().expect("SHARDS: a number");
    let n: u64 = n.parse().expect("N: a number");
    let mut config = Config::default();
    config.mailbox_capacity = None;
    // `REPEAT=k`: the case k times in one process (as the bench's runs are), each printed.
    let repeat: usize = std::env::var("REPEAT")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    for _ in 0..repeat {
        once(exec, shards, workload, n, config.clone());
    }
}

/// One run of `workload`: start, activate, send (timed), stop; prints ns per message.
fn once(exec: Exec, shards: usize, workload: &str, n: u64, config: Config) {
    let (messages, elapsed) = match workload {
        "tell" => {
            let r = exec.start(shards, config, Wiring::default());
            r.activate([0].into_iter());
            let start = Instant::now();
            for i in 0..n {
                r.hermes.send(0, Msg::Tell(i)).expect("open");
            }
            wait(r.hermes.ask(0, Msg::Sync));
            let elapsed = start.elapsed();
            r.stop();
            (n, elapsed)
        }
        "batch" => {
            // The bench's `tell_batched`: `send_all` in batches of 1000.
            let r = exec.start(shards, config, Wiring::default());
            r.activate([0].into_iter());
            let start = Instant::now();
            for first in (0..n).step_by(1000) {
                let batch = (first..(first + 1000).min(n)).map(|i| (0, Msg::Tell(i)));
                r.hermes.send_all(batch).expect("open");
            }
            wait(r.hermes.ask(0, Msg::Sync));
            let elapsed = start.elapsed();
            r.stop();
            (n, elapsed)
        }
        "fan" => {
            let (wiring, done) = Wiring::fan_out(FAN_RECEIVERS, n);
            let r = exec.start(shards, config, wiring);
            r.activate(0..FAN_RECEIVERS);
            let start = Instant::now();
            for _ in 0..n {
                for id in 0..FAN_RECEIVERS {
                    r.hermes.send(id, Msg::Fan).expect("open");
                }
            }
            if n > 0 {
                wait(done);
            }
            let elapsed = start.elapsed();
            r.stop();
            (n * FAN_RECEIVERS, elapsed)
        }
        other => panic!("unknown workload {other}"),
    };
    if messages > 0 {
        println!(
            "{:.1} ns per message ({messages} messages)",
            elapsed.as_nanos() as f64 / messages as f64
        );
    }
}
