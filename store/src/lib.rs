//! Durable state for Hermes receivers.
//!
//! A receiver that must survive deactivation and restarts keeps its state in a [`Store`]: a
//! sorted key-value map of bytes, shared between threads as `Arc<dyn Store>`. This crate has
//!
//! - the [`Store`] trait: `get`, `put`, `delete`, `scan_prefix`, and atomic [`Batch`] writes
//!   (`write_batch`) with a per-batch [`Durability`];
//! - [`MemoryStore`], in memory, for tests and state that need not outlive the process;
//! - `RedbStore` (feature `redb`, on by default), one file on the embedded transactional
//!   database [redb](https://docs.rs/redb): a committed write survives a crash;
//! - the [`codec`]: serde state to bytes with [postcard](https://docs.rs/postcard), behind a
//!   header carrying a schema version, so state written by an older build either loads (through
//!   a migration hook) or fails with a clear [`StoreError::SchemaMismatch`].
//!
//! Every error is a [`StoreError`] whose message names the file or key and says what to do.
//!
//! ```
//! use hermes_store::{Batch, MemoryStore, Store};
//!
//! let store = MemoryStore::new();
//! let mut batch = Batch::new();
//! batch.put("account/1", "10").put("account/2", "20");
//! store.write_batch(batch)?;
//! assert_eq!(store.scan_prefix(b"account/")?.len(), 2);
//! # Ok::<(), hermes_store::StoreError>(())
//! ```
//!
//! # Features
//!
//! - `redb` (default): `RedbStore`. Without it the crate has no database dependency.

mod error;
mod memory;
#[cfg(feature = "redb")]
mod redb_store;
mod store;

pub mod codec;

pub use codec::Codec;
pub use error::{Operation, Source, StoreError};
pub use memory::MemoryStore;
#[cfg(feature = "redb")]
pub use redb_store::{RedbOptions, RedbStore};
pub use store::{Batch, Durability, Entries, Op, Store};
