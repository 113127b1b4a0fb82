//! Round-trip latency between two receivers under a steady background load: Hermes with 2
//! shards on each executor (pool, tokio, smol) next to actix with two actors on two arbiters
//! (threads), in the same run, the subjects interleaved round by round.
//!
//! A round trip: receiver `a` takes a probe, notes the time and sends `Ping` to `b`; `b` answers
//! `Pong` to `a`, which records the time since the note in an HDR histogram (ns). *cross*: `a`
//! and `b` on different shards (actix: different arbiters); *same*: on the same shard (actix:
//! the same arbiter). The outside send of the probe is not in the figure.
//!
//! Meanwhile one outside thread keeps a steady background load, `LOAD` (100k) messages a second
//! to 1000 other receivers spread over both shards (actix: both arbiters), and sends a probe
//! every `1 / PROBES_PER_SEC` s. It sends what is due every ~50 µs (a sleep), so the load comes
//! in small bursts, the same for every subject. Probes do not wait for each other: each carries
//! its start time.
//!
//! Run: `cargo bench --manifest-path benches/Cargo.toml --bench latency`
//! Environment: `ROUNDS` (5), `SECONDS` per subject and round (2), `LOAD` (100000 msgs/s),
//! `PROBES_PER_SEC` (5000); arguments filter subjects by name (`-- pool`, `-- cross`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hermes_core::{Activation, Config, Context, Receiver};
use hermes_executor::Reply;

#[allow(dead_code)]
#[path = "executors/subjects.rs"]
mod subjects;

use subjects::{Exec, Running, two_ids, wait};

/// Receivers taking the background load (IDs `LOAD_BASE..LOAD_BASE + LOAD_RECEIVERS`).
const LOAD_RECEIVERS: u64 = 1000;
const LOAD_BASE: u64 = 1_000_000;
/// How often the outside thread wakes to send what is due.
const TICK: Duration = Duration::from_micros(50);

fn histogram() -> Histogram<u64> {
    // 1 ns to 10 s, three significant digits.
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid bounds")
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where the two receivers of the round trip live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    Cross,
    Same,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::Cross => "cross",
            Placement::Same => "same",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Hermes(Exec),
    Actix,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Subject(System, Placement);

impl Subject {
    fn name(self) -> String {
        let system = match self.0 {
            System::Hermes(exec) => format!("{}/2", exec.name()),
            System::Actix => "actix/2 arbiters".into(),
        };
        format!("{system} {}", self.1.name())
    }
}

/// What the outside thread drives: the background load and the probes.
struct Settings {
    duration: Duration,
    load_per_sec: u64,
    probes_per_sec: u64,
}

/// What one subject's round gave.
struct Outcome {
    histogram: Histogram<u64>,
    /// Background messages per second actually sent.
    load_per_sec: f64,
}

/// Sends the background load with `load(i)` (the `i`th message) and a probe with `probe()`,
/// each at its rate, for the duration.
fn drive(settings: &Settings, mut load: impl FnMut(u64), mut probe: impl FnMut()) -> f64 {
    let start = Instant::now();
    let (mut loads, mut probes) = (0u64, 0u64);
    loop {
        let elapsed = start.elapsed();
        if elapsed >= settings.duration {
            break;
        }
        let secs = elapsed.as_secs_f64();
        let load_due = (secs * settings.load_per_sec as f64) as u64;
        let probes_due = (secs * settings.probes_per_sec as f64) as u64;
        while probes < probes_due {
            probe();
            probes += 1;
        }
        while loads < load_due {
            load(loads);
            loads += 1;
        }
        std::thread::sleep(TICK);
    }
    loads as f64 / start.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// Hermes
// ---------------------------------------------------------------------------------------------

enum LMsg {
    /// Background load: count it.
    Load(u64),
    /// On `a`: start a round trip to `peer`.
    Probe { peer: u64 },
    /// On `b`: answer `from`.
    Ping { from: u64, start: Instant },
    /// On `a`: the round trip that started at `start` is over.
    Pong { start: Instant },
    /// Hand over the histogram (and start a fresh one).
    Take(Reply<Histogram<u64>>),
    /// Answer when every message before this one has been handled.
    Sync(Reply<()>),
}

#[derive(Default)]
struct LNode {
    count: u64,
    /// Only `a` records: made at its first `Pong`.
    histogram: Option<Box<Histogram<u64>>>,
}

impl Receiver<u64, LMsg> for LNode {
    fn receive(&mut self, ctx: &mut Context<'_, u64, LMsg>, msg: LMsg) {
        match msg {
            LMsg::Load(n) => self.count = self.count.wrapping_add(black_box(n)),
            LMsg::Probe { peer } => {
                let from = *ctx.id();
                let start = Instant::now();
                ctx.send(peer, LMsg::Ping { from, start });
            }
            LMsg::Ping { from, start } => ctx.send(from, LMsg::Pong { start }),
            LMsg::Pong { start } => {
                let ns = start.elapsed().as_nanos() as u64;
                self.histogram
                    .get_or_insert_with(|| Box::new(histogram()))
                    .saturating_record(ns);
            }
            LMsg::Take(reply) => {
                let taken = self.histogram.take().map_or_else(histogram, |h| *h);
                let _ = reply.send(taken);
            }
            LMsg::Sync(reply) => {
                let _ = reply.send(());
            }
        }
    }
}

fn hermes(exec: Exec, placement: Placement, settings: &Settings) -> Outcome {
    let mut config = Config::default();
    config.mailbox_capacity = None;
    let running: Running<LMsg> =
        exec.launch(2, config, |_: &u64| Activation::ready(LNode::default()));
    let hermes = &running.hermes;
    let (a, b) = two_ids(2, placement == Placement::Same);
    let ids = [a, b]
        .into_iter()
        .chain(LOAD_BASE..LOAD_BASE + LOAD_RECEIVERS);
    for id in ids.clone() {
        hermes.send(id, LMsg::Load(0)).expect("open");
    }
    for id in ids {
        wait(hermes.ask(id, LMsg::Sync));
    }
    let load_per_sec = drive(
        settings,
        |i| {
            let to = LOAD_BASE + i % LOAD_RECEIVERS;
            hermes.send(to, LMsg::Load(i)).expect("open");
        },
        || hermes.send(a, LMsg::Probe { peer: b }).expect("open"),
    );
    // Every probe is answered before anything sent after it (per-pair order).
    wait(hermes.ask(b, LMsg::Sync));
    let histogram = wait(hermes.ask(a, LMsg::Take));
    running.stop();
    Outcome {
        histogram,
        load_per_sec,
    }
}

// ---------------------------------------------------------------------------------------------
// actix: two arbiters (threads), the round trip's actors on one each (cross) or both on one.
// ---------------------------------------------------------------------------------------------

mod actix_side {
    use super::*;
    use actix::prelude::*;
    use subjects::actix_peer::block;

    #[derive(Default)]
    pub struct LActor {
        count: u64,
        peer: Option<Addr<LActor>>,
        histogram: Option<Box<Histogram<u64>>>,
    }

    impl Actor for LActor {
        type Context = actix::Context<Self>;
    }

    macro_rules! message {
        ($name:ident $(($($field:ty),*))?, $result:ty) => {
            pub struct $name $(($(pub $field),*))?;
            impl Message for $name {
                type Result = $result;
            }
        };
    }
    message!(Load(u64), ());
    message!(Probe, ());
    message!(Ping(Instant), ());
    message!(Pong(Instant), ());
    message!(SetPeer(Addr<LActor>), ());
    message!(Take, Histogram<u64>);
    message!(Sync, ());

    impl Handler<Load> for LActor {
        type Result = ();
        fn handle(&mut self, Load(n): Load, _: &mut Self::Context) {
            self.count = self.count.wrapping_add(black_box(n));
        }
    }
    impl Handler<Probe> for LActor {
        type Result = ();
        fn handle(&mut self, _: Probe, _: &mut Self::Context) {
            if let Some(peer) = &self.peer {
                peer.do_send(Ping(Instant::now()));
            }
        }
    }
    impl Handler<Ping> for LActor {
        type Result = ();
        fn handle(&mut self, Ping(start): Ping, _: &mut Self::Context) {
            if let Some(peer) = &self.peer {
                peer.do_send(Pong(start));
            }
        }
    }
    impl Handler<Pong> for LActor {
        type Result = ();
        fn handle(&mut self, Pong(start): Pong, _: &mut Self::Context) {
            let ns = start.elapsed().as_nanos() as u64;
            self.histogram
                .get_or_insert_with(|| Box::new(histogram()))
                .saturating_record(ns);
        }
    }
    impl Handler<SetPeer> for LActor {
        type Result = ();
        fn handle(&mut self, SetPeer(peer): SetPeer, _: &mut Self::Context) {
            self.peer = Some(peer);
        }
    }
    impl Handler<Take> for LActor {
        type Result = MessageResult<Take>;
        fn handle(&mut self, _: Take, _: &mut Self::Context) -> Self::Result {
            MessageResult(self.histogram.take().map_or_else(histogram, |h| *h))
        }
    }
    impl Handler<Sync> for LActor {
        type Result = ();
        fn handle(&mut self, _: Sync, _: &mut Self::Context) {}
    }

    fn start_on(arbiter: &Arbiter) -> Addr<LActor> {
        LActor::start_in_arbiter(&arbiter.handle(), |_| LActor::default())
    }

    pub fn run(placement: Placement, settings: &Settings) -> Outcome {
        let host = subjects::actix_peer::ActixHost::start();
        let arbiters: Vec<Arbiter> = host.on(|| vec![Arbiter::new(), Arbiter::new()]);
        let a = start_on(&arbiters[0]);
        let b = start_on(match placement {
            Placement::Cross => &arbiters[1],
            Placement::Same => &arbiters[0],
        });
        a.do_send(SetPeer(b.clone()));
        b.do_send(SetPeer(a.clone()));
        let load: Vec<Addr<LActor>> = (0..LOAD_RECEIVERS)
            .map(|i| start_on(&arbiters[(i % 2) as usize]))
            .collect();
        for actor in load.iter().chain([&a, &b]) {
            block(actor.send(Sync)).expect("alive");
        }
        let load_per_sec = drive(
            settings,
            |i| load[(i % LOAD_RECEIVERS) as usize].do_send(Load(i)),
            || a.do_send(Probe),
        );
        block(b.send(Sync)).expect("alive");
        block(a.send(Sync)).expect("alive");
        let histogram = block(a.send(Take)).expect("alive");
        drop((a, b, load));
        for arbiter in arbiters {
            arbiter.stop();
            arbiter.join().expect("arbiter thread");
        }
        drop(host);
        Outcome {
            histogram,
            load_per_sec,
        }
    }
}

fn run(subject: Subject, settings: &Settings) -> Outcome {
    match subject.0 {
        System::Hermes(exec) => hermes(exec, subject.1, settings),
        System::Actix => actix_side::run(subject.1, settings),
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    // `cargo test --benches` passes no `--bench`: a short pass of two subjects proves it works.
    let testing = !args.iter().any(|a| a == "--bench");
    let filters: Vec<String> = args.into_iter().filter(|a| !a.starts_with("--")).collect();
    let settings = Settings {
        duration: Duration::from_secs_f64(if testing {
            0.2
        } else {
            env("SECONDS", 2) as f64
        }),
        load_per_sec: env("LOAD", 100_000),
        probes_per_sec: env("PROBES_PER_SEC", 5000),
    };
    let rounds = if testing { 1 } else { env("ROUNDS", 5) };
    let mut subjects = Vec::new();
    for placement in [Placement::Cross, Placement::Same] {
        for system in [
            System::Hermes(Exec::Pool),
            System::Hermes(Exec::Tokio),
            System::Hermes(Exec::Smol),
            System::Actix,
        ] {
            subjects.push(Subject(system, placement));
        }
    }
    if testing {
        subjects.retain(|s| s.0 == System::Hermes(Exec::Pool) || s.0 == System::Actix);
        subjects.retain(|s| s.1 == Placement::Cross);
    }
    subjects.retain(|s| filters.is_empty() || filters.iter().any(|f| s.name().contains(f)));
    println!(
        "{} rounds of {:?} per subject, load {} msgs/s, {} probes/s",
        rounds, settings.duration, settings.load_per_sec, settings.probes_per_sec
    );
    // Per subject: all rounds' round trips, and each round's p50, p99 and p99.9.
    let mut totals: Vec<(Subject, Histogram<u64>, Vec<[f64; 3]>)> = subjects
        .iter()
        .map(|&s| (s, histogram(), Vec::new()))
        .collect();
    let quantiles = |h: &Histogram<u64>| [0.5, 0.99, 0.999].map(|q| h.value_at_quantile(q) as f64);
    for round in 0..rounds {
        for (subject, total, per_round) in &mut totals {
            let outcome = run(*subject, &settings);
            let h = &outcome.histogram;
            println!(
                "round {round} {:<22} n {:>6}  p50 {:>8.1} µs  p99 {:>8.1} µs  p99.9 {:>8.1} µs  max {:>9.1} µs  load {:.0}/s",
                subject.name(),
                h.len(),
                us(h.value_at_quantile(0.5)),
                us(h.value_at_quantile(0.99)),
                us(h.value_at_quantile(0.999)),
                us(h.max()),
                outcome.load_per_sec,
            );
            total.add(h).expect("same bounds");
            if !h.is_empty() {
                per_round.push(quantiles(h));
            }
        }
    }
    println!(
        "\nAll rounds' round trips together (a bad round's stalls dominate the tail):\n\n\
         | subject | round trips | p50 | p99 | p99.9 | max | actix / this (p50, p99, p99.9) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    for (subject, total, _) in &totals {
        let actix = totals
            .iter()
            .find(|(s, ..)| s.0 == System::Actix && s.1 == subject.1)
            .map(|(_, h, _)| quantiles(h));
        let ratio = match actix {
            Some(actix) if subject.0 != System::Actix && !total.is_empty() => {
                let mine = quantiles(total);
                format!(
                    "{:.1}x, {:.1}x, {:.1}x",
                    actix[0] / mine[0],
                    actix[1] / mine[1],
                    actix[2] / mine[2]
                )
            }
            _ => String::new(),
        };
        println!(
            "| {} | {} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {} |",
            subject.name(),
            total.len(),
            us(total.value_at_quantile(0.5)),
            us(total.value_at_quantile(0.99)),
            us(total.value_at_quantile(0.999)),
            us(total.max()),
            ratio
        );
    }
    // The median over rounds of each round's quantile: robust to one round that a busy
    // machine stalled.
    let medians: Vec<(Subject, [f64; 3])> = totals
        .iter()
        .filter(|(.., per_round)| !per_round.is_empty())
        .map(|(subject, _, per_round)| {
            let median = |i: usize| {
                let mut v: Vec<f64> = per_round.iter().map(|q| q[i]).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            (*subject, [median(0), median(1), median(2)])
        })
        .collect();
    println!(
        "\nMedian over the {rounds} rounds of each round's quantile:\n\n\
         | subject | p50 | p99 | p99.9 | actix / this (p50, p99, p99.9) |"
    );
    println!("|---|---:|---:|---:|---|");
    for (subject, q) in &medians {
        let actix = medians
            .iter()
            .find(|(s, _)| s.0 == System::Actix && s.1 == subject.1)
            .map(|(_, q)| *q);
        let ratio = match actix {
            Some(a) if subject.0 != System::Actix => format!(
                "{:.1}x, {:.1}x, {:.1}x",
                a[0] / q[0],
                a[1] / q[1],
                a[2] / q[2]
            ),
            _ => String::new(),
        };
        println!(
            "| {} | {:.1} µs | {:.1} µs | {:.1} µs | {} |",
            subject.name(),
            q[0] / 1000.0,
            q[1] / 1000.0,
            q[2] / 1000.0,
            ratio
        );
    }
}
