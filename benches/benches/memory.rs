//! Bytes of router overhead per idle receiver: a counting global allocator, one million idle
//! receivers with zero-sized state, (bytes still allocated) / 1M. The baseline dispatch loop's
//! cost per idle entry is measured the same way, for comparison.

use std::alloc::System;
use std::hint::black_box;

use hermes_benches::{Baseline, Dispatch, Routed, Stateless};
use hermes_core::{Activation, Config};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const RECEIVERS: u64 = 1_000_000;

/// Bytes still allocated after `build` ran, per receiver; the built value is kept alive until
/// the bytes are counted.
fn bytes_per_receiver<T>(build: impl FnOnce() -> T) -> f64 {
    let region = Region::new(GLOBAL);
    let built = build();
    let change = region.change();
    let live = change.bytes_allocated as f64 - change.bytes_deallocated as f64;
    drop(black_box(built));
    live / RECEIVERS as f64
}

/// Makes `RECEIVERS` idle receivers: one message each, delivered, then nothing.
fn idle_receivers<D: Dispatch>(mut d: D) -> D {
    hermes_benches::churn(&mut d, 0, RECEIVERS);
    assert_eq!(d.delivered(), RECEIVERS);
    d
}

fn main() {
    // `cargo bench` passes `--bench`; this binary takes no options.
    let router = bytes_per_receiver(|| {
        let routed = idle_receivers(Routed::with_factory(Config::default(), |_| {
            Activation::ready(Stateless)
        }));
        let stats = routed.router().stats();
        assert_eq!(
            (stats.live, stats.idle),
            (RECEIVERS as usize, RECEIVERS as usize)
        );
        routed
    });
    let baseline = bytes_per_receiver(|| {
        idle_receivers(Baseline::with_handler(false, || {
            Box::new(|msg| {
                black_box(msg);
            })
        }))
    });
    println!("idle receivers with zero-sized state, {RECEIVERS} of them:");
    println!("  router   {router:>6.1} bytes per idle receiver (target <= 100)");
    println!(
        "  baseline {baseline:>6.1} bytes per idle entry (HashMap<u64, (VecDeque, Box<dyn FnMut>)>)"
    );
}
