//! One workload, once, for a profiler: `valgrind --tool=callgrind
//! benches/target/release/examples/profile churn` (workloads: one, round_robin, churn; add
//! `baseline` to run the baseline instead of the router). `profile time` times every workload
//! at full size, best of seven, router and baseline alternating.

use std::time::{Duration, Instant};

use hermes_benches::{Baseline, Dispatch, Routed, churn, churn_config, one_receiver, round_robin};
use hermes_core::Config;

fn run(d: &mut impl Dispatch, workload: &str, scale: u64) {
    match workload {
        "one" => one_receiver(d, 200_000 * scale),
        "round_robin" => round_robin(d, 10_000, 10 * scale),
        "churn" => churn(d, 0, 100_000 * scale),
        other => eprintln!("unknown workload {other:?}: use one, round_robin or churn"),
    }
}

/// One timed run of `workload` at scale 10 on a fresh dispatcher.
fn once<D: Dispatch>(make: impl Fn() -> D, workload: &str) -> Duration {
    let mut d = make();
    let start = Instant::now();
    run(&mut d, workload, 10);
    start.elapsed()
}

/// Best of seven runs each, router and baseline alternating so that load changes on a shared
/// machine hit both alike.
fn best_of_both(workload: &str) -> (Duration, Duration) {
    let config = if workload == "churn" {
        churn_config()
    } else {
        Config::default()
    };
    let (mut router, mut baseline) = (Duration::MAX, Duration::MAX);
    for _ in 0..7 {
        router = router.min(once(|| Routed::new(config.clone()), workload));
        baseline = baseline.min(once(|| Baseline::new(workload == "churn"), workload));
    }
    (router, baseline)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let workload = args.first().map_or("churn", String::as_str);
    let config = |w: &str| {
        if w == "churn" {
            churn_config()
        } else {
            Config::default()
        }
    };
    if workload == "time" {
        for w in ["one", "round_robin", "churn"] {
            let (router, baseline) = best_of_both(w);
            // Messages (receivers, for churn) at scale 10.
            let n = if w == "one" { 2e6 } else { 1e6 };
            println!(
                "{w:<12} router {:>7.1} ns/op  baseline {:>7.1} ns/op  router/baseline throughput {:>4.0}%",
                router.as_nanos() as f64 / n,
                baseline.as_nanos() as f64 / n,
                100.0 * baseline.as_secs_f64() / router.as_secs_f64()
            );
        }
        return;
    }
    let scale = args.iter().find_map(|a| a.parse().ok()).unwrap_or(1);
    let mut d: Box<dyn FnMut()> = if args.iter().any(|a| a == "baseline") {
        let mut b = Baseline::new(workload == "churn");
        Box::new(move || run(&mut b, workload, scale))
    } else {
        let mut r = Routed::new(config(workload));
        Box::new(move || run(&mut r, workload, scale))
    };
    d();
}
