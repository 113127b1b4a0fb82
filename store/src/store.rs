//! The [`Store`] trait and the [`Batch`] of writes it applies atomically.

use crate::StoreError;

/// Key-value pairs, in ascending key order, as returned by [`Store::scan_prefix`].
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A sorted key-value store of byte strings, shared between threads.
///
/// Keys and values are arbitrary bytes; keys sort lexicographically (byte by byte, shorter
/// first on a common prefix). Every method is safe to call from many threads at once, and a
/// successful write is visible to every later read. The trait is object safe: receivers hold an
/// `Arc<dyn Store>`.
///
/// Single-key [`put`](Store::put) and [`delete`](Store::delete) are each one transaction made
/// durable before they return (where the store is durable at all). For throughput, write many
/// changes in one [`Batch`], or through a [`GroupCommit`](crate::GroupCommit), which batches for
/// you.
pub trait Store: Send + Sync + 'static {
    /// The value stored under `key`, or `None`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores `value` under `key`, replacing any previous value.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;

    /// Removes `key`. Removing an absent key is not an error.
    fn delete(&self, key: &[u8]) -> Result<(), StoreError>;

    /// Every entry whose key starts with `prefix`, in ascending key order. An empty prefix
    /// returns the whole store.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError>;

    /// Applies the batch's operations in order, as one transaction: after an error none of them
    /// is visible, after success all are. The batch's [`Durability`] says whether it must be on
    /// disk before this returns.
    fn write_batch(&self, batch: Batch) -> Result<(), StoreError>;

    /// Makes every write that has returned so far durable, including those written with
    /// [`Durability::Deferred`]. Stores without a disk do nothing.
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// How durable a write must be when it returns. Exhaustive on purpose: every [`Store`]
/// handles each level, and a new one is a breaking change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Durability {
    /// On disk (fsync'ed) before the write returns: survives a process or machine crash.
    #[default]
    Immediate,
    /// Committed and visible to readers, but only made durable by a later
    /// [`Immediate`](Durability::Immediate) write or [`Store::sync`]; a crash before that
    /// loses it (the store stays consistent, at its last durable state). Much cheaper: no fsync.
    Deferred,
}

/// One write in a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Store `value` under `key`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove `key` (absent keys are fine).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

impl Op {
    /// The key this operation writes.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// An ordered list of puts and deletes that [`Store::write_batch`] applies atomically, in one
/// transaction. Later operations on a key override earlier ones.
///
/// ```
/// use hermes_store::{Batch, MemoryStore, Store};
///
/// let store = MemoryStore::new();
/// let mut batch = Batch::new();
/// batch.put("a", "1").put("b", "2").delete("a");
/// store.write_batch(batch)?;
/// assert_eq!(store.get(b"a")?, None);
/// assert_eq!(store.get(b"b")?, Some(b"2".to_vec()));
/// # Ok::<(), hermes_store::StoreError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<Op>,
    durability: Durability,
}

impl Batch {
    /// An empty batch with [`Durability::Immediate`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `n` operations.
    pub fn with_capacity(n: usize) -> Self {
        Batch {
            ops: Vec::with_capacity(n),
            durability: Durability::default(),
        }
    }

    /// Appends a put of `value` under `key`.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Appends a delete of `key`.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }

    /// Appends an operation.
    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }

    /// Sets how durable the batch must be when `write_batch` returns.
    pub fn set_durability(&mut self, durability: Durability) -> &mut Self {
        self.durability = durability;
        self
    }

    /// How durable the batch must be when `write_batch` returns.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// The operations, in order, by value.
    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }
}

impl FromIterator<Op> for Batch {
    fn from_iter<I: IntoIterator<Item = Op>>(iter: I) -> Self {
        Batch {
            ops: iter.into_iter().collect(),
            durability: Durability::default(),
        }
    }
}

impl Extend<Op> for Batch {
    fn extend<I: IntoIterator<Item = Op>>(&mut self, iter: I) {
        self.ops.extend(iter);
    }
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(key)
    }
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        (**self).put(key, value)
    }
    fn delete(&self, key: &[u8]) -> Result<(), StoreError> {
        (**self).delete(key)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        (**self).scan_prefix(prefix)
    }
    fn write_batch(&self, batch: Batch) -> Result<(), StoreError> {
        (**self).write_batch(batch)
    }
    fn sync(&self) -> Result<(), StoreError> {
        (**self).sync()
    }
}
