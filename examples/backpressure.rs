//! A fast producer and a slow receiver with a bounded mailbox: the producer is slowed to the
//! receiver's rate, memory stays flat, and nothing is lost.
//!
//! The producer (a plain thread) `send`s as fast as it can; the consumer handles a message
//! every 20 µs or so. `send` waits while the consumer's mailbox or its shard's inbox is full,
//! so every half second the producer's rate matches the consumer's, and the process's resident
//! memory stays where it was. With `--try` the producer uses `try_send` instead and counts the
//! messages it was told to retry.
//!
//! ```text
//! cargo run --release --example backpressure                      # the thread pool
//! cargo run --release --example backpressure -- --executor tokio
//! cargo run --release --example backpressure -- --try
//! ```

#[path = "support/executor.rs"]
mod executor;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hermes::{Activation, Config, Context, Options, SendError};

/// A fast producer, a slow receiver with a bounded mailbox: rates and memory as it goes
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    executor: executor::ExecutorArg,
    /// How long to run
    #[arg(long, default_value = "3", value_name = "SECONDS")]
    seconds: u64,
    /// Use `try_send` (told `Full` at once) instead of `send` (waits for room)
    #[arg(long = "try")]
    try_send: bool,
}

/// The consumer's mailbox and its shard's inbox: all the memory the backlog can take.
const MAILBOX: usize = 1_000;
const INBOX: usize = 10_000;

fn main() {
    let args = Args::parse();
    let executor = args.executor.build();
    let handled = Arc::new(AtomicU64::new(0));
    let counter = handled.clone();
    let config = Config::default().mailbox_capacity(MAILBOX);
    let options = Options::new(config).shards(2).inbox_capacity(INBOX);
    let hermes = executor.start(options, move |_: &u32| {
        let counter = counter.clone();
        let mut next = 0;
        Activation::ready(move |_: &mut Context<'_, u32, u64>, n: u64| {
            assert_eq!(n, next, "messages arrive in order, none lost");
            next += 1;
            // A slow receiver: about 20 µs per message.
            let until = Instant::now() + Duration::from_micros(20);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            counter.fetch_add(1, Ordering::Relaxed);
        })
    });
    println!(
        "executor {}, mailbox {MAILBOX}, inbox {INBOX}, producer uses {}",
        executor.name(),
        if args.try_send { "try_send" } else { "send" }
    );
    println!(
        "{:>6} {:>14} {:>14} {:>10} {:>12}",
        "time", "sent/s", "handled/s", "backlog", "rss"
    );
    let start = Instant::now();
    let end = start + Duration::from_secs(args.seconds);
    let (mut sent, mut refused, mut n) = (0u64, 0u64, 0u64);
    let (mut last_sent, mut last_handled, mut last) = (0, 0, start);
    let rss_before = rss_kib();
    while Instant::now() < end {
        let result = if args.try_send {
            hermes.try_send(7, n)
        } else {
            hermes.send(7, n)
        };
        match result {
            Ok(()) => {
                sent += 1;
                n += 1;
            }
            Err(SendError::Full(_)) => {
                refused += 1;
                std::thread::yield_now();
            }
            Err(e) => panic!("send failed: {e}"),
        }
        if last.elapsed() >= Duration::from_millis(500) {
            let secs = last.elapsed().as_secs_f64();
            let done = handled.load(Ordering::Relaxed);
            println!(
                "{:>5.1}s {:>14.0} {:>14.0} {:>10} {:>9} KiB",
                start.elapsed().as_secs_f64(),
                (sent - last_sent) as f64 / secs,
                (done - last_handled) as f64 / secs,
                sent - done,
                rss_kib()
            );
            (last_sent, last_handled, last) = (sent, done, Instant::now());
        }
    }
    let stats = hermes.shutdown().expect("shut down from main");
    println!(
        "sent {sent}, handled {}, dead letters {}, refused with Full {refused}; resident memory \
         {} KiB before, {} KiB after",
        handled.load(Ordering::Relaxed),
        stats.dead_letters,
        rss_before,
        rss_kib()
    );
    assert_eq!(
        handled.load(Ordering::Relaxed),
        sent,
        "everything sent was handled"
    );
}

/// The process's resident memory, from /proc (0 where there is none).
fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}
