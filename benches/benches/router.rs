//! Throughput of one Router driven inline on one thread, next to the baseline dispatch loop
//! (`hermes_benches::Baseline`) on the same workloads, in the same run.
//!
//! - `one_receiver`: 1 receiver x 2M messages.
//! - `round_robin`: 10k receivers x 100 messages, round-robin.
//! - `churn`: 1M IDs, each activated, handed one message and deactivated (zero idle timeout).

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hermes_benches::{Baseline, Dispatch, Routed, churn, churn_config, one_receiver, round_robin};
use hermes_core::Config;

/// A workload, runnable on the router and on the baseline alike.
trait Workload {
    /// Messages (for churn: receivers) per run.
    const ELEMENTS: u64;
    /// Receivers are dropped as soon as their mailbox is empty.
    const CHURN: bool = false;
    fn run(d: &mut impl Dispatch);
}

struct OneReceiver;
impl Workload for OneReceiver {
    const ELEMENTS: u64 = 2_000_000;
    fn run(d: &mut impl Dispatch) {
        one_receiver(d, Self::ELEMENTS);
    }
}

struct RoundRobin;
impl Workload for RoundRobin {
    const ELEMENTS: u64 = 10_000 * 100;
    fn run(d: &mut impl Dispatch) {
        round_robin(d, 10_000, 100);
    }
}

struct Churn;
impl Workload for Churn {
    const ELEMENTS: u64 = 1_000_000;
    const CHURN: bool = true;
    fn run(d: &mut impl Dispatch) {
        churn(d, 0, Self::ELEMENTS);
    }
}

/// Times `iters` runs of `W` on a fresh dispatcher made by `make` (not timed) each time.
fn timed<W: Workload, D: Dispatch>(iters: u64, make: impl Fn() -> D) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let mut d = make();
        let start = Instant::now();
        W::run(&mut d);
        total += start.elapsed();
        assert!(d.delivered() > 0);
    }
    total
}

/// Benchmarks `W` on the router and on the baseline, side by side in group `name`.
fn compare<W: Workload>(c: &mut Criterion, name: &str, size: &str) {
    let config = if W::CHURN {
        churn_config()
    } else {
        Config::default()
    };
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .throughput(Throughput::Elements(W::ELEMENTS));
    g.bench_function(BenchmarkId::new("router", size), |b| {
        b.iter_custom(|iters| timed::<W, _>(iters, || Routed::new(config.clone())))
    });
    g.bench_function(BenchmarkId::new("baseline", size), |b| {
        b.iter_custom(|iters| timed::<W, _>(iters, || Baseline::new(W::CHURN)))
    });
    g.finish();
}

fn throughput(c: &mut Criterion) {
    compare::<OneReceiver>(c, "one_receiver", "1x2M");
    compare::<RoundRobin>(c, "round_robin", "10kx100");
    compare::<Churn>(c, "churn", "1M");
}

criterion_group!(benches, throughput);
criterion_main!(benches);
