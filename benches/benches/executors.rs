//! Hermes on each executor (pool, tokio, smol) next to actix, kameo, ractor and a raw tokio mpsc
//! channel, on the same workloads, in the same run. Each system runs with 1 and 2 threads
//! (Hermes: shards, each on its own thread or worker; tokio-based peers: runtime workers; actix:
//! its single-threaded System only).
//!
//! Workloads (elements per iteration in brackets):
//! - `tell_outside`: a thread outside the system sends 2M messages to one receiver [2M msgs].
//! - `tell_batched`: the same with `Hermes::send_all` in batches of 1000 (Hermes only; the
//!   peers have no batch send, so its ratio is against their `tell_outside`).
//! - `tell_local`: one receiver sends 2M messages to another (same shard for Hermes) [2M msgs].
//! - `ping_pong`: two receivers bounce a message (different shards for Hermes with 2) [round trips].
//! - `ping_pong_same`: the same with the two receivers on the same shard (Hermes only; with 2
//!   shards the second shard idles; its ratio is against the peers' `ping_pong`).
//! - `ask`: a thread outside asks one receiver, one request at a time [round trips].
//! - `churn`: 200k IDs each activated, handed one message and stopped (peers: spawn an actor,
//!   send it one message, it stops itself; the spawning loop runs inside the peer's runtime)
//!   [IDs].
//! - `fan_out`: a thread outside sends 100 rounds to 10k receivers [1M msgs].
//!
//! Only the work is timed: starting the system, activating or spawning the receivers a workload
//! needs beforehand, and shutting down are not. Each case runs once untimed, then `RUNS` (5)
//! times; at the end a summary table (medians, with ratios against the best of
//! actix/kameo/ractor) and a scaling table (each Hermes executor's 2-shard rate over its 1-shard
//! rate) are printed in Markdown for benches/README.md.
//!
//! A plain bench binary rather than criterion: some cases take seconds per iteration (peer
//! churn), and criterion's minimum of 10 samples would make the whole run far too long.
//!
//! Run: `cargo bench --manifest-path benches/Cargo.toml --bench executors`
//! (add `-- ping_pong` or `-- pool/2` to run the cases whose name contains it; `RUNS=n` env).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hermes_core::Config;
use hermes_executor::Reply;

#[allow(dead_code)]
#[path = "executors/subjects.rs"]
mod subjects;

use subjects::{Exec, Msg, Wiring, two_ids, wait};

const TELL: u64 = 2_000_000;
/// Messages per `send_all` in `tell_batched`.
const BATCH: u64 = 1000;
const ROUND_TRIPS: u64 = 100_000;
const ASKS: u64 = 20_000;
const CHURN: u64 = 200_000;
const FAN_RECEIVERS: u64 = 10_000;
const FAN_MESSAGES: u64 = 100;

/// The router configuration of every case: mailboxes unbounded, as the peers' are, so that
/// `tell_local`'s burst (one receiver sending 2M messages to another on the same shard, faster
/// than it handles them) measures speed rather than the default bound's dead letters.
fn unbounded() -> Config {
    let mut config = Config::default();
    config.mailbox_capacity = None;
    config
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Workload {
    TellOutside,
    TellBatched,
    TellLocal,
    PingPong,
    PingPongSame,
    Ask,
    Churn,
    FanOut,
}

impl Workload {
    const ALL: [Workload; 8] = [
        Workload::TellOutside,
        Workload::TellBatched,
        Workload::TellLocal,
        Workload::PingPong,
        Workload::PingPongSame,
        Workload::Ask,
        Workload::Churn,
        Workload::FanOut,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::TellOutside => "tell_outside",
            Workload::TellBatched => "tell_batched",
            Workload::TellLocal => "tell_local",
            Workload::PingPong => "ping_pong",
            Workload::PingPongSame => "ping_pong_same",
            Workload::Ask => "ask",
            Workload::Churn => "churn",
            Workload::FanOut => "fan_out",
        }
    }

    /// What one iteration counts: messages, round trips or IDs.
    fn elements(self) -> u64 {
        match self {
            Workload::TellOutside | Workload::TellBatched | Workload::TellLocal => TELL,
            Workload::PingPong | Workload::PingPongSame => ROUND_TRIPS,
            Workload::Ask => ASKS,
            Workload::Churn => CHURN,
            Workload::FanOut => FAN_RECEIVERS * FAN_MESSAGES,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Subject {
    Hermes(Exec, usize),
    Actix,
    Kameo(usize),
    Ractor(usize),
    Mpsc(usize),
}

impl Subject {
    fn all() -> Vec<Subject> {
        let mut all = Vec::new();
        for exec in [Exec::Pool, Exec::Tokio, Exec::Smol] {
            all.extend([1, 2].map(|threads| Subject::Hermes(exec, threads)));
        }
        all.push(Subject::Actix);
        for threads in [1, 2] {
            all.extend([
                Subject::Kameo(threads),
                Subject::Ractor(threads),
                Subject::Mpsc(threads),
            ]);
        }
        all
    }

    fn name(self) -> String {
        match self {
            Subject::Hermes(exec, n) => format!("{}/{n}", exec.name()),
            Subject::Actix => "actix/1".into(),
            Subject::Kameo(n) => format!("kameo/{n}"),
            Subject::Ractor(n) => format!("ractor/{n}"),
            Subject::Mpsc(n) => format!("mpsc/{n}"),
        }
    }

    /// Peers have no batch send and no shards: `tell_batched` and `ping_pong_same` are Hermes
    /// only (compared with the peers' `tell_outside` and `ping_pong`).
    fn runs(self, w: Workload) -> bool {
        matches!(self, Subject::Hermes(..))
            || !matches!(w, Workload::TellBatched | Workload::PingPongSame)
    }

    fn is_peer(self) -> bool {
        matches!(
            self,
            Subject::Actix | Subject::Kameo(_) | Subject::Ractor(_)
        )
    }

    /// One timed iteration of `w` (setup and teardown excluded).
    fn run(self, w: Workload) -> Duration {
        match self {
            Subject::Hermes(exec, shards) => hermes(exec, shards, w),
            Subject::Actix => actix(w),
            Subject::Kameo(threads) => kameo(threads, w),
            Subject::Ractor(threads) => ractor(threads, w),
            Subject::Mpsc(threads) => mpsc(threads, w),
        }
    }
}

/// Sends `FAN_MESSAGES` rounds over `receivers` with `send`, then waits for `done`.
fn fan_out_rounds<T>(receivers: &[T], send: impl Fn(&T), done: hermes_executor::Asked<()>) {
    for _ in 0..FAN_MESSAGES {
        for r in receivers {
            send(r);
        }
    }
    wait(done);
}

/// Times `work` on a fresh `running` system; stops it afterwards (untimed).
fn timed<R>(running: R, stop: impl FnOnce(R), work: impl FnOnce(&R)) -> Duration {
    let start = Instant::now();
    work(&running);
    let elapsed = start.elapsed();
    stop(running);
    elapsed
}

fn hermes(exec: Exec, shards: usize, w: Workload) -> Duration {
    let stop = subjects::Running::stop;
    match w {
        Workload::TellOutside => {
            let r = exec.start(shards, unbounded(), Wiring::default());
            r.activate([0].into_iter());
            timed(r, stop, |r| {
                for i in 0..TELL {
                    r.hermes.send(0, Msg::Tell(i)).expect("open");
                }
                wait(r.hermes.ask(0, Msg::Sync));
            })
        }
        Workload::TellBatched => {
            let r = exec.start(shards, unbounded(), Wiring::default());
            r.activate([0].into_iter());
            timed(r, stop, |r| {
                for start in (0..TELL).step_by(BATCH as usize) {
                    let batch = (start..(start + BATCH).min(TELL)).map(|i| (0, Msg::Tell(i)));
                    r.hermes.send_all(batch).expect("open");
                }
                wait(r.hermes.ask(0, Msg::Sync));
            })
        }
        Workload::TellLocal => {
            let (a, b) = two_ids(shards, true);
            let r = exec.start(shards, unbounded(), Wiring::default());
            r.activate([a, b].into_iter());
            timed(r, stop, |r| {
                let (done, asked) = Reply::new();
                let burst = Msg::Burst {
                    to: b,
                    left: TELL,
                    done,
                };
                r.hermes.send(a, burst).expect("open");
                wait(asked);
            })
        }
        Workload::PingPong | Workload::PingPongSame => {
            let (a, b) = two_ids(shards, w == Workload::PingPongSame);
            let r = exec.start(shards, unbounded(), Wiring::default());
            r.activate([a, b].into_iter());
            timed(r, stop, |r| {
                let (done, asked) = Reply::new();
                let ping = Msg::Ping {
                    from: b,
                    left: 2 * ROUND_TRIPS,
                    done,
                };
                r.hermes.send(a, ping).expect("open");
                wait(asked);
            })
        }
        Workload::Ask => {
            let r = exec.start(shards, unbounded(), Wiring::default());
            r.activate([0].into_iter());
            timed(r, stop, |r| {
                for _ in 0..ASKS {
                    wait(r.hermes.ask(0, Msg::Sync));
                }
            })
        }
        Workload::Churn => {
            let (wiring, done) = Wiring::churn(CHURN);
            let r = exec.start(shards, unbounded(), wiring);
            timed(r, stop, |r| {
                for id in 0..CHURN {
                    r.hermes.send(id, Msg::Once).expect("open");
                }
                wait(done);
            })
        }
        Workload::FanOut => {
            let (wiring, done) = Wiring::fan_out(FAN_RECEIVERS, FAN_MESSAGES);
            let r = exec.start(shards, unbounded(), wiring);
            r.activate(0..FAN_RECEIVERS);
            timed(r, stop, |r| {
                for _ in 0..FAN_MESSAGES {
                    for id in 0..FAN_RECEIVERS {
                        r.hermes.send(id, Msg::Fan).expect("open");
                    }
                }
                wait(done);
            })
        }
    }
}

fn actix(w: Workload) -> Duration {
    use actix::Actor;
    use subjects::actix_peer::{
        ANode, ActixHost, Burst, Fan, Once, Ping, SetPeer, Sync, Tell, block,
    };

    let host = ActixHost::start();
    let stop = drop::<ActixHost>;
    match w {
        Workload::TellBatched | Workload::PingPongSame => unreachable!("Hermes only"),
        Workload::TellOutside => {
            let a = host.spawn(1, Wiring::default()).remove(0);
            timed(host, stop, |_| {
                for i in 0..TELL {
                    a.do_send(Tell(i));
                }
                block(a.send(Sync)).expect("alive");
            })
        }
        Workload::TellLocal => {
            let mut ab = host.spawn(2, Wiring::default());
            let (b, a) = (ab.remove(1), ab.remove(0));
            timed(host, stop, |_| {
                let (done, asked) = Reply::new();
                a.do_send(Burst(b.clone(), TELL, done));
                wait(asked);
            })
        }
        Workload::PingPong => {
            let mut ab = host.spawn(2, Wiring::default());
            let (b, a) = (ab.remove(1), ab.remove(0));
            a.do_send(SetPeer(b.clone()));
            b.do_send(SetPeer(a.clone()));
            block(a.send(Sync)).expect("alive");
            block(b.send(Sync)).expect("alive");
            timed(host, stop, |_| {
                let (done, asked) = Reply::new();
                a.do_send(Ping(2 * ROUND_TRIPS, done));
                wait(asked);
            })
        }
        Workload::Ask => {
            let a = host.spawn(1, Wiring::default()).remove(0);
            timed(host, stop, |_| {
                for _ in 0..ASKS {
                    block(a.send(Sync)).expect("alive");
                }
            })
        }
        Workload::Churn => {
            let (wiring, done) = Wiring::churn(CHURN);
            timed(host, stop, |host| {
                host.on(move || {
                    for _ in 0..CHURN {
                        ANode::new(wiring.clone()).start().do_send(Once);
                    }
                });
                wait(done);
            })
        }
        Workload::FanOut => {
            let (wiring, done) = Wiring::fan_out(FAN_RECEIVERS, FAN_MESSAGES);
            let actors = host.spawn(FAN_RECEIVERS, wiring);
            timed(host, stop, |_| {
                fan_out_rounds(&actors, |a| a.do_send(Fan), done)
            })
        }
    }
}

fn kameo(threads: usize, w: Workload) -> Duration {
    use subjects::kameo_peer::{Burst, Fan, Once, Ping, SetPeer, Sync, Tell, spawn};

    let rt = subjects::tokio_runtime(threads);
    let stop = drop::<tokio::runtime::Runtime>;
    match w {
        Workload::TellBatched | Workload::PingPongSame => unreachable!("Hermes only"),
        Workload::TellOutside => {
            let a = rt.block_on(async { spawn(Wiring::default()) });
            timed(rt, stop, |rt| {
                rt.block_on(async {
                    for i in 0..TELL {
                        a.tell(Tell(i)).await.expect("alive");
                    }
                    a.ask(Sync).await.expect("alive");
                })
            })
        }
        Workload::TellLocal => {
            let (a, b) =
                rt.block_on(async { (spawn(Wiring::default()), spawn(Wiring::default())) });
            timed(rt, stop, |rt| {
                let (done, asked) = Reply::new();
                rt.block_on(async { a.tell(Burst(b.clone(), TELL, done)).await })
                    .expect("alive");
                wait(asked);
            })
        }
        Workload::PingPong => {
            let (a, b) = rt.block_on(async {
                let (a, b) = (spawn(Wiring::default()), spawn(Wiring::default()));
                a.tell(SetPeer(b.clone())).await.expect("alive");
                b.tell(SetPeer(a.clone())).await.expect("alive");
                a.ask(Sync).await.expect("alive");
                b.ask(Sync).await.expect("alive");
                (a, b)
            });
            timed(rt, stop, |rt| {
                let (done, asked) = Reply::new();
                rt.block_on(async { a.tell(Ping(2 * ROUND_TRIPS, done)).await })
                    .expect("alive");
                wait(asked);
                drop(b);
            })
        }
        Workload::Ask => {
            let a = rt.block_on(async { spawn(Wiring::default()) });
            timed(rt, stop, |rt| {
                rt.block_on(async {
                    for _ in 0..ASKS {
                        a.ask(Sync).await.expect("alive");
                    }
                })
            })
        }
        Workload::Churn => {
            let (wiring, done) = Wiring::churn(CHURN);
            timed(rt, stop, |rt| {
                rt.spawn(async move {
                    for _ in 0..CHURN {
                        spawn(wiring.clone()).tell(Once).await.expect("alive");
                    }
                });
                wait(done);
            })
        }
        Workload::FanOut => {
            let (wiring, done) = Wiring::fan_out(FAN_RECEIVERS, FAN_MESSAGES);
            let actors: Vec<_> = rt.block_on(async {
                let actors: Vec<_> = (0..FAN_RECEIVERS).map(|_| spawn(wiring.clone())).collect();
                for a in &actors {
                    a.ask(Sync).await.expect("alive");
                }
                actors
            });
            timed(rt, stop, |rt| {
                rt.block_on(async {
                    for _ in 0..FAN_MESSAGES {
                        for a in &actors {
                            a.tell(Fan).await.expect("alive");
                        }
                    }
                });
                wait(done);
            })
        }
    }
}

fn ractor(threads: usize, w: Workload) -> Duration {
    use ractor::call;
    use subjects::ractor_peer::{RMsg, spawn};

    let rt = subjects::tokio_runtime(threads);
    let stop = drop::<tokio::runtime::Runtime>;
    match w {
        Workload::TellBatched | Workload::PingPongSame => unreachable!("Hermes only"),
        Workload::TellOutside => {
            let a = rt.block_on(spawn(Wiring::default()));
            timed(rt, stop, |rt| {
                for i in 0..TELL {
                    a.cast(RMsg::Tell(i)).expect("alive");
                }
                rt.block_on(async { call!(a, RMsg::Sync) }).expect("alive");
            })
        }
        Workload::TellLocal => {
            let (a, b) = rt.block_on(async {
                (
                    spawn(Wiring::default()).await,
                    spawn(Wiring::default()).await,
                )
            });
            timed(rt, stop, |_| {
                let (done, asked) = Reply::new();
                a.cast(RMsg::Burst(b.clone(), TELL, done)).expect("alive");
                wait(asked);
            })
        }
        Workload::PingPong => {
            let (a, b) = rt.block_on(async {
                let (a, b) = (
                    spawn(Wiring::default()).await,
                    spawn(Wiring::default()).await,
                );
                a.cast(RMsg::SetPeer(b.clone())).expect("alive");
                b.cast(RMsg::SetPeer(a.clone())).expect("alive");
                call!(a, RMsg::Sync).expect("alive");
                call!(b, RMsg::Sync).expect("alive");
                (a, b)
            });
            timed(rt, stop, |_| {
                let (done, asked) = Reply::new();
                a.cast(RMsg::Ping(2 * ROUND_TRIPS, done)).expect("alive");
                wait(asked);
                drop(b);
            })
        }
        Workload::Ask => {
            let a = rt.block_on(spawn(Wiring::default()));
            timed(rt, stop, |rt| {
                rt.block_on(async {
                    for _ in 0..ASKS {
                        call!(a, RMsg::Sync).expect("alive");
                    }
                })
            })
        }
        Workload::Churn => {
            let (wiring, done) = Wiring::churn(CHURN);
            timed(rt, stop, |rt| {
                rt.spawn(async move {
                    for _ in 0..CHURN {
                        spawn(wiring.clone()).await.cast(RMsg::Once).expect("alive");
                    }
                });
                wait(done);
            })
        }
        Workload::FanOut => {
            let (wiring, done) = Wiring::fan_out(FAN_RECEIVERS, FAN_MESSAGES);
            let actors: Vec<_> = rt.block_on(async {
                let mut actors = Vec::new();
                for _ in 0..FAN_RECEIVERS {
                    actors.push(spawn(wiring.clone()).await);
                }
                actors
            });
            timed(rt, stop, |_| {
                fan_out_rounds(&actors, |a| a.cast(RMsg::Fan).expect("alive"), done)
            })
        }
    }
}

fn mpsc(threads: usize, w: Workload) -> Duration {
    use subjects::mpsc_peer::{PMsg, burst, spawn, sync};

    let rt = subjects::tokio_runtime(threads);
    let stop = drop::<tokio::runtime::Runtime>;
    match w {
        Workload::TellBatched | Workload::PingPongSame => unreachable!("Hermes only"),
        Workload::TellOutside => {
            let a = rt.block_on(async { spawn(Wiring::default()) });
            timed(rt, stop, |rt| {
                for i in 0..TELL {
                    a.send(PMsg::Tell(i)).expect("alive");
                }
                rt.block_on(sync(&a));
            })
        }
        Workload::TellLocal => {
            let b = rt.block_on(async { spawn(Wiring::default()) });
            timed(rt, stop, |rt| {
                let (done, asked) = Reply::new();
                rt.spawn(burst(b.clone(), TELL, done));
                wait(asked);
            })
        }
        Workload::PingPong => {
            let (a, b) = rt.block_on(async {
                let (a, b) = (spawn(Wiring::default()), spawn(Wiring::default()));
                a.send(PMsg::SetPeer(b.clone())).expect("alive");
                b.send(PMsg::SetPeer(a.clone())).expect("alive");
                sync(&a).await;
                sync(&b).await;
                (a, b)
            });
            timed(rt, stop, |_| {
                let (done, asked) = Reply::new();
                a.send(PMsg::Ping(2 * ROUND_TRIPS, done)).expect("alive");
                wait(asked);
                drop(b);
            })
        }
        Workload::Ask => {
            let a = rt.block_on(async { spawn(Wiring::default()) });
            timed(rt, stop, |rt| {
                rt.block_on(async {
                    for _ in 0..ASKS {
                        sync(&a).await;
                    }
                })
            })
        }
        Workload::Churn => {
            let (wiring, done) = Wiring::churn(CHURN);
            timed(rt, stop, |rt| {
                rt.spawn(async move {
                    for _ in 0..CHURN {
                        spawn(wiring.clone()).send(PMsg::Once).expect("alive");
                    }
                });
                wait(done);
            })
        }
        Workload::FanOut => {
            let (wiring, done) = Wiring::fan_out(FAN_RECEIVERS, FAN_MESSAGES);
            let tasks: Vec<_> =
                rt.block_on(async { (0..FAN_RECEIVERS).map(|_| spawn(wiring.clone())).collect() });
            timed(rt, stop, |_| {
                fan_out_rounds(&tasks, |t| t.send(PMsg::Fan).expect("alive"), done)
            })
        }
    }
}

/// Every timed iteration, by workload and subject, for the summary.
type Samples = BTreeMap<(Workload, Subject), Vec<Duration>>;

/// Timed runs per workload and subject (after one untimed warm-up run); `RUNS=n` overrides.
const RUNS: usize = 5;

/// Runs every workload on every subject whose `workload/subject` name contains one of the
/// `filters` (all if none), printing each result as it comes.
fn bench(filters: &[String], runs: usize) -> Samples {
    let mut samples = Samples::new();
    for w in Workload::ALL {
        for s in Subject::all() {
            let name = format!("{}/{}", w.name(), s.name());
            if !s.runs(w)
                || !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str()))
            {
                continue;
            }
            s.run(w);
            let v: Vec<Duration> = (0..runs).map(|_| s.run(w)).collect();
            let per_sec = |d: &Duration| w.elements() as f64 / d.as_secs_f64() / 1e6;
            let rates: Vec<String> = v.iter().map(|d| format!("{:.2}", per_sec(d))).collect();
            println!(
                "{name:<24} median {:>8.2} M/s   runs [{}]",
                per_sec(&median(v.clone())),
                rates.join(" ")
            );
            samples.insert((w, s), v);
        }
    }
    samples
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Prints the Markdown table: per subject and workload, the median rate (churn: ns per ID) and
/// the ratio against the best peer (actix, kameo, ractor) in this run.
fn summary(samples: Samples) {
    let mut per_op: BTreeMap<(Workload, Subject), f64> = BTreeMap::new();
    for ((w, s), v) in samples {
        per_op.insert((w, s), median(v).as_secs_f64() / w.elements() as f64);
    }
    if per_op.is_empty() {
        return;
    }
    let best_peer = |w: Workload| {
        let w = match w {
            Workload::TellBatched => Workload::TellOutside,
            Workload::PingPongSame => Workload::PingPong,
            w => w,
        };
        per_op
            .iter()
            .filter(|((pw, s), _)| *pw == w && s.is_peer())
            .map(|(_, &t)| t)
            .reduce(f64::min)
    };
    let workloads: Vec<_> = Workload::ALL
        .into_iter()
        .filter(|w| per_op.keys().any(|(pw, _)| pw == w))
        .collect();
    let cell = |w: Workload, t: f64| match w {
        Workload::Churn => format!("{:.0} ns", t * 1e9),
        _ => format!("{:.2}M/s", 1e-6 / t),
    };
    println!(
        "\n| system/threads | {} |",
        workloads
            .iter()
            .map(|w| w.name())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---|".repeat(workloads.len()));
    for s in Subject::all() {
        let row: Vec<String> = workloads
            .iter()
            .map(|&w| match (per_op.get(&(w, s)), best_peer(w)) {
                (Some(&t), Some(best)) if !s.is_peer() => {
                    format!("{} ({:.1}x)", cell(w, t), best / t)
                }
                (Some(&t), _) => cell(w, t),
                (None, _) => "-".into(),
            })
            .collect();
        if row.iter().any(|c| c != "-") {
            println!("| {} | {} |", s.name(), row.join(" | "));
        }
    }
    let best: Vec<String> = workloads
        .iter()
        .map(|&w| best_peer(w).map_or("-".into(), |t| cell(w, t)))
        .collect();
    println!("| best peer | {} |", best.join(" | "));
    scaling(&per_op, &workloads);
}

/// Prints, per Hermes executor and workload, the 2-shard rate over the 1-shard rate (both
/// medians of this run): what the second shard (and core) buys.
fn scaling(per_op: &BTreeMap<(Workload, Subject), f64>, workloads: &[Workload]) {
    let rows: Vec<String> = [Exec::Pool, Exec::Tokio, Exec::Smol]
        .into_iter()
        .filter_map(|exec| {
            let cells: Vec<String> = workloads
                .iter()
                .map(|&w| {
                    let one = per_op.get(&(w, Subject::Hermes(exec, 1)));
                    let two = per_op.get(&(w, Subject::Hermes(exec, 2)));
                    match (one, two) {
                        (Some(one), Some(two)) => format!("{:.2}x", one / two),
                        _ => "-".into(),
                    }
                })
                .collect();
            cells
                .iter()
                .any(|c| c != "-")
                .then(|| format!("| {} | {} |", exec.name(), cells.join(" | ")))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    println!(
        "\n| 2 shards / 1 shard | {} |",
        workloads
            .iter()
            .map(|w| w.name())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---|".repeat(workloads.len()));
    for row in rows {
        println!("{row}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    // `cargo test --benches` passes no `--bench`: one run of one small case proves it works.
    let testing = !args.iter().any(|a| a == "--bench");
    let filters: Vec<String> = args.into_iter().filter(|a| !a.starts_with("--")).collect();
    let runs = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(RUNS);
    if testing {
        let samples = bench(&["ask/pool/1".to_owned()], 1);
        summary(samples);
        return;
    }
    let started = Instant::now();
    let samples = bench(&filters, runs);
    summary(samples);
    println!(
        "\n{runs} runs per case (median shown), {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
}
