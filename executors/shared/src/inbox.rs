//! A shard's inbox: everything that reaches a shard from outside it (the handle, timers from
//! outside, other shards) goes through here.
//!
//! A lock-free queue (`SegQueue`): a push is a few atomic operations and never waits for the
//! shard, and the shard pops without taking a lock. Two atomics around it:
//!
//! - `parked`: the shard found nothing to do and is going to wait. A push that sees it wakes the
//!   shard (once); a push to an awake shard costs no wake-up. The shard sets it and then looks
//!   at the queue again, and a pusher pushes and then looks at it, each with a `SeqCst` fence
//!   in between, so at least one of them sees the other: no push is left unseen by a parked
//!   shard.
//! - `gate`: closing. Each push holds the gate open while it runs (a count of pushes in flight);
//!   closing shuts it and waits for the pushes in flight to land, then takes what is queued. A
//!   push either lands before that final drain or is refused: no message is ever left behind.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::time::Instant;

use crossbeam_queue::SegQueue;
use hermes_core::{Recipient, TimerId};

/// Wakes a parked shard. Each executor implements it with its own primitive (a channel, a
/// `Notify`, ...). The primitive must remember a wake that comes before the shard waits (a
/// permit), so that a wake between [`Turn::Park`](crate::Turn::Park) and the wait is not lost.
pub trait Wake: Send + Sync + 'static {
    /// Wakes the shard, or makes its next wait return at once.
    fn wake(&self);
}

/// Work for a shard.
pub(crate) enum Envelope<K, M> {
    /// A message from the handle or another shard.
    Deliver(Recipient<K>, M),
    /// A timer scheduled from outside (boxed: rare, and it would make every envelope larger).
    Schedule(Box<Scheduled<K, M>>),
    /// Cancel a timer held here.
    Cancel(TimerId),
    /// Start closing.
    Close,
}

/// A timer scheduled from outside.
pub(crate) struct Scheduled<K, M> {
    pub(crate) id: TimerId,
    pub(crate) to: K,
    pub(crate) deadline: Instant,
    pub(crate) msg: M,
}

/// `gate` bit: the inbox is closed; pushes are refused.
const CLOSED: usize = 1;
/// `gate` increment for one push in flight.
const PUSHING: usize = 2;

pub(crate) struct Inbox<K, M> {
    queue: SegQueue<Envelope<K, M>>,
    /// The shard is parked (or about to be): the next push wakes it.
    parked: AtomicBool,
    /// `CLOSED`, plus `PUSHING` for every push in flight.
    gate: AtomicUsize,
    waker: Box<dyn Wake>,
}

impl<K, M> Inbox<K, M> {
    pub(crate) fn new(waker: Box<dyn Wake>) -> Self {
        Inbox {
            queue: SegQueue::new(),
            parked: AtomicBool::new(false),
            gate: AtomicUsize::new(0),
            waker,
        }
    }

    /// Queues one item; gives it back if the shard has finished.
    pub(crate) fn push(&self, item: Envelope<K, M>) -> Result<(), Envelope<K, M>> {
        if !self.enter() {
            return Err(item);
        }
        self.queue.push(item);
        self.leave();
        Ok(())
    }

    /// Queues every item of `items` (leaving it empty), waking the shard at most once. If the
    /// shard has finished, nothing is queued and the items stay in `items`.
    pub(crate) fn push_all(&self, items: &mut Vec<Envelope<K, M>>) -> Result<(), ()> {
        if !self.enter() {
            return Err(());
        }
        for item in items.drain(..) {
            self.queue.push(item);
        }
        self.leave();
        Ok(())
    }

    /// Holds the gate open for a push; false if it is closed.
    fn enter(&self) -> bool {
        if self.gate.fetch_add(PUSHING, Ordering::Acquire) & CLOSED != 0 {
            self.gate.fetch_sub(PUSHING, Ordering::Release);
            return false;
        }
        true
    }

    /// Ends a push: lets a waiting close go on, and wakes the shard if it is parked.
    fn leave(&self) {
        self.gate.fetch_sub(PUSHING, Ordering::Release);
        // Pairs with the fence in `park`: the shard sees the push, or this sees `parked`.
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Takes the next queued item.
    pub(crate) fn pop(&self) -> Option<Envelope<K, M>> {
        self.queue.pop()
    }

    /// True if nothing is queued; then the shard counts as parked until the next push.
    pub(crate) fn park(&self) -> bool {
        self.parked.store(true, Ordering::Relaxed);
        // Pairs with the fence in `leave`.
        fence(Ordering::SeqCst);
        if self.queue.is_empty() {
            return true;
        }
        self.parked.store(false, Ordering::Relaxed);
        false
    }

    /// The shard stays awake after all (it is polling): pushes need not wake it.
    pub(crate) fn unpark(&self) {
        self.parked.store(false, Ordering::Relaxed);
    }

    /// True if nothing is queued (a snapshot, for polling).
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Refuses every later push, waits for the pushes in flight, and returns what is queued.
    pub(crate) fn close(&self) -> Vec<Envelope<K, M>> {
        self.gate.fetch_or(CLOSED, Ordering::AcqRel);
        while self.gate.load(Ordering::Acquire) != CLOSED {
            // A push in flight is a few instructions from done.
            std::thread::yield_now();
        }
        std::iter::from_fn(|| self.queue.pop()).collect()
    }
}
