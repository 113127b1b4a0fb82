//! Idle-time bookkeeping: the router's list of idle receivers, and time in ticks.
//!
//! Both are fields of their own (not loose fields of the router) so that the router's hot paths
//! can use them while they hold a slot: a receiver goes idle with one look-up of its slot and one
//! of the list's tail.

use std::time::{Duration, Instant};

use slab::Slab;

use crate::slot::{NIL, Slot};

/// `duration` in whole nanoseconds, saturating at `u64::MAX` (about 584 years).
pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Time as nanoseconds since the router's epoch (the first instant it turned into ticks), which
/// is how slots store when they went idle.
#[derive(Debug, Default)]
pub(crate) struct Ticks {
    epoch: Option<Instant>,
    /// The last instant turned into ticks, and its ticks: a driver passes the same `now` to
    /// many calls.
    last: Option<(Instant, u64)>,
}

impl Ticks {
    /// The epoch, once there is one.
    #[inline]
    pub(crate) fn epoch(&self) -> Option<Instant> {
        self.epoch
    }

    /// `now` in ticks; the first instant asked for becomes the epoch. Instants before the epoch
    /// are 0; saturating (from 584 years on), so that a tick count never wraps to an earlier one.
    #[inline]
    pub(crate) fn at(&mut self, now: Instant) -> u64 {
        if let Some((then, ticks)) = self.last
            && then == now
        {
            return ticks;
        }
        let epoch = *self.epoch.get_or_insert(now);
        let ticks = nanos(now.saturating_duration_since(epoch));
        self.last = Some((now, ticks));
        ticks
    }
}

/// Idle receivers on the router's default timeout, oldest first, linked through their slots
/// (`idle_prev`, `idle_next`): their idle deadlines are in list order, so idle deactivation
/// needs no timer entry per receiver.
#[derive(Debug)]
pub(crate) struct IdleList {
    pub(crate) head: u32,
    tail: u32,
    /// The tail's `idle_since` (the latest), kept here so that appending reads no other slot.
    tail_since: u64,
}

impl Default for IdleList {
    fn default() -> Self {
        IdleList {
            head: NIL,
            tail: NIL,
            tail_since: 0,
        }
    }
}

impl IdleList {
    /// Appends the receiver in `slot` (at `key`), idle since `since` (or since the tail, if the
    /// driver's clock stepped back: the list stays in deadline order). Returns the previous
    /// tail, whose `idle_next` the caller sets to `key` with [`link`](IdleList::link) once it
    /// no longer holds `slot`: one look-up of the slot fewer than doing it all here.
    #[inline]
    #[must_use = "the previous tail must be linked to the new one"]
    pub(crate) fn append<K, M>(&mut self, slot: &mut Slot<K, M>, key: usize, since: u64) -> u32 {
        let tail = self.tail;
        let since = if tail == NIL {
            since
        } else {
            since.max(self.tail_since)
        };
        slot.idle_since = since;
        slot.set_listed(true);
        slot.idle_prev = tail;
        slot.idle_next = NIL;
        if tail == NIL {
            self.head = key as u32;
        }
        self.tail = key as u32;
        self.tail_since = since;
        tail
    }

    /// Links the previous tail `prev` (from [`append`](IdleList::append)) to the new one.
    #[inline]
    pub(crate) fn link<K, M>(slots: &mut Slab<Slot<K, M>>, prev: u32, key: usize) {
        if prev != NIL {
            slots[prev as usize].idle_next = key as u32;
        }
    }

    /// Marks the listed receiver in `slot` as off the list, and returns its neighbours, for
    /// [`join`](IdleList::join) once the caller no longer holds `slot`.
    #[inline]
    pub(crate) fn take_off<K, M>(slot: &mut Slot<K, M>) -> (u32, u32) {
        debug_assert!(slot.listed());
        slot.set_listed(false);
        (slot.idle_prev, slot.idle_next)
    }

    /// Joins `prev` and `next`, the neighbours of a receiver just taken off the list.
    #[inline]
    pub(crate) fn join<K, M>(&mut self, slots: &mut Slab<Slot<K, M>>, prev: u32, next: u32) {
        match prev {
            NIL => self.head = next,
            p => {
                let prev_slot = &mut slots[p as usize];
                prev_slot.idle_next = next;
                if next == NIL {
                    self.tail_since = prev_slot.idle_since;
                }
            }
        }
        match next {
            NIL => self.tail = prev,
            n => slots[n as usize].idle_prev = prev,
        }
    }
}
