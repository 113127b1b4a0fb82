//! A shard's inbox: everything that reaches a shard from outside it (the handle, timers from
//! outside, other shards) goes through here.
//!
//! A mutex-guarded `Vec` that the shard swaps out whole: one lock per batch on the shard's side,
//! no allocation per message (both vectors keep their capacity), and closing it is race-free: a
//! push either lands before the shard's final drain or is refused, so no message is ever left
//! behind unseen. A `parked` flag under the same lock means a push wakes the shard only when it
//! is (about to be) asleep.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

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
    /// A timer scheduled from outside.
    Schedule {
        id: TimerId,
        to: K,
        deadline: Instant,
        msg: M,
    },
    /// Cancel a timer held here.
    Cancel(TimerId),
    /// Start closing.
    Close,
}

pub(crate) struct Inbox<K, M> {
    state: Mutex<State<K, M>>,
    waker: Box<dyn Wake>,
}

struct State<K, M> {
    items: Vec<Envelope<K, M>>,
    /// The shard found nothing to do and is going to wait: the next push wakes it.
    parked: bool,
    /// The shard has finished: pushes are refused.
    closed: bool,
}

impl<K, M> Inbox<K, M> {
    pub(crate) fn new(waker: Box<dyn Wake>) -> Self {
        Inbox {
            state: Mutex::new(State {
                items: Vec::new(),
                parked: false,
                closed: false,
            }),
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

    /// Queues every item of `items` (leaving it empty) under one lock. If the shard has
    /// finished, nothing is queued and the items stay in `items`.
    pub(crate) fn push_all(&self, items: &mut Vec<Envelope<K, M>>) -> Result<(), ()> {
        let mut state = self.lock();
        if state.closed {
            return Err(());
        }
        state.items.append(items);
        self.release(state);
        Ok(())
    }

    /// Unlocks, then wakes the shard if it was parked.
    fn release(&self, mut state: MutexGuard<'_, State<K, M>>) {
        let wake = std::mem::take(&mut state.parked);
        drop(state);
        if wake {
            self.waker.wake();
        }
    }

    /// Swaps the queued items into `into` (which must be empty, to keep its capacity).
    pub(crate) fn take(&self, into: &mut Vec<Envelope<K, M>>) {
        debug_assert!(into.is_empty());
        std::mem::swap(&mut self.lock().items, into);
    }

    /// True if nothing is queued; then the shard counts as parked until the next push.
    pub(crate) fn park(&self) -> bool {
        let mut state = self.lock();
        state.parked = state.items.is_empty();
        state.parked
    }

    /// Refuses every later push and returns what is still queued.
    pub(crate) fn close(&self) -> Vec<Envelope<K, M>> {
        let mut state = self.lock();
        state.closed = true;
        std::mem::take(&mut state.items)
    }
}
