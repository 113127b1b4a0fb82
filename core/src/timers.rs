//! Timers: deliver a message to an ID at a deadline.
//!
//! A binary heap ordered by (deadline, scheduling order) holds user timers and the router's own
//! idle checks. Cancelling removes the timer's payload at once; its heap entry is skipped when it
//! surfaces, and the heap is rebuilt when skipped entries outnumber live ones.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use crate::Addr;

/// When a heap entry is due: at an instant, or never (a delay past the end of representable
/// time). `Never` sorts after every instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum When {
    At(Instant),
    Never,
}

/// Identifies a scheduled timer, for [`cancel`](crate::Context::cancel).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId {
    owner: Addr,
    seq: u32,
}

impl TimerId {
    pub(crate) fn new(owner: Addr, seq: u32) -> Self {
        TimerId { owner, seq }
    }

    /// The ID of the `seq`-th timer scheduled from outside any receiver on router `router`.
    ///
    /// For drivers that number outside timers themselves (for example to hand the ID to a caller
    /// on another thread before the router sees the timer) and schedule them with
    /// [`Router::schedule_as`](crate::Router::schedule_as). [`Router::schedule`](crate::Router::schedule)
    /// numbers its own from 0, so use one way or the other on a router, not both.
    pub fn outside(router: u32, seq: u64) -> Self {
        let owner = Addr {
            router,
            index: u32::MAX,
            generation: (seq >> 32) as u32,
        };
        TimerId::new(owner, seq as u32)
    }

    /// The router that holds this timer: the one it was scheduled on.
    pub fn router(self) -> u32 {
        self.owner.router
    }
}

/// What a heap entry is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Due {
    /// A user timer; its payload is in `Timers::pending`.
    User(TimerId),
    /// The router's check whether the receiver behind this handle has been idle long enough.
    Idle(Addr),
    /// The deadline of an ask (a task, by its number).
    Task(u64),
}

/// A heap entry that came due.
pub(crate) enum Fired<K, M> {
    /// A user timer: deliver its message.
    User(Pending<K, M>),
    /// Check whether this receiver had been idle long enough at this deadline.
    Idle(Addr, Instant),
    /// An ask's deadline passed: expire it if it is still waiting.
    Task(u64),
}

/// A user timer's payload.
pub(crate) struct Pending<K, M> {
    pub(crate) to: K,
    pub(crate) msg: M,
}

pub(crate) struct Timers<K, M> {
    heap: BinaryHeap<Reverse<(When, u64, Due)>>,
    pending: HashMap<TimerId, Pending<K, M>>,
    /// Scheduling order, to break deadline ties.
    seq: u64,
    /// Heap entries whose timer was cancelled.
    cancelled: usize,
    /// The router's own counter for timers scheduled from outside any receiver.
    outside: u64,
}

impl<K, M> Default for Timers<K, M> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            pending: HashMap::new(),
            seq: 0,
            cancelled: 0,
            outside: 0,
        }
    }
}

impl<K, M> Timers<K, M> {
    /// A fresh ID for a timer scheduled from outside any receiver.
    pub(crate) fn outside_id(&mut self, router: u32) -> TimerId {
        let n = self.outside;
        self.outside += 1;
        TimerId::outside(router, n)
    }

    /// Schedules a user timer; `None`: it never fires (but can be cancelled, and is drained at
    /// close like any other).
    pub(crate) fn schedule(&mut self, id: TimerId, deadline: Option<Instant>, to: K, msg: M) {
        if self.pending.insert(id, Pending { to, msg }).is_some() {
            // Same ID scheduled twice (a u32 sequence wrapped): the older entry is now unreachable.
            self.cancelled += 1;
        }
        self.push(deadline.map_or(When::Never, When::At), Due::User(id));
    }

    /// Arms an idle check; one that would never come due is not armed.
    pub(crate) fn arm_idle(&mut self, deadline: Option<Instant>, addr: Addr) {
        if let Some(at) = deadline {
            self.push(When::At(at), Due::Idle(addr));
        }
    }

    /// Arms a task's deadline; one that would never come due is not armed.
    pub(crate) fn arm_task(&mut self, deadline: Option<Instant>, task: u64) {
        if let Some(at) = deadline {
            self.push(When::At(at), Due::Task(task));
        }
    }

    fn push(&mut self, when: When, due: Due) {
        self.heap.push(Reverse((when, self.seq, due)));
        self.seq += 1;
    }

    /// Cancels a user timer; true if it was pending.
    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        if self.pending.remove(&id).is_none() {
            return false;
        }
        self.cancelled += 1;
        if self.cancelled > 64 && self.cancelled > self.pending.len() {
            self.compact();
        }
        true
    }

    fn compact(&mut self) {
        let pending = &self.pending;
        self.heap.retain(|Reverse((_, _, due))| match due {
            Due::User(id) => pending.contains_key(id),
            Due::Idle(_) | Due::Task(_) => true,
        });
        self.cancelled = 0;
    }

    /// The earliest deadline among entries that may still fire.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match self.heap.peek() {
            Some(Reverse((When::At(at), _, _))) => Some(*at),
            _ => None,
        }
    }

    /// True if an entry is due at `now` (maybe a cancelled one, which `pop_due` skips).
    #[inline]
    pub(crate) fn due(&self, now: Instant) -> bool {
        matches!(self.heap.peek(), Some(Reverse((When::At(at), _, _))) if *at <= now)
    }

    /// Pops the next entry due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Fired<K, M>> {
        loop {
            let &Reverse((when, _, due)) = self.heap.peek()?;
            let When::At(at) = when else { return None };
            if at > now {
                return None;
            }
            self.heap.pop();
            match due {
                Due::Idle(addr) => return Some(Fired::Idle(addr, at)),
                Due::Task(task) => return Some(Fired::Task(task)),
                Due::User(id) => match self.pending.remove(&id) {
                    Some(p) => return Some(Fired::User(p)),
                    None => self.cancelled = self.cancelled.saturating_sub(1),
                },
            }
        }
    }

    /// Removes every pending user timer, in deadline order, and every idle check (on close:
    /// closing deactivates idle receivers without waiting for their timeout).
    pub(crate) fn drain(&mut self) -> Vec<Pending<K, M>> {
        let mut entries: Vec<_> = std::mem::take(&mut self.heap).into_sorted_vec();
        entries.reverse();
        let mut out = Vec::with_capacity(self.pending.len());
        for Reverse((_, _, due)) in entries {
            if let Due::User(id) = due {
                out.extend(self.pending.remove(&id));
            }
        }
        self.cancelled = 0;
        out
    }

    /// User timers scheduled and not yet fired or cancelled.
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}
