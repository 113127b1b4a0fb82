//! What the store's test binaries share: a store that can be made slow, blocked or failing.

// Each test binary uses its own share of it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use hermes_store::{Batch, Durability, Entries, MemoryStore, Operation, Store, StoreError};

/// A store that records every transaction and can be made slow, blocked or failing.
#[derive(Default)]
pub struct Probe {
    pub inner: MemoryStore,
    /// (number of ops, durability) of every `write_batch` call.
    pub batches: Mutex<Vec<(usize, Durability)>>,
    pub syncs: AtomicUsize,
    pub fail: AtomicBool,
    pub delay: Mutex<Duration>,
    /// While true, `write_batch` blocks.
    pub gate_closed: Mutex<bool>,
    pub gate: Condvar,
    /// Set while a `write_batch` is inside the inner store.
    pub writing: AtomicBool,
}

impl Probe {
    pub fn new() -> Arc<Self> {
        Arc::new(Probe::default())
    }
    pub fn batches(&self) -> Vec<(usize, Durability)> {
        self.batches.lock().unwrap().clone()
    }
    pub fn close_gate(&self) {
        *self.gate_closed.lock().unwrap() = true;
    }
    pub fn open_gate(&self) {
        *self.gate_closed.lock().unwrap() = false;
        self.gate.notify_all();
    }
}

impl Store for Probe {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.inner.put(key, value)
    }
    fn delete(&self, key: &[u8]) -> Result<(), StoreError> {
        self.inner.delete(key)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        self.inner.scan_prefix(prefix)
    }
    fn write_batch(&self, batch: Batch) -> Result<(), StoreError> {
        let mut closed = self.gate_closed.lock().unwrap();
        while *closed {
            closed = self.gate.wait(closed).unwrap();
        }
        drop(closed);
        self.batches
            .lock()
            .unwrap()
            .push((batch.len(), batch.durability()));
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            thread::sleep(delay);
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Backend {
                op: Operation::WriteBatch,
                key: None,
                source: Arc::new(std::io::Error::other("simulated disk failure")),
            });
        }
        self.writing.store(true, Ordering::SeqCst);
        let result = self.inner.write_batch(batch);
        self.writing.store(false, Ordering::SeqCst);
        result
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}
