//! The documented lifecycle, checked through the public handle: the order of the hooks and the
//! reason each deactivation gives, what happens to messages queued behind a stop or sent
//! during a deactivation, timers across `become_` and deactivation, a panicking handler's
//! effects, what shutdown refuses, and the blocking forms inside a receiver.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hermes_core::{
    Activation, Addr, Config, Context, Deactivation, DeadLetter, DeadLetterReason, Receiver,
    SendError,
};
use hermes_executor::{AskError, Hermes, Options, Reply};

use crate::backpressure::{Gate, HeldShard};
use crate::{HANG_GUARD, Harness, eventually};

/// One lifecycle event of one instance (instances numbered from 1 in activation order).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    Activated(usize),
    Received(usize, &'static str),
    Deactivated(usize, Deactivation),
}

enum Op {
    Hit,
    /// Keep this instance live for ever (`Context::set_idle_timeout(Duration::MAX)`).
    Pin,
    Stop,
    Boom,
    Count(Reply<u64>),
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Hit => "hit",
            Op::Pin => "pin",
            Op::Stop => "stop",
            Op::Boom => "boom",
            Op::Count(_) => "count",
        }
    }
}

type Events = Arc<Mutex<Vec<Event>>>;

/// Logs every hook and message; its `deactivated` hook first waits at `gate` if one is set.
struct Logged {
    instance: usize,
    hits: u64,
    events: Events,
    hold: Option<(mpsc::Sender<usize>, Gate)>,
}

impl Logged {
    fn log(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }
}

impl Receiver<u64, Op> for Logged {
    fn receive(&mut self, ctx: &mut Context<'_, u64, Op>, msg: Op) {
        self.log(Event::Received(self.instance, msg.name()));
        match msg {
            Op::Hit => self.hits += 1,
            Op::Pin => ctx.set_idle_timeout(Duration::MAX),
            Op::Stop => ctx.stop(),
            Op::Boom => panic!("boom (a deliberate panic in a conformance test)"),
            Op::Count(reply) => drop(reply.send(self.hits)),
        }
    }

    fn activated(&mut self, _: &mut Context<'_, u64, Op>) {
        self.log(Event::Activated(self.instance));
    }

    fn deactivated(&mut self, _: &mut Context<'_, u64, Op>, why: Deactivation) {
        if let Some((entered, gate)) = &self.hold {
            let _ = entered.send(self.instance);
            gate.wait();
        }
        self.log(Event::Deactivated(self.instance, why));
    }
}

/// A factory of [`Logged`] receivers, numbering instances in activation order.
fn logged(
    events: &Events,
    hold: Option<(mpsc::Sender<usize>, Gate)>,
) -> impl Fn(&u64) -> Activation<u64, Op> + Send + Sync + 'static {
    let events = Arc::clone(events);
    let instances = AtomicUsize::new(0);
    let hold = hold.map(|(entered, gate)| (Mutex::new(entered), gate));
    move |_: &u64| {
        let hold = hold
            .as_ref()
            .map(|(entered, gate)| (entered.lock().unwrap().clone(), gate.clone()));
        Activation::ready(Logged {
            instance: instances.fetch_add(1, Ordering::SeqCst) + 1,
            hits: 0,
            events: Arc::clone(&events),
            hold,
        })
    }
}

fn events_of(events: &Events) -> Vec<Event> {
    events.lock().unwrap().clone()
}

/// Hooks run in the documented order, each instance activated once before its first message
/// and deactivated once after its last, with the reason: `Stopped`, `IdleTimeout`, `Panicked`,
/// `Closing`. `Context::set_idle_timeout` keeps its instance live past the router's idle
/// timeout, and only that instance.
pub fn hooks_run_in_order_with_each_reason<H: Harness>(h: &H) {
    use Deactivation::{Closing, IdleTimeout, Panicked, Stopped};
    use Event::{Activated as A, Deactivated as D, Received as R};
    const IDLE: Duration = Duration::from_millis(50);
    let events: Events = Arc::default();
    let options = Options::new(Config::default().idle_timeout(IDLE)).shards(2);
    let hermes = h.start(options, logged(&events, None));

    // Instance 1: pinned, so it outlives the idle timeout many times over; then stopped.
    hermes.send(1, Op::Pin).unwrap();
    hermes.send(1, Op::Hit).unwrap();
    std::thread::sleep(IDLE * 6);
    assert_eq!(
        events_of(&events),
        [A(1), R(1, "pin"), R(1, "hit")],
        "a pinned receiver is not deactivated for idleness"
    );
    hermes.send(1, Op::Stop).unwrap();
    eventually("the stop", || events_of(&events).len() == 5);

    // Instance 2: the pin was the last instance's; this one idles out.
    hermes.send(1, Op::Hit).unwrap();
    eventually("the idle timeout", || events_of(&events).len() == 8);

    // Instance 3 panics; instance 4 is pinned and deactivated by the shutdown.
    hermes.send(1, Op::Boom).unwrap();
    hermes.send(1, Op::Pin).unwrap();
    eventually("instance 4", || events_of(&events).len() == 13);
    let stats = hermes.shutdown().unwrap();
    assert_eq!(
        events_of(&events),
        [
            A(1),
            R(1, "pin"),
            R(1, "hit"),
            R(1, "stop"),
            D(1, Stopped),
            A(2),
            R(2, "hit"),
            D(2, IdleTimeout),
            A(3),
            R(3, "boom"),
            D(3, Panicked),
            A(4),
            R(4, "pin"),
            D(4, Closing),
        ]
    );
    assert_eq!((stats.activations, stats.deactivations), (4, 4));
    assert_eq!(stats.panics, 1);
    assert_eq!(stats.live, 0);
}

/// Messages queued behind a `stop`, and messages sent while the `deactivated` hook runs, are
/// not lost: they activate a fresh instance afterwards, in send order.
pub fn messages_during_deactivation_activate_a_fresh_instance<H: Harness>(h: &H) {
    let events: Events = Arc::default();
    let gate = Gate::default();
    let (entered, in_hook) = mpsc::channel();
    let hermes = h.start(
        Options::new(Config::default()).shards(2),
        logged(&events, Some((entered, gate.clone()))),
    );
    hermes.send(1, Op::Hit).unwrap();
    hermes.send(1, Op::Stop).unwrap();
    hermes.send(1, Op::Hit).unwrap(); // queued behind the stop
    assert_eq!(in_hook.recv_timeout(HANG_GUARD), Ok(1), "the stop's hook");
    for _ in 0..3 {
        hermes.send(1, Op::Hit).unwrap(); // sent while instance 1's hook runs
    }
    gate.open();
    assert_eq!(
        hermes.ask_blocking(1, Op::Count, HANG_GUARD),
        Ok(4),
        "the fresh instance got every later message"
    );
    let names: Vec<_> = events_of(&events)
        .into_iter()
        .map(|e| match e {
            Event::Received(i, name) => format!("{i}:{name}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        [
            "Activated(1)",
            "1:hit",
            "1:stop",
            "Deactivated(1, Stopped)",
            "Activated(2)",
            "2:hit",
            "2:hit",
            "2:hit",
            "2:hit",
            "2:count",
        ]
    );
    hermes.shutdown().unwrap();
}

enum Timed {
    /// Schedule `Tick` in 20 ms, then become the second handler.
    ArmAndBecome,
    /// Schedule `Tick` in 20 ms, then stop.
    ArmAndStop,
    Tick,
}

/// A timer a receiver scheduled reaches the handler it became in the meantime; one scheduled
/// before it stopped re-activates its ID (a fresh instance gets it).
pub fn timers_outlive_become_and_deactivation<H: Harness>(h: &H) {
    let ticks: Arc<Mutex<Vec<(usize, &'static str)>>> = Arc::default();
    let instances = Arc::new(AtomicUsize::new(0));
    let (t, n) = (Arc::clone(&ticks), Arc::clone(&instances));
    let hermes = h.start(Options::new(Config::default()).shards(2), move |_: &u64| {
        let instance = n.fetch_add(1, Ordering::SeqCst) + 1;
        let ticks = Arc::clone(&t);
        Activation::ready(move |ctx: &mut Context<'_, u64, Timed>, msg| match msg {
            Timed::ArmAndBecome => {
                ctx.schedule(Duration::from_millis(20), Timed::Tick);
                let ticks = Arc::clone(&ticks);
                ctx.become_(move |_: &mut Context<'_, u64, Timed>, msg| {
                    if let Timed::Tick = msg {
                        ticks.lock().unwrap().push((instance, "second"));
                    }
                });
            }
            Timed::ArmAndStop => {
                ctx.schedule(Duration::from_millis(20), Timed::Tick);
                ctx.stop();
            }
            Timed::Tick => ticks.lock().unwrap().push((instance, "first")),
        })
    });
    hermes.send(1, Timed::ArmAndBecome).unwrap();
    eventually("ID 1 is instance 1", || hermes.stats().activations == 1);
    hermes.send(2, Timed::ArmAndStop).unwrap();
    eventually("both ticks", || ticks.lock().unwrap().len() == 2);
    let mut seen = ticks.lock().unwrap().clone();
    seen.sort();
    // ID 1 stayed instance 1, and its new handler got the tick; ID 2 (instance 2) stopped,
    // and its tick woke instance 3.
    assert_eq!(seen, [(1, "second"), (3, "first")]);
    let stats = hermes.shutdown().unwrap();
    assert_eq!(stats.activations, 3);
}

enum Risky {
    /// Send a note to `witness`, schedule one to it in 10 ms, become a handler that counts
    /// differently, then panic: none of it may happen.
    EffectsThenPanic(u64),
    Note,
    Count(Reply<u64>),
}

/// A handler that panics leaves no effects: its sends, timers and `become_` are undone, the
/// message is a `Panicked` dead letter and the next message finds a fresh instance.
pub fn a_panicking_handler_leaves_no_effects<H: Harness>(h: &H) {
    let letters: Arc<Mutex<Vec<DeadLetterReason>>> = Arc::default();
    let l = Arc::clone(&letters);
    let options = Options::new(Config::default())
        .shards(2)
        .on_dead_letter(move |d: DeadLetter<u64, Risky>| l.lock().unwrap().push(d.reason));
    let hermes = h.start(options, |_: &u64| {
        let mut notes = 0;
        Activation::ready(move |ctx: &mut Context<'_, u64, Risky>, msg| match msg {
            Risky::EffectsThenPanic(witness) => {
                ctx.send(witness, Risky::Note);
                ctx.schedule_to(witness, Duration::from_millis(10), Risky::Note);
                ctx.become_(|_: &mut Context<'_, u64, Risky>, msg| {
                    if let Risky::Count(reply) = msg {
                        let _ = reply.send(1_000_000);
                    }
                });
                panic!("after effects (a deliberate panic in a conformance test)");
            }
            Risky::Note => notes += 1,
            Risky::Count(reply) => drop(reply.send(notes)),
        })
    });
    hermes.send(1, Risky::EffectsThenPanic(2)).unwrap();
    eventually("the panic", || hermes.stats().panics == 1);
    // Long past the timer's deadline.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(hermes.ask_blocking(2, Risky::Count, HANG_GUARD), Ok(0));
    assert_eq!(
        hermes.ask_blocking(1, Risky::Count, HANG_GUARD),
        Ok(0),
        "the fresh instance has the factory's handler, not the one it became"
    );
    let stats = hermes.shutdown().unwrap();
    assert_eq!(stats.timers_pending, 0);
    let letters = letters.lock().unwrap().clone();
    assert!(
        matches!(letters.as_slice(), [DeadLetterReason::Panicked(p)] if p.contains("after effects")),
        "{letters:?}"
    );
}

/// The dead letters that carry a message, kept by the options' sink, sorted by message.
struct Letters(Arc<Mutex<Vec<(u64, DeadLetterReason)>>>);

impl Letters {
    fn sorted(&self) -> Vec<(u64, DeadLetterReason)> {
        let mut letters = self.0.lock().unwrap().clone();
        letters.sort_by_key(|l| l.0);
        letters
    }
}

/// Two shards, and a sink that keeps every dead letter that carries its message.
fn keeping_dead_letters() -> (Options<u64, u64>, Letters) {
    let letters: Arc<Mutex<Vec<_>>> = Arc::default();
    let l = Arc::clone(&letters);
    let options =
        Options::new(Config::default())
            .shards(2)
            .on_dead_letter(move |d: DeadLetter<u64, u64>| {
                if let Some(m) = d.message {
                    l.lock().unwrap().push((m, d.reason));
                }
            });
    (options, Letters(letters))
}

/// After shutdown every way in is refused with `Closed` and the message given back; a timer
/// still pending at shutdown is a `Closed` dead letter carrying its message.
pub fn every_way_in_is_refused_after_shutdown<H: Harness>(h: &H) {
    let (options, letters) = keeping_dead_letters();
    let addr: Arc<OnceLock<Addr>> = Arc::default();
    let a = Arc::clone(&addr);
    let hermes = h.start(options, move |_: &u64| {
        let addr = Arc::clone(&a);
        Activation::ready(move |ctx: &mut Context<'_, u64, u64>, n: u64| {
            let _ = addr.set(ctx.addr());
            if n == 0 {
                ctx.schedule(Duration::from_secs(3600), 77);
            }
        })
    });
    hermes.send(1, 0).unwrap();
    eventually("the timer", || hermes.stats().timers_pending == 1);
    hermes.schedule(3, Duration::from_secs(3600), 78).unwrap();
    hermes.shutdown().unwrap();
    assert!(!hermes.is_accepting());
    let addr = *addr.get().expect("receiver 1 ran");

    assert_eq!(hermes.send(1, 10).map_err(|e| e.into_inner()), Err(10));
    assert!(matches!(hermes.send(1, 10), Err(SendError::Closed(10))));
    assert!(matches!(hermes.try_send(1, 11), Err(SendError::Closed(11))));
    assert!(matches!(
        hermes.send_timeout(1, 12, Duration::from_millis(1)),
        Err(SendError::Closed(12))
    ));
    assert!(matches!(
        futures_lite::future::block_on(hermes.send_async(1, 13)),
        Err(SendError::Closed(13))
    ));
    assert!(matches!(
        hermes.send_to(addr, 14),
        Err(SendError::Closed(14))
    ));
    assert!(matches!(
        hermes.schedule(1, Duration::ZERO, 15),
        Err(SendError::Closed(15))
    ));
    let Err(SendError::Closed(back)) =
        futures_lite::future::block_on(hermes.send_all_async([(1, 16), (2, 17)]))
    else {
        panic!("send_all_async after shutdown must be refused as Closed");
    };
    assert_eq!(back, [(1, 16), (2, 17)]);
    let asked = hermes.ask(1, |reply: Reply<u64>| {
        drop(reply);
        18
    });
    assert_eq!(futures_lite::future::block_on(asked), Err(AskError::Closed));

    let letters = letters.sorted();
    assert_eq!(
        letters,
        [
            (77, DeadLetterReason::Closed),
            (78, DeadLetterReason::Closed)
        ],
        "the pending timers, with their messages"
    );
}

enum Inside {
    AskBlocking(u64),
    Answer(Reply<u64>),
}

/// Inside a receiver the blocking forms never block the shard: `ask_blocking` says
/// `WouldDeadlock` at once (the async `Context::ask` is the way to ask from a receiver).
pub fn blocking_forms_refuse_inside_a_receiver<H: Harness>(h: &H) {
    type Handle = Arc<OnceLock<Hermes<u64, Inside>>>;
    let handle: Handle = Arc::default();
    let outcome: Arc<Mutex<Option<Result<u64, AskError>>>> = Arc::default();
    let answered = Arc::new(AtomicU64::new(0));
    let (hd, out, ans) = (
        Arc::clone(&handle),
        Arc::clone(&outcome),
        Arc::clone(&answered),
    );
    let hermes = h.start(Options::new(Config::default()).shards(2), move |_: &u64| {
        let (handle, outcome, answered) = (Arc::clone(&hd), Arc::clone(&out), Arc::clone(&ans));
        Activation::ready(move |_: &mut Context<'_, u64, Inside>, msg| match msg {
            Inside::AskBlocking(to) => {
                let hermes = handle.get().expect("the handle is set before any message");
                *outcome.lock().unwrap() =
                    Some(hermes.ask_blocking(to, Inside::Answer, HANG_GUARD));
            }
            Inside::Answer(reply) => {
                answered.fetch_add(1, Ordering::SeqCst);
                let _ = reply.send(5);
            }
        })
    });
    let _ = handle.set(hermes.clone());
    for to in [1, 2] {
        *outcome.lock().unwrap() = None;
        hermes.send(1, Inside::AskBlocking(to)).unwrap();
        eventually("the ask", || outcome.lock().unwrap().is_some());
        assert_eq!(
            *outcome.lock().unwrap(),
            Some(Err(AskError::WouldDeadlock)),
            "asking {to} from inside receiver 1"
        );
    }
    assert_eq!(answered.load(Ordering::SeqCst), 0, "no request was sent");
    assert_eq!(hermes.ask_blocking(2, Inside::Answer, HANG_GUARD), Ok(5));
    // The handle inside the factory keeps Hermes alive; shutdown ends it anyway.
    assert_eq!(hermes.shutdown().map(|s| s.panics), Ok(0));
}

enum Late {
    Hold(Reply<u64>),
    /// Answers every held request with 7; reports how many it held and which answers were
    /// given back.
    Release(Reply<(usize, Vec<u64>)>),
}

/// An answer that comes after `ask_blocking` timed out is not taken: `Reply::send` gives it
/// back to the receiver, so the asker was told `Timeout` and nobody got the value. An async
/// `ask` sends its request at once, before it is first polled.
pub fn a_late_answer_to_a_timed_out_ask_is_given_back<H: Harness>(h: &H) {
    let hermes = h.start(Options::new(Config::default()).shards(2), |_: &u64| {
        let mut held = Vec::new();
        Activation::ready(move |_: &mut Context<'_, u64, Late>, msg| match msg {
            Late::Hold(reply) => held.push(reply),
            Late::Release(report) => {
                let count = held.len();
                let back = held.drain(..).filter_map(|r| r.send(7).err()).collect();
                let _ = report.send((count, back));
            }
        })
    });
    assert_eq!(
        hermes.ask_blocking(1, Late::Hold, Duration::from_millis(20)),
        Err(AskError::Timeout)
    );
    let unpolled = hermes.ask(1, Late::Hold);
    assert_eq!(
        hermes.ask_blocking(1, Late::Release, HANG_GUARD),
        Ok((2, vec![7])),
        "the unpolled ask's request arrived; only the timed-out one's answer came back"
    );
    assert_eq!(unpolled.wait_timeout(HANG_GUARD), Ok(7));
    hermes.shutdown().unwrap();
}

/// Sends during shutdown to a receiver that is not live are `Closed` dead letters, with their
/// message: here, a `deactivated` hook that reports to an ID never activated. Fifty rounds: a
/// shard that began closing before the others had their `Close` sent its hooks' mail ahead
/// of it, and the shard that took it activated the receivers it named (about 1 run in 60 of
/// one round on tokio, under load).
pub fn sends_while_closing_to_receivers_not_live_are_closed_dead_letters<H: Harness>(h: &H) {
    struct Reporter;
    impl Receiver<u64, u64> for Reporter {
        fn receive(&mut self, _: &mut Context<'_, u64, u64>, _: u64) {}
        fn deactivated(&mut self, ctx: &mut Context<'_, u64, u64>, why: Deactivation) {
            if why == Deactivation::Closing {
                let report = 1000 + *ctx.id();
                ctx.send(report, report);
            }
        }
    }
    for round in 0..50 {
        let (options, letters) = keeping_dead_letters();
        let hermes = h.start(options, |_: &u64| Activation::ready(Reporter));
        for id in 0..4 {
            hermes.send(id, 0).unwrap();
        }
        let stats = hermes.shutdown().unwrap();
        let letters = letters.sorted();
        let expected: Vec<_> = (1000..1004)
            .map(|m| (m, DeadLetterReason::Closed))
            .collect();
        assert_eq!(letters, expected, "round {round}");
        assert_eq!(
            (stats.activations, stats.dead_letters),
            (4, 4),
            "round {round}"
        );
    }
}

enum Flood {
    /// Wait at the gate: holds up this receiver's shard.
    Hold,
    Note,
    /// Send `Note`s to this ID through the handle, from inside the receiver; report which
    /// were admitted, and how many pairs a `send_all` of three more gave back as `Full`.
    SendTo(u64, Reply<(Vec<bool>, usize)>),
}

/// Inside a receiver, `Hermes::send` (and `send_all`) to a full shard answers `Full` at once
/// rather than waiting (which could deadlock the shards); what it admitted is delivered.
pub fn send_inside_a_receiver_answers_full_instead_of_waiting<H: Harness>(h: &H) {
    const CAPACITY: usize = 4;
    type Handle = Arc<OnceLock<Hermes<u64, Flood>>>;
    let (a, b) = crate::regressions::ids_on_two_shards();
    let handle: Handle = Arc::default();
    let held = HeldShard::default();
    let (hd, hl) = (Arc::clone(&handle), held.clone());
    let options = Options::new(Config::default())
        .shards(2)
        .inbox_capacity(CAPACITY);
    let hermes = h.start(options, move |_: &u64| {
        let (handle, held) = (Arc::clone(&hd), hl.clone());
        Activation::ready(move |_: &mut Context<'_, u64, Flood>, msg| match msg {
            Flood::Hold => held.hold(),
            Flood::Note => held.note(),
            Flood::SendTo(to, report) => {
                let hermes = handle.get().expect("the handle is set before any message");
                let admitted = (0..3 * CAPACITY)
                    .map(|_| hermes.send(to, Flood::Note).is_ok())
                    .collect();
                let batch = hermes.send_all((0..3).map(|_| (to, Flood::Note)));
                let back = match batch {
                    Err(SendError::Full(back)) => back.len(),
                    _ => 0,
                };
                let _ = report.send((admitted, back));
            }
        })
    });
    let _ = handle.set(hermes.clone());
    hermes.send(b, Flood::Hold).unwrap();
    held.wait_until_held();
    let (admitted, given_back) = hermes
        .ask_blocking(a, |r| Flood::SendTo(b, r), HANG_GUARD)
        .expect("the sender answers while b's shard is held");
    held.release();
    let expected: Vec<bool> = (0..3 * CAPACITY).map(|i| i < CAPACITY).collect();
    assert_eq!(admitted, expected, "the inbox's capacity, then Full");
    assert_eq!(given_back, 3, "send_all gives every pair back as Full");
    hermes.shutdown().unwrap();
    assert_eq!(
        held.notes(),
        CAPACITY as u64,
        "what was admitted is delivered"
    );
}
