//! [`MemoryStore`]: a sorted map in memory.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::{Batch, Entries, Op, Store, StoreError};

/// A [`Store`] in memory: a `BTreeMap` behind a read-write lock.
///
/// Nothing survives the process; [`Durability`](crate::Durability) is ignored. Use it in tests
/// and for receivers whose state need not outlive the process. Reads run in parallel; a write
/// (or a whole batch) holds the lock exclusively, so batches are atomic. Its `Debug` shows how
/// many entries it holds, not their bytes.
#[derive(Default)]
pub struct MemoryStore {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.len())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the store has no entries.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    // The map is never left half-updated (BTreeMap operations on byte vectors do not panic
    // part way), so a lock poisoned by a panicking caller still guards consistent data.
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.map.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.map.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read().get(key).cloned())
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.write().insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<(), StoreError> {
        self.write().remove(key);
        Ok(())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        let map = self.read();
        Ok(map
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write_batch(&self, batch: Batch) -> Result<(), StoreError> {
        let mut map = self.write();
        for op in batch.into_ops() {
            match op {
                Op::Put { key, value } => {
                    map.insert(key, value);
                }
                Op::Delete { key } => {
                    map.remove(&key);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store of large values prints its size, not its contents (it used to print every
    /// key's and value's bytes).
    #[test]
    fn debug_shows_the_entry_count_not_the_bytes() {
        let store = MemoryStore::new();
        let mut batch = Batch::new();
        batch.put("a", vec![7u8; 4096]).put("b", "secret");
        store.write_batch(batch).unwrap();
        let text = format!("{store:?}");
        assert_eq!(text, "MemoryStore { entries: 2 }");
    }
}
