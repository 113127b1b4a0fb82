//! Memory per idle receiver, two ways:
//!
//! - heap bytes of router overhead: a counting global allocator, one million idle receivers
//!   with zero-sized state, (bytes still allocated) / 1M; the baseline dispatch loop's cost per
//!   idle entry is measured the same way, for comparison;
//! - resident memory (RSS, from `/proc/self/statm`) per idle receiver whose state is 16 bytes,
//!   at 1M and 10M receivers, each in a fresh child process (so that neither measurement
//!   inherits the other's freed memory): everything a receiver costs, its boxed state and the
//!   allocator's overhead included.
//!
//! `cargo bench --manifest-path benches/Cargo.toml --bench memory`; `-- 1000000` measures RSS at
//! that many receivers only.

use std::alloc::System;
use std::hint::black_box;
use std::process::Command;

use hermes_benches::{Baseline, Dispatch, Routed, Stateless};
use hermes_core::{Activation, Config, Context, Receiver};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const RECEIVERS: u64 = 1_000_000;

/// The receiver counts RSS is measured at.
const RSS_RECEIVERS: [u64; 2] = [1_000_000, 10_000_000];

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

/// Makes `n` idle receivers: one message each, delivered, then nothing.
fn idle_receivers<D: Dispatch>(mut d: D, n: u64) -> D {
    hermes_benches::churn(&mut d, 0, n);
    assert_eq!(d.delivered(), n);
    d
}

/// A receiver whose state is 16 bytes (two counters).
struct Pair(u64, u64);

impl Receiver<u64, u64> for Pair {
    fn receive(&mut self, _ctx: &mut Context<'_, u64, u64>, msg: u64) {
        self.0 = self.0.wrapping_add(msg);
        self.1 ^= msg;
    }
}

/// Resident bytes of this process, from `/proc/self/statm`.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("resident pages in statm");
    // The page size of every Linux target this bench runs on.
    pages * 4096
}

/// In a child process: RSS per idle receiver with a 16-byte state, at `n` receivers.
fn rss_child(n: u64) {
    let before = resident_bytes();
    let routed = idle_receivers(
        Routed::with_factory(Config::default(), |_| Activation::ready(Pair(0, 0))),
        n,
    );
    let after = resident_bytes();
    let stats = routed.router().stats();
    assert_eq!((stats.live, stats.idle), (n as usize, n as usize));
    println!("{}", (after - before) as f64 / n as f64);
    drop(black_box(routed));
}

/// RSS per idle receiver at `n` receivers, measured by a fresh child process.
fn rss_per_receiver(n: u64) -> f64 {
    let exe = std::env::current_exe().expect("this bench's executable");
    let out = Command::new(exe)
        .args(["rss-child", &n.to_string()])
        .output()
        .expect("the RSS child runs");
    assert!(out.status.success(), "RSS child failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the child prints bytes per receiver")
}

fn main() {
    // `cargo bench` passes `--bench`; a number measures RSS at that many receivers only.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("rss-child") {
        return rss_child(args[1].parse().expect("a receiver count"));
    }
    let only: Option<u64> = args.iter().find_map(|a| a.parse().ok());
    if only.is_none() {
        let router = bytes_per_receiver(|| {
            let routed = idle_receivers(
                Routed::with_factory(Config::default(), |_| Activation::ready(Stateless)),
                RECEIVERS,
            );
            let stats = routed.router().stats();
            assert_eq!(
                (stats.live, stats.idle),
                (RECEIVERS as usize, RECEIVERS as usize)
            );
            routed
        });
        let baseline = bytes_per_receiver(|| {
            idle_receivers(
                Baseline::with_handler(false, || {
                    Box::new(|msg| {
                        black_box(msg);
                    })
                }),
                RECEIVERS,
            )
        });
        println!("idle receivers with zero-sized state, {RECEIVERS} of them, heap bytes:");
        println!("  router   {router:>6.1} bytes per idle receiver (target <= 100)");
        println!(
            "  baseline {baseline:>6.1} bytes per idle entry (HashMap<u64, (VecDeque, Box<dyn FnMut>)>)"
        );
    }
    println!("idle receivers with a 16-byte state, resident memory (RSS):");
    for n in only.map_or(RSS_RECEIVERS.to_vec(), |n| vec![n]) {
        let rss = rss_per_receiver(n);
        println!("  {n:>10} receivers: {rss:>6.1} bytes per idle receiver (target <= 100)");
    }
}
