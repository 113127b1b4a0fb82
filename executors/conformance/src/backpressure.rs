//! Backpressure: every queue has a bound; outside senders choose to be told (`try_send`) or to
//! wait (`send`, `send_timeout`, `send_async`); nothing admitted is lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use hermes_core::{Activation, Config, Context, SendError};
use hermes_executor::{AskError, Options, Reply};

use crate::{HANG_GUARD, Harness, eventually};

/// A gate receivers wait at until the test opens it.
#[derive(Clone, Default)]
pub(crate) struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub(crate) fn wait(&self) {
        let (open, changed) = &*self.0;
        let mut open = open.lock().unwrap();
        while !*open {
            open = changed.wait_timeout(open, HANG_GUARD).unwrap().0;
        }
    }

    pub(crate) fn open(&self) {
        let (open, changed) = &*self.0;
        *open.lock().unwrap() = true;
        changed.notify_all();
    }
}

/// A shard held up by a receiver waiting at a gate, and a count of the notes receivers got:
/// for the tests that fill a held shard's inbox.
#[derive(Clone, Default)]
pub(crate) struct HeldShard {
    gate: Gate,
    waiting: Arc<AtomicU64>,
    notes: Arc<AtomicU64>,
}

impl HeldShard {
    /// In a handler: holds up this shard until [`release`](HeldShard::release).
    pub(crate) fn hold(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.gate.wait();
    }

    /// Waits until a handler is in [`hold`](HeldShard::hold).
    pub(crate) fn wait_until_held(&self) {
        eventually("the shard to be held", || {
            self.waiting.load(Ordering::SeqCst) == 1
        });
    }

    pub(crate) fn release(&self) {
        self.gate.open();
    }

    /// In a handler: counts a note.
    pub(crate) fn note(&self) {
        self.notes.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn notes(&self) -> u64 {
        self.notes.load(Ordering::SeqCst)
    }
}

/// `try_send` says `Full` at once when the shard's inbox is at capacity, and so does
/// `schedule`; `send_timeout` and `ask_blocking` wait and then say so; once there is room,
/// everything admitted is delivered, in order.
pub fn try_send_is_refused_at_capacity_and_nothing_admitted_is_lost<H: Harness>(h: &H) {
    let gate = Gate::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (g, s) = (gate.clone(), seen.clone());
    let options = Options::new(Config::default()).shards(1).inbox_capacity(4);
    let hermes = h.start(options, move |_: &u64| {
        let (g, s) = (g.clone(), s.clone());
        Activation::ready(move |_: &mut Context<'_, u64, u64>, n: u64| {
            s.lock().unwrap().push(n);
            g.wait();
        })
    });
    hermes.send(1, 0).unwrap();
    // The shard is held up by the first message: the inbox fills.
    eventually("the first message to be handled", || {
        !seen.lock().unwrap().is_empty()
    });
    for n in 1..=4 {
        hermes.try_send(1, n).unwrap();
    }
    let refused = hermes.try_send(1, 5);
    assert!(matches!(refused, Err(SendError::Full(5))), "{refused:?}");
    let waited = hermes.send_timeout(1, 6, Duration::from_millis(20));
    assert!(matches!(waited, Err(SendError::Full(6))), "{waited:?}");
    let scheduled = hermes.schedule(1, Duration::ZERO, 8);
    assert!(
        matches!(scheduled, Err(SendError::Full(8))),
        "{scheduled:?}"
    );
    let asked = hermes.ask_blocking(1, |_: Reply<u64>| 9, Duration::from_millis(20));
    assert_eq!(asked, Err(AskError::Full), "the request was not sent");
    gate.open();
    // Now it waits for room, and goes through.
    hermes.send_timeout(1, 7, HANG_GUARD).unwrap();
    let stats = hermes.shutdown().unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [0, 1, 2, 3, 4, 7],
        "everything admitted, in order"
    );
    assert_eq!(stats.dead_letters, 0);
}

/// A fast producer that `send`s to a slow receiver with a bounded mailbox is slowed to its
/// rate: at no point are more messages in flight than the inbox and the mailbox hold, and
/// nothing is lost. The same with `send_async`, and with batches of `send_all_async` (where a
/// batch is admitted whole once the inbox is below capacity: one more batch in flight).
pub fn a_fast_producer_waits_for_a_slow_receiver<H: Harness>(h: &H) {
    const INBOX: u64 = 64;
    const MAILBOX: u64 = 16;
    const MESSAGES: u64 = 2_000;
    const BATCH: u64 = 50;
    for mode in ["send", "send_async", "send_all_async"] {
        let received = Arc::new(AtomicU64::new(0));
        let r = received.clone();
        let config = Config::default().mailbox_capacity(MAILBOX as usize);
        let options = Options::new(config)
            .shards(2)
            .inbox_capacity(INBOX as usize);
        let hermes = h.start(options, move |_: &u64| {
            let r = r.clone();
            let mut next = 0;
            Activation::ready(move |_: &mut Context<'_, u64, u64>, n: u64| {
                assert_eq!(n, next, "in order");
                next += 1;
                std::thread::sleep(Duration::from_micros(20));
                r.fetch_add(1, Ordering::SeqCst);
            })
        });
        let mut most_in_flight = 0;
        let mut n = 0;
        while n < MESSAGES {
            match mode {
                "send" => hermes.send(7, n).unwrap(),
                "send_async" => futures_lite::future::block_on(hermes.send_async(7, n)).unwrap(),
                _ => {
                    let batch = (n..n + BATCH).map(|m| (7, m));
                    futures_lite::future::block_on(hermes.send_all_async(batch)).unwrap();
                    n += BATCH - 1;
                }
            }
            n += 1;
            let in_flight = n - received.load(Ordering::SeqCst);
            most_in_flight = most_in_flight.max(in_flight);
        }
        // The inbox's capacity, the mailbox's (half of which must drain before it is
        // relieved), one batch in the receiver's hands, and for `send_all` a batch admitted
        // whole into the inbox just below its capacity plus the one being counted.
        let bound = INBOX + MAILBOX + 64 + 2 * BATCH;
        assert!(
            most_in_flight <= bound,
            "{most_in_flight} messages in flight ({mode}), more than {bound}"
        );
        let stats = hermes.shutdown().unwrap();
        assert_eq!(received.load(Ordering::SeqCst), MESSAGES);
        assert_eq!(stats.dead_letters, 0, "nothing lost");
    }
}

enum Held {
    /// Wait at the gate (holds up the shard).
    Wait,
    /// Keep the reply, never answering.
    Keep(Reply<u64>),
}

/// `ask_blocking` waits at most its timeout in all, for room and then for the answer: here
/// the request waits for room most of the timeout, then is never answered.
pub fn ask_blocking_waits_at_most_its_timeout_in_all<H: Harness>(h: &H) {
    const TIMEOUT: Duration = Duration::from_secs(2);
    const ROOM_AFTER: Duration = Duration::from_millis(1500);
    let gate = Gate::default();
    let waiting = Arc::new(AtomicU64::new(0));
    let (g, w) = (gate.clone(), Arc::clone(&waiting));
    let options = Options::new(Config::default()).shards(1).inbox_capacity(1);
    let hermes = h.start(options, move |_: &u64| {
        let (gate, waiting) = (g.clone(), Arc::clone(&w));
        let mut kept = Vec::new();
        Activation::ready(move |_: &mut Context<'_, u64, Held>, msg| match msg {
            Held::Wait => {
                waiting.fetch_add(1, Ordering::SeqCst);
                gate.wait();
            }
            Held::Keep(reply) => kept.push(reply),
        })
    });
    hermes.send(1, Held::Wait).unwrap();
    eventually("the shard to be held", || {
        waiting.load(Ordering::SeqCst) == 1
    });
    hermes.try_send(2, Held::Wait).unwrap(); // the inbox is full now
    let opener = std::thread::spawn({
        let gate = gate.clone();
        move || {
            std::thread::sleep(ROOM_AFTER);
            gate.open();
        }
    });
    let start = std::time::Instant::now();
    let asked = hermes.ask_blocking(3, Held::Keep, TIMEOUT);
    let waited = start.elapsed();
    opener.join().unwrap();
    assert_eq!(asked, Err(AskError::Timeout));
    assert!(
        waited < TIMEOUT + ROOM_AFTER * 2 / 3, // 3.5 s when it waited twice
        "waited {waited:?} for a timeout of {TIMEOUT:?}"
    );
    hermes.shutdown().unwrap();
}

enum Burst {
    /// Wait at the gate (holds up the shard).
    Wait,
    Note,
    /// Send this many `Note`s to this ID, from inside the receiver.
    SendTo(u64, usize),
}

/// Mail between receivers never waits: to a shard whose inbox holds twice its capacity, it
/// is a `Full` dead letter with its message; what was admitted is delivered. Nothing is lost
/// without a dead letter. (A turn budget of one message makes each note its own batch: a
/// shard's mail for another goes as one batch per turn, taken whole while below the limit.)
pub fn mail_to_an_overfull_shard_is_full_dead_letters<H: Harness>(h: &H) {
    const CAPACITY: usize = 4;
    const BURST: usize = 5 * CAPACITY;
    let (a, b) = crate::regressions::ids_on_two_shards();
    let held = HeldShard::default();
    let full = Arc::new(AtomicU64::new(0));
    let f = Arc::clone(&full);
    let options = Options::new(Config::default())
        .shards(2)
        .inbox_capacity(CAPACITY)
        .turn_budget(1, 1)
        .on_dead_letter(move |d: hermes_core::DeadLetter<u64, Burst>| {
            if d.reason == hermes_core::DeadLetterReason::Full
                && matches!(d.message, Some(Burst::Note))
            {
                f.fetch_add(1, Ordering::SeqCst);
            }
        });
    let h2 = held.clone();
    let hermes = h.start(options, move |_: &u64| {
        let held = h2.clone();
        Activation::ready(move |ctx: &mut Context<'_, u64, Burst>, msg| match msg {
            Burst::Wait => held.hold(),
            Burst::Note => held.note(),
            Burst::SendTo(to, count) => {
                for _ in 0..count {
                    ctx.send(to, Burst::Note);
                }
            }
        })
    });
    hermes.send(b, Burst::Wait).unwrap();
    held.wait_until_held();
    for _ in 0..BURST {
        hermes.send(a, Burst::SendTo(b, 1)).unwrap();
    }
    let overflow = (BURST - 2 * CAPACITY) as u64;
    eventually("the overflow's dead letters", || {
        full.load(Ordering::SeqCst) == overflow
    });
    held.release();
    let stats = hermes.shutdown().unwrap();
    assert_eq!(
        held.notes(),
        2 * CAPACITY as u64,
        "twice the capacity admitted, and delivered"
    );
    assert_eq!(full.load(Ordering::SeqCst), overflow);
    assert_eq!(stats.dead_letters, overflow);
}
