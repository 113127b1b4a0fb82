//! Idle timeouts and timers in simulated time, where "when" can be checked exactly: a
//! per-instance idle timeout, a heartbeat that keeps its receiver live until it is cancelled,
//! a timer set by a `deactivated` hook that wakes a fresh instance, a timer cancelled by a
//! later instance, and timers scheduled while closing. Each under many seeds and 1 to 3
//! shards; the executors pass the same claims in `executors/conformance` (`user.rs`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hermes_core::{Activation, Config, Context, Deactivation, DeadLetterReason, Receiver, TimerId};
use hermes_sim::Sim;

const SEEDS: u64 = 200;

#[derive(Debug)]
enum Msg {
    /// `set_idle_timeout` to this.
    Idle(Duration),
    /// Tick every this long (a heartbeat), keeping the timer's ID.
    Beat(Duration),
    Tick,
    /// Cancel the kept timer.
    Cancel,
    Stop,
    /// Schedule `Wake` in the `deactivated` hook, this long after it.
    WakeAfterStop(Duration),
    Wake,
}

/// What happened to which instance, at what simulated time since the start.
type Journal = Arc<Mutex<Vec<(usize, Duration, String)>>>;

struct Journaled {
    instance: usize,
    start: Instant,
    journal: Journal,
    timer: Arc<Mutex<Option<TimerId>>>,
    beat: Option<Duration>,
    wake_after_stop: Option<Duration>,
}

impl Journaled {
    fn note(&self, ctx: &Context<'_, u32, Msg>, what: impl Into<String>) {
        let at = ctx.now() - self.start;
        self.journal
            .lock()
            .unwrap()
            .push((self.instance, at, what.into()));
    }
}

impl Receiver<u32, Msg> for Journaled {
    fn receive(&mut self, ctx: &mut Context<'_, u32, Msg>, msg: Msg) {
        match msg {
            Msg::Idle(after) => ctx.set_idle_timeout(after),
            Msg::Beat(every) => {
                self.beat = Some(every);
                *self.timer.lock().unwrap() = Some(ctx.schedule(every, Msg::Tick));
            }
            Msg::Tick => {
                self.note(ctx, "tick");
                if let Some(every) = self.beat {
                    *self.timer.lock().unwrap() = Some(ctx.schedule(every, Msg::Tick));
                }
            }
            Msg::Cancel => {
                if let Some(timer) = self.timer.lock().unwrap().take() {
                    ctx.cancel(timer);
                }
                self.beat = None;
                self.note(ctx, "cancel");
            }
            Msg::Stop => ctx.stop(),
            Msg::WakeAfterStop(after) => {
                self.wake_after_stop = Some(after);
                ctx.stop();
            }
            Msg::Wake => self.note(ctx, "wake"),
        }
    }

    fn activated(&mut self, ctx: &mut Context<'_, u32, Msg>) {
        self.note(ctx, "activated");
    }

    fn deactivated(&mut self, ctx: &mut Context<'_, u32, Msg>, why: Deactivation) {
        self.note(ctx, format!("deactivated {why:?}"));
        if let Some(after) = self.wake_after_stop {
            ctx.schedule(after, Msg::Wake);
        }
    }
}

/// A simulation of [`Journaled`] receivers on `seed`, its journal, and its start.
fn sim(seed: u64, config: Config) -> (Sim<u32, Msg>, Journal, Instant) {
    let journal = Journal::default();
    let j = Arc::clone(&journal);
    let timer = Arc::default();
    let instances = std::sync::atomic::AtomicUsize::new(0);
    let start = Arc::new(Mutex::new(None::<Instant>));
    let s = Arc::clone(&start);
    let sim = Sim::new(seed, config, move |_: &u32| {
        let instance = instances.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        Activation::ready(Journaled {
            instance,
            start: s.lock().unwrap().expect("the start is set before any send"),
            journal: Arc::clone(&j),
            timer: Arc::clone(&timer),
            beat: None,
            wake_after_stop: None,
        })
    })
    .with_shards(1 + (seed % 3) as u32);
    let now = sim.now();
    *start.lock().unwrap() = Some(now);
    (sim, journal, now)
}

fn of(journal: &Journal, instance: usize) -> Vec<(Duration, String)> {
    journal
        .lock()
        .unwrap()
        .iter()
        .filter(|(i, _, _)| *i == instance)
        .map(|(_, at, what)| (*at, what.clone()))
        .collect()
}

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

/// An instance's own idle timeout, shorter than the router's, deactivates it exactly that long
/// after it went idle; the next instance of the ID has the router's again.
#[test]
fn a_per_instance_idle_timeout_is_exact_and_ends_with_the_instance() {
    for seed in 0..SEEDS {
        let (mut sim, journal, _) = sim(seed, Config::default().idle_timeout(s(3600)));
        sim.send(1, Msg::Idle(s(20))).unwrap();
        sim.run_for(s(5));
        sim.send(1, Msg::Tick).unwrap(); // idle again from 5 s
        sim.run_for(s(100));
        assert_eq!(
            of(&journal, 1),
            [
                (s(0), "activated".into()),
                (s(5), "tick".into()),
                (s(25), "deactivated IdleTimeout".into())
            ],
            "seed {seed}"
        );
        sim.send(1, Msg::Tick).unwrap(); // at 105 s: a fresh instance, the router's timeout
        sim.run_for(s(3600 + 10));
        let second = of(&journal, 2);
        assert_eq!(
            second[2],
            (s(105 + 3600), "deactivated IdleTimeout".into()),
            "seed {seed}"
        );
    }
}

/// A heartbeat keeps its receiver live however long it runs (it is never idle for its idle
/// timeout); once the heartbeat is cancelled, the receiver is deactivated exactly its idle
/// timeout after its last message, and the cancelled tick never comes.
#[test]
fn a_heartbeat_keeps_its_receiver_live_until_cancelled() {
    for seed in 0..SEEDS {
        let (mut sim, journal, _) = sim(seed, Config::default().idle_timeout(s(30)));
        sim.send(7, Msg::Beat(s(10))).unwrap();
        sim.run_for(s(3600) + Duration::from_millis(500));
        sim.send(7, Msg::Cancel).unwrap();
        sim.run_for(s(120));
        let notes = of(&journal, 1);
        let ticks = notes.iter().filter(|(_, w)| w == "tick").count();
        assert_eq!(ticks, 360, "seed {seed}");
        let last = &notes[notes.len() - 2..];
        let cancelled = s(3600) + Duration::from_millis(500);
        assert_eq!(
            last,
            [
                (cancelled, "cancel".into()),
                (cancelled + s(30), "deactivated IdleTimeout".into())
            ],
            "seed {seed}"
        );
        assert_eq!(sim.stats().activations, 1, "seed {seed}");
    }
}

/// A timer scheduled by the `deactivated` hook of a stopped receiver fires at its deadline and
/// activates a fresh instance (a receiver can ask to be woken later, and go away meanwhile).
#[test]
fn a_timer_set_by_the_deactivated_hook_wakes_a_fresh_instance() {
    for seed in 0..SEEDS {
        let (mut sim, journal, _) = sim(seed, Config::default());
        sim.send(3, Msg::WakeAfterStop(s(60))).unwrap();
        sim.run_for(s(61));
        assert_eq!(
            of(&journal, 1),
            [
                (s(0), "activated".into()),
                (s(0), "deactivated Stopped".into())
            ],
            "seed {seed}"
        );
        assert_eq!(
            of(&journal, 2),
            [(s(60), "activated".into()), (s(60), "wake".into())],
            "seed {seed}"
        );
    }
}

/// A timer's ID kept by one instance (as durable state keeps it) cancels the timer from a
/// later instance: it never fires.
#[test]
fn a_later_instance_cancels_an_earlier_instances_timer() {
    for seed in 0..SEEDS {
        let (mut sim, journal, _) = sim(seed, Config::default());
        sim.send(4, Msg::Beat(s(60))).unwrap();
        sim.send(4, Msg::Stop).unwrap();
        sim.run_for(s(10));
        sim.send(4, Msg::Cancel).unwrap();
        sim.run_for(s(600));
        assert_eq!(
            of(&journal, 2),
            [
                (s(10), "activated".into()),
                (s(10), "cancel".into()),
                (s(310), "deactivated IdleTimeout".into())
            ],
            "seed {seed}: the first instance's tick never comes"
        );
        assert_eq!(sim.stats().timers_pending, 0, "seed {seed}");
    }
}

/// Timers pending at close, and timers scheduled while closing (here by the `deactivated`
/// hooks), are `Closed` dead letters carrying their message; nothing fires after close.
#[test]
fn timers_at_and_during_close_are_closed_dead_letters() {
    for seed in 0..SEEDS {
        let (mut sim, journal, _) = sim(seed, Config::default());
        sim.send(1, Msg::Beat(s(60))).unwrap();
        sim.send(2, Msg::WakeAfterStop(s(60))).unwrap();
        sim.run_for(s(1));
        // ID 2 is deactivated, its wake pending; ID 1 live, its tick pending.
        sim.send(5, Msg::Beat(s(1))).unwrap();
        sim.send(5, Msg::Stop).unwrap(); // its tick, pending too, is held for a fresh instance
        sim.run_until_quiet();
        sim.close();
        let mut letters: Vec<String> = sim
            .take_dead_letters()
            .into_iter()
            .map(|d| {
                assert_eq!(d.reason, DeadLetterReason::Closed, "seed {seed}");
                format!("{:?}", d.message.expect("a timer's message"))
            })
            .collect();
        letters.sort();
        assert_eq!(letters, ["Tick", "Tick", "Wake"], "seed {seed}");
        assert!(
            journal
                .lock()
                .unwrap()
                .iter()
                .all(|(_, _, w)| w != "tick" && w != "wake"),
            "seed {seed}"
        );
    }
}

/// However many dead letters one step makes, the simulator keeps them all: ten thousand timers
/// pending at close are ten thousand `Closed` dead letters (as on the executors).
#[test]
fn a_burst_of_dead_letters_is_kept_whole() {
    for seed in 0..5 {
        let (mut sim, _, _) = sim(seed, Config::default());
        for n in 0..10_000u32 {
            sim.schedule(n % 7, s(3600), Msg::Tick).unwrap();
        }
        sim.run_until_quiet();
        sim.close();
        let letters = sim.take_dead_letters();
        assert_eq!(letters.len(), 10_000, "seed {seed}");
        assert!(letters.iter().all(|d| d.reason == DeadLetterReason::Closed));
        assert_eq!(sim.stats().dead_letters_dropped, 0, "seed {seed}");
    }
}

/// A spawned future that panics ends without an outcome, as on the executors (the same code
/// catches it): the simulation goes on, other receivers' work comes back, and its receiver,
/// told nothing, stops waiting for it and idles out.
#[test]
fn a_panicking_spawned_future_ends_without_an_outcome() {
    #[derive(Debug)]
    enum Work {
        Bad,
        Good,
        Done(u64),
    }
    for seed in 0..20 {
        let done = Arc::new(Mutex::new(Vec::new()));
        let d = Arc::clone(&done);
        let config = Config::default().idle_timeout(s(1));
        let mut sim = Sim::new(seed, config, move |_: &u32| {
            let d = Arc::clone(&d);
            Activation::ready(move |ctx: &mut Context<'_, u32, Work>, msg| match msg {
                Work::Bad => ctx.spawn(
                    async { panic!("a future's bug (a deliberate panic in a test)") },
                    |()| Work::Done(0),
                ),
                Work::Good => ctx.spawn(async { 7 }, Work::Done),
                Work::Done(n) => d.lock().unwrap().push((*ctx.id(), n)),
            })
        })
        .with_shards(2);
        sim.send(1, Work::Bad).unwrap();
        for id in 2..5 {
            sim.send(id, Work::Good).unwrap();
        }
        sim.run_for(s(10));
        let mut done = done.lock().unwrap().clone();
        done.sort_unstable();
        assert_eq!(done, [(2, 7), (3, 7), (4, 7)], "seed {seed}");
        let stats = sim.stats();
        assert_eq!(
            (stats.live, stats.panics),
            (0, 1),
            "seed {seed}: ID 1 idled out"
        );
        sim.close();
        assert!(sim.is_closed());
    }
}
