//! The one error type of this crate.

use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// An underlying error (from the database, the file system or the serializer), shared so that
/// [`StoreError`] is `Clone` and one failure can be delivered to every caller it affected.
pub type Source = Arc<dyn StdError + Send + Sync + 'static>;

/// The detail of a [`StoreError::Decode`] of a type that postcard cannot decode: one that asks
/// for `deserialize_any` (untagged or internally tagged enums and the like).
pub(crate) const NEEDS_DESERIALIZE_ANY: &str =
    "the type asks for deserialize_any, which postcard never implements";

/// Longest prefix of a key shown in an error message; longer keys are cut and their length shown.
const KEY_SHOWN: usize = 48;

/// The store operation that failed, named in [`StoreError::Backend`] messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// [`Store::get`](crate::Store::get).
    Get,
    /// [`Store::put`](crate::Store::put).
    Put,
    /// [`Store::delete`](crate::Store::delete).
    Delete,
    /// [`Store::scan_prefix`](crate::Store::scan_prefix).
    Scan,
    /// [`Store::write_batch`](crate::Store::write_batch).
    WriteBatch,
    /// [`Store::sync`](crate::Store::sync).
    Sync,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Get => "get",
            Operation::Put => "put",
            Operation::Delete => "delete",
            Operation::Scan => "prefix scan",
            Operation::WriteBatch => "batch write",
            Operation::Sync => "sync",
        })
    }
}

/// Everything that can go wrong in a store, the codec or group commit.
///
/// Each message says what failed, on which file or key, and what to do about it. Keys are shown
/// as text when they are printable ASCII and as hex otherwise, cut after 48 bytes.
///
/// `StoreError` is `Clone` (underlying errors are shared in an [`Arc`]) so that
/// [`GroupCommit`](crate::GroupCommit) can hand the same failure to every caller in a group.
///
/// A message includes its underlying error's, so [`source`](StdError::source) is `None`: an
/// error reporter that prints the chain shows it once. The underlying error is the variant's
/// `source` field.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StoreError {
    /// The database file could not be opened or created.
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Source,
    },
    /// The database file is already open, by another process or another handle in this one.
    AlreadyOpen {
        /// The file.
        path: PathBuf,
    },
    /// The database file uses an older on-disk format of the database engine.
    UpgradeRequired {
        /// The file.
        path: PathBuf,
        /// The file format version found.
        found: u8,
    },
    /// The database reported corruption, or panicked on the file's contents (damage made
    /// outside it).
    Corrupt {
        /// The file, when known.
        path: Option<PathBuf>,
        /// The database's description of the damage.
        detail: String,
    },
    /// A read or write in the database failed; a failed write was not applied.
    Backend {
        /// What was being done.
        op: Operation,
        /// The key involved, for single-key operations.
        key: Option<Vec<u8>>,
        /// Why it failed.
        source: Source,
    },
    /// A store implemented outside this crate (such as the cluster's JetStream key-value
    /// store) failed; made by [`StoreError::other`]. Its `source` says what happened and what
    /// to do, including whether a failed write may still have been applied (a network store's
    /// timed-out write may have been).
    Other {
        /// What was being done.
        op: Operation,
        /// The key involved, for single-key operations.
        key: Option<Vec<u8>>,
        /// Why it failed.
        source: Source,
    },
    /// A value could not be serialized.
    Encode {
        /// The key it was to be stored under, when known.
        key: Option<Vec<u8>>,
        /// The serializer's error.
        source: Source,
    },
    /// Stored bytes are not a valid encoding of the requested type.
    Decode {
        /// The key they were read from, when known.
        key: Option<Vec<u8>>,
        /// What is wrong with them.
        detail: String,
    },
    /// Stored bytes do not start with the codec's header (see [`codec`](crate::codec)).
    BadHeader {
        /// The key they were read from, when known.
        key: Option<Vec<u8>>,
        /// What is wrong with the header.
        detail: &'static str,
    },
    /// Stored bytes were framed by a newer version of this crate's codec (or carry format 0,
    /// which no version writes: damaged bytes).
    UnsupportedFormat {
        /// The key they were read from, when known.
        key: Option<Vec<u8>>,
        /// Format version in the header.
        found: u8,
        /// Newest format version this build reads.
        supported: u8,
    },
    /// Stored state has a different schema version than this build expects, and no migration
    /// hook handled it.
    SchemaMismatch {
        /// The key it was read from, when known.
        key: Option<Vec<u8>>,
        /// Schema version in the stored header.
        found: u32,
        /// Schema version this build's [`Codec`](crate::Codec) declares.
        expected: u32,
    },
    /// A migration hook could not convert old state.
    Migration {
        /// The key it was read from, when known.
        key: Option<Vec<u8>>,
        /// Schema version of the stored state.
        found: u32,
        /// Schema version the hook was to produce.
        expected: u32,
        /// The hook's explanation.
        reason: String,
    },
    /// The [`GroupCommit`](crate::GroupCommit) was shut down; the write was not applied.
    Closed,
    /// [`GroupCommit::flush`](crate::GroupCommit::flush) or
    /// [`shutdown`](crate::GroupCommit::shutdown) was called from a completion callback, on the
    /// commit thread, where it would wait for itself.
    InCallback,
    /// A write expected the key at the revision this process last read or wrote, and found
    /// another: someone else wrote it since (in a cluster, another node that owns the
    /// receiver now). The write was not applied.
    Conflict {
        /// The key.
        key: Vec<u8>,
    },
}

impl StoreError {
    /// A failure for a migration hook to return: stored state at schema `found` could not be
    /// converted to schema `expected`, because of `reason`.
    pub fn migration(found: u32, expected: u32, reason: impl Into<String>) -> Self {
        StoreError::Migration {
            key: None,
            found,
            expected,
            reason: reason.into(),
        }
    }

    /// A failure of a store implemented outside this crate (such as the cluster's JetStream
    /// key-value store): `op` on `key` failed because of `source`.
    pub fn other(
        op: Operation,
        key: Option<&[u8]>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        StoreError::Other {
            op,
            key: key.map(<[u8]>::to_vec),
            source: Arc::from(source.into()),
        }
    }

    /// Backend failure from any error or message (made by `RedbStore`).
    #[cfg_attr(not(feature = "redb"), allow(dead_code))]
    pub(crate) fn backend(
        op: Operation,
        key: Option<&[u8]>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        StoreError::Backend {
            op,
            key: key.map(<[u8]>::to_vec),
            source: Arc::from(source.into()),
        }
    }

    /// The key this error is about, if any.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            StoreError::Backend { key, .. }
            | StoreError::Other { key, .. }
            | StoreError::Encode { key, .. }
            | StoreError::Decode { key, .. }
            | StoreError::BadHeader { key, .. }
            | StoreError::UnsupportedFormat { key, .. }
            | StoreError::SchemaMismatch { key, .. }
            | StoreError::Migration { key, .. } => key.as_deref(),
            StoreError::Conflict { key } => Some(key),
            _ => None,
        }
    }

    /// Attaches `key` to a key-related error that does not name one yet (the codec does not
    /// know keys; [`Codec::load`](crate::Codec::load) uses this). Other errors are unchanged.
    pub fn with_key(mut self, new: &[u8]) -> Self {
        match &mut self {
            StoreError::Backend { key, .. }
            | StoreError::Other { key, .. }
            | StoreError::Encode { key, .. }
            | StoreError::Decode { key, .. }
            | StoreError::BadHeader { key, .. }
            | StoreError::UnsupportedFormat { key, .. }
            | StoreError::SchemaMismatch { key, .. }
            | StoreError::Migration { key, .. }
                if key.is_none() =>
            {
                *key = Some(new.to_vec());
            }
            _ => {}
        }
        self
    }
}

/// The text of a caught panic's payload (a `&str` or `String` message), or `"unknown panic"`.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// Formats a key for humans: printable ASCII as a quoted string, anything else as hex; cut
/// after [`KEY_SHOWN`] bytes with the full length noted.
pub(crate) struct KeyDisplay<'a>(pub &'a [u8]);

impl fmt::Display for KeyDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(KEY_SHOWN)];
        // Printable ASCII reads best as text; anything else (even valid UTF-8, which short
        // binary keys often happen to be) is unambiguous only in hex.
        let printable = shown.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
        match std::str::from_utf8(shown) {
            Ok(s) if printable => write!(f, "{s:?}")?,
            _ => {
                f.write_str("0x")?;
                for b in shown {
                    write!(f, "{b:02x}")?;
                }
            }
        }
        if shown.len() < self.0.len() {
            write!(f, "... ({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

/// " at key K" when a key is known, nothing otherwise.
struct AtKey<'a>(&'a Option<Vec<u8>>);

impl fmt::Display for AtKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(k) => write!(f, " at key {}", KeyDisplay(k)),
            None => Ok(()),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Open { path, source } => {
                use std::io::ErrorKind;
                let kind = source.downcast_ref::<std::io::Error>().map(|e| e.kind());
                let advice = match kind {
                    _ if path.as_os_str().is_empty() => "the path is empty: name a file",
                    Some(ErrorKind::NotFound) => "create its directory first",
                    Some(ErrorKind::NotADirectory) => {
                        "a part of the path before the file name is a file, not a directory"
                    }
                    Some(ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem) => {
                        "make the file and its directory writable by this process"
                    }
                    Some(ErrorKind::UnexpectedEof) => {
                        "the file is truncated (cut short inside its header): restore it from a \
                         backup or move it aside to start empty"
                    }
                    Some(ErrorKind::IsADirectory) => {
                        "the path is a directory: name a file (inside it, say)"
                    }
                    Some(ErrorKind::InvalidData) => {
                        "it is not a store file: choose another path or move the file aside"
                    }
                    _ => "check that its directory exists and is writable by this process",
                };
                write!(
                    f,
                    "cannot open store file {}: {source}; {advice}",
                    path.display()
                )
            }
            StoreError::AlreadyOpen { path } => write!(
                f,
                "store file {} is already open (by another process, or by another handle in this \
                 one); share one store through Arc<dyn Store> or use a different file",
                path.display()
            ),
            StoreError::UpgradeRequired { path, found } => write!(
                f,
                "store file {} uses an old redb file format (version {found}); upgrade it with \
                 the redb release that wrote it, or move it aside to start empty",
                path.display()
            ),
            StoreError::Corrupt { path, detail } => {
                f.write_str("store")?;
                if let Some(p) = path {
                    write!(f, " file {}", p.display())?;
                }
                write!(
                    f,
                    " is corrupt: {detail}; restore it from a backup or move it aside to start empty"
                )
            }
            StoreError::Backend { op, key, source } => {
                write!(f, "store {op}")?;
                if let Some(k) = key {
                    write!(f, " of key {}", KeyDisplay(k))?;
                }
                write!(f, " failed: {source}")?;
                if matches!(op, Operation::Get | Operation::Scan) {
                    f.write_str("; check that the store file is readable")
                } else {
                    f.write_str(
                        "; nothing was written: check free disk space and that the store file is \
                         writable, then retry",
                    )
                }
            }
            StoreError::Other { op, key, source } => {
                write!(f, "store {op}")?;
                if let Some(k) = key {
                    write!(f, " of key {}", KeyDisplay(k))?;
                }
                write!(f, " failed: {source}")
            }
            StoreError::Encode { key, source }
                if matches!(
                    source.downcast_ref::<postcard::Error>(),
                    Some(postcard::Error::SerdeSerCustom)
                ) =>
            {
                write!(
                    f,
                    "cannot encode value{}: the type's Serialize impl returned an error (postcard \
                     does not keep its message); find where that impl fails, it must not",
                    AtKey(key)
                )
            }
            StoreError::Encode { key, source } => write!(
                f,
                "cannot encode value{}: {source}; the type's Serialize impl must not fail (postcard \
                 does not support #[serde(flatten)], untagged or internally tagged enums, or \
                 unsized sequences)",
                AtKey(key)
            ),
            StoreError::Decode { key, detail } if detail == NEEDS_DESERIALIZE_ANY => write!(
                f,
                "cannot decode value{}: {detail}; postcard cannot decode untagged or internally \
                 tagged enums, #[serde(skip_serializing_if)] or other self-describing shapes: \
                 change the type's serde attributes, and delete or migrate what was stored",
                AtKey(key)
            ),
            StoreError::Decode { key, detail } => write!(
                f,
                "cannot decode value{}: {detail}; it was written with a different type under the \
                 same schema version: bump the schema version when the type changes and add a \
                 migration",
                AtKey(key)
            ),
            StoreError::BadHeader { key, detail } => write!(
                f,
                "value{} is not in the hermes-store codec format ({detail}); it was written by \
                 something else, or the key is shared with other data",
                AtKey(key)
            ),
            StoreError::UnsupportedFormat {
                key,
                found,
                supported,
            } if *found == 0 => write!(
                f,
                "value{} has codec format 0, which no build of hermes-store writes (formats start \
                 at 1; this build reads up to {supported}): the value is damaged or not this \
                 codec's; restore it from a backup, or delete the key to start from the default",
                AtKey(key)
            ),
            StoreError::UnsupportedFormat {
                key,
                found,
                supported,
            } => write!(
                f,
                "value{} uses codec format {found} but this build reads up to {supported}; run a \
                 newer build of hermes-store",
                AtKey(key)
            ),
            StoreError::SchemaMismatch {
                key,
                found,
                expected,
            } => {
                write!(
                    f,
                    "stored state{} has schema version {found} but this build expects {expected}; ",
                    AtKey(key)
                )?;
                if found < expected {
                    f.write_str("register a migration hook (Codec::with_migration) that reads it")
                } else {
                    f.write_str(
                        "it was written by a newer build: run that build, or add a migration hook \
                         that accepts the newer version",
                    )
                }
            }
            StoreError::Migration {
                key,
                found,
                expected,
                reason,
            } => write!(
                f,
                "cannot migrate stored state{} from schema version {found} to {expected}: \
                 {reason}; make the migration hook (Codec::with_migration) read this version, \
                 or delete the key to start from the default state",
                AtKey(key)
            ),
            StoreError::Closed => f.write_str(
                "group commit is shut down, the write was not applied; submit writes before \
                 shutdown() or dropping the GroupCommit",
            ),
            StoreError::InCallback => f.write_str(
                "GroupCommit::flush/shutdown called from a completion callback, which runs on the \
                 commit thread and would wait for itself; send a message from the callback and \
                 flush elsewhere",
            ),
            StoreError::Conflict { key } => write!(
                f,
                "key {} was written by someone else since this process read it (a revision \
                 conflict; in a cluster, another node owns the receiver now): the write was not \
                 applied; deactivate the receiver and let its owner handle its messages",
                KeyDisplay(key)
            ),
        }
    }
}

/// No source: the message includes the underlying error's (see [`StoreError`]).
impl StdError for StoreError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_shown_as_text_or_hex_and_cut() {
        assert_eq!(KeyDisplay(b"acct/42").to_string(), "\"acct/42\"");
        assert_eq!(KeyDisplay(&[0, 1, 0xff]).to_string(), "0x0001ff");
        let long = vec![b'a'; 100];
        let shown = KeyDisplay(&long).to_string();
        assert!(shown.ends_with("... (100 bytes)"), "{shown}");
        assert!(shown.len() < 70, "{shown}");
    }

    #[test]
    fn messages_name_key_and_remedy() {
        let e = StoreError::SchemaMismatch {
            key: Some(b"k1".to_vec()),
            found: 1,
            expected: 2,
        };
        let m = e.to_string();
        assert!(m.contains("\"k1\"") && m.contains("version 1") && m.contains("expects 2"));
        assert!(m.contains("with_migration"), "{m}");

        let e = StoreError::backend(Operation::Put, Some(b"k2"), "disk full");
        let m = e.to_string();
        assert!(m.contains("put of key \"k2\" failed: disk full"), "{m}");
        assert!(m.contains("nothing was written"), "{m}");
        assert_eq!(m.matches("disk full").count(), 1, "{m}");
        assert!(e.source().is_none(), "a chain reporter would show it twice");
    }

    /// An outside store's failure says what that store says, not what to do about a redb
    /// file (the cluster's store talked of free disk space and a store file).
    #[test]
    fn an_outside_stores_failure_gives_its_own_advice() {
        let e = StoreError::other(
            Operation::Put,
            Some(b"k"),
            "the server is gone: retry later",
        );
        assert_eq!(
            e.to_string(),
            "store put of key \"k\" failed: the server is gone: retry later"
        );
        assert_eq!(e.key(), Some(&b"k"[..]));
    }

    #[test]
    fn with_key_fills_only_missing_keys() {
        let e = StoreError::migration(1, 2, "x")
            .with_key(b"a")
            .with_key(b"b");
        assert_eq!(e.key(), Some(&b"a"[..]));
        assert!(StoreError::Closed.with_key(b"a").key().is_none());
    }
}
