//! The versioned codec: round trips, the header, schema mismatches, migration, damaged input.

use std::collections::BTreeMap;

use hermes_store::codec::{self, Codec, FORMAT_VERSION, HEADER_LEN, Header, MAGIC};
use hermes_store::{MemoryStore, Store, StoreError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Status {
    Open,
    Frozen { reason: String },
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Account {
    balance: i64,
    owner: String,
    tags: Vec<String>,
    limits: BTreeMap<String, u64>,
    status: Status,
    parent: Option<u128>,
}

fn sample() -> Account {
    Account {
        balance: -42,
        owner: "zoë".into(),
        tags: vec!["a".into(), "b".into()],
        limits: BTreeMap::from([("daily".into(), 500)]),
        status: Status::Frozen {
            reason: "audit".into(),
        },
        parent: Some(u128::MAX),
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct AccountV1 {
    balance: i64,
    owner: String,
}

const V2: Codec<Account> = Codec::new(2);

#[test]
fn round_trip_and_header_layout() {
    let bytes = V2.encode(&sample()).unwrap();
    assert_eq!(&bytes[..4], &MAGIC);
    assert_eq!(bytes[4], FORMAT_VERSION);
    assert_eq!(&bytes[5..9], &2u32.to_le_bytes());
    let (header, payload) = codec::read_header(&bytes).unwrap();
    assert_eq!(
        header,
        Header {
            format: FORMAT_VERSION,
            schema: 2
        }
    );
    assert_eq!(payload.len(), bytes.len() - HEADER_LEN);
    assert_eq!(V2.decode(&bytes).unwrap(), sample());
    assert_eq!(V2.schema_version(), 2);
}

#[test]
fn free_functions_use_schema_zero() {
    let bytes = codec::encode(&(1u8, "two", [3u16; 3])).unwrap();
    assert_eq!(&bytes[5..9], &0u32.to_le_bytes());
    let back: (u8, String, [u16; 3]) = codec::decode(&bytes).unwrap();
    assert_eq!(back, (1, "two".into(), [3; 3]));
    // State written with a schema version is not silently read as version 0.
    let versioned = V2.encode(&sample()).unwrap();
    let err = codec::decode::<Account>(&versioned).unwrap_err();
    assert!(matches!(
        err,
        StoreError::SchemaMismatch {
            found: 2,
            expected: 0,
            ..
        }
    ));
}

#[test]
fn older_schema_without_hook_is_refused_with_advice() {
    let old = Codec::<AccountV1>::new(1)
        .encode(&AccountV1 {
            balance: 1,
            owner: "x".into(),
        })
        .unwrap();
    let err = V2.decode(&old).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::SchemaMismatch {
                key: None,
                found: 1,
                expected: 2
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("with_migration"), "{err}");
}

#[test]
fn newer_schema_is_refused_with_advice() {
    let newer = Codec::<Account>::new(3).encode(&sample()).unwrap();
    let err = V2.decode(&newer).unwrap_err();
    assert!(matches!(
        err,
        StoreError::SchemaMismatch {
            found: 3,
            expected: 2,
            ..
        }
    ));
    assert!(err.to_string().contains("newer build"), "{err}");
}

fn migrate(found: u32, payload: &[u8]) -> Result<Account, StoreError> {
    match found {
        1 => {
            let old: AccountV1 = codec::decode_payload(payload)?;
            Ok(Account {
                balance: old.balance,
                owner: old.owner,
                tags: Vec::new(),
                limits: BTreeMap::new(),
                status: Status::Open,
                parent: None,
            })
        }
        _ => Err(StoreError::migration(
            found,
            2,
            "no migration from this version",
        )),
    }
}

const MIGRATING: Codec<Account> = Codec::new(2).with_migration(migrate);

#[test]
fn migration_hook_upgrades_old_state() {
    let old = Codec::<AccountV1>::new(1)
        .encode(&AccountV1 {
            balance: 9,
            owner: "ann".into(),
        })
        .unwrap();
    let account = MIGRATING.decode(&old).unwrap();
    assert_eq!(account.balance, 9);
    assert_eq!(account.owner, "ann");
    assert_eq!(account.status, Status::Open);
    // The current version does not go through the hook.
    let current = MIGRATING.encode(&sample()).unwrap();
    assert_eq!(MIGRATING.decode(&current).unwrap(), sample());
}

#[test]
fn migration_failure_names_versions_and_key() {
    let store = MemoryStore::new();
    let weird = Codec::<u8>::new(7).encode(&1).unwrap();
    store.put(b"acct/7", &weird).unwrap();
    let err = MIGRATING.load(&store, b"acct/7").unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Migration {
                found: 7,
                expected: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.key(), Some(&b"acct/7"[..]));
    let msg = err.to_string();
    assert!(
        msg.contains("\"acct/7\"") && msg.contains("from schema version 7 to 2"),
        "{msg}"
    );
}

#[test]
fn save_and_load_through_a_store() {
    let store = MemoryStore::new();
    assert_eq!(V2.load(&store, b"a").unwrap(), None);
    V2.save(&store, b"a", &sample()).unwrap();
    assert_eq!(V2.load(&store, b"a").unwrap(), Some(sample()));
    // Errors while loading name the key.
    let v1 = Codec::<AccountV1>::new(1)
        .encode(&AccountV1 {
            balance: 1,
            owner: "o".into(),
        })
        .unwrap();
    store.put(&[0xde, 0xad], &v1).unwrap();
    let err = V2.load(&store, &[0xde, 0xad]).unwrap_err();
    assert_eq!(err.key(), Some(&[0xde, 0xad][..]));
    assert!(err.to_string().contains("0xdead"), "{err}");
}

#[test]
fn damaged_or_foreign_bytes_are_rejected() {
    let good = V2.encode(&sample()).unwrap();

    let err = V2.decode(&good[..5]).unwrap_err();
    assert!(matches!(err, StoreError::BadHeader { .. }), "{err:?}");
    assert!(V2.decode(&[]).is_err());

    let mut foreign = good.clone();
    foreign[0] = b'X';
    let err = V2.decode(&foreign).unwrap_err();
    assert!(matches!(err, StoreError::BadHeader { .. }), "{err:?}");
    assert!(err.to_string().contains("magic"), "{err}");

    for format in [0u8, FORMAT_VERSION + 1] {
        let mut future = good.clone();
        future[4] = format;
        let err = V2.decode(&future).unwrap_err();
        assert!(
            matches!(err, StoreError::UnsupportedFormat { found, .. } if found == format),
            "{err:?}"
        );
    }

    // Truncated payload.
    let err = V2.decode(&good[..good.len() - 3]).unwrap_err();
    assert!(matches!(err, StoreError::Decode { .. }), "{err:?}");

    // Trailing garbage: the payload must be used exactly.
    let mut long = good.clone();
    long.extend_from_slice(&[1, 2, 3]);
    let err = V2.decode(&long).unwrap_err();
    assert!(err.to_string().contains("3 unused bytes"), "{err}");

    // Same schema number, different type: an error, not a wrong value or a panic.
    let other = Codec::<Vec<String>>::new(2)
        .encode(&vec!["x".repeat(300)])
        .unwrap();
    let err = V2.decode(&other).unwrap_err();
    assert!(matches!(err, StoreError::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains("bump the schema version"), "{err}");
}

#[test]
fn every_truncation_and_bit_flip_fails_cleanly() {
    // No input makes decoding panic; results are either a value or an error.
    let good = V2.encode(&sample()).unwrap();
    for len in 0..good.len() {
        assert!(V2.decode(&good[..len]).is_err(), "prefix of {len} bytes");
    }
    for i in 0..good.len() {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[i] ^= 1 << bit;
            let _ = V2.decode(&bad);
        }
    }
}
