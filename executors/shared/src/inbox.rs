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
//!
//! Bounded: `queued` counts what was pushed and not yet accepted by the shard. Messages from
//! outside are refused at the inbox's capacity, messages from other shards at twice that, and
//! control items (cancels, close, task outcomes) never. Beside it, the set of receivers whose
//! mailbox is full, so that the handle tells an outside sender to wait for one busy receiver
//! without holding up the rest, and the `room` event that waiting senders listen on.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::PoisonError;
use std::time::Instant;

// The wake protocol is model-checked with loom (the `loom_model` tests at the end), which needs
// its own atomics and mutexes: `RUSTFLAGS="--cfg hermes_loom" cargo test -p hermes-executor
// --lib --release loom_model`. Every other build (the library itself even with that cfg) uses std's.
#[cfg(all(test, hermes_loom))]
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
#[cfg(all(test, hermes_loom))]
use loom::sync::{Mutex, MutexGuard};
#[cfg(not(all(test, hermes_loom)))]
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
#[cfg(not(all(test, hermes_loom)))]
use std::sync::{Mutex, MutexGuard};

use crossbeam_utils::CachePadded;
use event_listener::Event;
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
    /// A message from outside, admitted by the handle's flow control: queued even if its
    /// receiver's mailbox is at capacity by the time it arrives.
    Admit(Recipient<K>, M),
    /// A message from a receiver on another shard: a dead letter if its mailbox is full.
    Deliver(Recipient<K>, M),
    /// A timer scheduled from outside (boxed: rare, and it would make every envelope larger).
    Schedule(Box<Scheduled<K, M>>),
    /// Cancel a timer held here.
    Cancel(TimerId),
    /// The outcome of a task a receiver here started.
    Complete(TaskId, M),
    /// A task a receiver here started ended without an outcome (aborted, or its future
    /// panicked).
    Abandon(TaskId),
    /// Start closing.
    Close,
    /// Placement changed: release the receivers that moved to another node, then arrive.
    Release(std::sync::Arc<crate::remote::Release>),
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

/// How much an inbox takes before it refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    /// A message from outside: up to the inbox's capacity.
    Outside,
    /// A message from another shard: up to twice the capacity, so that outside senders cannot
    /// crowd out receivers, and receivers cannot grow an inbox without bound either.
    Inside,
    /// Control (cancels, close, task outcomes): always taken.
    Control,
}

/// Why an inbox refused a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The shard has finished.
    Closed,
    /// The inbox is at its limit.
    Full,
}

pub(crate) struct Inbox<K, M> {
    // Each field that one side writes while the other side reads or writes it has a cache line
    // of its own (`CachePadded`), and the struct ends on a line of its own, so that a shard's
    // inbox shares no line with its neighbour's. On one line, every store the shard makes while
    // it cycles between turns and watching (`parked`, `pending`, the lock) took the line from
    // the sender in the middle of its push, and the two threads traded it several times per
    // message (see benches/README.md, "The pool's cross-thread paths").
    /// Senders push under this lock; the shard swaps the items out under it.
    state: CachePadded<Mutex<State<K, M>>>,
    /// Items pushed and not yet accepted by the shard (queued here or in the shard's hands):
    /// added to per push, taken from once per turn.
    queued: CachePadded<AtomicUsize>,
    /// The shard is parked (or about to be): the next push wakes it. Written by the shard as
    /// it parks and watches, read by every push.
    parked: CachePadded<AtomicBool>,
    /// Items are queued (a hint for polling; the lock has the truth). Set by the first push
    /// after a take, watched by the shard.
    pending: CachePadded<AtomicBool>,
    /// The rest is written rarely: read-mostly, on a line of its own.
    waker: Box<dyn Wake>,
    /// How many items from outside the inbox takes.
    capacity: usize,
    /// Receivers whose mailbox is at capacity, by `id_hash`, as of the shard's last turn.
    full: Mutex<HashSet<u64>>,
    /// How many entries `full` has: senders skip its lock while it is zero.
    full_count: AtomicUsize,
    /// Notified when there is room again: the inbox drained, or a receiver was relieved.
    pub(crate) room: Event,
}

struct State<K, M> {
    items: Vec<Envelope<K, M>>,
    /// The shard has finished: pushes are refused.
    closed: bool,
}

impl<K, M> Inbox<K, M> {
    pub(crate) fn new(waker: Box<dyn Wake>, capacity: usize) -> Self {
        Inbox {
            state: CachePadded::new(Mutex::new(State {
                items: Vec::new(),
                closed: false,
            })),
            parked: CachePadded::new(AtomicBool::new(false)),
            pending: CachePadded::new(AtomicBool::new(false)),
            queued: CachePadded::new(AtomicUsize::new(0)),
            capacity,
            full: Mutex::new(HashSet::new()),
            full_count: AtomicUsize::new(0),
            room: Event::new(),
            waker,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<K, M>> {
        // Only `Vec` operations run under this lock; a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many items `limit` allows queued.
    fn allows(&self, limit: Limit) -> usize {
        match limit {
            Limit::Outside => self.capacity,
            Limit::Inside => self.capacity.saturating_mul(2),
            Limit::Control => usize::MAX,
        }
    }

    /// Queues one item; gives it back if the shard has finished or the inbox is at `limit`.
    #[inline(always)]
    pub(crate) fn push(
        &self,
        item: Envelope<K, M>,
        limit: Limit,
    ) -> Result<(), (Envelope<K, M>, Refusal)> {
        let mut state = self.lock();
        if state.closed {
            return Err((item, Refusal::Closed));
        }
        if self.queued.load(Ordering::Relaxed) >= self.allows(limit) {
            return Err((item, Refusal::Full));
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        state.items.push(item);
        self.release(state);
        Ok(())
    }

    /// Queues every item of `items` (leaving it empty) under one lock, waking the shard at most
    /// once. If the shard has finished or the batch does not fit under `limit` (a batch fits
    /// whenever the inbox is below it), nothing is queued and the items stay in `items`.
    pub(crate) fn push_all(
        &self,
        items: &mut Vec<Envelope<K, M>>,
        limit: Limit,
    ) -> Result<(), Refusal> {
        let mut state = self.lock();
        if state.closed {
            return Err(Refusal::Closed);
        }
        if self.queued.load(Ordering::Relaxed) >= self.allows(limit) {
            return Err(Refusal::Full);
        }
        self.queued.fetch_add(items.len(), Ordering::Relaxed);
        state.items.append(items);
        self.release(state);
        Ok(())
    }

    /// The shard accepted `n` items: they no longer count against the capacity. Wakes senders
    /// waiting for room.
    pub(crate) fn accepted(&self, n: usize) {
        if n > 0 {
            let before = self.queued.fetch_sub(n, Ordering::Relaxed);
            if before >= self.capacity && before - n < self.capacity {
                self.room.notify(usize::MAX);
            }
        }
    }

    /// The shard's router says the receiver with `id_hash` is full (`true`) or has room.
    pub(crate) fn set_full(&self, id_hash: u64, full: bool) {
        let mut set = self.full.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = if full {
            set.insert(id_hash)
        } else {
            set.remove(&id_hash)
        };
        self.full_count.store(set.len(), Ordering::Release);
        drop(set);
        if changed && !full {
            self.room.notify(usize::MAX);
        }
    }

    /// Unlocks after a push, then wakes the shard if it is parked.
    fn release(&self, state: MutexGuard<'_, State<K, M>>) {
        if !self.pending.load(Ordering::Relaxed) {
            self.pending.store(true, Ordering::Release);
        }
        drop(state);
        // A compare-exchange, not a swap: the same effect (only a set flag is cleared, by one
        // pusher), and no store when the flag is already clear. (loom 0.7 mis-orders a swap's
        // store against the shard's later store of the flag, tokio-rs/loom#282, and reported a
        // lost wake-up here that the memory model rules out.)
        if self.parked.load(Ordering::Relaxed)
            && self
                .parked
                .compare_exchange(true, false, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
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

    /// The shard watches its inbox before it sleeps (it was parked by [`park`](Inbox::park)):
    /// it counts as awake meanwhile, so pushes need not wake it. `poll` is given a check of
    /// whether something is queued and says whether something came. True if mail came, false
    /// if the shard is parked again (the next push wakes it) and should wait for the wake.
    pub(crate) fn watch(&self, poll: impl FnOnce(&mut dyn FnMut() -> bool) -> bool) -> bool {
        self.parked.store(false, Ordering::Relaxed);
        poll(&mut || self.is_pending()) || !self.park()
    }

    /// Refuses every later push and returns what is still queued. Wakes every sender waiting
    /// for room: they find it closed.
    pub(crate) fn close(&self) -> Vec<Envelope<K, M>> {
        let mut state = self.lock();
        state.closed = true;
        let left = std::mem::take(&mut state.items);
        drop(state);
        self.room.notify(usize::MAX);
        left
    }
}

impl<K: Hash, M> Inbox<K, M> {
    /// True if a message from outside to the receiver with ID `id` must wait: the inbox is
    /// at capacity, or that receiver's mailbox is. The ID is hashed only while some receiver
    /// of this shard is full, so the common send hashes it for placement alone (if at all).
    pub(crate) fn is_full_for(&self, id: &K) -> bool {
        self.queued.load(Ordering::Relaxed) >= self.capacity
            || (self.full_count.load(Ordering::Acquire) > 0
                && self
                    .full
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains(&hermes_core::id_hash(id)))
    }

    /// True if any receiver (by ID) that `batch` is for is full (see
    /// [`is_full_for`](Inbox::is_full_for)), under one lock; hashes only while one is.
    pub(crate) fn any_full(&self, batch: &[Envelope<K, M>]) -> bool {
        self.full_count.load(Ordering::Acquire) > 0 && {
            let full = self.full.lock().unwrap_or_else(PoisonError::into_inner);
            batch.iter().any(|envelope| match envelope {
                Envelope::Admit(Recipient::Id(id), _) => full.contains(&hermes_core::id_hash(id)),
                _ => false,
            })
        }
    }
}

/// Model-checked tests of the wake protocol (the `parked` and `pending` flags, the shard's
/// watch-then-park, the pushers' wake): loom runs every interleaving of a shard and its pushers
/// (up to a preemption bound) and fails on a deadlock, which is what a lost wake-up is (the
/// shard waits for a bell that no push will ring while mail sits in the inbox). Only with
/// `--cfg hermes_loom` (see the imports above).
#[cfg(all(test, hermes_loom))]
pub(crate) mod loom_model {
    use super::*;
    use hermes_core::Recipient;
    use loom::sync::{Arc, Condvar};

    /// The executor's bell, as the [`Wake`] contract asks: a permit, so a wake that comes
    /// before the wait is kept (the pool's one-slot channel).
    #[derive(Default)]
    pub(crate) struct Permit {
        set: Mutex<bool>,
        rung: Condvar,
    }

    impl Permit {
        pub(crate) fn wait(&self) {
            let mut set = self.set.lock().unwrap();
            while !*set {
                set = self.rung.wait(set).unwrap();
            }
            *set = false;
        }
    }

    /// Rings a `Permit`. Shared through std's `Arc`: loom's would be dropped by a model's
    /// threads as loom unwinds them after a deadlock, outside its execution, and abort.
    pub(crate) struct Bell(pub(crate) std::sync::Arc<Permit>);

    impl Wake for Bell {
        fn wake(&self) {
            *self.0.set.lock().unwrap() = true;
            self.0.rung.notify_one();
        }
    }

    fn envelope(n: u64) -> Envelope<u64, u64> {
        Envelope::Deliver(Recipient::Id(n), n)
    }

    /// The shard's side, as `Shard::turn` and `Shard::run_blocking` do it: take what is queued;
    /// with nothing left, `park`; parked, watch the inbox first if `watching` (a shard that was
    /// conversing), then wait for the bell. Returns once `expected` items have been taken; a
    /// lost wake-up leaves it waiting forever, which loom reports.
    fn shard(inbox: &Inbox<u64, u64>, bell: &Permit, expected: usize, watching: bool) {
        let mut taken = Vec::new();
        let mut seen = 0;
        loop {
            inbox.take(&mut taken);
            seen += taken.len();
            inbox.accepted(taken.len());
            taken.clear();
            if seen == expected {
                return;
            }
            // `turn`: `more || is_pending() || !park()` is `Busy` (mail already flagged skips
            // the park and its lock).
            if inbox.is_pending() || !inbox.park() {
                continue;
            }
            // `run_blocking`: `Park`, after `mail_soon` when conversing. The watch polls twice
            // (loom needs a bound on spinning).
            if watching
                && inbox.watch(|pending| {
                    pending() || {
                        loom::thread::yield_now();
                        pending()
                    }
                })
            {
                continue;
            }
            bell.wait();
        }
    }

    pub(crate) fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(f);
    }

    /// Starts an inbox whose bell is `Permit`.
    fn inbox() -> (Arc<Inbox<u64, u64>>, std::sync::Arc<Permit>) {
        let permit = std::sync::Arc::new(Permit::default());
        let inbox = Inbox::new(Box::new(Bell(std::sync::Arc::clone(&permit))), 1024);
        (Arc::new(inbox), permit)
    }

    #[test]
    fn loom_model_no_lost_wakeup_one_pusher() {
        model(|| {
            let (inbox, bell) = inbox();
            let pusher = {
                let inbox = Arc::clone(&inbox);
                loom::thread::spawn(move || {
                    for n in 0..2 {
                        assert!(inbox.push(envelope(n), Limit::Inside).is_ok());
                    }
                })
            };
            shard(&inbox, &bell, 2, false);
            pusher.join().unwrap();
        });
    }

    #[test]
    fn loom_model_no_lost_wakeup_watching_shard() {
        model(|| {
            let (inbox, bell) = inbox();
            let pusher = {
                let inbox = Arc::clone(&inbox);
                loom::thread::spawn(move || {
                    for n in 0..2 {
                        assert!(inbox.push(envelope(n), Limit::Inside).is_ok());
                    }
                })
            };
            shard(&inbox, &bell, 2, true);
            pusher.join().unwrap();
        });
    }

    #[test]
    fn loom_model_no_lost_wakeup_two_pushers() {
        model(|| {
            let (inbox, bell) = inbox();
            let single = {
                let inbox = Arc::clone(&inbox);
                loom::thread::spawn(move || {
                    assert!(inbox.push(envelope(0), Limit::Outside).is_ok());
                })
            };
            let batch = {
                let inbox = Arc::clone(&inbox);
                loom::thread::spawn(move || {
                    let mut items = vec![envelope(1), envelope(2)];
                    assert!(inbox.push_all(&mut items, Limit::Inside).is_ok());
                    assert!(items.is_empty());
                })
            };
            shard(&inbox, &bell, 3, true);
            single.join().unwrap();
            batch.join().unwrap();
        });
    }

    /// The model can fail: a shard that skips the `parked` flag (waits without telling
    /// pushers) loses the wake-up, and loom finds the deadlock.
    #[test]
    #[should_panic]
    fn loom_model_finds_a_lost_wakeup() {
        model(|| {
            let (inbox, bell) = inbox();
            let pusher = {
                let inbox = Arc::clone(&inbox);
                loom::thread::spawn(move || {
                    assert!(inbox.push(envelope(0), Limit::Inside).is_ok());
                })
            };
            let mut taken = Vec::new();
            inbox.take(&mut taken);
            if taken.is_empty() {
                // Broken on purpose: waits without `park`, so no push rings the bell.
                bell.wait();
            }
            pusher.join().unwrap();
        });
    }
}

#[cfg(all(test, not(hermes_loom)))]
mod tests {
    use super::*;

    struct NoBell;
    impl Wake for NoBell {
        fn wake(&self) {}
    }

    /// The full check hashes the ID the way the shard names a full receiver (`id_hash`): the
    /// receiver it names is full, the others and a batch without it are not, and relieving it
    /// clears it.
    #[test]
    fn a_full_receiver_is_found_by_its_id_and_only_it() {
        let inbox: Inbox<u64, u64> = Inbox::new(Box::new(NoBell), 16);
        let admit = |id: u64| Envelope::Admit(Recipient::Id(id), 0);
        assert!(!inbox.is_full_for(&7));
        assert!(!inbox.any_full(&[admit(7)]));
        inbox.set_full(hermes_core::id_hash(&7u64), true);
        assert!(inbox.is_full_for(&7));
        assert!(!inbox.is_full_for(&8));
        assert!(inbox.any_full(&[admit(8), admit(7)]));
        assert!(!inbox.any_full(&[admit(8), Envelope::Close]));
        inbox.set_full(hermes_core::id_hash(&7u64), false);
        assert!(!inbox.is_full_for(&7));
        assert!(!inbox.any_full(&[admit(7)]));
    }
}
