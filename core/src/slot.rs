//! A slot: one live receiver, its lifecycle state, and the number of its mailbox.

use crate::mailbox::NO_MAILBOX;
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

/// One receiver: 48 bytes for `Slot<u64, u64>`, and the same for any message type (its mailbox
/// is the router's, by number). Its generation lives in the router's `generations`, which
/// outlives the slot; the sequence for timer IDs is router-wide; an idle timeout of its own (rare)
/// is in the router's `idle_timeouts`.
pub(crate) struct Slot<K, M> {
    pub(crate) id: K,
    /// `None` while activating or checked out.
    pub(crate) receiver: Option<Box<dyn Receiver<K, M>>>,
    /// Nanoseconds since the router's epoch when the receiver last became idle.
    pub(crate) idle_since: u64,
    /// Its mailbox in the router's `Mailboxes`, or `NO_MAILBOX`. Open from its first message
    /// until it goes idle or away: an idle receiver holds none.
    pub(crate) mailbox: u32,
    /// Neighbours in the router's list of idle receivers on the default timeout (if `listed`).
    pub(crate) idle_prev: u32,
    pub(crate) idle_next: u32,
    pub(crate) state: State,
    /// `LISTED`, `IDLE_ARMED`, `FRESH`, `FULL`, `OWN_TIMEOUT` and `UNSTAMPED`, in one byte.
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
/// This instance set an idle timeout of its own (in the router's `idle_timeouts`).
const OWN_TIMEOUT: u8 = 16;
/// Idle, its idle time deferred to the router's next `stamp_idle` (in the router's
/// `unstamped`).
const UNSTAMPED: u8 = 32;

impl<K, M> Slot<K, M> {
    /// An activating slot of `kind` whose mailbox (number `mailbox`) holds its first message.
    pub(crate) fn new(id: K, mailbox: u32, kind: u8) -> Self {
        debug_assert_ne!(mailbox, NO_MAILBOX);
        Slot {
            id,
            receiver: None,
            idle_since: 0,
            mailbox,
            idle_prev: NIL,
            idle_next: NIL,
            state: State::Activating,
            flags: 0,
            kind,
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

    /// This instance has an idle timeout of its own.
    #[inline]
    pub(crate) fn own_timeout(&self) -> bool {
        self.flags & OWN_TIMEOUT != 0
    }

    #[inline]
    pub(crate) fn set_own_timeout(&mut self, on: bool) {
        self.set(OWN_TIMEOUT, on);
    }

    /// Went idle while idle time was deferred, and not stamped yet.
    #[inline]
    pub(crate) fn unstamped(&self) -> bool {
        self.flags & UNSTAMPED != 0
    }

    #[inline]
    pub(crate) fn set_unstamped(&mut self, on: bool) {
        self.set(UNSTAMPED, on);
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
        // The budget is 100 bytes of memory per idle receiver with a 16-byte state, whose box
        // takes 32 (the allocator's smallest chunk); the slot is most of the rest, and a slab
        // entry is no larger than the slot it holds.
        let slot = std::mem::size_of::<Slot<u64, u64>>();
        assert!(slot <= 48, "Slot<u64, u64> is {slot} bytes");
        // The slab's entry is `Vacant(usize)` or `Occupied(slot)`, laid out as this is.
        let entry = std::mem::size_of::<Result<Slot<u64, u64>, usize>>();
        assert_eq!(entry, slot, "a slab entry costs more than its slot");
        // Whatever the message type: the mailbox is not in the slot.
        assert_eq!(std::mem::size_of::<Slot<u64, [u8; 256]>>(), slot);
    }
}
