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

const ONE_RECEIVER_MESSAGES: u64 = 2_000_000;
const RR_RECEIVERS: u64 = 10_000;
const RR_MESSAGES: u64 = 100;
const CHURN_IDS: u64 = 1_000_000;

/// Times `iters` runs of `work` on a fresh dispatcher made by `make` (not timed) each time.
fn timed<D: Dispatch>(iters: u64, make: impl Fn() -> D, work: impl Fn(&mut D)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let mut d = make();
        let start = Instant::now();
        work(&mut d);
        total += start.elapsed();
        assert!(d.delivered() > 0);
    }
    total
}

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("one_receiver");
    g.sample_size(10)
        .throughput(Throughput::Elements(ONE_RECEIVER_MESSAGES));
    g.bench_function(BenchmarkId::new("router", "1x2M"), |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || Routed::new(Config::default()),
                |d| one_receiver(d, ONE_RECEIVER_MESSAGES),
            )
        })
    });
    g.bench_function(BenchmarkId::new("baseline", "1x2M"), |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || Baseline::new(false),
                |d| one_receiver(d, ONE_RECEIVER_MESSAGES),
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("round_robin");
    g.sample_size(10)
        .throughput(Throughput::Elements(RR_RECEIVERS * RR_MESSAGES));
    g.bench_function(BenchmarkId::new("router", "10kx100"), |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || Routed::new(Config::default()),
                |d| round_robin(d, RR_RECEIVERS, RR_MESSAGES),
            )
        })
    });
    g.bench_function(BenchmarkId::new("baseline", "10kx100"), |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || Baseline::new(false),
                |d| round_robin(d, RR_RECEIVERS, RR_MESSAGES),
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("churn");
    g.sample_size(10)
        .throughput(Throughput::Elements(CHURN_IDS));
    g.bench_function(BenchmarkId::new("router", "1M"), |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || Routed::new(churn_config()),
                |d| churn(d, 0, CHURN_IDS),
            )
        })
    });
    g.bench_function(BenchmarkId::new("baseline", "1M"), |b| {
        b.iter_custom(|iters| timed(iters, || Baseline::new(true), |d| churn(d, 0, CHURN_IDS)))
    });
    g.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
