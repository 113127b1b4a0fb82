//! Durable state for Hermes receivers.
//!
//! A receiver that must survive deactivation and restarts keeps its state in a [`Store`]: a
//! sorted key-value map of bytes, shared between threads as `Arc<dyn Store>`. This crate has
//!
//! - the [`Store`] trait: `get`, `put`, `delete`, `scan_prefix`, and atomic [`Batch`] writes
//!   (`write_batch`) with a per-batch [`Durability`];
//! - [`MemoryStore`], in memory, for tests and state that need not outlive the process;
//! - [`RedbStore`] (feature `redb`, on by default), one file on the embedded transactional
//!   database [redb](https://docs.rs/redb): a committed write survives a crash;
//! - the [`codec`]: serde state to bytes with [postcard](https://docs.rs/postcard), behind a
//!   header carrying a schema version, so state written by an older build either loads (through
//!   a migration hook) or fails with a clear [`StoreError::SchemaMismatch`];
//! - [`GroupCommit`]: many receivers' small writes committed together in few transactions by a
//!   background thread, each acknowledged through a callback after its transaction returned.
//!
//! - [`Durable`] state for receivers, loaded in the factory and saved when the receiver is
//!   deactivated, over a [`StateStore`] that reads its own unacknowledged writes.
//!
//! Every error is a [`StoreError`] whose message names the file or key and says what to do.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "redb")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::{Arc, mpsc};
//! use hermes_store::{Codec, GroupCommit, GroupCommitConfig, RedbStore, Store};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Account { balance: i64 }
//! const ACCOUNT: Codec<Account> = Codec::new(1);
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("state.redb");
//! {
//!     let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path)?);
//!
//!     // Direct, one durable transaction per write:
//!     ACCOUNT.save(store.as_ref(), b"account/1", &Account { balance: 10 })?;
//!
//!     // Grouped: the callback runs once the write is committed (and synced).
//!     let commits = GroupCommit::start(store.clone(), GroupCommitConfig::default())?;
//!     let (tx, rx) = mpsc::channel();
//!     let bytes = ACCOUNT.encode(&Account { balance: 20 })?;
//!     commits.put("account/2", bytes, move |result| tx.send(result).unwrap());
//!     rx.recv()??;
//!     commits.shutdown()?;
//! }
//! // A new process (here: a new handle) finds the state.
//! let store = RedbStore::open(&path)?;
//! assert_eq!(ACCOUNT.load(&store, b"account/2")?, Some(Account { balance: 20 }));
//! assert_eq!(store.scan_prefix(b"account/")?.len(), 2);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "redb"))]
//! # fn main() {}
//! ```
//!
//! # Features
//!
//! - `redb` (default): [`RedbStore`]. Without it the crate has no database dependency.

#![warn(missing_debug_implementations)]

mod durable;
mod error;
mod group;
mod memory;
#[cfg(feature = "redb")]
mod redb_store;
mod store;

pub mod codec;

pub use codec::Codec;
pub use durable::{Durable, StateStore};
pub use error::{Operation, Source, StoreError};
pub use group::{Ack, GroupCommit, GroupCommitConfig, GroupCommitStats, SyncPolicy};
pub use memory::MemoryStore;
#[cfg(feature = "redb")]
pub use redb_store::{RedbOptions, RedbStore};
pub use store::{Batch, Durability, Entries, Op, Store};
