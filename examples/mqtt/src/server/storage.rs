//! The broker's state in the embedded store: persistent sessions, by part, and retained
//! messages, by topic.
//!
//! Keys (one redb table, sorted bytes):
//!
//! | key | value |
//! | --- | --- |
//! | `sd` client id | the session's [`DeliveryState`]: in flight, incoming QoS 2, when it went away; its presence marks a stored session |
//! | `ss` client id | the session's subscriptions |
//! | `sq` length (u16, big-endian) client id seq (u64, big-endian) | one queued message |
//! | `r` topic | a retained message |
//!
//! Writes go through a [`GroupCommit`]: many sessions' changes in one fsync'ed transaction,
//! every 2 ms at most; a client's acknowledgements wait for them (see the README's
//! "Persistence"), the rest of the broker does not.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use hermes::Reply;
use hermes::store::{
    Batch, Codec, GroupCommit, GroupCommitConfig, RedbOptions, RedbStore, Store, StoreError,
    SyncPolicy,
};

use super::Durable;
use super::throttle::{self, Throttle};
use crate::message::Message;
use crate::packet::QoS;
use crate::session::{Changes, DeliveryState, QueueState, Session, SessionState};
use crate::topic::{TopicFilter, TopicName};

const DELIVERY: Codec<DeliveryState> = Codec::new(1);
const SUBSCRIPTIONS: Codec<BTreeMap<TopicFilter, QoS>> = Codec::new(1);
const MESSAGE: Codec<Message> = Codec::new(1);

/// The name of the database file in the data directory.
pub(crate) const FILE: &str = "hermes-mqtt.redb";

/// A persistent session as found at startup: what the subscription index and the expiry
/// timers need.
#[derive(Debug)]
pub(crate) struct StoredSession {
    pub(crate) client_id: String,
    pub(crate) subscriptions: BTreeMap<TopicFilter, QoS>,
    pub(crate) offline_since_ms: Option<u64>,
}

/// The store and its group commit.
pub(crate) struct Storage {
    store: Arc<dyn Store>,
    commits: GroupCommit,
    /// Submissions not yet acknowledged, per client ID: a session activated meanwhile must
    /// not read older state (group commit's reads see a write once it is acknowledged).
    pending: Arc<Mutex<HashMap<Arc<str>, u32>>>,
    /// The writes that failed since the start: counted, logged without flooding the log, and
    /// the first kept for the shutdown to report (what they held is not on disk).
    errors: Arc<Errors>,
    /// Writes submitted and not yet acknowledged: what a crash now would lose.
    unsaved: Arc<AtomicU64>,
    path: PathBuf,
}

/// One write not yet acknowledged, counted in [`Storage::unsaved`] until its callback has run
/// (or was dropped unrun).
struct Unsaved(Arc<AtomicU64>);

impl Unsaved {
    fn new(count: &Arc<AtomicU64>) -> Unsaved {
        count.fetch_add(1, Ordering::AcqRel);
        Unsaved(Arc::clone(count))
    }
}

impl Drop for Unsaved {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The failed writes, shared with the commit callbacks. A store that fails once (a full
/// disk) usually fails every write after, many a second: the first is logged at once, the
/// rest once per [`throttle::PERIOD`] as a count.
#[derive(Debug)]
struct Errors {
    first: Mutex<Option<StoreError>>,
    count: AtomicU64,
    log: Throttle,
}

impl Errors {
    fn new() -> Self {
        Self {
            first: Mutex::new(None),
            count: AtomicU64::new(0),
            log: Throttle::new(
                ("failed store write", "failed store writes"),
                throttle::Level::Error,
                throttle::PERIOD,
            ),
        }
    }

    /// A write failed: `what` it was, and of which session or topic (`subject`).
    fn record(&self, what: &str, subject: &str, error: &StoreError) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(|| error.clone());
        let detail = || format!("{what} {subject} failed: {error}");
        if let Some(unlogged) = self.log.note(Instant::now(), detail) {
            tracing::error!(
                "{what} {subject} failed: {error}{}. Free space (or fix what the error names): \
                 the store reopens its file and writes again by itself; what failed meanwhile \
                 is not retried. Store errors are counted in hermes_mqtt_store_errors_total and logged at most once \
                 per {} s",
                throttle::unlogged(unlogged),
                throttle::PERIOD.as_secs()
            );
        }
    }

    fn take_first(&self) -> Option<StoreError> {
        self.first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn delivery_key(id: &str) -> Vec<u8> {
    [b"sd", id.as_bytes()].concat()
}

fn subscriptions_key(id: &str) -> Vec<u8> {
    [b"ss", id.as_bytes()].concat()
}

fn queue_prefix(id: &str) -> Vec<u8> {
    let len = u16::try_from(id.len()).unwrap_or(u16::MAX);
    [b"sq".as_slice(), &len.to_be_bytes(), id.as_bytes()].concat()
}

fn queue_key(id: &str, seq: u64) -> Vec<u8> {
    let mut key = queue_prefix(id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn retained_key(topic: &TopicName) -> Vec<u8> {
    [b"r", topic.as_bytes()].concat()
}

impl Storage {
    /// Opens (or creates) the database in `dir`. Every page's checksum is verified first, so a
    /// file damaged outside redb is refused with [`StoreError::Corrupt`] (redb would panic on
    /// it, at startup or later on a read).
    pub(crate) fn open(dir: &Path) -> Result<Storage, StoreError> {
        let path = dir.join(FILE);
        let options = RedbOptions::new().check_integrity_on_open(true);
        let store: Arc<dyn Store> = Arc::new(RedbStore::open_with(&path, &options)?);
        let config = GroupCommitConfig::new()
            .sync(SyncPolicy::EveryCommit)
            .thread_name("hermes-mqtt-commit");
        let commits =
            GroupCommit::start(Arc::clone(&store), config).map_err(|e| StoreError::Open {
                path: path.clone(),
                source: Arc::new(e),
            })?;
        Ok(Storage {
            store,
            commits,
            pending: Arc::default(),
            errors: Arc::new(Errors::new()),
            unsaved: Arc::default(),
            path,
        })
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Every stored persistent session's subscriptions and time of leaving.
    pub(crate) fn scan_sessions(&self) -> Result<Vec<StoredSession>, StoreError> {
        let mut subscriptions: HashMap<Vec<u8>, BTreeMap<TopicFilter, QoS>> = HashMap::new();
        for (key, value) in self.store.scan_prefix(b"ss")? {
            let Some(id) = key.get(2..) else { continue };
            match SUBSCRIPTIONS.decode(&value) {
                Ok(subs) => {
                    subscriptions.insert(id.to_vec(), subs);
                }
                Err(e) => {
                    tracing::error!(error = %e.with_key(&key), "skipping a session's subscriptions that do not load")
                }
            }
        }
        let mut sessions = Vec::new();
        for (key, value) in self.store.scan_prefix(b"sd")? {
            let Some(id) = key.get(2..) else { continue };
            let Ok(client_id) = std::str::from_utf8(id) else {
                tracing::error!(key = ?key, "skipping a stored session whose client ID is not UTF-8");
                continue;
            };
            let delivery = match DELIVERY.decode(&value) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e.with_key(&key), "skipping a stored session that does not load");
                    continue;
                }
            };
            sessions.push(StoredSession {
                client_id: client_id.to_owned(),
                subscriptions: subscriptions.remove(id).unwrap_or_default(),
                offline_since_ms: delivery.offline_since_ms(),
            });
        }
        Ok(sessions)
    }

    /// The stored state of session `id`, if it is a stored persistent session.
    pub(crate) fn load_session(&self, id: &Arc<str>) -> Result<Option<SessionState>, StoreError> {
        let pending = self.lock_pending().get(id).copied().unwrap_or(0);
        if pending > 0 {
            // HERMES: a factory cannot wait for anything asynchronously; group commit's reads
            // see a write only once it is acknowledged, so a session re-activated within a
            // commit interval of its last write waits (a few ms, on the shard) for it here.
            self.commits.flush()?;
        }
        let Some(bytes) = self.store.get(&delivery_key(id))? else {
            return Ok(None);
        };
        let delivery = DELIVERY
            .decode(&bytes)
            .map_err(|e| e.with_key(&delivery_key(id)))?;
        let subscriptions = match self.store.get(&subscriptions_key(id))? {
            Some(bytes) => SUBSCRIPTIONS
                .decode(&bytes)
                .map_err(|e| e.with_key(&subscriptions_key(id)))?,
            None => BTreeMap::new(),
        };
        let prefix = queue_prefix(id);
        let mut first_seq = None;
        let mut messages = Vec::new();
        for (key, value) in self.store.scan_prefix(&prefix)? {
            let seq = key
                .get(prefix.len()..)
                .and_then(|s| <[u8; 8]>::try_from(s).ok())
                .map(u64::from_be_bytes);
            let Some(seq) = seq else { continue };
            let expected = first_seq.map(|first: u64| first.checked_add(messages.len() as u64));
            if expected.is_some_and(|e| e != Some(seq)) {
                tracing::error!(client_id = %id, seq, "a stored session's queue has a gap; later messages are skipped");
                break;
            }
            first_seq.get_or_insert(seq);
            messages.push(MESSAGE.decode(&value).map_err(|e| e.with_key(&key))?);
        }
        let queue = QueueState::from_parts(first_seq.unwrap_or(0), messages);
        Ok(Some(SessionState {
            subscriptions,
            delivery,
            queue,
        }))
    }

    /// Stores what `changes` says changed in `session` (a stored persistent one); `until_saved`
    /// is dropped once that is committed (or has failed), at once if nothing changed. Returns
    /// how many queued messages it submitted.
    pub(crate) fn save_session(
        &self,
        id: &Arc<str>,
        session: &Session,
        changes: &Changes,
        until_saved: Vec<Durable>,
    ) -> u64 {
        let state = session.state();
        let mut batch = Batch::new();
        if changes.subscriptions {
            match SUBSCRIPTIONS.encode(&state.subscriptions) {
                Ok(bytes) => {
                    batch.put(subscriptions_key(id), bytes);
                }
                Err(e) => {
                    tracing::error!(client_id = %id, error = %e, "cannot encode subscriptions")
                }
            }
        }
        if changes.delivery {
            match DELIVERY.encode(&state.delivery) {
                Ok(bytes) => {
                    batch.put(delivery_key(id), bytes);
                }
                Err(e) => tracing::error!(client_id = %id, error = %e, "cannot encode a session"),
            }
        }
        for seq in changes.queue_removed.clone() {
            batch.delete(queue_key(id, seq));
        }
        let mut queued = 0;
        for seq in changes.queue_added.clone() {
            let Some(message) = state.queue.get(seq) else {
                continue;
            };
            match MESSAGE.encode(message) {
                Ok(bytes) => {
                    batch.put(queue_key(id, seq), bytes);
                    queued += 1;
                }
                Err(e) => tracing::error!(client_id = %id, error = %e, "cannot encode a message"),
            }
        }
        self.submit(id, batch, until_saved);
        queued
    }

    /// Deletes session `id`: its two keys and its queued messages `queue`.
    pub(crate) fn delete_session(&self, id: &Arc<str>, queue: Range<u64>) {
        let mut batch = Batch::new();
        batch.delete(delivery_key(id)).delete(subscriptions_key(id));
        for seq in queue {
            batch.delete(queue_key(id, seq));
        }
        self.submit(id, batch, Vec::new());
    }

    /// Deletes session `id` entirely, whatever its queue holds (for sessions found expired at
    /// startup).
    pub(crate) fn purge_session(&self, id: &str) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        batch.delete(delivery_key(id)).delete(subscriptions_key(id));
        for (key, _) in self.store.scan_prefix(&queue_prefix(id))? {
            batch.delete(key);
        }
        self.store.write_batch(batch)
    }

    fn submit(&self, id: &Arc<str>, batch: Batch, until_saved: Vec<Durable>) {
        if batch.is_empty() {
            return;
        }
        *self.lock_pending().entry(Arc::clone(id)).or_insert(0) += 1;
        let pending = Arc::clone(&self.pending);
        let errors = Arc::clone(&self.errors);
        let id = Arc::clone(id);
        let unsaved = Unsaved::new(&self.unsaved);
        self.commits.submit(batch, move |result| {
            let _saved = unsaved;
            drop(until_saved);
            if let Err(error) = result {
                errors.record("storing the session of", &id, &error);
            }
            let mut map = pending.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = map.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&id);
                }
            }
        });
    }

    /// Every stored retained message.
    pub(crate) fn load_retained(&self) -> Result<Vec<Message>, StoreError> {
        let mut messages = Vec::new();
        for (key, value) in self.store.scan_prefix(b"r")? {
            match MESSAGE.decode(&value) {
                Ok(message) => messages.push(message),
                Err(e) => {
                    tracing::error!(error = %e.with_key(&key), "skipping a retained message that does not load")
                }
            }
        }
        Ok(messages)
    }

    /// Stores `message` as its topic's retained message; answers `done`, if any, once that is
    /// committed (or has failed).
    pub(crate) fn save_retained(&self, message: &Message, done: Option<Reply<()>>) {
        let bytes = match MESSAGE.encode(message) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(topic = %message.topic.as_str(), error = %e, "cannot encode a retained message");
                return;
            }
        };
        let topic = message.topic.as_str().to_owned();
        let errors = Arc::clone(&self.errors);
        let unsaved = Unsaved::new(&self.unsaved);
        self.commits
            .put(retained_key(&message.topic), bytes, move |result| {
                let _saved = unsaved;
                if let Err(error) = result {
                    errors.record("storing the retained message of", &topic, &error);
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
            });
    }

    /// Deletes the retained message of `topic`; answers `done`, if any, once that is
    /// committed (or has failed).
    pub(crate) fn delete_retained(&self, topic: &TopicName, done: Option<Reply<()>>) {
        let name = topic.as_str().to_owned();
        let errors = Arc::clone(&self.errors);
        let unsaved = Unsaved::new(&self.unsaved);
        self.commits.delete(retained_key(topic), move |result| {
            let _saved = unsaved;
            if let Err(error) = result {
                errors.record("deleting the retained message of", &name, &error);
            }
            if let Some(done) = done {
                let _ = done.send(());
            }
        });
    }

    /// Waits until everything submitted is committed, then stops the commit thread. Fails
    /// if that last commit did, or else if any write since the start did (the first error):
    /// either way, the file lacks changes the broker acknowledged.
    pub(crate) fn shutdown(&self) -> Result<(), StoreError> {
        let last = self.commits.shutdown();
        self.errors.log.log_pending(Instant::now(), true);
        last?;
        self.errors.take_first().map_or(Ok(()), Err)
    }

    /// How many writes were submitted and not yet committed (or failed): what a crash now
    /// would lose.
    pub(crate) fn unsaved(&self) -> u64 {
        self.unsaved.load(Ordering::Acquire)
    }

    /// How many writes have failed since the start.
    pub(crate) fn errors(&self) -> u64 {
        self.errors.count.load(Ordering::Relaxed)
    }

    /// Logs how many writes failed without a line of their own, if that is due at `now`.
    pub(crate) fn log_errors(&self, now: Instant) {
        self.errors.log.log_pending(now, false);
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, u32>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
