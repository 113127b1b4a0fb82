//! Group commit: coalescing, acknowledgment after the write, errors to every caller, flush,
//! shutdown and drop, sync policies.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use hermes_store::{
    Batch, Durability, Entries, GroupCommit, GroupCommitConfig, MemoryStore, Operation, Store,
    StoreError, SyncPolicy,
};

mod support;
use support::Probe;

const LONG: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(10);

fn start(probe: &Arc<Probe>, config: GroupCommitConfig) -> GroupCommit {
    let store: Arc<dyn Store> = probe.clone();
    GroupCommit::start(store, config).unwrap()
}

/// A callback that forwards its result to a channel.
fn acker(
    tx: &Sender<Result<(), StoreError>>,
) -> impl FnOnce(Result<(), StoreError>) + Send + 'static {
    let tx = tx.clone();
    move |r| tx.send(r).unwrap()
}

fn recv_n(rx: &Receiver<Result<(), StoreError>>, n: usize) -> Vec<Result<(), StoreError>> {
    (0..n)
        .map(|_| rx.recv_timeout(WAIT).expect("acknowledgment"))
        .collect()
}

#[test]
fn concurrent_submissions_share_few_transactions() {
    let probe = Probe::new();
    *probe.delay.lock().unwrap() = Duration::from_millis(2);
    let gc = Arc::new(start(
        &probe,
        GroupCommitConfig::new().interval(Duration::from_millis(10)),
    ));
    const THREADS: usize = 8;
    const EACH: usize = 100;
    let (tx, rx) = mpsc::channel();
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let gc = Arc::clone(&gc);
            let tx = tx.clone();
            thread::spawn(move || {
                for i in 0..EACH {
                    gc.put(format!("t{t}/{i:03}"), vec![t as u8; 16], acker(&tx));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let acks = recv_n(&rx, THREADS * EACH);
    assert!(acks.iter().all(Result::is_ok));
    gc.flush().unwrap();

    let batches = probe.batches();
    let written: usize = batches.iter().map(|(n, _)| n).sum();
    assert_eq!(written, THREADS * EACH);
    assert!(
        batches.len() * 8 <= THREADS * EACH,
        "{} submissions took {} transactions",
        THREADS * EACH,
        batches.len()
    );
    assert!(
        batches
            .iter()
            .all(|(n, d)| *n <= 1024 && *d == Durability::Immediate)
    );
    let stats = gc.stats();
    assert_eq!(stats.submissions, (THREADS * EACH) as u64);
    assert_eq!(stats.commits, batches.len() as u64);
    assert_eq!(stats.ops_written, (THREADS * EACH) as u64);
    assert_eq!(stats.failed_commits, 0);
    assert_eq!(probe.scan_prefix(b"t").unwrap().len(), THREADS * EACH);
}

#[test]
fn acknowledgment_comes_only_after_the_write_returned() {
    let probe = Probe::new();
    probe.close_gate();
    let gc = start(&probe, GroupCommitConfig::new().interval(Duration::ZERO));
    let (tx, rx) = mpsc::channel();
    let reader = Arc::clone(&probe);
    gc.put("k", "v", move |r| {
        // At acknowledgment time the write is done and visible.
        let visible = reader.get(b"k").unwrap();
        let mid_write = reader.writing.load(Ordering::SeqCst);
        tx.send((r, visible, mid_write)).unwrap();
    });
    // The transaction is blocked: no acknowledgment may arrive.
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    assert_eq!(probe.get(b"k").unwrap(), None);
    probe.open_gate();
    let (result, visible, mid_write) = rx.recv_timeout(WAIT).unwrap();
    result.unwrap();
    assert_eq!(visible, Some(b"v".to_vec()));
    assert!(!mid_write);
}

#[test]
fn later_writes_to_a_key_win_within_a_group() {
    let probe = Probe::new();
    let gc = start(&probe, GroupCommitConfig::new().interval(LONG));
    let (tx, rx) = mpsc::channel();
    probe.put(b"b", b"old").unwrap();
    gc.put("a", "1", acker(&tx));
    gc.put("b", "1", acker(&tx));
    gc.put("a", "2", acker(&tx));
    gc.delete("b", acker(&tx));
    let mut batch = Batch::new();
    batch.put("c", "1").put("a", "3").delete("d");
    gc.submit(batch, acker(&tx));
    // The interval is an hour: flush must commit at once.
    let started = Instant::now();
    gc.flush().unwrap();
    assert!(started.elapsed() < WAIT);
    assert!(recv_n(&rx, 5).iter().all(Result::is_ok));
    // One transaction, one op per distinct key (a, b, c, d).
    assert_eq!(probe.batches(), vec![(4, Durability::Immediate)]);
    assert_eq!(probe.get(b"a").unwrap(), Some(b"3".to_vec()));
    assert_eq!(probe.get(b"b").unwrap(), None);
    assert_eq!(probe.get(b"c").unwrap(), Some(b"1".to_vec()));
    assert_eq!(gc.stats().ops_written, 4);
}

#[test]
fn max_batch_bounds_a_group_but_never_splits_a_submission() {
    let probe = Probe::new();
    probe.close_gate();
    let gc = start(&probe, GroupCommitConfig::new().interval(LONG).max_batch(3));
    let (tx, rx) = mpsc::channel();
    for i in 0..7 {
        gc.put(format!("k{i}"), "v", acker(&tx));
    }
    let mut big = Batch::new();
    for i in 0..5 {
        big.put(format!("big{i}"), "v");
    }
    gc.submit(big, acker(&tx));
    gc.put("last", "v", acker(&tx));
    probe.open_gate();
    gc.flush().unwrap();
    assert!(recv_n(&rx, 9).iter().all(Result::is_ok));
    let sizes: Vec<usize> = probe.batches().iter().map(|(n, _)| *n).collect();
    // Reaching max_batch commits without waiting for the (hour-long) interval.
    assert_eq!(sizes, vec![3, 3, 1, 5, 1]);
}

#[test]
fn a_failed_transaction_reports_to_every_callback_and_to_flush() {
    let probe = Probe::new();
    probe.fail.store(true, Ordering::SeqCst);
    let gc = start(&probe, GroupCommitConfig::new().interval(LONG));
    let (tx, rx) = mpsc::channel();
    for i in 0..5 {
        gc.put(format!("k{i}"), "v", acker(&tx));
    }
    let flushed = gc.flush().unwrap_err();
    assert!(
        flushed.to_string().contains("simulated disk failure"),
        "{flushed}"
    );
    let acks = recv_n(&rx, 5);
    for ack in &acks {
        let err = ack.as_ref().unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Backend {
                    op: Operation::WriteBatch,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("nothing was written"), "{err}");
    }
    assert_eq!(gc.stats().failed_commits, 1);
    assert_eq!(gc.stats().commits, 0);
    assert!(probe.scan_prefix(b"").unwrap().is_empty());

    // The committer recovers when the store does; an old failure does not taint a new flush.
    probe.fail.store(false, Ordering::SeqCst);
    gc.put("after", "v", acker(&tx));
    gc.flush().unwrap();
    recv_n(&rx, 1).pop().unwrap().unwrap();
    assert_eq!(probe.get(b"after").unwrap(), Some(b"v".to_vec()));
}

/// A store whose write panics: the panic becomes an error for the callers, not a dead thread.
struct Panicky;

impl Store for Panicky {
    fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
    fn put(&self, _: &[u8], _: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    fn delete(&self, _: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    fn scan_prefix(&self, _: &[u8]) -> Result<Entries, StoreError> {
        Ok(Vec::new())
    }
    fn write_batch(&self, _: Batch) -> Result<(), StoreError> {
        panic!("store bug");
    }
}

#[test]
fn a_panicking_store_fails_the_group_and_the_thread_survives() {
    let gc = GroupCommit::start(Arc::new(Panicky), GroupCommitConfig::new()).unwrap();
    let (tx, rx) = mpsc::channel();
    gc.put("a", "1", acker(&tx));
    let err = recv_n(&rx, 1).pop().unwrap().unwrap_err();
    assert!(err.to_string().contains("store bug"), "{err}");
    // A bug, not a full disk: no advice about disk space, and no claim that nothing was
    // written (it used to be a `Backend` error saying both).
    assert!(matches!(err, StoreError::Other { .. }), "{err:?}");
    assert!(!err.to_string().contains("disk space"), "{err}");
    assert!(err.to_string().contains("not known"), "{err}");
    gc.put("b", "1", acker(&tx));
    // flush reports the failure of the transaction that carried "b"...
    let err = gc.flush().unwrap_err();
    assert!(err.to_string().contains("store bug"), "{err}");
    assert!(recv_n(&rx, 1).pop().unwrap().is_err());
    // ...and once nothing is pending, there is nothing to report.
    assert!(gc.flush().is_ok());
}

#[test]
fn a_panicking_callback_does_not_stop_commits() {
    let probe = Probe::new();
    let gc = start(&probe, GroupCommitConfig::new());
    let (tx, rx) = mpsc::channel();
    gc.put("a", "1", |_| panic!("callback bug"));
    gc.put("b", "1", acker(&tx));
    recv_n(&rx, 1).pop().unwrap().unwrap();
    gc.put("c", "1", acker(&tx));
    recv_n(&rx, 1).pop().unwrap().unwrap();
    assert_eq!(probe.scan_prefix(b"").unwrap().len(), 3);
}

#[test]
fn drop_flushes_everything_and_joins() {
    let probe = Probe::new();
    let (tx, rx) = mpsc::channel();
    {
        let gc = start(
            &probe,
            GroupCommitConfig::new()
                .interval(LONG)
                .thread_name("test-commit"),
        );
        for i in 0..3 {
            gc.put(format!("k{i}"), "v", acker(&tx));
        }
        assert!(
            probe.batches().is_empty(),
            "nothing is due within the interval"
        );
    }
    // Dropped: every write committed and acknowledged before drop returned.
    let acks: Vec<_> = rx.try_iter().collect();
    assert_eq!(acks.len(), 3);
    assert!(acks.iter().all(Result::is_ok));
    assert_eq!(probe.scan_prefix(b"k").unwrap().len(), 3);
    assert_eq!(probe.batches().len(), 1);
}

#[test]
fn writes_after_shutdown_are_refused() {
    let probe = Probe::new();
    let gc = start(&probe, GroupCommitConfig::new());
    let (tx, rx) = mpsc::channel();
    gc.put("before", "v", acker(&tx));
    gc.shutdown().unwrap();
    recv_n(&rx, 1).pop().unwrap().unwrap();
    gc.put("after", "v", acker(&tx));
    let err = rx.try_recv().expect("refused at once").unwrap_err();
    assert!(matches!(err, StoreError::Closed), "{err:?}");
    assert!(err.to_string().contains("shut down"), "{err}");
    assert!(gc.shutdown().is_ok(), "shutdown is idempotent");
    assert!(gc.flush().is_ok(), "nothing pending");
    assert_eq!(probe.get(b"after").unwrap(), None);
}

#[test]
fn flush_from_a_callback_is_an_error_not_a_deadlock() {
    let probe = Probe::new();
    let gc = Arc::new(start(&probe, GroupCommitConfig::new()));
    let (tx, rx) = mpsc::channel();
    let inner = Arc::clone(&gc);
    gc.put("k", "v", move |_| {
        tx.send((inner.flush(), inner.shutdown())).unwrap();
    });
    let (flush, shutdown) = rx.recv_timeout(WAIT).unwrap();
    assert!(matches!(flush, Err(StoreError::InCallback)), "{flush:?}");
    assert!(
        matches!(shutdown, Err(StoreError::InCallback)),
        "{shutdown:?}"
    );
    gc.flush().unwrap();
}

#[test]
fn interval_policy_commits_deferred_and_syncs_in_the_background() {
    let probe = Probe::new();
    let gc = start(
        &probe,
        GroupCommitConfig::new().sync(SyncPolicy::Interval(Duration::from_millis(20))),
    );
    let (tx, rx) = mpsc::channel();
    gc.put("a", "1", acker(&tx));
    recv_n(&rx, 1).pop().unwrap().unwrap();
    assert_eq!(probe.batches(), vec![(1, Durability::Deferred)]);
    // The background sync comes by itself.
    let deadline = Instant::now() + WAIT;
    // `stats().syncs` counts syncs that have returned (the probe counts those begun).
    while gc.stats().syncs == 0 {
        assert!(Instant::now() < deadline, "no background sync");
        thread::sleep(Duration::from_millis(5));
    }
    // Nothing new: flush need not sync again. Something new: flush syncs before returning.
    let syncs = probe.syncs.load(Ordering::SeqCst);
    gc.flush().unwrap();
    assert_eq!(probe.syncs.load(Ordering::SeqCst), syncs);
    gc.put("b", "1", acker(&tx));
    gc.flush().unwrap();
    // (A background sync racing the flush may add one more.)
    assert!(probe.syncs.load(Ordering::SeqCst) > syncs);
    assert!(gc.stats().syncs >= 2);
}

/// Each acknowledgment submits the next write (from the callback, before the commit thread
/// looks at its queue again), so the queue is never empty: sustained load.
fn chain(gc: &Arc<GroupCommit>, probe: &Arc<Probe>, left: u32, done: Sender<usize>) {
    let (next, probe_then) = (Arc::clone(gc), Arc::clone(probe));
    gc.put(format!("k{left}"), "v", move |r| {
        r.unwrap();
        if left == 0 {
            done.send(probe_then.syncs.load(Ordering::SeqCst)).unwrap();
        } else {
            chain(&next, &probe_then, left - 1, done);
        }
    });
}

#[test]
fn interval_policy_syncs_under_sustained_load_not_only_when_idle() {
    let probe = Probe::new();
    // A sync is due as soon as a deferred commit returned.
    let config = GroupCommitConfig::new()
        .interval(Duration::ZERO)
        .sync(SyncPolicy::Interval(Duration::ZERO));
    let gc = Arc::new(start(&probe, config));
    let (tx, rx) = mpsc::channel();
    chain(&gc, &probe, 20, tx);
    let syncs_during_load = rx.recv_timeout(WAIT).expect("the chain finished");
    assert!(
        syncs_during_load > 0,
        "20 deferred commits back to back and not one sync: the loss window grows without bound"
    );
    gc.flush().unwrap();
    assert_eq!(probe.batches().len(), 21);
}

#[test]
fn every_commit_policy_never_needs_a_separate_sync() {
    let probe = Probe::new();
    let gc = start(&probe, GroupCommitConfig::new());
    let (tx, rx) = mpsc::channel();
    gc.put("a", "1", acker(&tx));
    gc.flush().unwrap();
    gc.shutdown().unwrap();
    recv_n(&rx, 1).pop().unwrap().unwrap();
    assert_eq!(probe.syncs.load(Ordering::SeqCst), 0);
    assert_eq!(probe.batches(), vec![(1, Durability::Immediate)]);
}

#[cfg(feature = "redb")]
#[test]
fn group_commit_on_redb_persists_across_reopen() {
    use hermes_store::RedbStore;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("group.redb");
    for policy in [
        SyncPolicy::EveryCommit,
        SyncPolicy::Interval(Duration::from_millis(50)),
    ] {
        {
            let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
            let gc = GroupCommit::start(store, GroupCommitConfig::new().sync(policy)).unwrap();
            let (tx, rx) = mpsc::channel();
            for i in 0..200 {
                gc.put(format!("{policy:?}/{i:03}"), vec![1u8; 64], acker(&tx));
            }
            gc.delete(format!("{policy:?}/000"), acker(&tx));
            gc.shutdown().unwrap();
            assert!(recv_n(&rx, 201).iter().all(Result::is_ok));
            assert!(gc.stats().commits < 201);
        }
        let store = RedbStore::open(&path).unwrap();
        let rows = store
            .scan_prefix(format!("{policy:?}/").as_bytes())
            .unwrap();
        assert_eq!(rows.len(), 199, "{policy:?}");
    }
}

/// Any `Duration` is a valid interval: one too long to represent (`Duration::MAX`) means
/// "never by the clock", for the commit interval and for `SyncPolicy::Interval`. Writes then
/// commit when a batch fills up, on `flush` and on shutdown; the commit thread does not panic
/// on the deadline's overflow.
#[test]
fn an_interval_too_long_to_represent_means_never_by_the_clock() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let config = GroupCommitConfig::new()
        .interval(Duration::MAX)
        .max_batch(2)
        .sync(SyncPolicy::Interval(Duration::MAX));
    let commits = GroupCommit::start(Arc::clone(&store), config).unwrap();
    let (tx, rx) = mpsc::channel();
    for key in ["a", "b"] {
        let tx = tx.clone();
        commits.put(key, b"1".to_vec(), move |r| drop(tx.send(r)));
    }
    // A full batch commits at once.
    for _ in 0..2 {
        assert!(rx.recv_timeout(Duration::from_secs(60)).unwrap().is_ok());
    }
    commits.put("c", b"1".to_vec(), move |r| drop(tx.send(r)));
    commits.flush().unwrap();
    assert!(rx.try_recv().unwrap().is_ok());
    commits.shutdown().unwrap();
    assert_eq!(store.scan_prefix(b"").unwrap().len(), 3);
}
