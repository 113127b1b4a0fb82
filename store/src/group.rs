//! [`GroupCommit`]: many small writes, few transactions.

use std::collections::{BTreeMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crate::{Batch, Durability, Op, Operation, Store, StoreError};

/// Completion callback of a submitted write: called once, on the commit thread, with the result
/// of the transaction that carried the write.
pub type Ack = Box<dyn FnOnce(Result<(), StoreError>) + Send + 'static>;

/// When written data is forced to disk. More policies may be added, so a match needs a `_` arm:
///
/// ```compile_fail
/// # use hermes_store::SyncPolicy;
/// fn fsyncs(policy: SyncPolicy) -> &'static str {
///     match policy {
///         SyncPolicy::EveryCommit => "every commit",
///         SyncPolicy::Interval(_) => "now and then",
///     } // error[E0004]: non-exhaustive patterns: `_` not covered
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SyncPolicy {
    /// Every group is committed with [`Durability::Immediate`]: an acknowledged write is on
    /// disk and survives a crash. One fsync per group.
    #[default]
    EveryCommit,
    /// Groups are committed with [`Durability::Deferred`] and the store is synced at most this
    /// long after a commit (and by [`GroupCommit::flush`] and shutdown). An acknowledged write
    /// is visible to readers but a crash can lose up to this much of the latest history. A
    /// duration too long to represent (such as `Duration::MAX`) syncs only on flush and
    /// shutdown.
    Interval(Duration),
}

/// Configuration of a [`GroupCommit`].
#[derive(Debug, Clone)]
pub struct GroupCommitConfig {
    interval: Duration,
    max_batch: usize,
    sync: SyncPolicy,
    thread_name: String,
}

impl Default for GroupCommitConfig {
    /// 2 ms interval, at most 1024 operations per transaction, [`SyncPolicy::EveryCommit`],
    /// thread name `hermes-store-commit`.
    fn default() -> Self {
        GroupCommitConfig {
            interval: Duration::from_millis(2),
            max_batch: 1024,
            sync: SyncPolicy::EveryCommit,
            thread_name: "hermes-store-commit".to_owned(),
        }
    }
}

impl GroupCommitConfig {
    /// The defaults; see [`Default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// How long the commit thread waits after the oldest pending write, collecting more,
    /// before it commits them. Longer means fewer, larger transactions and slower
    /// acknowledgments. Zero commits whatever is pending as soon as the thread is free (writes
    /// still group up while a transaction is in progress). A duration too long to represent
    /// (such as `Duration::MAX`) commits only when a batch fills up, on flush and on shutdown.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Most operations in one transaction; reaching it commits at once, without waiting for
    /// the interval. A single submitted [`Batch`] is never split, so a larger one goes alone.
    /// Values below 1 count as 1.
    pub fn max_batch(mut self, ops: usize) -> Self {
        self.max_batch = ops.max(1);
        self
    }

    /// When commits are forced to disk.
    pub fn sync(mut self, policy: SyncPolicy) -> Self {
        self.sync = policy;
        self
    }

    /// Name of the commit thread (shown by debuggers and `top -H`).
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread_name = name.into();
        self
    }
}

/// Counters of a [`GroupCommit`], for tests, benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Writes submitted (each `put`, `delete` or `submit` call counts one).
    pub submissions: u64,
    /// Transactions committed successfully (a group of empty batches writes nothing and is not
    /// counted). Counted before the writes it carried are acknowledged.
    pub commits: u64,
    /// Transactions that failed (their writes were acknowledged with the error).
    pub failed_commits: u64,
    /// Operations written, after later writes to a key replaced earlier ones in a group.
    pub ops_written: u64,
    /// Explicit syncs under [`SyncPolicy::Interval`].
    pub syncs: u64,
}

/// The ops of one submission.
enum Payload {
    One(Op),
    Many(Vec<Op>),
}

impl Payload {
    fn len(&self) -> usize {
        match self {
            Payload::One(_) => 1,
            Payload::Many(ops) => ops.len(),
        }
    }
}

struct Entry {
    payload: Payload,
    ack: Ack,
    at: Instant,
}

/// A blocked [`GroupCommit::flush`]: waits until every submission numbered below `target` is
/// done, collecting the first error among the groups that carried them.
struct Waiter {
    id: u64,
    target: u64,
    error: Option<StoreError>,
}

struct State {
    queue: VecDeque<Entry>,
    queued_ops: usize,
    /// Sequence number of the next submission; submissions are numbered in queue order.
    next_seq: u64,
    /// Every submission numbered below this has been committed (or failed) and acknowledged.
    done_seq: u64,
    waiters: Vec<Waiter>,
    next_waiter: u64,
    /// No more submissions; the thread drains the queue and exits.
    closing: bool,
    /// The commit thread has exited (normally or not).
    writer_gone: bool,
    /// Under `SyncPolicy::Interval`: when the next background sync is due.
    sync_due: Option<Instant>,
    /// Deferred commits so far, and how many of them a completed sync covers.
    deferred_commits: u64,
    synced_commits: u64,
    stats: GroupCommitStats,
}

struct Shared {
    store: Arc<dyn Store>,
    config: GroupCommitConfig,
    state: Mutex<State>,
    /// Wakes the commit thread: new work, a flush, or closing.
    work: Condvar,
    /// Wakes flushes: a group finished, or the thread exited.
    done: Condvar,
}

impl Shared {
    // The state is only modified in short sections that cannot panic part way (callbacks and
    // store calls run outside the lock), so a poisoned lock still guards consistent state.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Syncs the store unless every deferred commit so far is already covered by a sync.
    fn sync_if_needed(&self) -> Result<(), StoreError> {
        let upto = {
            let mut st = self.lock();
            // Whatever was due is handled now; a later deferred commit schedules a new sync.
            st.sync_due = None;
            if st.synced_commits >= st.deferred_commits {
                return Ok(());
            }
            st.deferred_commits
        };
        let result = guarded(|| self.store.sync(), Operation::Sync);
        let mut st = self.lock();
        match &result {
            Ok(()) => {
                st.synced_commits = st.synced_commits.max(upto);
                st.stats.syncs += 1;
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit: sync failed");
                // Try again later in the background.
                // (Not by the clock if the interval is too long to represent: flush retries.)
                if let Some(retry) = Instant::now().checked_add(retry_after(&self.config)) {
                    st.sync_due.get_or_insert(retry);
                }
            }
        }
        result
    }
}

/// Runs a store call, turning a panic into an error so the commit thread survives it.
fn guarded(f: impl FnOnce() -> Result<(), StoreError>, op: Operation) -> Result<(), StoreError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = crate::error::panic_text(panic.as_ref());
        // Not `Backend`, whose advice (disk space, nothing written) a bug need not fit.
        Err(StoreError::other(
            op,
            None,
            format!(
                "the store panicked: {what} (a bug in that store: whether this write was \
                 applied is not known; fix the store, then check the keys it wrote)"
            ),
        ))
    })
}

/// Groups writes from many callers into few transactions, on a background thread.
///
/// Callers [`put`](Self::put), [`delete`](Self::delete) or [`submit`](Self::submit) a
/// write with a completion callback and return at once. The commit thread (named
/// `hermes-store-commit` by default) waits until the oldest pending write is
/// [`interval`](GroupCommitConfig::interval) old or [`max_batch`](GroupCommitConfig::max_batch)
/// operations are pending, then writes them all with one [`Store::write_batch`] (one
/// transaction, one fsync under [`SyncPolicy::EveryCommit`]), and only after that returns calls
/// each write's callback, in submission order, with the result. So with `EveryCommit` an
/// acknowledged write is durable, and a failed transaction reports its error to every write it
/// carried. Within one group a later write to a key replaces an earlier one; across groups,
/// writes are applied in submission order.
///
/// The callbacks are an executor-agnostic acknowledgment: a receiver typically turns one into a
/// message to itself. They run on the commit thread, so they must be quick and must not block
/// (a panic in one is caught and logged). Reads through [`store`](Self::store) see a write once
/// its transaction has committed, which is before its callback runs (so by the time it is
/// acknowledged at the latest; an earlier callback of the same group may already see it).
///
/// Once the `GroupCommit` is shut down, a submitted write is refused: its callback is called at
/// once, on the submitting thread, with [`StoreError::Closed`].
///
/// [`flush`](Self::flush) blocks until everything submitted before it is committed (and synced);
/// [`shutdown`](Self::shutdown), or dropping the `GroupCommit`, flushes, stops the thread and
/// joins it. Share one `GroupCommit` between threads by reference or `Arc`.
///
/// ```
/// use std::sync::{Arc, mpsc};
/// use hermes_store::{GroupCommit, GroupCommitConfig, MemoryStore, Store};
///
/// let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
/// let commits = GroupCommit::start(store.clone(), GroupCommitConfig::default())?;
/// let (tx, rx) = mpsc::channel();
/// commits.put("account/7", "balance=10", move |result| tx.send(result).unwrap());
/// rx.recv().unwrap()?; // acknowledged: committed
/// assert_eq!(store.get(b"account/7")?, Some(b"balance=10".to_vec()));
/// commits.shutdown()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct GroupCommit {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    writer_id: ThreadId,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Starts the commit thread over `store`. Fails only if the thread cannot be spawned.
    pub fn start(store: Arc<dyn Store>, config: GroupCommitConfig) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            store,
            config,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued_ops: 0,
                next_seq: 0,
                done_seq: 0,
                waiters: Vec::new(),
                next_waiter: 0,
                closing: false,
                writer_gone: false,
                sync_due: None,
                deferred_commits: 0,
                synced_commits: 0,
                stats: GroupCommitStats::default(),
            }),
            work: Condvar::new(),
            done: Condvar::new(),
        });
        let for_thread = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name(shared.config.thread_name.clone())
            .spawn(move || run(&for_thread))?;
        let writer_id = handle.thread().id();
        Ok(GroupCommit {
            shared,
            thread: Mutex::new(Some(handle)),
            writer_id,
        })
    }

    /// Queues a put of `value` under `key`; `ack` gets the result once it is committed.
    pub fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        ack: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) {
        let op = Op::Put {
            key: key.into(),
            value: value.into(),
        };
        self.enqueue(Payload::One(op), Box::new(ack));
    }

    /// Queues a delete of `key`; `ack` gets the result once it is committed.
    pub fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        ack: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) {
        let op = Op::Delete { key: key.into() };
        self.enqueue(Payload::One(op), Box::new(ack));
    }

    /// Queues every operation of `batch`, to be committed together in one transaction (a batch
    /// is never split between groups); `ack` gets the result. The batch's own durability is
    /// ignored: the [`SyncPolicy`] decides.
    pub fn submit(&self, batch: Batch, ack: impl FnOnce(Result<(), StoreError>) + Send + 'static) {
        self.enqueue(Payload::Many(batch.into_ops()), Box::new(ack));
    }

    /// Queues `payload`; after shutdown, acknowledges it at once with [`StoreError::Closed`].
    fn enqueue(&self, payload: Payload, ack: Ack) {
        let mut st = self.shared.lock();
        if st.closing || st.writer_gone {
            drop(st);
            ack(Err(StoreError::Closed));
            return;
        }
        let max = self.shared.config.max_batch;
        // The thread needs a nudge for the first pending write (it then waits out the
        // interval by itself) and when the batch fills up.
        let wake =
            st.queue.is_empty() || (st.queued_ops < max && st.queued_ops + payload.len() >= max);
        st.queued_ops += payload.len();
        st.next_seq += 1;
        st.stats.submissions += 1;
        st.queue.push_back(Entry {
            payload,
            ack,
            at: Instant::now(),
        });
        drop(st);
        if wake {
            self.shared.work.notify_one();
        }
    }

    /// Blocks until every write submitted before this call is committed and acknowledged (its
    /// callback has returned), and, under [`SyncPolicy::Interval`], synced to disk. Pending
    /// writes are committed at once, without waiting for the interval.
    ///
    /// Returns the first error of the transactions that carried those writes (each write's
    /// callback got its own error too), or the error of the sync. Calling it from a callback
    /// (on the commit thread, which would wait for itself) fails with
    /// [`StoreError::InCallback`].
    pub fn flush(&self) -> Result<(), StoreError> {
        if thread::current().id() == self.writer_id {
            return Err(StoreError::InCallback);
        }
        let st = self.shared.lock();
        self.flush_locked(st)
    }

    /// `flush` with the lock held; releases it.
    fn flush_locked(&self, mut st: MutexGuard<'_, State>) -> Result<(), StoreError> {
        let target = st.next_seq;
        if st.done_seq < target {
            let id = st.next_waiter;
            st.next_waiter += 1;
            st.waiters.push(Waiter {
                id,
                target,
                error: None,
            });
            self.shared.work.notify_one();
            while st.done_seq < target && !st.writer_gone {
                st = self
                    .shared
                    .done
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            let mine = st.waiters.iter().position(|w| w.id == id);
            let mut error = mine.and_then(|i| st.waiters.swap_remove(i).error);
            if st.done_seq < target {
                error.get_or_insert(StoreError::Closed);
            }
            if let Some(e) = error {
                return Err(e);
            }
        }
        drop(st);
        match self.shared.config.sync {
            SyncPolicy::EveryCommit => Ok(()),
            SyncPolicy::Interval(_) => self.shared.sync_if_needed(),
        }
    }

    /// Stops accepting writes (later ones are acknowledged with [`StoreError::Closed`]), commits
    /// everything pending, syncs, and joins the commit thread. Returns what [`flush`](Self::flush)
    /// would. Calling it again does nothing and returns `Ok`. Dropping the `GroupCommit` does
    /// the same and logs an error instead of returning it.
    pub fn shutdown(&self) -> Result<(), StoreError> {
        if thread::current().id() == self.writer_id {
            return Err(StoreError::InCallback);
        }
        let Some(handle) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return Ok(());
        };
        let mut st = self.shared.lock();
        st.closing = true;
        let result = self.flush_locked(st);
        self.shared.work.notify_one();
        if handle.join().is_err() {
            tracing::error!("group commit thread panicked");
        }
        tracing::debug!(stats = ?self.stats(), "group commit shut down");
        result
    }

    /// The store written to. Reads see a write once its transaction has committed, at the
    /// latest when it is acknowledged.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// The configuration.
    pub fn config(&self) -> &GroupCommitConfig {
        &self.shared.config
    }

    /// Counters so far.
    pub fn stats(&self) -> GroupCommitStats {
        self.shared.lock().stats
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        if thread::current().id() == self.writer_id {
            // Dropped by a callback that held the last reference: the commit thread cannot join
            // itself, so it is told to drain the queue and exit once the callbacks return.
            self.shared.lock().closing = true;
            self.shared.work.notify_one();
            return;
        }
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "group commit: writes failed while shutting down on drop");
        }
    }
}

/// Marks the thread gone when it exits, even by panic, and fails what is left in the queue so
/// that no flush waits forever and no callback is lost.
struct ExitGuard<'a>(&'a Shared);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        let left: Vec<Entry> = {
            let mut st = self.0.lock();
            st.writer_gone = true;
            st.queued_ops = 0;
            st.queue.drain(..).collect()
        };
        self.0.done.notify_all();
        for entry in left {
            (entry.ack)(Err(StoreError::Closed));
        }
    }
}

/// The commit thread.
fn run(shared: &Shared) {
    let _exit = ExitGuard(shared);
    let config = &shared.config;
    let durability = match config.sync {
        SyncPolicy::EveryCommit => Durability::Immediate,
        SyncPolicy::Interval(_) => Durability::Deferred,
    };
    tracing::debug!(?config, "group commit thread started");
    // Failed commits in a row: only the first of a run is an ERROR line (every write's
    // acknowledgement carries its error, for the caller to report as it sees fit).
    let mut failing: u64 = 0;
    let mut st = shared.lock();
    loop {
        let now = Instant::now();
        // A due sync goes first: under sustained load the queue is never empty, and waiting
        // for it to drain would let the unsynced history grow without bound.
        if st.sync_due.is_some_and(|due| now >= due) {
            drop(st);
            // Errors are logged inside, and retried later.
            let _ = shared.sync_if_needed();
            st = shared.lock();
            continue;
        }
        if let Some(oldest) = st.queue.front() {
            let first_seq = st.done_seq;
            let urgent = st.closing
                || st.queued_ops >= config.max_batch
                || st.waiters.iter().any(|w| w.target > first_seq);
            // `None`: an interval too long to represent, never by the clock.
            let deadline = oldest.at.checked_add(config.interval);
            if !urgent && deadline.is_none_or(|deadline| now < deadline) {
                let until = match (deadline, st.sync_due) {
                    (Some(deadline), Some(due)) => Some(deadline.min(due)),
                    (deadline, due) => deadline.or(due),
                };
                st = match until {
                    Some(until) => wait(&shared.work, st, until.saturating_duration_since(now)),
                    None => shared.work.wait(st).unwrap_or_else(PoisonError::into_inner),
                };
                continue;
            }
            // Take whole submissions up to max_batch operations (at least one submission).
            let mut group = Vec::new();
            let mut ops = 0;
            while let Some(next) = st.queue.front() {
                let n = next.payload.len();
                if !group.is_empty() && ops + n > config.max_batch {
                    break;
                }
                ops += n;
                group.extend(st.queue.pop_front());
            }
            st.queued_ops -= ops;
            drop(st);

            let (written, result) = commit(shared.store.as_ref(), &mut group, durability);
            match &result {
                Err(e) if failing == 0 => tracing::error!(
                    error = %e,
                    writes = group.len(),
                    "group commit failed; later failures are logged at debug level until a \
                     commit succeeds (each write is acknowledged with the error)"
                ),
                Err(e) => tracing::debug!(error = %e, writes = group.len(), "group commit failed"),
                Ok(()) if failing > 0 => tracing::warn!(
                    failed_commits = failing,
                    "group commit succeeded again after failed commits"
                ),
                Ok(()) => {}
            }
            failing = if result.is_ok() { 0 } else { failing + 1 };
            // Counted before the callbacks run, so that whoever learns of a commit from its
            // acknowledgement finds it in the stats. A group of empty batches wrote nothing:
            // no transaction to count.
            {
                let mut st = shared.lock();
                match &result {
                    Ok(()) if written > 0 => {
                        st.stats.commits += 1;
                        st.stats.ops_written += written as u64;
                        if let SyncPolicy::Interval(every) = config.sync {
                            st.deferred_commits += 1;
                            if let Some(due) = Instant::now().checked_add(every) {
                                st.sync_due.get_or_insert(due);
                            }
                        }
                    }
                    Ok(()) => {}
                    Err(_) => st.stats.failed_commits += 1,
                }
            }
            let count = group.len() as u64;
            for entry in group {
                let ack = entry.ack;
                let r = result.clone();
                if catch_unwind(AssertUnwindSafe(move || ack(r))).is_err() {
                    tracing::error!("a group commit callback panicked");
                }
            }

            st = shared.lock();
            let lo = st.done_seq;
            st.done_seq += count;
            for w in st.waiters.iter_mut().filter(|w| w.target > lo) {
                if let Err(e) = &result {
                    w.error.get_or_insert_with(|| e.clone());
                }
            }
            shared.done.notify_all();
            continue;
        }
        if st.closing {
            break;
        }
        match st.sync_due {
            Some(due) => st = wait(&shared.work, st, due.saturating_duration_since(now)),
            None => st = shared.work.wait(st).unwrap_or_else(PoisonError::into_inner),
        }
    }
    drop(st);
    if let SyncPolicy::Interval(_) = config.sync {
        // Shutdown's flush synced already unless a write raced it; make sure.
        let _ = shared.sync_if_needed();
    }
    tracing::debug!("group commit thread exiting");
}

/// Delay before retrying a failed background sync.
fn retry_after(config: &GroupCommitConfig) -> Duration {
    match config.sync {
        SyncPolicy::Interval(every) => every.max(Duration::from_millis(10)),
        SyncPolicy::EveryCommit => Duration::from_millis(10),
    }
}

fn wait<'a>(cv: &Condvar, st: MutexGuard<'a, State>, timeout: Duration) -> MutexGuard<'a, State> {
    cv.wait_timeout(st, timeout)
        .unwrap_or_else(PoisonError::into_inner)
        .0
}

/// Writes a group as one batch, the last write to each key winning. Returns the number of
/// operations written and the result.
fn commit(
    store: &dyn Store,
    group: &mut [Entry],
    durability: Durability,
) -> (usize, Result<(), StoreError>) {
    let mut last: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    for entry in group.iter_mut() {
        let ops = match std::mem::replace(&mut entry.payload, Payload::Many(Vec::new())) {
            Payload::One(op) => vec![op],
            Payload::Many(ops) => ops,
        };
        for op in ops {
            match op {
                Op::Put { key, value } => last.insert(key, Some(value)),
                Op::Delete { key } => last.insert(key, None),
            };
        }
    }
    if last.is_empty() {
        return (0, Ok(()));
    }
    let mut batch: Batch = last
        .into_iter()
        .map(|(key, value)| match value {
            Some(value) => Op::Put { key, value },
            None => Op::Delete { key },
        })
        .collect();
    batch.set_durability(durability);
    let n = batch.len();
    (
        n,
        guarded(|| store.write_batch(batch), Operation::WriteBatch),
    )
}
