//! One workload, once, for a profiler: `valgrind --tool=callgrind
//! benches/target/release/examples/profile churn 1`.
//!
//! Workloads: `one` (one receiver, messages in chunks), `single` (one receiver, one message
//! then drive, repeated), `round_robin`, `churn`. The dispatcher is the router driven inline
//! by default, the [`Driver`](hermes_core::Driver) with `driver` (the default for `single`:
//! the inline driver is what the "one message then run" case is about), the baseline with
//! `baseline`. A number is the scale.
//!
//! `profile time` times every workload at scale 10, best of seven, router and baseline
//! alternating.

use std::time::{Duration, Instant};

use hermes_benches::{
    Baseline, Dispatch, Driven, Routed, churn, churn_config, one_each, one_receiver, round_robin,
};
use hermes_core::Config;

const WORKLOADS: [&str; 4] = ["one", "single", "round_robin", "churn"];

fn run(d: &mut impl Dispatch, workload: &str, scale: u64) {
    match workload {
        "one" => one_receiver(d, 200_000 * scale),
        "single" => one_each(d, 200_000 * scale),
        "round_robin" => round_robin(d, 10_000, 10 * scale),
        "churn" => churn(d, 0, 100_000 * scale),
        other => eprintln!("unknown workload {other:?}: use one of {WORKLOADS:?}"),
    }
}

/// Operations in `workload` at `scale`: messages, or receivers for churn.
fn operations(workload: &str, scale: u64) -> u64 {
    match workload {
        "round_robin" => 100_000 * scale,
        "churn" => 100_000 * scale,
        _ => 200_000 * scale,
    }
}

fn config(workload: &str) -> Config {
    if workload == "churn" {
        churn_config()
    } else {
        Config::default()
    }
}

/// One timed run of `workload` at scale 10 on a fresh dispatcher.
fn once<D: Dispatch>(make: impl Fn() -> D, workload: &str) -> Duration {
    let mut d = make();
    let start = Instant::now();
    run(&mut d, workload, 10);
    start.elapsed()
}

/// Best of seven runs each, router (or driver) and baseline alternating so that load changes
/// on a shared machine hit both alike.
fn best_of_both(workload: &str, driver: bool) -> (Duration, Duration) {
    let (mut router, mut baseline) = (Duration::MAX, Duration::MAX);
    for _ in 0..7 {
        router = router.min(if driver {
            once(|| Driven::new(config(workload)), workload)
        } else {
            once(|| Routed::new(config(workload)), workload)
        });
        baseline = baseline.min(once(|| Baseline::new(workload == "churn"), workload));
    }
    (router, baseline)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let workload = args.first().map_or("churn", String::as_str);
    if workload == "time" {
        let cases = [
            ("one", false),
            ("one", true),
            ("single", true),
            ("round_robin", false),
            ("churn", false),
        ];
        for (w, driver) in cases {
            let (router, baseline) = best_of_both(w, driver);
            let n = operations(w, 10) as f64;
            let who = if driver { "driver" } else { "router" };
            println!(
                "{w:<12} {who} {:>7.1} ns/op  baseline {:>7.1} ns/op  throughput vs baseline {:>4.0}%",
                router.as_nanos() as f64 / n,
                baseline.as_nanos() as f64 / n,
                100.0 * baseline.as_secs_f64() / router.as_secs_f64()
            );
        }
        return;
    }
    let scale = args.iter().find_map(|a| a.parse().ok()).unwrap_or(1);
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("baseline") {
        run(&mut Baseline::new(workload == "churn"), workload, scale);
    } else if has("driver") || (workload == "single" && !has("router")) {
        run(&mut Driven::new(config(workload)), workload, scale);
    } else {
        run(&mut Routed::new(config(workload)), workload, scale);
    }
}
