//! Versioned serde encoding of receiver state.
//!
//! A stored value is a 9-byte header followed by the [postcard](https://docs.rs/postcard)
//! encoding of the state:
//!
//! | bytes | content |
//! |-------|---------|
//! | 0..4  | magic [`MAGIC`], `b"HRM1"`: marks the value as written by this codec |
//! | 4     | codec format version, [`FORMAT_VERSION`] (the layout of this header and payload) |
//! | 5..9  | the user's schema version of the state type, `u32` little-endian |
//! | 9..   | postcard payload |
//!
//! postcard is compact and its wire format is stable across 1.x releases, but it is not
//! self-describing: a payload only decodes with the type that wrote it. So the state type
//! carries a schema version, chosen by you and bumped whenever the type changes shape. When
//! decoding, a value with the expected schema version is decoded directly; any other version is
//! handed to the [migration hook](Codec::with_migration) if there is one, and otherwise fails with
//! [`StoreError::SchemaMismatch`] — state is never silently misread.
//!
//! postcard covers most serde shapes, but not self-describing ones: `#[serde(flatten)]` fails
//! to encode, and untagged or internally tagged enums and `#[serde(skip_serializing_if)]`
//! encode but fail to decode ([`StoreError::Decode`] says so).
//! [`Durable::save`](crate::Durable::save) refuses such a state at the save, before it is
//! written.
//!
//! ```
//! use hermes_store::codec::{self, Codec};
//! use hermes_store::StoreError;
//! use serde::{Deserialize, Serialize};
//!
//! // Version 1 of the state stored only a balance.
//! #[derive(Serialize, Deserialize)]
//! struct AccountV1 { balance: i64 }
//!
//! // Version 2 adds an owner.
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Account { balance: i64, owner: String }
//!
//! fn migrate(found: u32, payload: &[u8]) -> Result<Account, StoreError> {
//!     match found {
//!         1 => {
//!             let old: AccountV1 = codec::decode_payload(payload)?;
//!             Ok(Account { balance: old.balance, owner: String::new() })
//!         }
//!         _ => Err(StoreError::migration(found, 2, "unknown version")),
//!     }
//! }
//!
//! const ACCOUNT: Codec<Account> = Codec::new(2).with_migration(migrate);
//!
//! let old_bytes = Codec::<AccountV1>::new(1).encode(&AccountV1 { balance: 7 })?;
//! let account = ACCOUNT.decode(&old_bytes)?;
//! assert_eq!(account, Account { balance: 7, owner: String::new() });
//!
//! // Without the hook, old state is refused with a clear error.
//! let strict: Codec<Account> = Codec::new(2);
//! assert!(matches!(strict.decode(&old_bytes), Err(StoreError::SchemaMismatch { found: 1, expected: 2, .. })));
//! # Ok::<(), StoreError>(())
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Store, StoreError};

/// First four bytes of every encoded value.
pub const MAGIC: [u8; 4] = *b"HRM1";
/// The codec format this build writes, and the newest it reads.
pub const FORMAT_VERSION: u8 = 1;
/// Length of the header before the postcard payload.
pub const HEADER_LEN: usize = 9;

/// A migration hook: gets the schema version found in storage and the postcard payload (the
/// bytes after the header), and returns the state in the current schema. Decode the old type
/// with [`decode_payload`].
pub type Migration<T> = fn(found: u32, payload: &[u8]) -> Result<T, StoreError>;

/// The header of an encoded value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Codec format version.
    pub format: u8,
    /// The user's schema version of the state.
    pub schema: u32,
}

/// Encodes `value` with schema version 0; the same as `Codec::new(0).encode(value)`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StoreError> {
    encode_versioned(value, 0)
}

/// Decodes a value written by [`encode`] (schema version 0, no migration).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    Codec::<T>::new(0).decode(bytes)
}

/// Encodes `value` with the given schema version.
pub fn encode_versioned<T: Serialize + ?Sized>(
    value: &T,
    schema: u32,
) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&schema.to_le_bytes());
    postcard::to_extend(value, out).map_err(|e| StoreError::Encode {
        key: None,
        source: Arc::new(e),
    })
}

/// Splits an encoded value into its header and payload, checking the magic bytes and format
/// version.
pub fn read_header(bytes: &[u8]) -> Result<(Header, &[u8]), StoreError> {
    let Some((head, payload)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(StoreError::BadHeader {
            key: None,
            detail: "shorter than the 9-byte header",
        });
    };
    let [m0, m1, m2, m3, format, s0, s1, s2, s3] = *head;
    if [m0, m1, m2, m3] != MAGIC {
        return Err(StoreError::BadHeader {
            key: None,
            detail: "wrong magic bytes",
        });
    }
    if format == 0 || format > FORMAT_VERSION {
        return Err(StoreError::UnsupportedFormat {
            key: None,
            found: format,
            supported: FORMAT_VERSION,
        });
    }
    let schema = u32::from_le_bytes([s0, s1, s2, s3]);
    Ok((Header { format, schema }, payload))
}

/// Decodes a bare postcard payload (no header) as `T`, requiring that it uses every byte. For
/// migration hooks, which get the payload of an older schema version.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, StoreError> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(StoreError::Decode {
            key: None,
            detail: format!("{} unused bytes after the value", rest.len()),
        }),
        Err(postcard::Error::WontImplement) => Err(StoreError::Decode {
            key: None,
            detail: crate::error::NEEDS_DESERIALIZE_ANY.to_owned(),
        }),
        Err(e) => Err(StoreError::Decode {
            key: None,
            detail: e.to_string(),
        }),
    }
}

/// Encodes and decodes one state type `T` at a fixed schema version, optionally migrating
/// older (or newer) versions. See the [module docs](self) for the format and an example.
///
/// `Codec` is `Copy` and can be built in a `const`.
pub struct Codec<T> {
    schema: u32,
    migrate: Option<Migration<T>>,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Codec<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Codec<T> {}

impl<T> fmt::Debug for Codec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec")
            .field("type", &std::any::type_name::<T>())
            .field("schema", &self.schema)
            .field("migrates", &self.migrate.is_some())
            .finish()
    }
}

impl<T> Codec<T> {
    /// A codec writing and reading schema version `schema` of `T`, without migration.
    pub const fn new(schema: u32) -> Self {
        Codec {
            schema,
            migrate: None,
            _type: PhantomData,
        }
    }

    /// Adds a hook that converts stored state of any other schema version. The hook decides
    /// which versions it accepts; return [`StoreError::migration`] for the others.
    pub const fn with_migration(self, hook: Migration<T>) -> Self {
        Codec {
            schema: self.schema,
            migrate: Some(hook),
            _type: PhantomData,
        }
    }

    /// The schema version this codec writes and expects.
    pub const fn schema_version(&self) -> u32 {
        self.schema
    }

    /// Encodes `value` under this codec's schema version.
    pub fn encode(&self, value: &T) -> Result<Vec<u8>, StoreError>
    where
        T: Serialize,
    {
        encode_versioned(value, self.schema)
    }

    /// Decodes stored bytes: directly when the schema version matches, through the migration
    /// hook when it differs and a hook is set, and otherwise fails with
    /// [`StoreError::SchemaMismatch`].
    pub fn decode(&self, bytes: &[u8]) -> Result<T, StoreError>
    where
        T: DeserializeOwned,
    {
        let (header, payload) = read_header(bytes)?;
        if header.schema == self.schema {
            return decode_payload(payload);
        }
        match self.migrate {
            Some(hook) => {
                tracing::debug!(
                    found = header.schema,
                    expected = self.schema,
                    ty = std::any::type_name::<T>(),
                    "migrating stored state"
                );
                hook(header.schema, payload)
            }
            None => Err(StoreError::SchemaMismatch {
                key: None,
                found: header.schema,
                expected: self.schema,
            }),
        }
    }

    /// Reads and decodes the state stored under `key`, if any. Errors name the key.
    pub fn load(&self, store: &dyn Store, key: &[u8]) -> Result<Option<T>, StoreError>
    where
        T: DeserializeOwned,
    {
        match store.get(key)? {
            Some(bytes) => self.decode(&bytes).map(Some).map_err(|e| e.with_key(key)),
            None => Ok(None),
        }
    }

    /// Encodes `value` and stores it under `key` (one durable write). Errors name the key.
    pub fn save(&self, store: &dyn Store, key: &[u8], value: &T) -> Result<(), StoreError>
    where
        T: Serialize,
    {
        let bytes = self.encode(value).map_err(|e| e.with_key(key))?;
        store.put(key, &bytes)
    }
}
