//! Mailboxes: the queues of receivers that have messages, apart from their slots.
//!
//! A slot names its mailbox by number (4 bytes) instead of holding a `VecDeque` (32 bytes):
//! most receivers are idle, and an idle receiver holds no mailbox, so the bytes every slot
//! carries stay few. A mailbox is opened with a receiver's first message and closed when the
//! receiver goes idle or away. A closed mailbox keeps its buffer for the next one opened (the
//! last closed is the first reopened), so a receiver that wakes for a message usually finds a
//! buffer ready: opening and closing are a push and a pop on a list of free numbers.

use std::collections::VecDeque;

/// "No mailbox" (an idle receiver's).
pub(crate) const NO_MAILBOX: u32 = u32::MAX;

/// How many messages the buffers of closed mailboxes may hold in all: what stays allocated after
/// a burst is bounded. A large buffer is kept too, within that bound, so that a receiver that
/// gets messages in bursts does not grow a buffer anew for every burst.
const KEPT_CAPACITY: usize = 65_536;

/// How many spare buffers for checked-out batches are kept, and the largest kept (in messages).
const SPARE_BUFFERS: usize = 1024;
const SPARE_BUFFER_CAPACITY: usize = 64;

/// Mailboxes by number, open or closed, and spare buffers for batches checked out.
pub(crate) struct Mailboxes<M> {
    boxes: Vec<VecDeque<M>>,
    /// Closed mailboxes, the last closed at the end.
    free: Vec<u32>,
    /// How many messages the buffers closed mailboxes keep can hold, in all.
    kept: usize,
    /// Buffers for batches checked out of a mailbox (`Router::check_out`).
    spare: Vec<VecDeque<M>>,
}

impl<M> Default for Mailboxes<M> {
    fn default() -> Self {
        Mailboxes {
            boxes: Vec::new(),
            free: Vec::new(),
            kept: 0,
            spare: Vec::new(),
        }
    }
}

impl<M> Mailboxes<M> {
    /// Opens an empty mailbox; returns its number.
    #[inline]
    pub(crate) fn open(&mut self) -> u32 {
        match self.free.pop() {
            Some(n) => {
                self.kept -= allocated(&self.boxes[n as usize]);
                n
            }
            None => {
                self.boxes.push(VecDeque::new());
                // A mailbox per live receiver at most, and slot keys are `u32`s too.
                (self.boxes.len() - 1) as u32
            }
        }
    }

    /// Closes mailbox `n`, an empty one. It keeps its buffer unless the buffers closed
    /// mailboxes keep would hold more than `KEPT_CAPACITY` messages.
    #[inline]
    pub(crate) fn close(&mut self, n: u32) {
        let mailbox = &mut self.boxes[n as usize];
        debug_assert!(mailbox.is_empty());
        let capacity = allocated(mailbox);
        if self.kept + capacity <= KEPT_CAPACITY {
            self.kept += capacity;
        } else {
            *mailbox = VecDeque::new();
        }
        self.free.push(n);
    }

    /// Mailbox `n` (an open one).
    #[inline]
    pub(crate) fn get_mut(&mut self, n: u32) -> &mut VecDeque<M> {
        &mut self.boxes[n as usize]
    }

    /// How many messages mailbox `n` holds; 0 for `NO_MAILBOX`.
    #[inline]
    pub(crate) fn len(&self, n: u32) -> usize {
        if n == NO_MAILBOX {
            0
        } else {
            self.boxes[n as usize].len()
        }
    }

    /// True if mailbox `n` holds nothing (or is `NO_MAILBOX`).
    #[inline]
    pub(crate) fn is_empty(&self, n: u32) -> bool {
        self.len(n) == 0
    }

    /// An empty buffer for a batch, from the spare ones if there is one.
    #[inline]
    pub(crate) fn buffer(&mut self) -> VecDeque<M> {
        self.spare.pop().unwrap_or_default()
    }

    /// Keeps `buffer`, a batch's, for reuse (emptied), unless it holds no allocation, is
    /// large, or enough are kept.
    #[inline]
    pub(crate) fn recycle(&mut self, mut buffer: VecDeque<M>) {
        let capacity = allocated(&buffer);
        if capacity > 0 && capacity <= SPARE_BUFFER_CAPACITY && self.spare.len() < SPARE_BUFFERS {
            buffer.clear();
            self.spare.push(buffer);
        }
    }
}

/// How many messages `buffer` has room for in memory it allocated: its capacity, but 0 for a
/// zero-sized message type, whose capacity is unbounded and allocates nothing.
#[inline]
fn allocated<M>(buffer: &VecDeque<M>) -> usize {
    if size_of::<M>() == 0 {
        0
    } else {
        buffer.capacity()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::{Activation, Config, Context, Driver};

    #[test]
    fn closed_mailboxes_keep_their_buffers_within_the_bound() {
        let mut boxes = Mailboxes::<u64>::default();
        let numbers: Vec<u32> = (0..3).map(|_| boxes.open()).collect();
        for &n in &numbers {
            boxes.get_mut(n).extend(0..100);
            boxes.get_mut(n).clear();
        }
        for &n in &numbers {
            boxes.close(n);
        }
        let each = allocated(&boxes.boxes[numbers[0] as usize]);
        assert!(each >= 100);
        assert_eq!(boxes.kept, 3 * each);
        // The last closed is the first reopened, with its buffer.
        let n = boxes.open();
        assert_eq!(n, numbers[2]);
        assert!(boxes.get_mut(n).capacity() >= 100);
        assert_eq!(boxes.kept, 2 * each);
    }

    #[test]
    fn zero_sized_messages_allocate_nothing_to_keep() {
        let mut boxes = Mailboxes::<()>::default();
        for _ in 0..3 {
            let n = boxes.open();
            boxes.get_mut(n).push_back(());
            boxes.get_mut(n).pop_front();
            boxes.close(n);
            assert_eq!(boxes.kept, 0);
        }
    }

    #[test]
    fn receivers_of_zero_sized_messages_go_idle_and_wake() {
        let mut driver = Driver::new(Config::default(), |_id: &u32| {
            Activation::ready(|_ctx: &mut Context<'_, u32, ()>, ()| {})
        });
        let now = Instant::now();
        for round in 0..3 {
            for id in 0..4 {
                driver.send(id, ()).unwrap();
            }
            driver.run(now);
            let stats = driver.router().stats();
            assert_eq!((stats.idle, stats.messages_delivered), (4, 4 * (round + 1)));
        }
    }
}
