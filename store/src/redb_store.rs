//! [`RedbStore`]: a [`Store`] in one file, on the embedded database `redb`.

use std::path::{Path, PathBuf};

use redb::{
    Database, DatabaseError, ReadableDatabase, StorageError, TableDefinition, TableError,
    WriteTransaction,
};

use crate::{Batch, Durability, Entries, Op, Operation, Store, StoreError};

/// The one table every entry lives in.
const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("hermes");

type ReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;
type WriteTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

/// Options for [`RedbStore::open_with`].
#[derive(Debug, Clone, Default)]
pub struct RedbOptions {
    cache_size: Option<usize>,
    check_integrity_on_open: bool,
}

impl RedbOptions {
    /// Default options: redb's default page cache, no full check on open.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of memory redb may use to cache file pages (redb's default otherwise).
    pub fn cache_size(mut self, bytes: usize) -> Self {
        self.cache_size = Some(bytes);
        self
    }

    /// Verify the checksum of every page when opening, not only after a crash. Opening then
    /// reads the whole file, but a file damaged outside redb fails with
    /// [`StoreError::Corrupt`] instead of being trusted (redb may panic on such a file later).
    pub fn check_integrity_on_open(mut self, enabled: bool) -> Self {
        self.check_integrity_on_open = enabled;
        self
    }
}

/// A [`Store`] in one file, on the embedded transactional database
/// [redb](https://docs.rs/redb) (feature `redb`, on by default).
///
/// Every write is an ACID transaction; [`Store::put`] and [`Store::delete`] are fsync'ed before
/// they return, and a [`Batch`] is fsync'ed or not according to its
/// [`Durability`]. After a crash, reopening finds the state of the last durable commit (redb
/// repairs its allocator on the next open, which can take a while on a large file).
///
/// One file can be opened by one `RedbStore` at a time (redb locks it): share the store between
/// receivers and threads as an `Arc<dyn Store>`.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the database file at `path`, creating it (not its directory) if it is missing.
    ///
    /// Fails with [`StoreError::AlreadyOpen`] if the file is open elsewhere,
    /// [`StoreError::Corrupt`] or [`StoreError::UpgradeRequired`] if it cannot be used, and
    /// [`StoreError::Open`] otherwise (missing directory, no permission, not a redb file).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, &RedbOptions::default())
    }

    /// [`open`](Self::open) with options.
    pub fn open_with(path: impl AsRef<Path>, options: &RedbOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut builder = Database::builder();
        if let Some(bytes) = options.cache_size {
            builder.set_cache_size(bytes);
        }
        builder.set_check_integrity_on_open(options.check_integrity_on_open);
        let db = builder.create(&path).map_err(|e| open_error(&path, e))?;
        let store = RedbStore { db, path };
        // Create the table up front so that readers never meet a missing table.
        let txn = store.begin(Operation::Put, None, Durability::Immediate)?;
        txn.open_table(TABLE)
            .map_err(|e| store.error(Operation::Put, None, e))?;
        txn.commit()
            .map_err(|e| store.error(Operation::Put, None, e))?;
        tracing::debug!(path = %store.path.display(), "opened redb store");
        Ok(store)
    }

    /// The file this store was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying redb database, for statistics or maintenance (compaction). Entries live in
    /// the table `"hermes"` with `&[u8]` keys and values.
    pub fn database(&self) -> &Database {
        &self.db
    }

    fn error(&self, op: Operation, key: Option<&[u8]>, e: impl Into<redb::Error>) -> StoreError {
        match e.into() {
            redb::Error::Corrupted(detail) => StoreError::Corrupt {
                path: Some(self.path.clone()),
                detail,
            },
            other => StoreError::backend(op, key, other),
        }
    }

    fn begin(
        &self,
        op: Operation,
        key: Option<&[u8]>,
        durability: Durability,
    ) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.error(op, key, e))?;
        let level = match durability {
            Durability::Immediate => redb::Durability::Immediate,
            Durability::Deferred => redb::Durability::None,
        };
        txn.set_durability(level)
            .map_err(|e| self.error(op, key, e))?;
        Ok(txn)
    }

    /// Runs `apply` on the table in one write transaction and commits it. On any error the
    /// transaction is dropped, which aborts it: nothing is applied.
    fn write(
        &self,
        op: Operation,
        key: Option<&[u8]>,
        durability: Durability,
        apply: impl FnOnce(&mut WriteTable<'_>) -> Result<(), StorageError>,
    ) -> Result<(), StoreError> {
        let txn = self.begin(op, key, durability)?;
        {
            let mut table = txn.open_table(TABLE).map_err(|e| self.error(op, key, e))?;
            apply(&mut table).map_err(|e| self.error(op, key, e))?;
        }
        txn.commit().map_err(|e| self.error(op, key, e))
    }

    fn read_table(
        &self,
        op: Operation,
        key: Option<&[u8]>,
    ) -> Result<Option<ReadTable>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.error(op, key, e))?;
        match txn.open_table(TABLE) {
            Ok(table) => Ok(Some(table)),
            // Only possible if someone deleted the table behind our back: treat as empty.
            Err(TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(self.error(op, key, e)),
        }
    }
}

fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    let path = path.to_path_buf();
    match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyOpen { path },
        DatabaseError::UpgradeRequired(found) => StoreError::UpgradeRequired { path, found },
        DatabaseError::Storage(StorageError::Corrupted(detail)) => StoreError::Corrupt {
            path: Some(path),
            detail,
        },
        // Keep the I/O error itself as the source so the message can give the right advice.
        DatabaseError::Storage(StorageError::Io(io)) => StoreError::Open {
            path,
            source: std::sync::Arc::new(io),
        },
        other => StoreError::Open {
            path,
            source: std::sync::Arc::new(other),
        },
    }
}

impl Store for RedbStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(table) = self.read_table(Operation::Get, Some(key))? else {
            return Ok(None);
        };
        let found = table
            .get(key)
            .map_err(|e| self.error(Operation::Get, Some(key), e))?;
        Ok(found.map(|guard| guard.value().to_vec()))
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.write(Operation::Put, Some(key), Durability::Immediate, |t| {
            t.insert(key, value).map(drop)
        })
    }

    fn delete(&self, key: &[u8]) -> Result<(), StoreError> {
        self.write(Operation::Delete, Some(key), Durability::Immediate, |t| {
            t.remove(key).map(drop)
        })
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        let Some(table) = self.read_table(Operation::Scan, None)? else {
            return Ok(Vec::new());
        };
        let scan_err = |e| self.error(Operation::Scan, None, e);
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(scan_err)? {
            let (k, v) = entry.map_err(scan_err)?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn write_batch(&self, batch: Batch) -> Result<(), StoreError> {
        let durability = batch.durability();
        self.write(Operation::WriteBatch, None, durability, |t| {
            for op in batch.ops() {
                match op {
                    Op::Put { key, value } => {
                        t.insert(key.as_slice(), value.as_slice())?;
                    }
                    Op::Delete { key } => {
                        t.remove(key.as_slice())?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Commits an empty transaction with immediate durability, which makes every earlier
    /// (deferred) commit durable too.
    fn sync(&self) -> Result<(), StoreError> {
        let txn = self.begin(Operation::Sync, None, Durability::Immediate)?;
        txn.commit()
            .map_err(|e| self.error(Operation::Sync, None, e))
    }
}
