//! The documented behaviour of durable receiver state, tried through the public API only:
//! what `Durable::deactivated` saves for each reason (and after a panic), reload from the same
//! file in a new "process", many receivers saving from many threads, corrupt or foreign values
//! (a typed error naming the key, no panic, the message kept as a dead letter), one store shared
//! by two kinds, the memory store behaving as the redb one, error messages that say what to do,
//! and `Debug` on the public types.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use hermes_core::{
    Activation, Config, Context, Deactivation, DeadLetterReason, Driver, Receiver, Recipient,
};
use hermes_store::codec::{self, FORMAT_VERSION, MAGIC};
use hermes_store::{
    Batch, Codec, Durability, Durable, GroupCommit, GroupCommitConfig, MemoryStore, Op, Operation,
    RedbOptions, RedbStore, StateStore, Store, StoreError, SyncPolicy,
};
use serde::{Deserialize, Serialize};

mod support;

/// A bound on every wait for an acknowledgement; reached only if the test is failing.
const GUARD: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize, Default, Debug, PartialEq, Clone)]
struct Tally {
    total: u64,
    notes: Vec<String>,
}

const TALLY: Codec<Tally> = Codec::new(1);

#[derive(Serialize, Deserialize, Default, Debug, PartialEq, Clone)]
struct Profile {
    name: String,
}

const PROFILE: Codec<Profile> = Codec::new(3);

fn redb_states(path: &Path) -> Arc<StateStore> {
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(path).expect("the store opens"));
    StateStore::new(store, GroupCommitConfig::default()).expect("group commit starts")
}

fn memory_states() -> (Arc<dyn Store>, Arc<StateStore>) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let states =
        StateStore::new(store.clone(), GroupCommitConfig::default()).expect("group commit starts");
    (store, states)
}

/// What an acknowledgement gets.
type Acked = mpsc::Receiver<Result<(), StoreError>>;

/// An acknowledgement that forwards its result, and the receiving end.
fn acker() -> (impl FnOnce(Result<(), StoreError>) + Send + 'static, Acked) {
    let (tx, rx) = mpsc::channel();
    (move |r| drop(tx.send(r)), rx)
}

// ---------------------------------------------------------------------------------------------
// What is saved at deactivation.

/// Every reason but a panic saves dirty state (`Moved` too: the new owner must load it); a
/// panic saves nothing, not even the complete changes made before the panicking message.
#[test]
fn deactivation_saves_dirty_state_for_every_reason_but_a_panic() {
    let (store, states) = memory_states();
    let reasons = [
        ("idle", Deactivation::IdleTimeout),
        ("stopped", Deactivation::Stopped),
        ("closing", Deactivation::Closing),
        ("moved", Deactivation::Moved),
        ("panicked", Deactivation::Panicked),
    ];
    for (name, why) in reasons {
        let mut state = Durable::load(&states, TALLY, format!("tally/{name}")).unwrap();
        state.total = 7;
        assert!(state.is_dirty(), "writing through DerefMut marks it dirty");
        state.deactivated(why);
    }
    states.flush().unwrap();
    for (name, why) in reasons {
        let stored = TALLY
            .load(store.as_ref(), format!("tally/{name}").as_bytes())
            .unwrap();
        let expected = (why != Deactivation::Panicked).then(|| Tally {
            total: 7,
            notes: Vec::new(),
        });
        assert_eq!(stored, expected, "deactivated({why:?})");
    }
}

/// A clean state is not written at deactivation: reading through `Deref` does not mark it.
#[test]
fn clean_state_is_not_written_at_deactivation() {
    let (store, states) = memory_states();
    let mut state = Durable::load(&states, TALLY, "tally/clean").unwrap();
    assert_eq!(state.total, 0, "no stored state loads the default");
    assert_eq!(state.get().notes.len(), 0);
    assert!(!state.is_dirty());
    state.deactivated(Deactivation::Stopped);
    states.flush().unwrap();
    assert_eq!(states.commits().stats().submissions, 0);
    assert_eq!(store.get(b"tally/clean").unwrap(), None);
}

/// What a handler saved explicitly before it panicked stays saved; what it changed after the
/// save is dropped with the panicked instance.
#[test]
fn an_explicit_save_before_a_panic_is_kept_and_later_changes_are_not() {
    let (store, states) = memory_states();
    let mut state = Durable::load(&states, TALLY, "tally/a").unwrap();
    state.total = 1;
    let (ack, acked) = acker();
    state.save(ack);
    assert!(!state.is_dirty());
    state.total = 99;
    state.notes.push("half-updated".into());
    state.deactivated(Deactivation::Panicked);
    acked.recv_timeout(GUARD).unwrap().unwrap();
    states.flush().unwrap();
    let reloaded = Durable::load(&states, TALLY, "tally/a").unwrap();
    assert_eq!(reloaded.total, 1);
    assert!(reloaded.notes.is_empty());
    assert_eq!(store.scan_prefix(b"tally/").unwrap().len(), 1);
}

/// `delete` removes the stored state: a re-activation, before or after the commit, loads the
/// default.
#[test]
fn a_deleted_state_loads_as_the_default_before_and_after_the_commit() {
    let (store, states) = memory_states();
    TALLY
        .save(
            store.as_ref(),
            b"tally/d",
            &Tally {
                total: 5,
                notes: vec!["x".into()],
            },
        )
        .unwrap();
    let mut state = Durable::load(&states, TALLY, "tally/d").unwrap();
    assert_eq!(state.total, 5);
    let (ack, acked) = acker();
    state.delete(ack);
    assert_eq!(state.total, 5, "the value in memory is kept");
    assert!(!state.is_dirty());
    state.deactivated(Deactivation::Stopped);
    assert_eq!(
        *Durable::load(&states, TALLY, "tally/d").unwrap(),
        Tally::default()
    );
    acked.recv_timeout(GUARD).unwrap().unwrap();
    assert_eq!(store.get(b"tally/d").unwrap(), None);
    assert_eq!(
        *Durable::load(&states, TALLY, "tally/d").unwrap(),
        Tally::default()
    );
}

// ---------------------------------------------------------------------------------------------
// Reload after a restart, many receivers.

/// Receivers of many IDs, on several threads at once, load, change and save at deactivation
/// through one `StateStore`; a new "process" (a new handle on the same file) loads each one's
/// state, and a second round of changes builds on it.
#[test]
fn many_receivers_on_many_threads_reload_after_a_restart() {
    const THREADS: u64 = 4;
    const IDS: u64 = 64;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.redb");
    for round in 1..=2u64 {
        let states = redb_states(&path);
        let start = Arc::new(Barrier::new(THREADS as usize));
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let states = Arc::clone(&states);
                let start = Arc::clone(&start);
                thread::spawn(move || {
                    start.wait();
                    for i in 0..IDS {
                        let id = t * IDS + i;
                        let mut state =
                            Durable::load(&states, TALLY, format!("tally/{id}")).expect("loads");
                        assert_eq!(state.total, (round - 1) * id, "id {id} in round {round}");
                        state.total += id;
                        state.notes.push(format!("round {round}"));
                        state.deactivated(if i % 2 == 0 {
                            Deactivation::IdleTimeout
                        } else {
                            Deactivation::Closing
                        });
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a worker panicked");
        }
        states.shutdown().unwrap();
        let stats = states.commits().stats();
        assert_eq!(stats.submissions, THREADS * IDS);
        assert_eq!(stats.failed_commits, 0);
    }
    let store = RedbStore::open(&path).unwrap();
    let all = store.scan_prefix(b"tally/").unwrap();
    assert_eq!(all.len() as u64, THREADS * IDS);
    for id in 0..THREADS * IDS {
        let tally = TALLY
            .load(&store, format!("tally/{id}").as_bytes())
            .unwrap()
            .expect("saved");
        assert_eq!(tally.total, 2 * id);
        assert_eq!(tally.notes, ["round 1", "round 2"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Corrupt and foreign values.

/// Values a `Codec<Tally>` cannot read, with the variant each must fail with.
fn bad_values() -> Vec<(&'static str, Vec<u8>)> {
    let mut newer_format = MAGIC.to_vec();
    newer_format.push(FORMAT_VERSION + 1);
    newer_format.extend_from_slice(&1u32.to_le_bytes());
    let mut truncated = TALLY
        .encode(&Tally {
            total: 300,
            notes: vec!["a note".into()],
        })
        .unwrap();
    truncated.truncate(truncated.len() - 2);
    vec![
        ("empty", Vec::new()),
        ("foreign", b"{\"total\": 3}".to_vec()),
        ("newer-format", newer_format),
        ("other-schema", PROFILE.encode(&Profile::default()).unwrap()),
        // Same schema version, another type: a String where a Tally was expected.
        (
            "other-type",
            codec::encode_versioned(&"a string, not a tally".to_string(), 1).unwrap(),
        ),
        ("truncated", truncated),
    ]
}

fn assert_expected_variant(name: &str, e: &StoreError) {
    let ok = match name {
        "empty" | "foreign" => matches!(e, StoreError::BadHeader { .. }),
        "newer-format" => {
            matches!(e, StoreError::UnsupportedFormat { found, .. } if *found == FORMAT_VERSION + 1)
        }
        "other-schema" => matches!(
            e,
            StoreError::SchemaMismatch {
                found: 3,
                expected: 1,
                ..
            }
        ),
        "other-type" | "truncated" => matches!(e, StoreError::Decode { .. }),
        _ => unreachable!("{name}"),
    };
    assert!(ok, "{name}: unexpected {e:?}");
}

/// Each bad value fails `Durable::load` with its typed error naming the key, and a message
/// that names the key; nothing panics.
#[test]
fn corrupt_or_foreign_values_fail_the_load_with_a_typed_error_naming_the_key() {
    let (store, states) = memory_states();
    for (name, bytes) in bad_values() {
        let key = format!("bad/{name}");
        store.put(key.as_bytes(), &bytes).unwrap();
        let e = Durable::load(&states, TALLY, key.clone()).unwrap_err();
        assert_expected_variant(name, &e);
        assert_eq!(e.key(), Some(key.as_bytes()), "{name}: {e:?}");
        let text = e.to_string();
        assert!(text.contains(&format!("{key:?}")), "{name}: {text}");
    }
}

enum Msg {
    Add(u64),
}

struct Counter(Durable<Tally>);

impl Receiver<String, Msg> for Counter {
    fn receive(&mut self, _: &mut Context<'_, String, Msg>, msg: Msg) {
        let Msg::Add(n) = msg;
        self.0.total += n;
    }

    fn deactivated(&mut self, _: &mut Context<'_, String, Msg>, why: Deactivation) {
        self.0.deactivated(why);
    }
}

/// A receiver whose stored state is foreign bytes is not activated: its message becomes a
/// `FactoryFailed` dead letter that keeps the message and carries the `StoreError` naming the
/// key. Once the bad value is removed, the next message activates it from the default.
#[test]
fn a_foreign_value_fails_the_activation_and_keeps_the_message() {
    let (store, states) = memory_states();
    store.put(b"tally/a", b"not hermes state").unwrap();
    let factory = {
        let states = Arc::clone(&states);
        move |id: &String| match Durable::load(&states, TALLY, format!("tally/{id}")) {
            Ok(state) => Activation::ready(Counter(state)),
            Err(e) => Activation::failed(e),
        }
    };
    let mut driver = Driver::new(Config::default(), factory);
    driver.send("a".to_string(), Msg::Add(4)).unwrap();
    driver.run(Instant::now());
    let dead = driver.poll_dead_letter().expect("a dead letter");
    assert_eq!(dead.recipient, Recipient::Id("a".to_string()));
    assert!(matches!(dead.message, Some(Msg::Add(4))), "message kept");
    let DeadLetterReason::FactoryFailed(error) = &dead.reason else {
        panic!("expected FactoryFailed, got {:?}", dead.reason);
    };
    let store_error = error
        .get()
        .downcast_ref::<StoreError>()
        .expect("the StoreError itself");
    assert!(
        matches!(store_error, StoreError::BadHeader { .. }),
        "{store_error:?}"
    );
    assert_eq!(store_error.key(), Some(&b"tally/a"[..]));
    assert!(
        dead.reason.to_string().contains("\"tally/a\""),
        "{}",
        dead.reason
    );

    store.delete(b"tally/a").unwrap();
    driver.send("a".to_string(), Msg::Add(4)).unwrap();
    driver.run(Instant::now());
    assert!(driver.poll_dead_letter().is_none());
    driver.close(Instant::now());
    states.flush().unwrap();
    assert_eq!(
        TALLY
            .load(store.as_ref(), b"tally/a")
            .unwrap()
            .unwrap()
            .total,
        4
    );
}

// ---------------------------------------------------------------------------------------------
// One store, two kinds.

/// Two kinds keep their state in one redb file, each through its own `StateStore` (its own
/// commit thread) under its own prefix: both survive a restart, and neither sees the other's
/// keys in a prefix scan.
#[test]
fn two_kinds_share_one_store_under_their_own_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.redb");
    {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
        let tallies = StateStore::new(store.clone(), GroupCommitConfig::default()).unwrap();
        let profiles = StateStore::new(store, GroupCommitConfig::default()).unwrap();
        for id in 0..20u64 {
            let mut tally = Durable::load(&tallies, TALLY, format!("tally/{id}")).unwrap();
            tally.total = id;
            tally.deactivated(Deactivation::Stopped);
            let mut profile = Durable::load(&profiles, PROFILE, format!("profile/{id}")).unwrap();
            profile.name = format!("user {id}");
            profile.deactivated(Deactivation::Closing);
        }
        tallies.shutdown().unwrap();
        profiles.shutdown().unwrap();
    }
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
    let states = StateStore::new(store.clone(), GroupCommitConfig::default()).unwrap();
    assert_eq!(store.scan_prefix(b"tally/").unwrap().len(), 20);
    assert_eq!(store.scan_prefix(b"profile/").unwrap().len(), 20);
    for id in 0..20u64 {
        let tally = Durable::load(&states, TALLY, format!("tally/{id}")).unwrap();
        assert_eq!(tally.total, id);
        let profile = Durable::load(&states, PROFILE, format!("profile/{id}")).unwrap();
        assert_eq!(profile.name, format!("user {id}"));
    }
}

/// Two kinds that collide on a key (no prefix) do not misread each other's state: the second
/// fails with `SchemaMismatch` naming the key, whether the first one's save is committed or
/// still pending in the group.
#[test]
fn two_kinds_colliding_on_a_key_get_a_schema_mismatch_not_each_others_state() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let states = StateStore::new(
        store.clone(),
        GroupCommitConfig::default().interval(Duration::MAX),
    )
    .unwrap();
    let mut profile = Durable::load(&states, PROFILE, "7").unwrap();
    profile.name = "seven".into();
    let (ack, acked) = acker();
    profile.save(ack);
    assert_eq!(store.get(b"7").unwrap(), None, "pending, not committed");
    for _committed in [false, true] {
        let e = Durable::load(&states, TALLY, "7").unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::SchemaMismatch {
                    found: 3,
                    expected: 1,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.key(), Some(&b"7"[..]));
        states.flush().unwrap();
    }
    acked.recv_timeout(GUARD).unwrap().unwrap();
    assert_eq!(Durable::load(&states, PROFILE, "7").unwrap().name, "seven");
}

// ---------------------------------------------------------------------------------------------
// The memory store behaves as the redb one.

/// A small deterministic generator (xorshift), so the sequence is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_key(rng: &mut Rng) -> Vec<u8> {
    // Few distinct keys, of different lengths and with bytes that sort at both ends, so keys
    // repeat and prefixes overlap.
    let alphabet = [b'a', b'b', b'/', 0x00, 0xff];
    (0..rng.below(4))
        .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
        .collect()
}

/// The same pseudo-random sequence of puts, deletes, batches (both durabilities) and syncs on a
/// `MemoryStore` and a `RedbStore`: after every step every read agrees, and so does the redb
/// file after a reopen.
#[test]
fn the_memory_store_behaves_as_the_redb_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.redb");
    let memory = MemoryStore::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    {
        let redb = RedbStore::open(&path).unwrap();
        let stores: [&dyn Store; 2] = [&memory, &redb];
        for step in 0..300 {
            let key = random_key(&mut rng);
            let value = rng.next().to_le_bytes()[..rng.below(9) as usize].to_vec();
            match rng.below(10) {
                0..=3 => stores.iter().try_for_each(|s| s.put(&key, &value)).unwrap(),
                4..=5 => stores.iter().try_for_each(|s| s.delete(&key)).unwrap(),
                6..=8 => {
                    let mut batch = Batch::new();
                    for _ in 0..rng.below(5) {
                        let k = random_key(&mut rng);
                        if rng.below(3) == 0 {
                            batch.delete(k);
                        } else {
                            batch.put(k, rng.next().to_be_bytes().to_vec());
                        }
                    }
                    if rng.below(2) == 0 {
                        batch.set_durability(Durability::Deferred);
                    }
                    for s in stores {
                        s.write_batch(batch.clone()).unwrap();
                    }
                }
                _ => stores.iter().try_for_each(|s| s.sync()).unwrap(),
            }
            let probe = random_key(&mut rng);
            assert_eq!(
                memory.get(&probe).unwrap(),
                redb.get(&probe).unwrap(),
                "step {step}"
            );
            assert_eq!(
                memory.scan_prefix(&probe).unwrap(),
                redb.scan_prefix(&probe).unwrap(),
                "step {step}, prefix {probe:?}"
            );
        }
        assert_eq!(memory.len(), redb.scan_prefix(b"").unwrap().len());
        redb.sync().unwrap();
    }
    let reopened = RedbStore::open(&path).unwrap();
    assert_eq!(
        memory.scan_prefix(b"").unwrap(),
        reopened.scan_prefix(b"").unwrap()
    );
}

/// Durable state round-trips the same way on both stores, through group commit.
#[test]
fn durable_state_is_the_same_on_the_memory_and_the_redb_store() {
    let dir = tempfile::tempdir().unwrap();
    let redb: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path().join("same.redb")).unwrap());
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut contents = Vec::new();
    for store in [memory, redb] {
        let states = StateStore::new(store.clone(), GroupCommitConfig::default()).unwrap();
        for id in 0..10u64 {
            let mut tally = Durable::load(&states, TALLY, format!("tally/{id}")).unwrap();
            tally.total = id * id;
            tally.notes.push(format!("id {id}"));
            tally.deactivated(Deactivation::IdleTimeout);
        }
        let mut gone = Durable::load(&states, TALLY, "tally/3").unwrap();
        gone.delete(|r| r.unwrap());
        states.shutdown().unwrap();
        contents.push(store.scan_prefix(b"").unwrap());
    }
    assert_eq!(contents[0].len(), 9);
    assert_eq!(contents[0], contents[1]);
}

// ---------------------------------------------------------------------------------------------
// Errors say what to do; save errors reach the acknowledgement.

/// A state whose `Serialize` fails.
#[derive(Deserialize, Default, Debug)]
struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this state refuses to serialize"))
    }
}

/// An encoding error goes to the acknowledgement at once (before `save` returns), as
/// `StoreError::Encode` naming the key; nothing is written; `deactivated` does not panic on it.
#[test]
fn an_encoding_error_reaches_the_ack_at_once_and_writes_nothing() {
    let (store, states) = memory_states();
    let mut state = Durable::load(&states, Codec::<Unencodable>::new(1), "odd/1").unwrap();
    let (ack, acked) = acker();
    state.save(ack);
    let e = acked
        .try_recv()
        .expect("acknowledged before save returned")
        .unwrap_err();
    assert!(matches!(e, StoreError::Encode { .. }), "{e:?}");
    assert_eq!(e.key(), Some(&b"odd/1"[..]));
    // postcard drops a custom error's text ("Serde Serialization Error"): the message says that
    // the type's own Serialize impl failed, not that postcard lacks a serde feature.
    let text = e.to_string();
    assert!(text.contains("Serialize impl returned an error"), "{text}");
    assert!(!text.contains("does not support"), "{text}");
    let _ = state.get_mut();
    state.deactivated(Deactivation::Stopped);
    states.flush().unwrap();
    assert_eq!(store.get(b"odd/1").unwrap(), None);
}

/// After `shutdown`, a save is refused with `Closed` at once (its message says what to do),
/// and loads still read what was committed.
#[test]
fn after_shutdown_saves_are_refused_and_loads_still_work() {
    let (_store, states) = memory_states();
    let mut state = Durable::load(&states, TALLY, "tally/s").unwrap();
    state.total = 3;
    state.deactivated(Deactivation::Stopped);
    states.shutdown().unwrap();
    let mut state = Durable::load(&states, TALLY, "tally/s").unwrap();
    assert_eq!(state.total, 3);
    state.total = 4;
    let (ack, acked) = acker();
    state.save(ack);
    let e = acked.try_recv().expect("refused at once").unwrap_err();
    assert!(matches!(e, StoreError::Closed), "{e:?}");
    assert!(e.to_string().contains("shut down"), "{e}");
    assert_eq!(Durable::load(&states, TALLY, "tally/s").unwrap().total, 3);
}

/// Every message names the key (as text when printable, in hex otherwise, cut after 48 bytes,
/// as `StoreError` documents) and says what to do.
#[test]
fn error_messages_show_keys_as_documented_and_say_what_to_do() {
    let binary = vec![0xff, 0x00, 0x01];
    let long = vec![b'k'; 100];
    let errors = [
        StoreError::Conflict {
            key: binary.clone(),
        },
        StoreError::Conflict { key: long.clone() },
        StoreError::migration(1, 2, "no field `owner`").with_key(&binary),
        StoreError::migration(1, 2, "no field `owner`").with_key(&long),
        StoreError::SchemaMismatch {
            key: Some(binary.clone()),
            found: 1,
            expected: 2,
        },
        StoreError::Decode {
            key: Some(long.clone()),
            detail: "unexpected end".into(),
        },
    ];
    for e in &errors {
        let text = e.to_string();
        let key = e.key().expect("each names its key");
        if key == binary.as_slice() {
            assert!(
                text.contains("0xff0001"),
                "binary keys are shown in hex: {text}"
            );
        } else {
            assert!(
                text.contains("... (100 bytes)"),
                "long keys are cut: {text}"
            );
            assert!(
                !text.contains(&"k".repeat(49)),
                "cut after 48 bytes: {text}"
            );
        }
    }
    // Each says what to do, after what happened.
    let advice = [
        (&errors[0], "deactivate the receiver"),
        (&errors[2], "migration hook"),
        (&errors[4], "with_migration"),
        (&errors[5], "bump the schema version"),
    ];
    for (e, words) in advice {
        let text = e.to_string();
        let (_, after) = text.split_once(';').unwrap_or(("", ""));
        assert!(after.contains(words), "{e:?}: {text}");
    }
}

/// A value framed with codec format 0, which no build writes, is damaged: its message does not
/// send the operator to a newer build (which would read it no better), and names the key.
#[test]
fn a_value_of_codec_format_zero_is_reported_as_damaged_not_as_too_new() {
    let (store, states) = memory_states();
    let mut bytes = TALLY.encode(&Tally::default()).unwrap();
    bytes[4] = 0;
    store.put(b"tally/zero", &bytes).unwrap();
    let e = Durable::load(&states, TALLY, "tally/zero").unwrap_err();
    assert!(
        matches!(e, StoreError::UnsupportedFormat { found: 0, .. }),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(text.contains("\"tally/zero\""), "{text}");
    assert!(!text.contains("newer build"), "{text}");
    assert!(text.contains("damaged"), "{text}");
}

/// Opening a directory as the store file fails with `Open`, naming the path and saying it is a
/// directory, not that the directory may be missing.
#[test]
fn opening_a_directory_says_it_is_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let e = RedbStore::open(dir.path()).unwrap_err();
    assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    assert!(text.contains("the path is a directory"), "{text}");
    assert!(!text.contains("check that its directory exists"), "{text}");
}

/// An empty path, and a path through a plain file, each get advice about the path, not "create
/// its directory" or "check that its directory exists".
#[test]
fn an_empty_path_or_one_through_a_file_says_what_is_wrong_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"not a directory").unwrap();
    let cases = [
        (std::path::PathBuf::new(), "the path is empty"),
        (plain.join("x.redb"), "is a file, not a directory"),
    ];
    for (path, advice) in cases {
        let e = RedbStore::open(&path).unwrap_err();
        assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(advice), "{path:?}: {text}");
        assert!(!text.contains("its directory"), "{path:?}: {text}");
    }
}

/// A store file cut short inside redb's header (a copy interrupted, a disk that filled) fails
/// with advice about the file, not about its directory.
#[test]
fn a_store_file_cut_inside_its_header_says_it_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.redb");
    drop(RedbStore::open(&path).unwrap());
    let whole = std::fs::read(&path).unwrap();
    std::fs::write(&path, &whole[..64]).unwrap();
    let e = RedbStore::open(&path).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("cut.redb"), "{text}");
    assert!(text.contains("truncated"), "{text}");
    assert!(!text.contains("check that its directory exists"), "{text}");
}

/// Writes a redb file of 2000 entries, then, for each of `rounds` pseudo-random single-bit
/// flips in it, writes the damaged copy and runs `try_it` on its path (caught if it panics).
/// Returns how many rounds ended in an error; panics naming the round if one panicked.
fn on_damaged_copies(
    rounds: u32,
    try_it: impl Fn(&Path) -> Result<(), StoreError> + std::panic::RefUnwindSafe,
) -> u32 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.redb");
    {
        let store = RedbStore::open(&path).unwrap();
        let mut batch = Batch::new();
        for i in 0..2000u32 {
            batch.put(format!("key/{i:04}"), vec![i as u8; 100]);
        }
        store.write_batch(batch).unwrap();
    }
    let good = std::fs::read(&path).unwrap();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut errors = 0;
    for round in 0..rounds {
        let mut bad = good.clone();
        let at = rng.below(bad.len() as u64) as usize;
        bad[at] ^= 1 << rng.below(8);
        std::fs::write(&path, &bad).unwrap();
        let outcome = std::panic::catch_unwind(|| try_it(&path))
            .unwrap_or_else(|_| panic!("round {round}: a flipped bit in byte {at} panicked"));
        if let Err(e) = outcome {
            assert!(
                matches!(e, StoreError::Corrupt { .. } | StoreError::Open { .. }),
                "round {round}: {e:?}"
            );
            let text = e.to_string();
            assert!(text.contains("damaged.redb"), "round {round}: {text}");
            assert!(text.contains("move it aside"), "round {round}: {text}");
            errors += 1;
        }
    }
    errors
}

/// A store file damaged outside redb, opened with `check_integrity_on_open`, fails with a typed
/// error naming the file, for damage anywhere in it; never a panic. Where the flip hit bytes
/// the checksums do not cover (free space), reads work.
#[test]
fn a_damaged_file_checked_on_open_is_an_error_not_a_panic() {
    let checked = RedbOptions::new().check_integrity_on_open(true);
    let errors = on_damaged_copies(20, |path| {
        RedbStore::open_with(path, &checked)?
            .scan_prefix(b"")
            .map(drop)
    });
    assert!(errors > 0, "some flips are caught by the check");
}

/// Opened without the check, a damaged file is trusted, and redb panics on some damage when it
/// reads it: each operation then fails with `StoreError::Corrupt` naming the file (and the
/// store reopens the file for the next one), never a panic, also when the store is dropped.
#[test]
fn a_damaged_file_opened_unchecked_fails_operations_with_corrupt_not_a_panic() {
    let errors = on_damaged_copies(20, |path| {
        let store = RedbStore::open(path)?;
        let mut batch = Batch::new();
        for i in 0..50u32 {
            batch.put(format!("key/{:04}", i * 37), "new");
        }
        let results = [
            store.write_batch(batch),
            store.scan_prefix(b"").map(drop),
            store.get(b"key/0500").map(drop),
            store.put(b"key/0001", b"new"),
        ];
        drop(store);
        results.into_iter().collect()
    });
    assert!(errors > 0, "some flips make redb panic");
}

// ---------------------------------------------------------------------------------------------
// Debug.

/// Every public type is `Debug`, without deadlock from inside an acknowledgement (where the
/// commit thread is busy), and a state's binary key does not break it.
#[test]
fn public_types_are_debug_even_from_an_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let redb = RedbStore::open(dir.path().join("debug.redb")).unwrap();
    assert!(format!("{redb:?}").contains("debug.redb"));
    let (store, states) = memory_states();
    let state = Durable::load(&states, TALLY, vec![0xff, b'/', 0x00]).unwrap();
    let text = format!("{state:?}");
    assert!(text.contains("Durable") && text.contains("dirty"), "{text}");
    let mut batch = Batch::new();
    batch.put("a", "1").delete("b");
    let config = GroupCommitConfig::default().sync(SyncPolicy::Interval(Duration::from_secs(1)));
    let header = codec::read_header(&TALLY.encode(&Tally::default()).unwrap())
        .unwrap()
        .0;
    let texts = [
        format!("{:?}", MemoryStore::new()),
        format!("{states:?}"),
        format!("{TALLY:?}"),
        format!("{batch:?}"),
        format!("{:?}", Op::Delete { key: b"k".to_vec() }),
        format!("{:?}", Durability::Deferred),
        format!("{config:?}"),
        format!("{:?}", states.commits().stats()),
        format!("{:?}", RedbOptions::new()),
        format!("{:?}", Operation::Scan),
        format!("{header:?}"),
        format!("{:?}", StoreError::Closed),
    ];
    assert!(texts.iter().all(|t| !t.is_empty()));
    let (tx, rx) = mpsc::channel();
    let inside = Arc::clone(&states);
    let mut state = state;
    state.total = 1;
    state.save(move |r| {
        drop(tx.send((r, format!("{inside:?}"), format!("{:?}", inside.commits()))));
    });
    let (result, states_text, commits_text) = rx.recv_timeout(GUARD).expect("no deadlock");
    result.unwrap();
    assert!(states_text.contains("StateStore"), "{states_text}");
    assert!(commits_text.contains("GroupCommit"), "{commits_text}");
    let commits = GroupCommit::start(store, GroupCommitConfig::default()).unwrap();
    assert!(format!("{commits:?}").contains("GroupCommit"));
}

// ---------------------------------------------------------------------------------------------
// Group commit seen from the acknowledgements.

/// A write is visible to readers once its transaction committed, which is before its
/// acknowledgement runs: the first acknowledgement of a group already sees the group's last
/// write, not yet acknowledged (the docs used to say "not before it is acknowledged").
#[test]
fn a_write_is_visible_once_committed_even_before_its_acknowledgement() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let commits = GroupCommit::start(
        store.clone(),
        GroupCommitConfig::default()
            .interval(Duration::MAX)
            .max_batch(2),
    )
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = store.clone();
    commits.put("first", "1", move |r| {
        drop(tx.send((r, reader.get(b"second"))));
    });
    let (ack, acked) = acker();
    commits.put("second", "2", ack);
    let (first, seen) = rx.recv_timeout(GUARD).unwrap();
    first.unwrap();
    assert_eq!(seen.unwrap(), Some(b"2".to_vec()));
    acked.recv_timeout(GUARD).unwrap().unwrap();
}

/// The last handle on a `StateStore` may be dropped by an acknowledgement (on the commit
/// thread, which cannot join itself): no hang, no panic, and the group's other writes are
/// committed and acknowledged.
#[test]
fn a_state_store_dropped_by_its_last_acknowledgement_does_not_hang() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let states = StateStore::new(
        store.clone(),
        GroupCommitConfig::default()
            .interval(Duration::MAX)
            .max_batch(2),
    )
    .unwrap();
    let mut a = Durable::load(&states, TALLY, "tally/a").unwrap();
    let mut b = Durable::load(&states, TALLY, "tally/b").unwrap();
    a.total = 1;
    b.total = 2;
    let (dropped_tx, dropped) = mpsc::channel();
    let last = Arc::clone(&states);
    a.save(move |r| {
        drop(last);
        drop(dropped_tx.send(r));
    });
    drop(a);
    drop(states);
    let (ack, acked) = acker();
    b.save(ack);
    drop(b); // the acknowledgement of `a` now holds the last handle
    dropped.recv_timeout(GUARD).expect("no hang").unwrap();
    acked.recv_timeout(GUARD).expect("no hang").unwrap();
    assert_eq!(
        TALLY
            .load(store.as_ref(), b"tally/a")
            .unwrap()
            .unwrap()
            .total,
        1
    );
    assert_eq!(
        TALLY
            .load(store.as_ref(), b"tally/b")
            .unwrap()
            .unwrap()
            .total,
        2
    );
}

/// `max_batch(0)` counts as 1: with no interval by the clock, each write still commits at once
/// (a batch of one is full), without a flush.
#[test]
fn a_max_batch_of_zero_counts_as_one() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let commits = GroupCommit::start(
        store.clone(),
        GroupCommitConfig::default()
            .interval(Duration::MAX)
            .max_batch(0),
    )
    .unwrap();
    for key in ["a", "b"] {
        let (ack, acked) = acker();
        commits.put(key, "1", ack);
        acked
            .recv_timeout(GUARD)
            .expect("committed without a flush")
            .unwrap();
    }
    assert_eq!(store.scan_prefix(b"").unwrap().len(), 2);
}

/// The stats count a commit by the time its writes are acknowledged: in the callback itself,
/// and on any thread the acknowledgement was passed to (they used to be updated only after
/// every callback of the group had run, so a test reading them after an ack saw one too few).
/// A group of empty batches is acknowledged but is no transaction.
#[test]
fn stats_count_a_commit_by_the_time_it_is_acknowledged() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let commits = Arc::new(GroupCommit::start(store, GroupCommitConfig::default()).unwrap());
    for n in 1..=3u64 {
        let (tx, rx) = mpsc::channel();
        let weak = Arc::downgrade(&commits);
        commits.put(format!("k{n}"), "v", move |r| {
            let inside = weak.upgrade().map(|c| c.stats());
            drop(tx.send((r, inside)));
        });
        let (result, inside) = rx.recv_timeout(GUARD).unwrap();
        result.unwrap();
        let inside = inside.expect("the GroupCommit is alive");
        assert_eq!(
            (inside.commits, inside.ops_written),
            (n, n),
            "in the callback"
        );
        let after = commits.stats();
        assert_eq!((after.commits, after.ops_written), (n, n), "after the ack");
        assert_eq!(after.submissions, n);
    }
    let (tx, rx) = mpsc::channel();
    commits.submit(Batch::new(), move |r| drop(tx.send(r)));
    rx.recv_timeout(GUARD).unwrap().unwrap();
    assert_eq!(
        commits.stats().commits,
        3,
        "an empty batch is no transaction"
    );
}

// ---------------------------------------------------------------------------------------------
// Two kinds of one application, one store.

mod bank {
    use super::*;
    use hermes_core::Kinds;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct AccountId(pub u32);
    #[derive(Debug)]
    pub enum AccountMsg {
        Deposit(u64),
    }
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct AuditId;
    #[derive(Debug)]
    pub enum AuditMsg {
        Deposited(AccountId, u64),
    }

    hermes_core::app! {
        /// Accounts, and an audit log of their deposits.
        pub app Bank(BankId, BankMsg) {
            Account(AccountId => AccountMsg),
            Audit(AuditId => AuditMsg),
        }
    }

    pub const BALANCE: Codec<u64> = Codec::new(1);
    pub const LOG: Codec<Vec<(u32, u64)>> = Codec::new(1);

    struct Account(Durable<u64>);

    impl Receiver<AccountId, AccountMsg, Bank> for Account {
        fn receive(&mut self, ctx: &mut Context<'_, AccountId, AccountMsg, Bank>, msg: AccountMsg) {
            let AccountMsg::Deposit(n) = msg;
            *self.0 += n;
            ctx.send(AuditId, AuditMsg::Deposited(*ctx.id(), n));
        }
        fn deactivated(
            &mut self,
            _: &mut Context<'_, AccountId, AccountMsg, Bank>,
            why: Deactivation,
        ) {
            self.0.deactivated(why);
        }
    }

    struct Audit(Durable<Vec<(u32, u64)>>);

    impl Receiver<AuditId, AuditMsg, Bank> for Audit {
        fn receive(&mut self, _: &mut Context<'_, AuditId, AuditMsg, Bank>, msg: AuditMsg) {
            let AuditMsg::Deposited(AccountId(id), n) = msg;
            self.0.push((id, n));
        }
        fn deactivated(&mut self, _: &mut Context<'_, AuditId, AuditMsg, Bank>, why: Deactivation) {
            self.0.deactivated(why);
        }
    }

    /// The two kinds, each loading its state from `states` under its own prefix.
    pub fn kinds(states: &Arc<StateStore>) -> Kinds<Bank> {
        let accounts = Arc::clone(states);
        let audits = Arc::clone(states);
        Kinds::<Bank>::new()
            .kind(move |id: &AccountId| {
                match Durable::load(&accounts, BALANCE, format!("account/{}", id.0)) {
                    Ok(state) => Activation::ready(Account(state)),
                    Err(e) => Activation::failed(e),
                }
            })
            .kind(
                move |_: &AuditId| match Durable::load(&audits, LOG, "audit") {
                    Ok(state) => Activation::ready(Audit(state)),
                    Err(e) => Activation::failed(e),
                },
            )
    }
}

/// Two kinds of one application keep their state in one `StateStore` on one redb file: after
/// `close` (every receiver deactivated `Closing`) and a restart on the same file, each kind
/// loads its own state and builds on it.
#[test]
fn two_kinds_of_one_application_share_a_store_across_a_restart() {
    use bank::{AccountId, AccountMsg, BALANCE, LOG};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.redb");
    for round in 1..=2u64 {
        let states = redb_states(&path);
        let mut driver = Driver::new(Config::default(), bank::kinds(&states));
        for id in 1..=3u32 {
            driver
                .send(AccountId(id), AccountMsg::Deposit(u64::from(id) * 10))
                .unwrap();
        }
        driver.run(Instant::now());
        driver.close(Instant::now());
        assert!(driver.poll_dead_letter().is_none());
        states.shutdown().unwrap();
        drop((driver, states)); // the last handles on the file
        let store = RedbStore::open(&path).unwrap();
        for id in 1..=3u32 {
            let balance = BALANCE.load(&store, format!("account/{id}").as_bytes());
            assert_eq!(balance.unwrap(), Some(round * u64::from(id) * 10));
        }
        let log = LOG.load(&store, b"audit").unwrap().unwrap();
        assert_eq!(log.len() as u64, 3 * round, "{log:?}");
        assert_eq!(log[..3], [(1, 10), (2, 20), (3, 30)]);
    }
}

/// `submit` ignores the batch's own durability (the `SyncPolicy` decides: `EveryCommit` writes
/// `Immediate`); callbacks run in submission order on the commit thread, named
/// `hermes-store-commit` by default; after shutdown a callback runs at once on the submitting
/// thread.
#[test]
fn group_commit_callbacks_threads_and_durability_are_as_documented() {
    let probe = support::Probe::new();
    let commits = GroupCommit::start(
        probe.clone(),
        GroupCommitConfig::default().interval(Duration::MAX),
    )
    .unwrap();
    let (tx, rx) = mpsc::channel();
    for n in 0..5u32 {
        let mut batch = Batch::new();
        batch
            .put(format!("k{n}"), "v")
            .set_durability(Durability::Deferred);
        let tx = tx.clone();
        commits.submit(batch, move |r| {
            let name = thread::current().name().map(str::to_owned);
            drop(tx.send((n, r, name)));
        });
    }
    commits.flush().unwrap();
    let acks: Vec<_> = rx.try_iter().collect();
    assert_eq!(acks.len(), 5);
    for (i, (n, result, name)) in acks.into_iter().enumerate() {
        assert_eq!(n as usize, i, "submission order");
        result.unwrap();
        assert_eq!(name.as_deref(), Some("hermes-store-commit"));
    }
    assert_eq!(probe.batches(), [(5, Durability::Immediate)]);
    commits.shutdown().unwrap();
    let here = thread::current().id();
    let (tx, rx) = mpsc::channel();
    commits.put("late", "v", move |r| {
        drop(tx.send((r, thread::current().id())));
    });
    let (result, on) = rx.try_recv().expect("at once");
    assert!(matches!(result, Err(StoreError::Closed)), "{result:?}");
    assert_eq!(on, here);
}

/// Receivers saving close together share one transaction (the top README's promise): a
/// hundred deactivations before the commit thread's interval ends are one commit.
#[test]
fn receivers_saving_together_share_one_transaction() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let states = StateStore::new(
        store.clone(),
        GroupCommitConfig::default().interval(Duration::MAX),
    )
    .unwrap();
    for id in 0..100u64 {
        let mut state = Durable::load(&states, TALLY, format!("tally/{id}")).unwrap();
        state.total = id;
        state.deactivated(Deactivation::IdleTimeout);
    }
    states.flush().unwrap();
    let stats = states.commits().stats();
    assert_eq!(
        (stats.submissions, stats.commits, stats.ops_written),
        (100, 1, 100)
    );
    assert_eq!(store.scan_prefix(b"tally/").unwrap().len(), 100);
}

// ---------------------------------------------------------------------------------------------
// State that postcard encodes but cannot decode.

/// Internally tagged: postcard encodes it, but decoding needs `deserialize_any`, which it
/// never implements.
#[derive(Serialize, Deserialize, Debug, PartialEq, Default)]
#[serde(tag = "type")]
enum Tagged {
    #[default]
    Empty,
    Full {
        n: u32,
    },
}

const TAGGED: Codec<Tagged> = Codec::new(1);

/// A state that would be written but never loaded again is refused at the save: the
/// acknowledgement gets an `Encode` error naming the key at once, saying why, and the store
/// keeps the last state that loads.
#[test]
fn a_state_that_would_not_load_again_is_refused_at_the_save() {
    let (store, states) = memory_states();
    let mut state = Durable::load(&states, TAGGED, "tagged/1").unwrap();
    *state = Tagged::Full { n: 3 };
    let (ack, acked) = acker();
    state.save(ack);
    let e = acked
        .try_recv()
        .expect("refused before save returned")
        .unwrap_err();
    assert!(matches!(e, StoreError::Encode { .. }), "{e:?}");
    assert_eq!(e.key(), Some(&b"tagged/1"[..]));
    assert!(e.to_string().contains("would not decode"), "{e}");
    states.flush().unwrap();
    assert_eq!(store.get(b"tagged/1").unwrap(), None);
    assert_eq!(
        *Durable::load(&states, TAGGED, "tagged/1").unwrap(),
        Tagged::Empty
    );
}

/// A field skipped when empty: postcard encodes the struct without it, and decoding then runs
/// out of bytes.
#[derive(Serialize, Deserialize, Debug, PartialEq, Default)]
struct Skipping {
    n: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// The same for a field skipped when empty; with a note the state saves and loads.
#[test]
fn a_state_skipping_an_empty_field_is_refused_and_saves_once_it_is_set() {
    let (_store, states) = memory_states();
    let codec: Codec<Skipping> = Codec::new(1);
    let mut state = Durable::load(&states, codec, "skipping/1").unwrap();
    state.n = 1;
    let (ack, acked) = acker();
    state.save(ack);
    let e = acked.try_recv().expect("at once").unwrap_err();
    assert!(e.to_string().contains("would not decode"), "{e}");
    state.note = Some("set".into());
    let (ack, acked) = acker();
    state.save(ack);
    acked.recv_timeout(GUARD).unwrap().unwrap();
    let loaded = Durable::load(&states, codec, "skipping/1").unwrap();
    assert_eq!(loaded.note.as_deref(), Some("set"));
}

/// Such a value written some other way fails the load with advice about the type's serde
/// attributes, not about schema versions.
#[test]
fn a_stored_value_postcard_cannot_decode_names_the_serde_features() {
    let (store, states) = memory_states();
    TAGGED
        .save(store.as_ref(), b"tagged/2", &Tagged::Full { n: 1 })
        .unwrap();
    let e = Durable::load(&states, TAGGED, "tagged/2").unwrap_err();
    assert!(matches!(e, StoreError::Decode { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("\"tagged/2\""), "{text}");
    assert!(text.contains("internally tagged"), "{text}");
    assert!(!text.contains("bump the schema version"), "{text}");
}
