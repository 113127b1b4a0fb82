//! A shard's inbox: everything that reaches a shard from outside it (the handle, timers from
//! outside, other shards) goes through here.
//!
//! A mutex-guarded `Vec` that the shard swaps out whole: a push is a lock, a `Vec::push` and an
//! unlock; the shard takes everything queued under one lock per turn, and neither side
//! allocates per message (both vectors keep their capacity; the shard gives back a large one
//! when it goes idle). Closing is race-free: a push either lands before the shard's final
//! drain or is refused, so no message is ever left behind unseen.
//!
//! Two flags beside it, so that the common paths take no extra lock:
//! - `parked`: the shard found nothing to do and is going to wait; the next push wakes it
//!   (once). A push to an awake shard costs no wake-up. The shard sets it and then looks at the
//!   queue under the lock, a pusher pushes under the lock and then looks at the flag: the lock
//!   orders the two, so no push is left unseen by a parked shard.
//! - `pending`: something is queued, for a shard that polls before it sleeps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use hermes_core::{Recipient, TaskId, TimerId};

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
    /// The outcome of a task a receiver here started.
    Complete(TaskId, M),
    /// Start closing.
    Close,
}

/// A timer scheduled from outside.
pub(crate) struct Scheduled<K, M> {
    pub(crate) id: TimerId,
    pub(crate) to: K,
    pub(crate) deadline: Option<Instant>,
    pub(crate) msg: M,
}

/// Buffer capacity (in items) kept by an idle shard, in its inbox and in the shard's own
/// buffer: a burst's larger buffers are given back when it is over.
pub(crate) const KEEP: usize = 1024;

pub(crate) struct Inbox<K, M> {
    state: Mutex<State<K, M>>,
    /// The shard is parked (or about to be): the next push wakes it.
    parked: AtomicBool,
    /// Items are queued (a hint for polling; the lock has the truth).
    pending: AtomicBool,
    waker: Box<dyn Wake>,
}

struct State<K, M> {
    items: Vec<Envelope<K, M>>,
    /// The shard has finished: pushes are refused.
    closed: bool,
}

impl<K, M> Inbox<K, M> {
    pub(crate) fn new(waker: Box<dyn Wake>) -> Self {
        Inbox {
            state: Mutex::new(State {
                items: Vec::new(),
                closed: false,
            }),
            parked: AtomicBool::new(false),
            pending: AtomicBool::new(false),
            waker,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<K, M>> {
        // Only `Vec` operations run under this lock; a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one item; gives it back if the shard has finished.
    pub(crate) fn push(&self, item: Envelope<K, M>) -> Result<(), Envelope<K, M>> {
        let mut state = self.lock();
        if state.closed {
            return Err(item);
        }
        state.items.push(item);
        self.release(state);
        Ok(())
    }

    /// Queues every item of `items` (leaving it empty) under one lock, waking the shard at most
    /// once. If the shard has finished, nothing is queued and the items stay in `items`.
    pub(crate) fn push_all(&self, items: &mut Vec<Envelope<K, M>>) -> Result<(), ()> {
        let mut state = self.lock();
        if state.closed {
            return Err(());
        }
        state.items.append(items);
        self.release(state);
        Ok(())
    }

    /// Unlocks after a push, then wakes the shard if it is parked.
    fn release(&self, state: MutexGuard<'_, State<K, M>>) {
        if !self.pending.load(Ordering::Relaxed) {
            self.pending.store(true, Ordering::Release);
        }
        drop(state);
        if self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Swaps the queued items into `into` (which must be empty, to keep its capacity).
    pub(crate) fn take(&self, into: &mut Vec<Envelope<K, M>>) {
        debug_assert!(into.is_empty());
        if !self.pending.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        self.pending.store(false, Ordering::Relaxed);
        std::mem::swap(&mut state.items, into);
    }

    /// True if something is queued (a snapshot, for polling).
    pub(crate) fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// True if nothing is queued; then the shard counts as parked until the next push.
    pub(crate) fn park(&self) -> bool {
        self.parked.store(true, Ordering::Relaxed);
        // The lock orders this with every push: one that came first is seen here, and one that
        // comes later sees `parked`.
        let mut state = self.lock();
        if state.items.is_empty() {
            // Idle: give back what a burst grew.
            state.items.shrink_to(KEEP);
            return true;
        }
        drop(state);
        self.parked.store(false, Ordering::Relaxed);
        false
    }

    /// The shard stays awake after all (it is polling): pushes need not wake it.
    pub(crate) fn unpark(&self) {
        self.parked.store(false, Ordering::Relaxed);
    }

    /// Refuses every later push and returns what is still queued.
    pub(crate) fn close(&self) -> Vec<Envelope<K, M>> {
        let mut state = self.lock();
        state.closed = true;
        std::mem::take(&mut state.items)
    }
}
