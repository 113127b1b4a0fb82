//! Durable state on a JetStream key-value bucket, with compare-and-set on revisions.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use hermes_store::{Batch, Entries, Op, Operation, Store, StoreError};
use tokio::runtime::Handle;

use crate::membership::Lease;
use crate::node::max_frame;

/// A [`Store`] on a JetStream key-value bucket (`hermes_{cluster}_state`): every node of the
/// cluster sees the same state, so a receiver's state follows it to whichever node owns it.
///
/// Writes are compare-and-set: the store remembers, per key, the revision this process last
/// read or wrote (a delete's too), and a put or delete expects the bucket to still be at that
/// revision (one read as absent: still absent). If
/// another node wrote the key since (it owns the receiver now, and this node is a stale owner,
/// say on the wrong side of a partition), the write fails with [`StoreError::Conflict`] and is
/// not applied: the receiver should deactivate ([`Context::stop`](hermes_core::Context::stop)).
/// A key this process never read is written unconditionally: load before you save (as
/// [`Durable`](hermes_store::Durable) does).
///
/// Every call blocks its thread for one or more round trips to the NATS server (at most the
/// configured store timeout each): call it from shards and plain threads, not from inside an
/// async runtime's tasks. [`write_batch`](Store::write_batch) is not atomic across keys (the
/// bucket has no transactions): its operations are applied in order and the first failure
/// stops it.
///
/// Keys are arbitrary bytes; in the bucket, keys made of letters, digits and `-_/=` are stored
/// as `r.KEY`, others hex-encoded as `h.HEX` (the empty key as `e`).
pub struct KvStore {
    bucket: Box<dyn Bucket>,
    revisions: Mutex<HashMap<Vec<u8>, u64>>,
    /// Writes only while this node's membership entry surely lasts.
    lease: Arc<Lease>,
    /// The planted bug of the simulator's tests: writes ignore revisions and the lease
    /// (feature `fault-injection`).
    #[cfg(feature = "fault-injection")]
    pub(crate) unconditional: bool,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore").finish_non_exhaustive()
    }
}

/// A key's latest entry in a bucket: `None` if it was never written, else its value (`None`
/// if the latest operation deleted it) and revision.
pub(crate) type Entry = Option<(Option<Vec<u8>>, u64)>;

/// What [`KvStore`] needs of a key-value bucket with revisions: JetStream's
/// ([`JetStreamBucket`]), or the simulator's (`sim::SimBucket`). Keys are the store's raw keys;
/// the bucket names them as it needs. The compare-and-set logic (which revision a write
/// expects) is [`KvStore`]'s, the same over either.
pub(crate) trait Bucket: Send + Sync + 'static {
    /// The latest entry of `key`: `None` if it was never written, else its value (`None` if
    /// the latest operation deleted it) and revision.
    fn entry(&self, key: &[u8]) -> Result<Entry, StoreError>;
    /// Writes `value` unconditionally; the new revision.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, StoreError>;
    /// Writes `value` if the key is still at revision `expected` (0: absent), else
    /// [`StoreError::Conflict`]; the new revision.
    fn update(&self, key: &[u8], value: &[u8], expected: u64) -> Result<u64, StoreError>;
    /// Deletes `key` (writes a delete marker), if `expected` is given only if it is still at
    /// that revision (0: absent; else [`StoreError::Conflict`]); the marker's revision.
    fn delete(&self, key: &[u8], expected: Option<u64>) -> Result<u64, StoreError>;
    /// Every key with a value (deleted ones may be listed too).
    fn keys(&self) -> Result<Vec<Vec<u8>>, StoreError>;
}

/// A bucket key for a store key.
fn encode_key(key: &[u8]) -> String {
    if key.is_empty() {
        return "e".to_owned();
    }
    let plain = !key.is_empty()
        && key
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/' | b'='));
    if plain {
        // Checked above: ASCII.
        format!("r.{}", String::from_utf8_lossy(key))
    } else {
        let mut s = String::with_capacity(2 + key.len() * 2);
        s.push_str("h.");
        for b in key {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// The store key of a bucket key; `None` for keys this store did not write.
fn decode_key(key: &str) -> Option<Vec<u8>> {
    if key == "e" {
        return Some(Vec::new());
    }
    if let Some(raw) = key.strip_prefix("r.") {
        return Some(raw.as_bytes().to_vec());
    }
    let hex = key.strip_prefix("h.")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Bytes of a put's message that are not its value: its subject's key and headers.
const HEADROOM: usize = 1024;

/// The JetStream key-value bucket `hermes_{cluster}_state`, driven from blocking callers.
pub(crate) struct JetStreamBucket {
    kv: kv::Store,
    /// The bucket's JetStream, for the deletes `kv::Store` does not return the revision of.
    js: jetstream::Context,
    /// The largest message the NATS server takes (`max_payload`): a larger one would close
    /// the connection (the server's answer to it), so it is refused here.
    max_payload: usize,
    /// The connection, and since when this bucket has seen it down.
    client: async_nats::Client,
    down_since: Mutex<Option<Instant>>,
    runtime: Handle,
    timeout: Duration,
}

impl JetStreamBucket {
    pub(crate) fn new(
        kv: kv::Store,
        js: jetstream::Context,
        client: async_nats::Client,
        runtime: Handle,
        timeout: Duration,
    ) -> Self {
        JetStreamBucket {
            kv,
            js,
            max_payload: max_frame(&client),
            client,
            down_since: Mutex::new(None),
            runtime,
            timeout,
        }
    }

    /// How long the connection has been down, once that is at least the store timeout. A
    /// shorter outage is waited out (the client sends on reconnecting); a longer one fails at
    /// once, so that a node that stops while the server is gone does not wait a store timeout
    /// for each receiver's save, one after the other (20 receivers on one shard, 200 ms
    /// timeout: 6.2 s to shut down; thousands with the default 5 s: hours).
    fn down_for(&self) -> Option<Duration> {
        let mut since = self
            .down_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.client.connection_state() == async_nats::connection::State::Connected {
            *since = None;
            return None;
        }
        let down = since.get_or_insert_with(Instant::now).elapsed();
        (down >= self.timeout).then_some(down)
    }

    /// Refuses a value the NATS server would not take in one message (with the key and the
    /// headers of a put, within [`HEADROOM`] bytes).
    fn fits(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if value.len() + HEADROOM <= self.max_payload {
            return Ok(());
        }
        Err(StoreError::other(
            Operation::Put,
            Some(key),
            format!(
                "the value is {} bytes, more than the NATS server takes in one message \
                 (max_payload {} bytes, less {HEADROOM} for headers); save less per key, or \
                 raise max_payload in the server's configuration",
                value.len(),
                self.max_payload
            ),
        ))
    }

    /// Runs `f` on the cluster's runtime and waits for it, at most the store timeout; fails
    /// at once if the connection to the server has been down for a store timeout already.
    fn run<T: Send + 'static>(
        &self,
        op: Operation,
        key: Option<&[u8]>,
        f: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        if let Some(down) = self.down_for() {
            return Err(StoreError::other(
                op,
                key,
                format!(
                    "the NATS server has been unreachable for {down:?} (more than the store \
                     timeout, {:?}): nothing was sent; retry once it is back",
                    self.timeout
                ),
            ));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let timeout = self.timeout;
        self.runtime.spawn(async move {
            let result = match tokio::time::timeout(timeout, f).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::other(
                    op,
                    None,
                    "the JetStream key-value operation timed out (a write may still have been \
                     applied: its next write here may then be a Conflict): is the NATS server \
                     up, with JetStream enabled?",
                )),
            };
            let _ = tx.send(result);
        });
        match rx.recv() {
            Ok(result) => result.map_err(|e| match key {
                Some(key) => e.with_key(key),
                None => e,
            }),
            Err(_) => Err(StoreError::other(
                op,
                key,
                "the cluster's runtime stopped: the node is shutting down",
            )),
        }
    }
}

impl Bucket for JetStreamBucket {
    fn entry(&self, key: &[u8]) -> Result<Entry, StoreError> {
        let kv = self.kv.clone();
        let name = encode_key(key);
        let entry = self.run(Operation::Get, Some(key), async move {
            kv.entry(name)
                .await
                .map_err(|e| StoreError::other(Operation::Get, None, e))
        })?;
        Ok(entry.map(|entry| {
            let value = match entry.operation {
                kv::Operation::Put => Some(entry.value.to_vec()),
                _ => None,
            };
            (value, entry.revision)
        }))
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
        self.fits(key, value)?;
        let kv = self.kv.clone();
        let name = encode_key(key);
        let value = Bytes::copy_from_slice(value);
        self.run(Operation::Put, Some(key), async move {
            kv.put(name, value)
                .await
                .map_err(|e| StoreError::other(Operation::Put, None, e))
        })
    }

    fn update(&self, key: &[u8], value: &[u8], expected: u64) -> Result<u64, StoreError> {
        self.fits(key, value)?;
        let kv = self.kv.clone();
        let name = encode_key(key);
        let value = Bytes::copy_from_slice(value);
        let owned = key.to_vec();
        self.run(Operation::Put, Some(key), async move {
            kv.update(name, value, expected).await.map_err(|e| {
                if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                    StoreError::Conflict { key: owned }
                } else {
                    StoreError::other(Operation::Put, None, e)
                }
            })
        })
    }

    fn delete(&self, key: &[u8], expected: Option<u64>) -> Result<u64, StoreError> {
        // `kv::Store::delete_expect_revision` does not return the marker's revision, which the
        // next conditional write expects: the same publish, keeping its acknowledgement.
        let subject = format!(
            "{}{}",
            self.kv.put_prefix.as_ref().unwrap_or(&self.kv.prefix),
            encode_key(key)
        );
        let js = self.js.clone();
        let owned = key.to_vec();
        self.run(Operation::Delete, Some(key), async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("KV-Operation", "DEL");
            if let Some(expected) = expected {
                headers.insert(
                    async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    expected.to_string().as_str(),
                );
            }
            let other = |e| StoreError::other(Operation::Delete, None, e);
            let ack = js
                .publish_with_headers(subject, headers, Bytes::new())
                .await
                .map_err(other)?;
            match ack.await {
                Ok(ack) => Ok(ack.sequence),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    Err(StoreError::Conflict { key: owned })
                }
                Err(e) => Err(other(e)),
            }
        })
    }

    fn keys(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let kv = self.kv.clone();
        let names = self.run(Operation::Scan, None, async move {
            let mut keys = kv
                .keys()
                .await
                .map_err(|e| StoreError::other(Operation::Scan, None, e))?;
            let mut names = Vec::new();
            while let Some(key) = keys.next().await {
                names.push(key.map_err(|e| StoreError::other(Operation::Scan, None, e))?);
            }
            Ok(names)
        })?;
        Ok(names.iter().filter_map(|name| decode_key(name)).collect())
    }
}

impl KvStore {
    /// A store on `bucket` that writes only while `lease` holds (on NATS and in the
    /// simulator alike).
    pub(crate) fn new(bucket: impl Bucket, lease: Arc<Lease>) -> Self {
        KvStore {
            bucket: Box::new(bucket),
            revisions: Mutex::new(HashMap::new()),
            lease,
            #[cfg(feature = "fault-injection")]
            unconditional: false,
        }
    }

    fn revision(&self, key: &[u8]) -> Option<u64> {
        self.revisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
    }

    fn remember(&self, key: &[u8], revision: u64) {
        self.revisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_vec(), revision);
    }

    /// Refuses to write while this node's lease has lapsed: it may have been removed from the
    /// membership, and its receivers' state be older than their new owners'.
    fn leased(&self, key: &[u8]) -> Result<(), StoreError> {
        #[cfg(feature = "fault-injection")]
        if self.unconditional {
            return Ok(());
        }
        if self.lease.holds() {
            return Ok(());
        }
        tracing::debug!(
            key = %String::from_utf8_lossy(key),
            "a write refused: this node's membership entry may have expired"
        );
        Err(StoreError::Conflict { key: key.to_vec() })
    }

    /// The revision this process last saw `key` at (0: absent), if it has seen it.
    pub fn known_revision(&self, key: &[u8]) -> Option<u64> {
        self.revision(key)
    }
}

impl Store for KvStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.bucket.entry(key)? {
            None => {
                self.remember(key, 0);
                Ok(None)
            }
            Some((value, revision)) => {
                self.remember(key, revision);
                Ok(value)
            }
        }
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.leased(key)?;
        #[cfg(feature = "fault-injection")]
        let expected = self.revision(key).filter(|_| !self.unconditional);
        #[cfg(not(feature = "fault-injection"))]
        let expected = self.revision(key);
        let revision = match expected {
            Some(expected) => self.bucket.update(key, value, expected)?,
            None => self.bucket.put(key, value)?,
        };
        self.remember(key, revision);
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<(), StoreError> {
        // Conditional as a put: a key read as absent (revision 0) must still be absent, and
        // the marker's revision is what the next write expects (forgetting it made the next
        // put unconditional: a stale owner's put after its delete overwrote the new owner's
        // state).
        self.leased(key)?;
        let revision = self.bucket.delete(key, self.revision(key))?;
        self.remember(key, revision);
        Ok(())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        let mut keys: Vec<Vec<u8>> = self
            .bucket
            .keys()?
            .into_iter()
            .filter(|key| key.starts_with(prefix))
            .collect();
        keys.sort();
        keys.dedup();
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(value) = self.get(&key)? {
                entries.push((key, value));
            }
        }
        Ok(entries)
    }

    fn write_batch(&self, batch: Batch) -> Result<(), StoreError> {
        for op in batch.into_ops() {
            match op {
                Op::Put { key, value } => self.put(&key, &value)?,
                Op::Delete { key } => self.delete(&key)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for key in [&b"account/7"[..], b"a.b", b"", &[0, 255, 7], b"x y"] {
            let name = encode_key(key);
            assert!(!name.ends_with('.'));
            assert_eq!(decode_key(&name).as_deref(), Some(key), "{name}");
        }
        assert_eq!(encode_key(b"account/7"), "r.account/7");
        assert_eq!(decode_key("h.zz"), None);
        assert_eq!(decode_key("other"), None);
    }
}
