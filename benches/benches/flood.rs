//! Flood: a producer sends as fast as it can to a slow receiver with a bounded mailbox. With
//! backpressure the producer's rate falls to the receiver's, memory stays bounded, and nothing
//! is lost without a dead letter. Hermes (pool and tokio executors, `send` from a thread and
//! `send_async` from a task) next to a bounded tokio mpsc channel with a consumer task, in the
//! same run.
//!
//! Each subject runs for `SECONDS` (default 3): the producer sends consecutive numbers; the
//! receiver busy-waits `WORK` per message and checks they arrive in order. Reported: the
//! producer's and the receiver's rates over the last two thirds of the run (after the queues
//! filled), the process's resident memory before and at the end (peak growth), messages sent,
//! handled, and dead letters.
//!
//! Run: `cargo bench --manifest-path benches/Cargo.toml --bench flood`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hermes_core::{Activation, Config, Context};
use hermes_executor::{Hermes, Options};

/// Work per message in the receiver.
const WORK: Duration = Duration::from_micros(5);
/// The bounds: the receiver's mailbox, its shard's inbox, and the channel for the baseline.
const MAILBOX: usize = 1_000;
const INBOX: usize = 10_000;

fn seconds() -> u64 {
    std::env::var("SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

fn work() {
    let until = Instant::now() + WORK;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// The process's resident memory in KiB.
fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4
}

/// What one run measured.
struct Row {
    name: &'static str,
    sent_rate: f64,
    handled_rate: f64,
    rss_before: u64,
    rss_peak: u64,
    sent: u64,
    handled: u64,
    dead_letters: u64,
}

/// Samples the counters: the rates over the last two thirds, and the peak resident memory.
fn measure(
    name: &'static str,
    sent: &AtomicU64,
    handled: &AtomicU64,
    stop: &AtomicBool,
    rss_before: u64,
) -> (Row, ()) {
    let total = Duration::from_secs(seconds());
    let start = Instant::now();
    let mut peak = rss_before;
    let mut mark = None;
    while start.elapsed() < total {
        std::thread::sleep(Duration::from_millis(50));
        peak = peak.max(rss_kib());
        if mark.is_none() && start.elapsed() >= total / 3 {
            mark = Some((
                Instant::now(),
                sent.load(Ordering::Relaxed),
                handled.load(Ordering::Relaxed),
            ));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (at, s0, h0) = mark.unwrap_or((start, 0, 0));
    let secs = at.elapsed().as_secs_f64();
    let row = Row {
        name,
        sent_rate: (sent.load(Ordering::Relaxed) - s0) as f64 / secs,
        handled_rate: (handled.load(Ordering::Relaxed) - h0) as f64 / secs,
        rss_before,
        rss_peak: peak,
        sent: 0,
        handled: 0,
        dead_letters: 0,
    };
    (row, ())
}

/// The receiver every Hermes subject runs: in order, `WORK` per message.
fn consumer(handled: Arc<AtomicU64>) -> impl Fn(&u32) -> Activation<u32, u64> {
    move |_: &u32| {
        let handled = handled.clone();
        let mut next = 0;
        Activation::ready(move |_: &mut Context<'_, u32, u64>, n: u64| {
            assert_eq!(n, next, "in order, nothing lost");
            next += 1;
            work();
            handled.fetch_add(1, Ordering::Relaxed);
        })
    }
}

fn options() -> Options<u32, u64> {
    Options::new(Config::default().mailbox_capacity(MAILBOX))
        .shards(2)
        .inbox_capacity(INBOX)
}

/// Hermes: a thread that `send`s, or a tokio task that `send_async`s.
fn hermes_subject(name: &'static str, executor: &str, use_async: bool) -> Row {
    let rss_before = rss_kib();
    let handled = Arc::new(AtomicU64::new(0));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let hermes: Hermes<u32, u64> = match executor {
        "tokio" => hermes_tokio::start_on(runtime.handle(), options(), consumer(handled.clone())),
        _ => hermes_pool::start_with(options(), consumer(handled.clone())).expect("the pool"),
    };
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (hermes, sent, stop) = (hermes.clone(), sent.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let result = if use_async {
                    futures_lite::future::block_on(hermes.send_async(1, n))
                } else {
                    hermes.send(1, n)
                };
                result.expect("open");
                n += 1;
                sent.store(n, Ordering::Relaxed);
            }
        })
    };
    let (mut row, ()) = measure(name, &sent, &handled, &stop, rss_before);
    producer.join().expect("the producer");
    let stats = hermes.shutdown().expect("from main");
    row.sent = sent.load(Ordering::Relaxed);
    row.handled = handled.load(Ordering::Relaxed);
    row.dead_letters = stats.dead_letters;
    row
}

/// The baseline: a bounded tokio mpsc channel, a consumer task, a producer blocking on send.
fn mpsc_subject() -> Row {
    let rss_before = rss_kib();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(MAILBOX);
    let handled = Arc::new(AtomicU64::new(0));
    let h = handled.clone();
    let consumer = runtime.spawn(async move {
        let mut next = 0;
        while let Some(n) = rx.recv().await {
            assert_eq!(n, next);
            next += 1;
            work();
            h.fetch_add(1, Ordering::Relaxed);
        }
    });
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (sent, stop) = (sent.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                tx.blocking_send(n).expect("open");
                n += 1;
                sent.store(n, Ordering::Relaxed);
            }
        })
    };
    let (mut row, ()) = measure("tokio mpsc (bounded)", &sent, &handled, &stop, rss_before);
    producer.join().expect("the producer");
    runtime.block_on(consumer).expect("the consumer");
    row.sent = sent.load(Ordering::Relaxed);
    row.handled = handled.load(Ordering::Relaxed);
    row
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let mut rows = Vec::new();
    let subjects: [(&'static str, &dyn Fn() -> Row); 4] = [
        ("hermes pool, send", &|| {
            hermes_subject("hermes pool, send", "pool", false)
        }),
        ("hermes tokio, send", &|| {
            hermes_subject("hermes tokio, send", "tokio", false)
        }),
        ("hermes tokio, send_async", &|| {
            hermes_subject("hermes tokio, send_async", "tokio", true)
        }),
        ("tokio mpsc (bounded)", &mpsc_subject),
    ];
    for (name, run) in subjects {
        if wanted(name) {
            eprintln!("running {name} for {} s", seconds());
            rows.push(run());
        }
    }
    println!(
        "\nFlood: a producer as fast as it can, a receiver at ~{} µs per message; mailbox \
         {MAILBOX}, inbox {INBOX} (Hermes), channel {MAILBOX} (mpsc).\n",
        WORK.as_micros()
    );
    println!(
        "| subject | producer msgs/s | receiver msgs/s | producer / receiver | RSS before | RSS peak | sent | handled | dead letters |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {} KiB | {} KiB | {} | {} | {} |",
            r.name,
            r.sent_rate,
            r.handled_rate,
            r.sent_rate / r.handled_rate.max(1.0),
            r.rss_before,
            r.rss_peak,
            r.sent,
            r.handled,
            r.dead_letters
        );
        assert_eq!(r.sent, r.handled, "{}: everything sent was handled", r.name);
    }
}
