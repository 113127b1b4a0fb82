//! What a new user, reading only the README and the rustdoc, would try first and could get
//! subtly wrong: per-instance idle timeouts shorter than the default, a zero idle timeout, the
//! hooks around `become_` and a `stop` asked for in `activated`, a timer cancelled by a later
//! instance, timers scheduled while closing, and asks whose `Reply` is dropped with its
//! receiver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hermes_core::{
    Activation, Config, Context, Deactivation, DeadLetter, DeadLetterReason, Receiver, TimerId,
};
use hermes_executor::{AskError, Options, Reply};

use crate::{HANG_GUARD, Harness, eventually};

/// Every hook and message, as `(instance, what)`; instances numbered from 1 per test.
type Journal = Arc<Mutex<Vec<(usize, String)>>>;

fn entries(journal: &Journal) -> Vec<(usize, String)> {
    journal.lock().unwrap().clone()
}

enum Op {
    Hit,
    /// `set_idle_timeout` to this many milliseconds.
    IdleMs(u64),
    /// `become_` a receiver that journals as `after-become`.
    Become,
    Stop,
    /// Schedule `Ring` to this receiver after this many milliseconds; keep the timer's ID.
    Arm(u64),
    /// Cancel the kept timer (kept by any earlier instance).
    Disarm,
    Ring,
    /// Keep the reply and never answer it.
    Hold(Reply<u64>),
    /// Panic holding the reply.
    Boom(Reply<u64>),
}

/// A receiver that journals its hooks and messages.
struct Journaled {
    instance: usize,
    journal: Journal,
    timer: Arc<Mutex<Option<TimerId>>>,
    stop_when_activated: bool,
    kept: Vec<Reply<u64>>,
}

impl Journaled {
    fn note(&self, what: impl Into<String>) {
        self.journal
            .lock()
            .unwrap()
            .push((self.instance, what.into()));
    }
}

impl Receiver<u64, Op> for Journaled {
    fn receive(&mut self, ctx: &mut Context<'_, u64, Op>, msg: Op) {
        match msg {
            Op::Hit => self.note("hit"),
            Op::IdleMs(ms) => ctx.set_idle_timeout(Duration::from_millis(ms)),
            Op::Become => {
                let (instance, journal) = (self.instance, Arc::clone(&self.journal));
                ctx.become_(Became { instance, journal });
            }
            Op::Stop => ctx.stop(),
            Op::Arm(ms) => {
                *self.timer.lock().unwrap() =
                    Some(ctx.schedule(Duration::from_millis(ms), Op::Ring));
            }
            Op::Disarm => {
                if let Some(timer) = self.timer.lock().unwrap().take() {
                    ctx.cancel(timer);
                }
                self.note("disarm");
            }
            Op::Ring => self.note("ring"),
            Op::Hold(reply) => self.kept.push(reply),
            Op::Boom(_reply) => panic!("boom (a deliberate panic in a conformance test)"),
        }
    }

    fn activated(&mut self, ctx: &mut Context<'_, u64, Op>) {
        self.note("activated");
        if self.stop_when_activated {
            ctx.stop();
        }
    }

    fn deactivated(&mut self, _: &mut Context<'_, u64, Op>, why: Deactivation) {
        self.note(format!("deactivated {why:?}"));
    }
}

/// What a [`Journaled`] becomes.
struct Became {
    instance: usize,
    journal: Journal,
}

impl Receiver<u64, Op> for Became {
    fn receive(&mut self, ctx: &mut Context<'_, u64, Op>, msg: Op) {
        self.journal
            .lock()
            .unwrap()
            .push((self.instance, "after-become".into()));
        if let Op::Stop = msg {
            ctx.stop();
        }
    }

    fn activated(&mut self, _: &mut Context<'_, u64, Op>) {
        self.journal
            .lock()
            .unwrap()
            .push((self.instance, "became: activated".into()));
    }

    fn deactivated(&mut self, _: &mut Context<'_, u64, Op>, why: Deactivation) {
        self.journal
            .lock()
            .unwrap()
            .push((self.instance, format!("became: deactivated {why:?}")));
    }
}

/// A factory of [`Journaled`] receivers sharing one journal and one kept timer; IDs in
/// `stopping` stop in their `activated` hook.
fn journaled(
    journal: &Journal,
    stopping: &'static [u64],
) -> impl Fn(&u64) -> Activation<u64, Op> + Send + Sync + 'static {
    let journal = Arc::clone(journal);
    let timer = Arc::default();
    let instances = std::sync::atomic::AtomicUsize::new(0);
    move |id: &u64| {
        let instance = instances.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        Activation::ready(Journaled {
            instance,
            journal: Arc::clone(&journal),
            timer: Arc::clone(&timer),
            stop_when_activated: stopping.contains(id),
            kept: Vec::new(),
        })
    }
}

fn notes(journal: &Journal, instance: usize) -> Vec<String> {
    entries(journal)
        .into_iter()
        .filter(|(i, _)| *i == instance)
        .map(|(_, what)| what)
        .collect()
}

/// `Context::set_idle_timeout` shorter than the router's: that instance idles out after it
/// (while the router's default is never), and only that instance: the next one for the same
/// ID, and other IDs, keep the default.
pub fn a_shorter_idle_timeout_applies_to_its_instance_only<H: Harness>(h: &H) {
    let journal = Journal::default();
    let options = Options::new(Config::default().idle_timeout(Duration::MAX)).shards(2);
    let hermes = h.start(options, journaled(&journal, &[]));
    hermes.send(1, Op::Hit).unwrap();
    eventually("instance 1", || notes(&journal, 1).len() == 2);
    hermes.send(2, Op::IdleMs(20)).unwrap();
    hermes.send(2, Op::Hit).unwrap();
    eventually("the short idle timeout", || {
        notes(&journal, 2).last().map(String::as_str) == Some("deactivated IdleTimeout")
    });
    assert_eq!(
        notes(&journal, 2),
        ["activated", "hit", "deactivated IdleTimeout"]
    );
    // A fresh instance for ID 2 has the router's timeout again: never.
    hermes.send(2, Op::Hit).unwrap();
    eventually("instance 3", || notes(&journal, 3).len() == 2);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        notes(&journal, 1),
        ["activated", "hit"],
        "the default is never"
    );
    assert_eq!(
        notes(&journal, 3),
        ["activated", "hit"],
        "the override died with instance 2"
    );
    let stats = hermes.shutdown().unwrap();
    assert_eq!((stats.activations, stats.deactivations), (3, 3));
}

/// `Config::idle_timeout(Duration::ZERO)` deactivates a receiver as soon as its mailbox is
/// empty, for idleness.
pub fn a_zero_idle_timeout_deactivates_when_the_mailbox_is_empty<H: Harness>(h: &H) {
    let journal = Journal::default();
    let options = Options::new(Config::default().idle_timeout(Duration::ZERO)).shards(1);
    let hermes = h.start(options, journaled(&journal, &[]));
    hermes.send(1, Op::Hit).unwrap();
    eventually("the deactivation", || hermes.stats().deactivations == 1);
    assert_eq!(
        notes(&journal, 1),
        ["activated", "hit", "deactivated IdleTimeout"]
    );
    hermes.shutdown().unwrap();
}

/// `become_` swaps the handler only: the `activated` hook is not run again, and the one
/// `deactivated` hook that runs, once, is the new handler's (so a receiver that saves state on
/// deactivation must hand that duty on when it becomes another).
pub fn become_hands_the_deactivated_hook_to_the_new_handler<H: Harness>(h: &H) {
    let journal = Journal::default();
    let hermes = h.start(
        Options::new(Config::default()).shards(1),
        journaled(&journal, &[]),
    );
    hermes.send(1, Op::Hit).unwrap();
    hermes.send(1, Op::Become).unwrap();
    hermes.send(1, Op::Hit).unwrap();
    hermes.send(1, Op::Stop).unwrap();
    eventually("the stop", || hermes.stats().deactivations == 1);
    assert_eq!(
        notes(&journal, 1),
        [
            "activated",
            "hit",
            "after-become",
            "after-become",
            "became: deactivated Stopped"
        ]
    );
    hermes.shutdown().unwrap();
}

/// A `stop` asked for in the `activated` hook: the instance still handles the message that
/// activated it (and the messages queued with it, up to the end of that run), then is
/// deactivated `Stopped`, once; later messages activate a fresh instance.
pub fn stop_in_the_activated_hook<H: Harness>(h: &H) {
    let journal = Journal::default();
    let hermes = h.start(
        Options::new(Config::default()).shards(1),
        journaled(&journal, &[5]),
    );
    hermes.send(5, Op::Hit).unwrap();
    eventually("the stop", || hermes.stats().deactivations == 1);
    assert_eq!(
        notes(&journal, 1),
        ["activated", "hit", "deactivated Stopped"]
    );
    hermes.send(5, Op::Hit).unwrap();
    eventually("the second stop", || hermes.stats().deactivations == 2);
    assert_eq!(
        notes(&journal, 2),
        ["activated", "hit", "deactivated Stopped"]
    );
    hermes.shutdown().unwrap();
}

/// A timer kept by one instance (as a durable receiver keeps it in its state) and cancelled by
/// a later instance of the same ID never fires.
pub fn a_later_instance_cancels_an_earlier_instances_timer<H: Harness>(h: &H) {
    let journal = Journal::default();
    let hermes = h.start(
        Options::new(Config::default()).shards(2),
        journaled(&journal, &[]),
    );
    hermes.send(1, Op::Arm(300)).unwrap();
    hermes.send(1, Op::Stop).unwrap();
    eventually("the stop", || hermes.stats().deactivations == 1);
    hermes.send(1, Op::Disarm).unwrap();
    eventually("the disarm", || {
        notes(&journal, 2).contains(&"disarm".into())
    });
    // A control: a timer armed now, and not cancelled, fires (so the wait below is long enough).
    hermes.send(1, Op::Arm(400)).unwrap();
    eventually("the control timer", || {
        notes(&journal, 2).contains(&"ring".into())
    });
    assert_eq!(notes(&journal, 2), ["activated", "disarm", "ring"]);
    assert!(notes(&journal, 1).iter().all(|n| n != "ring"));
    hermes.shutdown().unwrap();
}

/// While closing, a timer scheduled (here by a `deactivated` hook) is not kept and not lost:
/// it is at once a `Closed` dead letter carrying its message, as a timer pending at shutdown is.
pub fn timers_scheduled_while_closing_are_closed_dead_letters<H: Harness>(h: &H) {
    struct Rescheduler;
    impl Receiver<u64, u64> for Rescheduler {
        fn receive(&mut self, _: &mut Context<'_, u64, u64>, _: u64) {}
        fn deactivated(&mut self, ctx: &mut Context<'_, u64, u64>, why: Deactivation) {
            if why == Deactivation::Closing {
                let id = *ctx.id();
                ctx.schedule(Duration::from_millis(1), 100 + id);
                ctx.schedule_to(id + 50, Duration::ZERO, 200 + id);
            }
        }
    }
    let letters: Arc<Mutex<Vec<(u64, DeadLetterReason)>>> = Arc::default();
    let l = Arc::clone(&letters);
    let options =
        Options::new(Config::default())
            .shards(2)
            .on_dead_letter(move |d: DeadLetter<u64, u64>| {
                if let Some(m) = d.message {
                    l.lock().unwrap().push((m, d.reason));
                }
            });
    let hermes = h.start(options, |_: &u64| Activation::ready(Rescheduler));
    for id in 0..3 {
        hermes.send(id, 0).unwrap();
    }
    let stats = hermes.shutdown().unwrap();
    let mut letters = letters.lock().unwrap().clone();
    letters.sort_by_key(|l| l.0);
    let expected: Vec<_> = [100, 101, 102, 200, 201, 202]
        .into_iter()
        .map(|m| (m, DeadLetterReason::Closed))
        .collect();
    assert_eq!(letters, expected);
    assert_eq!((stats.activations, stats.timers_pending), (3, 0));
}

/// An ask from outside ends, without waiting for its timeout, with `Dropped` when the receiver
/// drops the `Reply`: deactivated for idleness while holding it, panicking on the request, or
/// deactivated by a shutdown while holding it.
pub fn asks_end_dropped_when_the_reply_dies_with_its_receiver<H: Harness>(h: &H) {
    let journal = Journal::default();
    let options = Options::new(Config::default().idle_timeout(Duration::from_millis(20))).shards(2);
    let hermes = h.start(options, journaled(&journal, &[]));
    assert_eq!(
        hermes.ask_blocking(1, Op::Hold, HANG_GUARD),
        Err(AskError::Dropped)
    );
    assert_eq!(
        notes(&journal, 1).last().map(String::as_str),
        Some("deactivated IdleTimeout")
    );
    assert_eq!(
        hermes.ask_blocking(2, Op::Boom, HANG_GUARD),
        Err(AskError::Dropped)
    );
    // Held by a live receiver at shutdown: dropped with it when it is deactivated (`Closing`).
    hermes.send(3, Op::IdleMs(u64::MAX)).unwrap();
    let held = hermes.ask(3, Op::Hold);
    let stats = hermes.shutdown().unwrap();
    assert_eq!(held.wait_timeout(HANG_GUARD), Err(AskError::Dropped));
    assert_eq!(notes(&journal, 3), ["activated", "deactivated Closing"]);
    assert_eq!(stats.dead_letters, 1, "the request the handler panicked on");
}

/// A dead-letter sink that panics is caught: Hermes keeps routing, later dead letters still
/// reach the sink, and shutdown finishes.
pub fn a_panicking_dead_letter_sink_is_contained<H: Harness>(h: &H) {
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s = Arc::clone(&seen);
    let options =
        Options::new(Config::default())
            .shards(2)
            .on_dead_letter(move |_: DeadLetter<u64, Op>| {
                s.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                panic!("a dead-letter sink bug (a deliberate panic in a conformance test)");
            });
    let journal = Journal::default();
    let factory = journaled(&journal, &[]);
    let hermes = h.start(options, move |id: &u64| match id {
        0..=9 => Activation::Refused,
        _ => factory(id),
    });
    for id in 0..10 {
        hermes.send(id, Op::Hit).unwrap();
    }
    eventually("ten dead letters", || {
        seen.load(std::sync::atomic::Ordering::SeqCst) == 10
    });
    hermes.send(10, Op::Hit).unwrap();
    assert_eq!(
        hermes.ask_blocking(11, Op::Hold, Duration::from_millis(1)),
        Err(AskError::Timeout)
    );
    let stats = hermes.shutdown().unwrap();
    assert_eq!((stats.dead_letters, stats.activations), (10, 2));
    assert_eq!(
        notes(&journal, 1),
        ["activated", "hit", "deactivated Closing"]
    );
}

/// `become_` in the `activated` hook: the first message already reaches the new handler.
pub fn become_in_the_activated_hook<H: Harness>(h: &H) {
    struct Starter(Journal);
    impl Receiver<u64, Op> for Starter {
        fn receive(&mut self, _: &mut Context<'_, u64, Op>, _: Op) {
            self.0.lock().unwrap().push((1, "starter".into()));
        }
        fn activated(&mut self, ctx: &mut Context<'_, u64, Op>) {
            let journal = Arc::clone(&self.0);
            ctx.become_(Became {
                instance: 1,
                journal,
            });
        }
    }
    let journal = Journal::default();
    let j = Arc::clone(&journal);
    let hermes = h.start(Options::new(Config::default()).shards(1), move |_: &u64| {
        Activation::ready(Starter(Arc::clone(&j)))
    });
    hermes.send(1, Op::Hit).unwrap();
    hermes.send(1, Op::Stop).unwrap();
    eventually("the stop", || hermes.stats().deactivations == 1);
    assert_eq!(
        notes(&journal, 1),
        [
            "after-become",
            "after-become",
            "became: deactivated Stopped"
        ]
    );
    hermes.shutdown().unwrap();
}

/// Every dead letter reaches the sink, however many come at once: ten thousand timers pending
/// at shutdown are ten thousand `Closed` dead letters with their messages, past the router's
/// `dead_letter_capacity` (which bounds letters a driver does not poll; the shards poll them).
pub fn a_burst_of_dead_letters_all_reach_the_sink<H: Harness>(h: &H) {
    const TIMERS: u64 = 10_000;
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let s = Arc::clone(&seen);
    let options =
        Options::new(Config::default())
            .shards(2)
            .on_dead_letter(move |d: DeadLetter<u64, u64>| {
                if d.reason == DeadLetterReason::Closed && d.message.is_some() {
                    s.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
    let hermes = h.start(options, |_: &u64| {
        Activation::ready(|_: &mut Context<'_, u64, u64>, _: u64| {})
    });
    for n in 0..TIMERS {
        hermes
            .schedule(n % 7, Duration::from_secs(3600), n)
            .unwrap();
    }
    eventually("the timers", || {
        hermes.stats().timers_pending as u64 == TIMERS
    });
    let stats = hermes.shutdown().unwrap();
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), TIMERS);
    assert_eq!(
        (stats.dead_letters, stats.dead_letters_dropped),
        (TIMERS, 0)
    );
}

enum Work {
    /// Start a future that panics.
    Bad,
    /// Ask this receiver, with a `map` that panics on the answer.
    BadAsk(u64),
    /// Start a future that gives 7.
    Good,
    Done(u64),
    Asked(Reply<Option<u64>>),
}

/// A future a receiver started that panics (in `spawn`, or in an ask's `map`) harms nobody
/// else: the runtime that runs spawned work keeps running it, so other receivers' work still
/// comes back. The task ends without an outcome: the panic is counted, and its receiver,
/// told nothing, stops waiting for it, goes idle and is deactivated for idleness; the
/// shutdown finishes.
pub fn a_panicking_spawned_future_ends_without_an_outcome<H: Harness>(h: &H) {
    let config = Config::default().idle_timeout(Duration::from_millis(20));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&outcomes);
    let hermes = h.start(Options::new(config).shards(2), move |_: &u64| {
        let mut done = None;
        let seen = Arc::clone(&seen);
        Activation::ready(move |ctx: &mut Context<'_, u64, Work>, msg| match msg {
            Work::Bad => ctx.spawn(
                async { panic!("a future's bug (a deliberate panic in a conformance test)") },
                |()| Work::Done(0),
            ),
            Work::BadAsk(to) => ctx.ask(to, Work::Asked, HANG_GUARD, |_| -> Work {
                panic!("a deliberate panic mapping an answer (in a conformance test)")
            }),
            Work::Good => ctx.spawn(async { 7 }, Work::Done),
            Work::Done(n) => {
                done = Some(n);
                seen.lock().unwrap().push((*ctx.id(), n));
            }
            Work::Asked(reply) => drop(reply.send(done)),
        })
    });
    hermes.send(1, Work::Bad).unwrap();
    hermes.send(10, Work::BadAsk(11)).unwrap();
    for id in 2..6 {
        hermes.send(id, Work::Good).unwrap();
    }
    eventually("both panics to be counted", || hermes.stats().panics == 2);
    eventually("every receiver to idle out", || hermes.stats().live == 0);
    let mut done = outcomes.lock().unwrap().clone();
    done.sort_unstable();
    assert_eq!(
        done,
        [(2, 7), (3, 7), (4, 7), (5, 7)],
        "no outcome for 1 or 10"
    );
    let stats = hermes.shutdown().unwrap();
    assert_eq!(stats.activations, 7);
    assert_eq!(stats.deactivations, 7);
}
