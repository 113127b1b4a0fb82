//! A slot: one live receiver, its mailbox and its lifecycle state.

use std::collections::VecDeque;

use crate::{Deactivation, Receiver};

/// Where a receiver is in its lifecycle (see the diagram in the crate docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// An `Activate` command is out; messages queue.
    Activating,
    /// Live, nothing queued, not running; an idle check may be armed.
    Idle,
    /// Messages queued; a `Run` command is out.
    Scheduled,
    /// Checked out with a batch.
    Running,
    /// A `Deactivate` command is out, or the hook is running (receiver checked out).
    Deactivating(Deactivation),
}

/// Idle timeout sentinel: use the router's default.
pub(crate) const DEFAULT_IDLE: u32 = u32::MAX;

/// Idle timeout sentinel: never deactivate for idleness.
pub(crate) const NEVER_IDLE: u32 = u32::MAX - 1;

/// "No slot" in the idle list's links.
pub(crate) const NIL: u32 = u32::MAX;

/// One receiver: 80 bytes for `Slot<u64, u64>`. Its generation lives in the router's
/// `generations`, which outlives the slot; the sequence for timer IDs is router-wide.
pub(crate) struct Slot<K, M> {
    pub(crate) id: K,
    /// `None` while activating or checked out.
    pub(crate) receiver: Option<Box<dyn Receiver<K, M>>>,
    /// Holds no buffer while the receiver is idle: buffers go back to the router's pool.
    pub(crate) mailbox: VecDeque<M>,
    /// Nanoseconds since the router's epoch when the receiver last became idle.
    pub(crate) idle_since: u64,
    /// Per-receiver idle timeout in milliseconds, or `DEFAULT_IDLE`.
    pub(crate) idle_timeout_ms: u32,
    /// Neighbours in the router's list of idle receivers on the default timeout (if `listed`).
    pub(crate) idle_prev: u32,
    pub(crate) idle_next: u32,
    pub(crate) state: State,
    /// `LISTED`, `IDLE_ARMED`, `FRESH` and `FULL`, in one byte to keep the slot at 80 bytes.
    flags: u8,
    /// Its kind, in an application with several (see `KindTable`); 0 otherwise.
    pub(crate) kind: u8,
}

/// In the router's idle list (idle, on the default timeout).
const LISTED: u8 = 1;
/// An idle check for this slot is in the timer heap (idle, with its own timeout).
const IDLE_ARMED: u8 = 2;
/// The `activated` hook has not run yet.
const FRESH: u8 = 4;
/// The mailbox reached its capacity (and has not come down to half of it since).
const FULL: u8 = 8;

impl<K, M> Slot<K, M> {
    /// An activating slot whose mailbox (`mailbox`, a recycled buffer) holds its first message.
    pub(crate) fn new(id: K, mailbox: VecDeque<M>) -> Self {
        Slot {
            id,
            receiver: None,
            mailbox,
            idle_since: 0,
            idle_timeout_ms: DEFAULT_IDLE,
            idle_prev: NIL,
            idle_next: NIL,
            state: State::Activating,
            flags: 0,
            kind: 0,
        }
    }

    #[inline]
    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    /// In the router's idle list.
    #[inline]
    pub(crate) fn listed(&self) -> bool {
        self.flags & LISTED != 0
    }

    #[inline]
    pub(crate) fn set_listed(&mut self, on: bool) {
        self.set(LISTED, on);
    }

    /// An idle check for this slot is in the timer heap.
    #[inline]
    pub(crate) fn idle_armed(&self) -> bool {
        self.flags & IDLE_ARMED != 0
    }

    #[inline]
    pub(crate) fn set_idle_armed(&mut self, on: bool) {
        self.set(IDLE_ARMED, on);
    }

    /// The mailbox is at capacity, as the router last told the driver.
    #[inline]
    pub(crate) fn full(&self) -> bool {
        self.flags & FULL != 0
    }

    #[inline]
    pub(crate) fn set_full(&mut self, on: bool) {
        self.set(FULL, on);
    }

    #[inline]
    pub(crate) fn set_fresh(&mut self, on: bool) {
        self.set(FRESH, on);
    }

    /// Whether the `activated` hook is still to run, clearing it.
    #[inline]
    pub(crate) fn take_fresh(&mut self) -> bool {
        let fresh = self.flags & FRESH != 0;
        self.set(FRESH, false);
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_compact() {
        // The per-receiver overhead budget is 100 bytes; the slot is most of it.
        let size = std::mem::size_of::<slab::Slab<Slot<u64, u64>>>();
        let entry = std::mem::size_of::<Slot<u64, u64>>();
        assert!(entry <= 80, "Slot<u64, u64> is {entry} bytes (slab {size})");
    }
}
