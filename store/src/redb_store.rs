//! [`RedbStore`]: a [`Store`] in one file, on the embedded database `redb`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

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
    /// [`StoreError::Corrupt`] at once instead of being trusted (and failing later: an
    /// operation that meets the damage fails with `Corrupt` then).
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
/// An I/O error (a full disk, say) fails the operation that met it, and redb then refuses every
/// later one until the file is reopened: the store reopens it itself, at the next operation, so
/// once the cause is gone (space freed) the same store works again, with everything committed
/// before the error. While the cause lasts, each operation fails with the error of the reopen.
///
/// redb trusts the file and can panic on damage made outside it (a flipped bit in a page it
/// reads): the operation that met it fails with [`StoreError::Corrupt`] instead, and the next
/// one reopens the file. [`RedbOptions::check_integrity_on_open`] finds such damage at open.
///
/// One file can be opened by one `RedbStore` at a time (redb locks it): share the store between
/// receivers and threads as an `Arc<dyn Store>`.
pub struct RedbStore {
    /// The open database; `None` after an I/O error (or a panic in redb) closed it and it
    /// could not be reopened yet (the next operation tries again).
    db: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    options: RedbOptions,
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
    /// [`StoreError::Open`] otherwise (missing directory, no permission, a directory at `path`,
    /// not a redb file, a file cut short inside its header), with advice for each.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, &RedbOptions::default())
    }

    /// [`open`](Self::open) with options.
    pub fn open_with(path: impl AsRef<Path>, options: &RedbOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let db = open_database(&path, options)?;
        tracing::debug!(path = %path.display(), "opened redb store");
        Ok(RedbStore {
            db: RwLock::new(Some(Arc::new(db))),
            path,
            options: options.clone(),
        })
    }

    /// The file this store was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying redb database, for statistics or maintenance (compaction). Entries live in
    /// the table `"hermes"` with `&[u8]` keys and values. Reopens the file first if an I/O error
    /// or a panic in redb closed it (and fails as [`open`](Self::open) does if that fails).
    pub fn database(&self) -> Result<Arc<Database>, StoreError> {
        self.current()
    }

    /// The open database, reopened if an I/O error or a panic in redb closed it.
    fn current(&self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = &*self.db.read().unwrap_or_else(PoisonError::into_inner) {
            return Ok(Arc::clone(db));
        }
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(db) = &*slot {
            return Ok(Arc::clone(db));
        }
        let db = Arc::new(open_database(&self.path, &self.options)?);
        tracing::warn!(
            path = %self.path.display(),
            "reopened the store after an I/O error or a panic in redb"
        );
        *slot = Some(Arc::clone(&db));
        Ok(db)
    }

    /// Closes `failed`, which redb refuses to use after an I/O error, so that the next
    /// [`current`](Self::current) reopens the file (once no operation holds it any more).
    fn close(&self, failed: Arc<Database>) {
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        let closed = if slot.as_ref().is_some_and(|db| Arc::ptr_eq(db, &failed)) {
            slot.take()
        } else {
            None
        };
        drop(slot);
        release(failed);
        if let Some(db) = closed {
            release(db);
        }
    }

    /// Runs `f` on the database; if redb refuses because an earlier I/O error closed it,
    /// reopens the file and runs `f` once more (a refused operation did nothing).
    fn with<T>(
        &self,
        op: Operation,
        key: Option<&[u8]>,
        f: impl Fn(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let db = self.current()?;
        let mut result = self.unpanicked(&db, &f);
        if matches!(result, Ok(Err(redb::Error::PreviousIo))) {
            self.close(db);
            let db = self.current()?;
            result = self.unpanicked(&db, &f);
            release(db);
        } else {
            release(db);
        }
        result?.map_err(|e| store_error(&self.path, op, key, e))
    }

    /// Runs `f` on `db`. redb trusts its file's contents and can panic on damage made outside
    /// it (a flipped bit in a page it reads); such a panic becomes [`StoreError::Corrupt`] and
    /// closes `db`, so that the next operation reopens the file.
    fn unpanicked<T>(
        &self,
        db: &Arc<Database>,
        f: impl Fn(&Database) -> Result<T, redb::Error>,
    ) -> Result<Result<T, redb::Error>, StoreError> {
        catch_unwind(AssertUnwindSafe(|| f(db))).map_err(|panic| {
            self.close(Arc::clone(db));
            damaged(&self.path, panic.as_ref())
        })
    }

    /// Runs `apply` on the table in one write transaction and commits it. On any error the
    /// transaction is dropped, which aborts it: nothing is applied.
    fn write(
        &self,
        op: Operation,
        key: Option<&[u8]>,
        durability: Durability,
        apply: impl Fn(&mut WriteTable<'_>) -> Result<(), StorageError>,
    ) -> Result<(), StoreError> {
        self.with(op, key, |db| {
            let txn = begin(db, durability)?;
            {
                let mut table = txn.open_table(TABLE)?;
                apply(&mut table)?;
            }
            Ok(txn.commit()?)
        })
    }

    /// Runs `read` on the table in a read transaction; `empty` if the table is missing.
    fn read<T>(
        &self,
        op: Operation,
        key: Option<&[u8]>,
        empty: impl Fn() -> T,
        read: impl Fn(&ReadTable) -> Result<T, StorageError>,
    ) -> Result<T, StoreError> {
        self.with(op, key, |db| {
            let txn = db.begin_read()?;
            match txn.open_table(TABLE) {
                Ok(table) => Ok(read(&table)?),
                // Only possible if someone deleted the table behind our back: treat as empty.
                Err(TableError::TableDoesNotExist(_)) => Ok(empty()),
                Err(e) => Err(e.into()),
            }
        })
    }
}

/// Opens (or creates) the file and its table, so that readers never meet a missing table. A
/// panic in redb on a damaged file is [`StoreError::Corrupt`].
fn open_database(path: &Path, options: &RedbOptions) -> Result<Database, StoreError> {
    catch_unwind(AssertUnwindSafe(|| open_unguarded(path, options)))
        .unwrap_or_else(|panic| Err(damaged(path, panic.as_ref())))
}

/// Drops a reference to a database. Dropping the last one closes the file, where redb can
/// panic on a damaged file after an earlier panic: that is logged, not propagated.
fn release(db: Arc<Database>) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(move || drop(db))) {
        let what = crate::error::panic_text(panic.as_ref());
        tracing::error!(panic = %what, "redb panicked closing a damaged store file");
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        let slot = self.db.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(db) = slot.take() {
            release(db);
        }
    }
}

/// The [`StoreError::Corrupt`] for a panic in redb while it used the file at `path`.
fn damaged(path: &Path, panic: &(dyn std::any::Any + Send)) -> StoreError {
    let what = crate::error::panic_text(panic);
    tracing::error!(path = %path.display(), panic = %what, "redb panicked on the store file");
    StoreError::Corrupt {
        path: Some(path.to_path_buf()),
        detail: format!(
            "redb panicked on it ({what}): most likely it was damaged outside redb (open it \
             with RedbOptions::check_integrity_on_open to find such damage at open)"
        ),
    }
}

/// [`open_database`] without the guard against panics.
fn open_unguarded(path: &Path, options: &RedbOptions) -> Result<Database, StoreError> {
    let mut builder = Database::builder();
    if let Some(bytes) = options.cache_size {
        builder.set_cache_size(bytes);
    }
    builder.set_check_integrity_on_open(options.check_integrity_on_open);
    let db = builder.create(path).map_err(|e| open_error(path, e))?;
    let create = || -> Result<(), redb::Error> {
        let txn = begin(&db, Durability::Immediate)?;
        txn.open_table(TABLE)?;
        Ok(txn.commit()?)
    };
    create().map_err(|e| store_error(path, Operation::Put, None, e))?;
    Ok(db)
}

/// The [`StoreError`] for a redb error met doing `op` on the file at `path`.
fn store_error(path: &Path, op: Operation, key: Option<&[u8]>, e: redb::Error) -> StoreError {
    match e {
        redb::Error::Corrupted(detail) => StoreError::Corrupt {
            path: Some(path.to_path_buf()),
            detail,
        },
        error => StoreError::backend(
            op,
            key,
            InFile {
                error,
                path: path.to_path_buf(),
            },
        ),
    }
}

/// A redb error and the file it happened on: the source of a [`StoreError::Backend`] from a
/// [`RedbStore`], so that its message names the file (a batch, scan or sync names no key).
#[derive(Debug)]
struct InFile {
    error: redb::Error,
    path: PathBuf,
}

impl std::fmt::Display for InFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, on store file {}", self.error, self.path.display())
    }
}

/// No source: the message includes redb's (see [`StoreError`]).
impl std::error::Error for InFile {}

/// A write transaction with `durability`.
fn begin(db: &Database, durability: Durability) -> Result<WriteTransaction, redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(match durability {
        Durability::Immediate => redb::Durability::Immediate,
        Durability::Deferred => redb::Durability::None,
    })?;
    Ok(txn)
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
        self.read(
            Operation::Get,
            Some(key),
            || None,
            |table| Ok(table.get(key)?.map(|guard| guard.value().to_vec())),
        )
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
        self.read(Operation::Scan, None, Vec::new, |table| {
            let mut out = Vec::new();
            for entry in table.range(prefix..)? {
                let (k, v) = entry?;
                let k = k.value();
                if !k.starts_with(prefix) {
                    break;
                }
                out.push((k.to_vec(), v.value().to_vec()));
            }
            Ok(out)
        })
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
        self.with(Operation::Sync, None, |db| {
            Ok(begin(db, Durability::Immediate)?.commit()?)
        })
    }
}
