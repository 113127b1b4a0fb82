//! The tests, each a function over a [`Harness`]; [`conformance_tests!`](crate::conformance_tests)
//! turns them into `#[test]`s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hermes_core::{
    Activation, Addr, Config, Context, Deactivation, DeadLetter, DeadLetterReason, Receiver,
    Recipient, SendError,
};
use hermes_executor::{AskError, Options, Reply};

pub use crate::backpressure::{
    a_fast_producer_waits_for_a_slow_receiver, ask_blocking_waits_at_most_its_timeout_in_all,
    mail_to_an_overfull_shard_is_full_dead_letters,
    try_send_is_refused_at_capacity_and_nothing_admitted_is_lost,
};
pub use crate::kinds::{
    a_handle_of_another_kind_is_a_dead_letter_not_a_panic, each_kind_has_its_own_mailbox_capacity,
    kinds_send_ask_and_schedule_between_each_other,
};
pub use crate::lifecycle::{
    a_late_answer_to_a_timed_out_ask_is_given_back, a_panicking_handler_leaves_no_effects,
    blocking_forms_refuse_inside_a_receiver, every_way_in_is_refused_after_shutdown,
    hooks_run_in_order_with_each_reason, messages_during_deactivation_activate_a_fresh_instance,
    send_inside_a_receiver_answers_full_instead_of_waiting,
    sends_while_closing_to_receivers_not_live_are_closed_dead_letters,
    timers_outlive_become_and_deactivation,
};
pub use crate::regressions::*;
pub use crate::tasks::{
    a_spawned_future_that_blocks_on_shutdown_does_not_hang,
    asks_between_receivers_answer_or_time_out, context_asks_end_once_dropped_or_timed_out,
    spawned_work_comes_back_as_a_message, work_in_flight_is_dropped_with_its_receiver,
};
pub use crate::user::*;
use crate::{HANG_GUARD, Harness, eventually};

/// Options used by most tests: two shards, so that cross-shard paths are always exercised.
fn options<M>() -> Options<u64, M> {
    Options::new(Config::default()).shards(2)
}

/// A shared list that hooks and sinks append to.
type Log<T> = Arc<Mutex<Vec<T>>>;

fn log<T>() -> Log<T> {
    Arc::new(Mutex::new(Vec::new()))
}

fn snapshot<T: Clone>(log: &Log<T>) -> Vec<T> {
    log.lock().unwrap().clone()
}

/// A counter that a receiver reports on request, for the tests that only count.
enum Count {
    Hit,
    Get(Reply<u64>),
}

fn counter(_id: &u64) -> Activation<u64, Count> {
    let mut hits = 0;
    Activation::ready(move |_: &mut Context<'_, u64, Count>, msg| match msg {
        Count::Hit => hits += 1,
        Count::Get(reply) => {
            let _ = reply.send(hits);
        }
    })
}

fn ask_count(hermes: &hermes_executor::Hermes<u64, Count>, id: u64) -> u64 {
    hermes
        .ask_blocking(id, Count::Get, HANG_GUARD)
        .expect("the counter answers")
}

// ---- ordering and exclusivity ---------------------------------------------------------------

enum Seq {
    From(usize, u64),
    Report(Reply<(Vec<u64>, bool)>),
}

/// A receiver that checks that each of `senders` senders' numbers arrive in order, 0, 1, ...
fn sequence_checker(senders: usize) -> impl Fn(&u64) -> Activation<u64, Seq> {
    move |_id: &u64| {
        let mut next = vec![0u64; senders];
        let mut in_order = true;
        Activation::ready(move |_: &mut Context<'_, u64, Seq>, msg| match msg {
            Seq::From(sender, n) => {
                in_order &= next[sender] == n;
                next[sender] = n + 1;
            }
            Seq::Report(reply) => {
                let _ = reply.send((next.clone(), in_order));
            }
        })
    }
}

/// Asks every receiver in `0..ids` whether it saw each sender's messages in order, and how
/// many; asserts in order and `per_sender` from each of `senders`.
fn assert_in_order(
    hermes: &hermes_executor::Hermes<u64, Seq>,
    ids: u64,
    senders: usize,
    per_sender: u64,
) {
    for id in 0..ids {
        let (counts, in_order) = hermes.ask_blocking(id, Seq::Report, HANG_GUARD).unwrap();
        assert!(
            in_order,
            "receiver {id} saw a sender's messages out of order"
        );
        assert_eq!(counts, vec![per_sender; senders], "receiver {id}");
    }
}

/// Runs `work(thread)` on `threads` threads at once and waits for all of them.
fn on_threads(threads: usize, work: impl Fn(usize) + Sync) {
    std::thread::scope(|s| {
        for thread in 0..threads {
            let work = &work;
            s.spawn(move || work(thread));
        }
    });
}

/// Messages from one sender to one receiver arrive in send order, with several senders at once.
pub fn per_sender_order<H: Harness>(h: &H) {
    const SENDERS: usize = 4;
    const PER_SENDER: u64 = 5_000;
    const IDS: u64 = 8;
    let hermes = h.start(options(), sequence_checker(SENDERS));
    on_threads(SENDERS, |sender| {
        for n in 0..PER_SENDER {
            for id in 0..IDS {
                hermes.send(id, Seq::From(sender, n)).unwrap();
            }
        }
    });
    assert_in_order(&hermes, IDS, SENDERS, PER_SENDER);
    hermes.shutdown().unwrap();
}

/// `send_all` delivers every pair, keeps each ID's order (also mixed with plain sends from the
/// same thread, and next to other senders), and after shutdown gives every pair back.
pub fn send_all_in_order_and_refused_after_shutdown<H: Harness>(h: &H) {
    const SENDERS: usize = 3;
    const PER_SENDER: u64 = 3_000;
    const IDS: u64 = 8;
    let hermes = h.start(options(), sequence_checker(SENDERS));
    on_threads(SENDERS, |sender| {
        // Batches of 100 rounds over every ID; the last sender sends every other batch one by
        // one.
        for start in (0..PER_SENDER).step_by(100) {
            let rounds = start..(start + 100).min(PER_SENDER);
            let pairs = rounds.flat_map(|n| (0..IDS).map(move |id| (id, n)));
            if sender == SENDERS - 1 && start % 200 == 100 {
                for (id, n) in pairs {
                    hermes.send(id, Seq::From(sender, n)).unwrap();
                }
            } else {
                let batch = pairs.map(|(id, n)| (id, Seq::From(sender, n)));
                hermes.send_all(batch).unwrap();
            }
        }
    });
    assert_in_order(&hermes, IDS, SENDERS, PER_SENDER);
    hermes.shutdown().unwrap();
    let refused = hermes.send_all((0..5).map(|id| (id, Seq::From(0, id))));
    let Err(SendError::Closed(back)) = refused else {
        panic!("send_all after shutdown must be refused as Closed");
    };
    let back: Vec<(u64, u64)> = back
        .into_iter()
        .map(|(id, msg)| match msg {
            Seq::From(_, n) => (id, n),
            Seq::Report(_) => unreachable!("only From was sent"),
        })
        .collect();
    assert_eq!(back, (0..5).map(|id| (id, id)).collect::<Vec<_>>());
}

/// A receiver never runs concurrently with itself, while many threads send to it.
pub fn one_message_at_a_time<H: Harness>(h: &H) {
    const IDS: u64 = 4;
    const PER_THREAD: u64 = 2_000;
    let overlaps = Arc::new(AtomicUsize::new(0));
    let busy: Arc<Vec<AtomicBool>> = Arc::new((0..IDS).map(|_| AtomicBool::new(false)).collect());
    let (o, b) = (Arc::clone(&overlaps), Arc::clone(&busy));
    let hermes = h.start(options(), move |&id: &u64| {
        let (overlaps, busy) = (Arc::clone(&o), Arc::clone(&b));
        let mut hits = 0u64;
        Activation::ready(move |_: &mut Context<'_, u64, Count>, msg| {
            let flag = &busy[id as usize];
            if flag.swap(true, Ordering::AcqRel) {
                overlaps.fetch_add(1, Ordering::Relaxed);
            }
            for _ in 0..50 {
                std::hint::spin_loop();
            }
            match msg {
                Count::Hit => hits += 1,
                Count::Get(reply) => {
                    let _ = reply.send(hits);
                }
            }
            flag.store(false, Ordering::Release);
        })
    });
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..PER_THREAD {
                    for id in 0..IDS {
                        hermes.send(id, Count::Hit).unwrap();
                    }
                }
            });
        }
    });
    for id in 0..IDS {
        assert_eq!(ask_count(&hermes, id), 4 * PER_THREAD);
    }
    assert_eq!(
        overlaps.load(Ordering::Relaxed),
        0,
        "a receiver ran twice at once"
    );
    hermes.shutdown().unwrap();
}

// ---- lifecycle --------------------------------------------------------------------------------

/// A receiver that records its lifecycle in shared logs.
struct Recorded {
    id: u64,
    activated: bool,
    hits: u64,
    deactivations: Log<(u64, Deactivation, u64)>,
}

enum Life {
    Hit,
    Boom,
    Get(Reply<u64>),
}

impl Receiver<u64, Life> for Recorded {
    fn receive(&mut self, _ctx: &mut Context<'_, u64, Life>, msg: Life) {
        assert!(
            self.activated,
            "a message arrived before the activated hook ran"
        );
        match msg {
            Life::Hit => self.hits += 1,
            Life::Boom => panic!("boom (a deliberate panic in a conformance test)"),
            Life::Get(reply) => {
                let _ = reply.send(self.hits);
            }
        }
    }

    fn activated(&mut self, _ctx: &mut Context<'_, u64, Life>) {
        self.activated = true;
    }

    fn deactivated(&mut self, _ctx: &mut Context<'_, u64, Life>, why: Deactivation) {
        self.deactivations
            .lock()
            .unwrap()
            .push((self.id, why, self.hits));
    }
}

/// A factory of [`Recorded`] receivers, counting activations per ID.
struct Lifecycle {
    activations: Log<u64>,
    deactivations: Log<(u64, Deactivation, u64)>,
}

impl Lifecycle {
    fn new() -> Self {
        Lifecycle {
            activations: log(),
            deactivations: log(),
        }
    }

    fn factory(&self) -> impl Fn(&u64) -> Activation<u64, Life> + Send + Sync + 'static {
        let (activations, deactivations) = (
            Arc::clone(&self.activations),
            Arc::clone(&self.deactivations),
        );
        move |&id| {
            activations.lock().unwrap().push(id);
            Activation::ready(Recorded {
                id,
                activated: false,
                hits: 0,
                deactivations: Arc::clone(&deactivations),
            })
        }
    }

    fn activations_of(&self, id: u64) -> usize {
        snapshot(&self.activations)
            .iter()
            .filter(|&&i| i == id)
            .count()
    }

    fn deactivations(&self) -> Vec<(u64, Deactivation, u64)> {
        snapshot(&self.deactivations)
    }
}

/// The factory runs for an ID on its first message only, and the hook before that message.
pub fn activation_on_first_message<H: Harness>(h: &H) {
    let life = Lifecycle::new();
    let hermes = h.start(options(), life.factory());
    assert!(snapshot(&life.activations).is_empty(), "nothing sent yet");
    for id in [1, 2, 3] {
        for _ in 0..10 {
            hermes.send(id, Life::Hit).unwrap();
        }
    }
    for id in [1, 2, 3] {
        assert_eq!(hermes.ask_blocking(id, Life::Get, HANG_GUARD), Ok(10));
        assert_eq!(life.activations_of(id), 1);
    }
    assert_eq!(life.activations_of(4), 0);
    let stats = hermes.shutdown().unwrap();
    assert_eq!(stats.activations, 3);
    assert_eq!(stats.messages_delivered, 33);
}

/// An idle receiver is deactivated after the idle timeout, and its next message activates it
/// again through the factory.
pub fn idle_deactivation_and_reactivation<H: Harness>(h: &H) {
    let life = Lifecycle::new();
    let config = Config::default().idle_timeout(Duration::from_millis(20));
    let hermes = h.start(Options::new(config).shards(2), life.factory());
    hermes.send(9, Life::Hit).unwrap();
    eventually("the idle deactivation", || {
        life.deactivations() == vec![(9, Deactivation::IdleTimeout, 1)]
    });
    assert_eq!(hermes.ask_blocking(9, Life::Get, HANG_GUARD), Ok(0));
    assert_eq!(
        life.activations_of(9),
        2,
        "re-activated through the factory"
    );
    let stats = hermes.shutdown().unwrap();
    assert_eq!(stats.activations, 2);
    assert_eq!(stats.deactivations, 2);
}

enum Door {
    Which(Reply<&'static str>),
    Switch,
}

fn first(ctx: &mut Context<'_, u64, Door>, msg: Door) {
    match msg {
        Door::Which(reply) => drop(reply.send("first")),
        Door::Switch => ctx.become_(second),
    }
}

fn second(ctx: &mut Context<'_, u64, Door>, msg: Door) {
    match msg {
        Door::Which(reply) => drop(reply.send("second")),
        Door::Switch => ctx.become_(first),
    }
}

/// `become_` swaps the handler from the next message on.
pub fn become_swaps_the_handler<H: Harness>(h: &H) {
    let hermes = h.start(options(), |_: &u64| Activation::ready(first));
    let which = |hermes: &hermes_executor::Hermes<u64, Door>| {
        hermes.ask_blocking(5, Door::Which, HANG_GUARD).unwrap()
    };
    assert_eq!(which(&hermes), "first");
    hermes.send(5, Door::Switch).unwrap();
    assert_eq!(which(&hermes), "second");
    hermes.send(5, Door::Switch).unwrap();
    assert_eq!(which(&hermes), "first");
    hermes.shutdown().unwrap();
}

// ---- timers -----------------------------------------------------------------------------------

enum Beat {
    Start(Reply<Vec<Instant>>),
    Tick,
}

/// A receiver's heartbeat fires at its period, never early, and can re-arm itself.
pub fn heartbeat_at_a_fixed_period<H: Harness>(h: &H) {
    const PERIOD: Duration = Duration::from_millis(15);
    const BEATS: usize = 5;
    let hermes = h.start(options(), |_: &u64| {
        let mut beats = Vec::new();
        let mut done = None;
        Activation::ready(move |ctx: &mut Context<'_, u64, Beat>, msg| match msg {
            Beat::Start(reply) => {
                beats.push(ctx.now());
                done = Some(reply);
                ctx.schedule(PERIOD, Beat::Tick);
            }
            Beat::Tick => {
                beats.push(ctx.now());
                if beats.len() <= BEATS {
                    ctx.schedule(PERIOD, Beat::Tick);
                } else if let Some(reply) = done.take() {
                    let _ = reply.send(std::mem::take(&mut beats));
                }
            }
        })
    });
    let beats = hermes.ask_blocking(1, Beat::Start, HANG_GUARD).unwrap();
    assert_eq!(beats.len(), BEATS + 1);
    for pair in beats.windows(2) {
        assert!(pair[1] - pair[0] >= PERIOD, "a heartbeat fired early");
    }
    hermes.shutdown().unwrap();
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timed {
    /// From outside: cancelled long before it is due.
    Cancelled,
    /// From inside: armed, then cancelled by the next message.
    Arm,
    Disarm,
    /// Must never arrive.
    Inner,
    /// Arrives: the one timer not cancelled.
    Last,
}

/// Cancelled timers never fire, whether scheduled from outside or by a receiver, and the
/// timers not cancelled do. (Cancelled timers are due in an hour, so the test does not depend
/// on how fast a cancel follows its schedule; `timers_pending` shows they are gone.)
pub fn cancelled_timers_never_fire<H: Harness>(h: &H) {
    const LATER: Duration = Duration::from_secs(3600);
    let seen: Log<Timed> = log();
    let s = Arc::clone(&seen);
    let hermes = h.start(options(), move |_: &u64| {
        let seen = Arc::clone(&s);
        let mut armed = None;
        Activation::ready(move |ctx: &mut Context<'_, u64, Timed>, msg| {
            match msg {
                Timed::Arm => armed = Some(ctx.schedule(LATER, Timed::Inner)),
                Timed::Disarm => {
                    if let Some(timer) = armed.take() {
                        ctx.cancel(timer);
                    }
                }
                _ => {}
            }
            seen.lock().unwrap().push(msg);
        })
    });
    let timer = hermes.schedule(3, LATER, Timed::Cancelled).unwrap();
    hermes.cancel(timer);
    hermes.send(3, Timed::Arm).unwrap();
    hermes.send(3, Timed::Disarm).unwrap();
    hermes
        .schedule(3, Duration::from_millis(10), Timed::Last)
        .unwrap();
    eventually("the last timer", || snapshot(&seen).contains(&Timed::Last));
    eventually("no timer pending", || hermes.stats().timers_pending == 0);
    assert_eq!(
        snapshot(&seen),
        vec![Timed::Arm, Timed::Disarm, Timed::Last]
    );
    let stats = hermes.shutdown().unwrap();
    assert_eq!(
        stats.dead_letters, 0,
        "no pending timer was left to bounce at close"
    );
}

// ---- request/reply ----------------------------------------------------------------------------

enum Ask {
    Now(Reply<u64>),
    Hold(Reply<u64>),
    Release(u64),
    Forget(Reply<u64>),
}

fn asker(_: &u64) -> Activation<u64, Ask> {
    let mut held = Vec::new();
    Activation::ready(move |_: &mut Context<'_, u64, Ask>, msg| match msg {
        Ask::Now(reply) => drop(reply.send(42)),
        Ask::Hold(reply) => held.push(reply),
        Ask::Release(n) => {
            for reply in held.drain(..) {
                let _ = reply.send(n);
            }
        }
        Ask::Forget(reply) => drop(reply),
    })
}

/// Asks are answered, awaited or blocked on, also from a later message.
pub fn ask_and_late_reply<H: Harness>(h: &H) {
    let hermes = h.start(options(), asker);
    assert_eq!(hermes.ask_blocking(1, Ask::Now, HANG_GUARD), Ok(42));
    // The async form, awaited here by blocking on it (any executor can poll it).
    assert_eq!(hermes.ask(2, Ask::Now).wait_timeout(HANG_GUARD), Ok(42));
    let held = hermes.ask(1, Ask::Hold);
    hermes.send(1, Ask::Release(7)).unwrap();
    assert_eq!(held.wait_timeout(HANG_GUARD), Ok(7));
    hermes.shutdown().unwrap();
    assert_eq!(
        hermes.ask_blocking(1, Ask::Now, HANG_GUARD),
        Err(AskError::Closed)
    );
}

/// A dropped reply fails the ask at once; an unanswered ask times out.
pub fn dropped_reply_and_ask_timeout<H: Harness>(h: &H) {
    let hermes = h.start(options(), asker);
    // The hang guard is the timeout: a dropped reply must answer long before it.
    assert_eq!(
        hermes.ask_blocking(1, Ask::Forget, HANG_GUARD),
        Err(AskError::Dropped)
    );
    assert_eq!(
        hermes.ask_blocking(1, Ask::Hold, Duration::from_millis(20)),
        Err(AskError::Timeout)
    );
    // Dropping the held replies at shutdown answers nobody: their askers are gone.
    hermes.shutdown().unwrap();
}

// ---- shutdown ---------------------------------------------------------------------------------

/// Shutdown delivers what was queued, deactivates every live receiver exactly once with its
/// hook run, refuses later messages, and returns final totals.
pub fn shutdown_drains_and_deactivates_every_receiver_once<H: Harness>(h: &H) {
    const IDS: u64 = 100;
    const PER_ID: u64 = 20;
    let life = Lifecycle::new();
    let hermes = h.start(options(), life.factory());
    for n in 0..PER_ID {
        for id in 0..IDS {
            hermes.send(id, Life::Hit).unwrap();
            if n == PER_ID - 1 && id % 10 == 0 {
                hermes
                    .schedule(id, Duration::from_secs(3600), Life::Hit)
                    .unwrap();
            }
        }
    }
    let stats = hermes.shutdown().unwrap();
    let mut deactivated = life.deactivations();
    deactivated.sort_by_key(|d| d.0);
    let expected: Vec<_> = (0..IDS)
        .map(|id| (id, Deactivation::Closing, PER_ID))
        .collect();
    assert_eq!(
        deactivated, expected,
        "each receiver once, after its messages"
    );
    assert_eq!(stats.live, 0);
    assert_eq!(stats.deactivations, IDS);
    assert_eq!(stats.messages_delivered, IDS * PER_ID);
    assert_eq!(stats.dead_letters, 10, "the pending timers");
    assert!(!hermes.is_accepting());
    assert!(matches!(
        hermes.send(1, Life::Hit),
        Err(SendError::Closed(_))
    ));
    assert!(matches!(
        hermes.schedule(1, Duration::ZERO, Life::Hit),
        Err(SendError::Closed(_))
    ));
    assert_eq!(
        hermes.shutdown().unwrap(),
        stats,
        "a second shutdown returns the same totals"
    );
}

/// Dropping the last handle shuts Hermes down: every hook runs.
pub fn dropping_the_handle_shuts_down<H: Harness>(h: &H) {
    let life = Lifecycle::new();
    let hermes = h.start(options(), life.factory());
    let clone = hermes.clone();
    for id in 0..10 {
        hermes.send(id, Life::Hit).unwrap();
    }
    drop(hermes);
    assert!(clone.is_accepting(), "a clone keeps Hermes running");
    drop(clone);
    eventually("the hooks after drop", || life.deactivations().len() == 10);
}

// ---- failures ---------------------------------------------------------------------------------

/// A panicking receiver does not take its shard down: the message is a dead letter, the
/// instance is deactivated as panicked, and the next message activates a fresh one.
pub fn panics_are_contained<H: Harness>(h: &H) {
    let life = Lifecycle::new();
    let letters: Log<(Recipient<u64>, String, bool)> = log();
    let l = Arc::clone(&letters);
    let options = options().on_dead_letter(move |d: DeadLetter<u64, Life>| {
        let panicked = matches!(d.reason, DeadLetterReason::Panicked(_));
        l.lock()
            .unwrap()
            .push((d.recipient, d.reason.to_string(), panicked));
    });
    let hermes = h.start(options, life.factory());
    hermes.send(1, Life::Hit).unwrap();
    hermes.send(1, Life::Boom).unwrap();
    hermes.send(1, Life::Hit).unwrap();
    assert_eq!(
        hermes.ask_blocking(1, Life::Get, HANG_GUARD),
        Ok(1),
        "a fresh instance got the message after the panic"
    );
    assert_eq!(life.activations_of(1), 2);
    assert_eq!(life.deactivations(), vec![(1, Deactivation::Panicked, 1)]);
    // The sink runs at the end of the shard's turn, which may be after the answer.
    eventually("the dead letter", || !snapshot(&letters).is_empty());
    let letters = snapshot(&letters);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].0, Recipient::Id(1));
    assert!(letters[0].2 && letters[0].1.contains("boom"), "{letters:?}");
    // Every shard still works.
    for id in 10..20 {
        assert_eq!(hermes.ask_blocking(id, Life::Get, HANG_GUARD), Ok(0));
    }
    let stats = hermes.shutdown().unwrap();
    assert_eq!(stats.panics, 1);
}

#[derive(Debug)]
struct Unavailable;

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("storage unavailable")
    }
}

impl std::error::Error for Unavailable {}

enum Mail {
    Note(u64),
    Whereabouts(Reply<Addr>),
    Stop,
}

/// Undeliverable messages reach the dead-letter sink with the message and the reason: refused
/// IDs, failed and panicking factories, stale handles.
pub fn dead_letters_are_observed<H: Harness>(h: &H) {
    let letters: Log<(Recipient<u64>, Option<u64>, String)> = log();
    let l = Arc::clone(&letters);
    let options = options().on_dead_letter(move |d: DeadLetter<u64, Mail>| {
        let note = match d.message {
            Some(Mail::Note(n)) => Some(n),
            _ => None,
        };
        l.lock()
            .unwrap()
            .push((d.recipient, note, d.reason.to_string()));
    });
    let hermes = h.start(options, |&id: &u64| match id {
        100 => Activation::Refused,
        101 => Activation::failed(Unavailable),
        102 => panic!("factory bug (a deliberate panic in a conformance test)"),
        _ => Activation::ready(|ctx: &mut Context<'_, u64, Mail>, msg| match msg {
            Mail::Note(_) => {}
            Mail::Whereabouts(reply) => drop(reply.send(ctx.addr())),
            Mail::Stop => ctx.stop(),
        }),
    });
    for (id, note) in [(100, 1), (101, 2), (102, 3)] {
        hermes.send(id, Mail::Note(note)).unwrap();
    }
    // A reply inside a dead letter is dropped with it: the ask fails instead of hanging.
    assert_eq!(
        hermes.ask_blocking(100, Mail::Whereabouts, HANG_GUARD),
        Err(AskError::Dropped)
    );
    let addr = hermes
        .ask_blocking(7, Mail::Whereabouts, HANG_GUARD)
        .unwrap();
    hermes.send(7, Mail::Stop).unwrap();
    eventually("the stop", || hermes.stats().deactivations == 1);
    hermes.send_to(addr, Mail::Note(4)).unwrap();
    eventually("four dead letters", || snapshot(&letters).len() >= 5);
    let mut letters = snapshot(&letters);
    letters.retain(|l| l.1.is_some());
    letters.sort_by_key(|l| l.1);
    let reasons: Vec<_> = letters.iter().map(|l| l.2.as_str()).collect();
    assert_eq!(letters.len(), 4, "{letters:?}");
    assert_eq!(letters[0].0, Recipient::Id(100));
    assert!(reasons[0].contains("no receiver"), "{reasons:?}");
    assert!(reasons[1].contains("storage unavailable"), "{reasons:?}");
    assert!(reasons[2].contains("factory panicked"), "{reasons:?}");
    assert_eq!(letters[3].0, Recipient::Addr(addr));
    assert!(reasons[3].contains("stale"), "{reasons:?}");
    let stats = hermes.shutdown().unwrap();
    assert_eq!(stats.dead_letters, 5);
}

// ---- volume and placement ---------------------------------------------------------------------

/// One million messages from four threads to a thousand receivers: each receiver gets exactly
/// its share, none lost, none duplicated.
pub fn million_messages_none_lost_none_duplicated<H: Harness>(h: &H) {
    const RECEIVERS: u64 = 1_000;
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 250_000;
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..RECEIVERS).map(|_| AtomicU64::new(0)).collect());
    let c = Arc::clone(&counts);
    let hermes = h.start(options(), move |&id: &u64| {
        let counts = Arc::clone(&c);
        Activation::ready(Tally {
            id,
            counts,
            mine: 0,
        })
    });
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let hermes = &hermes;
            s.spawn(move || {
                for n in 0..PER_THREAD {
                    hermes.send((n + t) % RECEIVERS, ()).unwrap();
                }
            });
        }
    });
    let stats = hermes.shutdown().unwrap();
    let total = THREADS * PER_THREAD;
    assert_eq!(stats.messages_delivered, total);
    for (id, count) in counts.iter().enumerate() {
        assert_eq!(
            count.load(Ordering::Relaxed),
            total / RECEIVERS,
            "receiver {id}"
        );
    }
}

/// Counts its messages and reports the count when deactivated.
struct Tally {
    id: u64,
    counts: Arc<Vec<AtomicU64>>,
    mine: u64,
}

impl Receiver<u64, ()> for Tally {
    fn receive(&mut self, _: &mut Context<'_, u64, ()>, (): ()) {
        self.mine += 1;
    }

    fn deactivated(&mut self, _: &mut Context<'_, u64, ()>, _: Deactivation) {
        self.counts[self.id as usize].fetch_add(self.mine, Ordering::Relaxed);
    }
}

enum Relay {
    /// Pass the token on to the next ID until `hops` is zero, then answer.
    Token {
        hops: u32,
        reply: Reply<u32>,
    },
    /// Ping the given handle back and forth `n` times, then answer.
    Ping {
        peer: Addr,
        n: u32,
        reply: Reply<u32>,
    },
    Whereabouts(Reply<Addr>),
}

/// Receivers on different shards message each other, by ID and by handle.
pub fn cross_shard_sends<H: Harness>(h: &H) {
    const RING: u64 = 50;
    let hermes = h.start(Options::new(Config::default()).shards(4), |&id: &u64| {
        Activation::ready(move |ctx: &mut Context<'_, u64, Relay>, msg| match msg {
            Relay::Token { hops: 0, reply } => drop(reply.send(id as u32)),
            Relay::Token { hops, reply } => ctx.send(
                (id + 1) % RING,
                Relay::Token {
                    hops: hops - 1,
                    reply,
                },
            ),
            Relay::Ping { n: 0, reply, .. } => drop(reply.send(id as u32)),
            Relay::Ping { peer, n, reply } => {
                let me = ctx.addr();
                ctx.send_to(
                    peer,
                    Relay::Ping {
                        peer: me,
                        n: n - 1,
                        reply,
                    },
                );
            }
            Relay::Whereabouts(reply) => drop(reply.send(ctx.addr())),
        })
    });
    let last = hermes
        .ask_blocking(0, |reply| Relay::Token { hops: 999, reply }, HANG_GUARD)
        .unwrap();
    assert_eq!(u64::from(last), 999 % RING);
    // Two receivers on different shards, by handle.
    let mut addrs: HashMap<u32, (u64, Addr)> = HashMap::new();
    for id in 0..RING {
        let addr = hermes
            .ask_blocking(id, Relay::Whereabouts, HANG_GUARD)
            .unwrap();
        addrs.entry(addr.router()).or_insert((id, addr));
    }
    assert!(addrs.len() >= 2, "50 IDs land on at least 2 of 4 shards");
    let mut ends: Vec<_> = addrs.values().take(2).copied().collect();
    ends.sort();
    let (a, b) = (ends[0], ends[1]);
    let answered = hermes
        .ask_blocking(
            a.0,
            |reply| Relay::Ping {
                peer: b.1,
                n: 101,
                reply,
            },
            HANG_GUARD,
        )
        .unwrap();
    assert_eq!(
        u64::from(answered),
        b.0,
        "an odd number of hops ends at the peer"
    );
    let stats = hermes.shutdown().unwrap();
    assert!(stats.messages_forwarded >= 100, "{stats:?}");
    assert_eq!(stats.dead_letters, 0);
}

// ---- resources --------------------------------------------------------------------------------

/// An idle Hermes, with live receivers and a pending timer, parks its threads: they use (next
/// to) no CPU over a second. A resource check, not a speed test.
pub fn idle_hermes_uses_no_cpu<H: Harness>(h: &H) {
    let hermes = h.start(options(), counter);
    for id in 0..100 {
        hermes.send(id, Count::Hit).unwrap();
    }
    hermes
        .schedule(1, Duration::from_secs(3600), Count::Hit)
        .unwrap();
    for id in 0..100 {
        assert_eq!(ask_count(&hermes, id), 1);
    }
    std::thread::sleep(Duration::from_millis(100));
    let Some(before) = cpu_time(h.threads()) else {
        eprintln!("no per-thread CPU times on this platform; skipping the idle CPU check");
        return;
    };
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_time(h.threads()).unwrap_or_default() - before;
    assert!(
        used < Duration::from_millis(50),
        "idle shard threads used {used:?} of CPU in one second"
    );
    hermes.shutdown().unwrap();
}

/// CPU time (user + system) used so far by this process's threads named `prefix-...`, from
/// `/proc` (Linux). `None` where that is not available.
fn cpu_time(prefix: &str) -> Option<Duration> {
    const TICKS_PER_SECOND: u64 = 100; // USER_HZ on Linux
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut ticks = 0;
    let mut found = false;
    for task in tasks.flatten() {
        let path = task.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        let comm = comm.trim_end();
        if !comm.starts_with(prefix) || !comm[prefix.len()..].starts_with('-') {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // Fields after the `(comm)`: state is the first; utime and stime the 12th and 13th.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        if let (Some(user), Some(system)) = (field(11), field(12)) {
            ticks += user + system;
            found = true;
        }
    }
    found.then(|| Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
}
